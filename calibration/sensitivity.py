"""Layer sensitivity of a Q/DQ INT8 ONNX: which layers lose the most accuracy when quantized.

Re-quantizing once per layer would recalibrate every time, so each candidate is made by graph surgery on
the quantized model instead: a layer's weights and bias come back as the FP32 initializers, and the Q/DQ
pairs around it go where ONNX Runtime's ``nodes_to_exclude`` would drop them (checked against real
exclusion, layer by layer, on kapao-t and dekr-t with three quantizer configurations). What ORT's Q/DQ
graphs taught us (ORT 1.31):

- a Q/DQ pair is shared by every reader of a tensor, and a tensor is quantized when its producer or any
  reader asks; so excluding one layer keeps its activations quantized whenever a neighbour is quantized
  (the default operator set), and floats them only where no neighbour is. Reshape, Resize, MaxPool and
  kin only follow: they quantize their output when their input is, so dropping one pair can drop the next;
- a quantized ``Relu``/``Clip`` after a convolution is deleted and the convolution's output takes the
  activation's tensor name, so one name can hold different values in the two graphs; tensors are matched
  through their producing node (name and op type) and deleted nodes are rebuilt in float;
- a bias's DequantizeLinear outputs the FP32 bias's own name, so FP32 initializers come in under new names;
- at session creation ORT re-quantizes a float layer that sits between Q/DQ pairs (see
  ``DISABLED_OPTIMIZERS``), so an excluded layer only stays float where that optimizer is disabled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from edgepose.calibration.graph import WEIGHTED_OPS, weighted_layers
from edgepose.calibration.ort_quant import prepare_for_quantization
from edgepose.runtimes.onnxruntime import DISABLED_OPTIMIZERS

from edgepose.errors import UsageError

#: "exclude": what ``nodes_to_exclude`` would give; "float": also feed each layer float activations
MODES = ("exclude", "float")

#: ops ONNX Runtime's Q/DQ quantizer quantizes only when their input already is (``QDQDirect8BitOp``
#: and kin in ``onnxruntime.quantization.registry``): they ask for their output's pair, never their input's
FOLLOWERS = frozenset(
    {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Resize", "MaxPool", "AveragePool", "Slice"}
    | {"TopK", "Gather", "GatherElements", "Where", "Relu", "Clip"}
)
_FOLLOWED = {"Where": (1, 2)}
_REMOVABLE = ("Relu", "Clip")


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                readers.setdefault(name, []).append(node)
    return readers


def quantized_layers(qdq: onnx.ModelProto) -> list[str]:
    """Weighted layers whose weight input comes from a DequantizeLinear, in graph order."""
    producer = _producers(qdq.graph)
    return [
        n.name
        for n in qdq.graph.node
        if n.op_type in WEIGHTED_OPS
        and len(n.input) > 1
        and getattr(producer.get(n.input[1]), "op_type", None) == "DequantizeLinear"
    ]


class _Surgeon:
    """Edits one copy of a Q/DQ graph, with the FP32 graph it was made from as the source of float values."""

    def __init__(self, qdq: onnx.ModelProto, fp32: onnx.ModelProto) -> None:
        self.model = onnx.ModelProto()
        self.model.CopyFrom(qdq)
        self.graph = self.model.graph
        self.fp32 = fp32.graph
        self.fp32_init = {t.name: t for t in self.fp32.initializer}
        self.fp32_inputs = {i.name for i in self.fp32.input}
        self.fp32_producer = _producers(self.fp32)
        self.fp32_nodes = {n.name: n for n in self.fp32.node if n.name}
        self.nodes = {n.name: n for n in self.graph.node if n.name}
        self.used = self._all_names()
        self.quantized = _quantized_nodes(self.graph, self.fp32)
        self.pairs = _qdq_pairs(self.graph)
        # pairs that this model of the quantizer cannot explain even with nothing floated stay as they are
        self.pinned = set(self.pairs) - _asked_pairs(self.graph, self.pairs, self.quantized, set())
        self.resolved: dict[str, str | None] = {}

    def _all_names(self) -> set[str]:
        g = self.graph
        names = {t.name for t in g.initializer} | {v.name for v in (*g.input, *g.output, *g.value_info)}
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
            names.add(node.name)
        return names

    def fresh(self, base: str) -> str:
        name, i = f"{base}_float", 1
        while name in self.used:
            name, i = f"{base}_float{i}", i + 1
        self.used.add(name)
        return name

    def float_tensor(self, name: str) -> str | None:
        """A Q/DQ-graph tensor that holds what FP32 tensor ``name`` holds (computed from upstream values).

        None when the FP32 graph does not know the name: nothing can stand in for it.
        """
        if name not in self.resolved:
            self.resolved[name] = self._resolve(name)
        return self.resolved[name]

    def _resolve(self, name: str) -> str | None:
        if name in self.fp32_init:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(self.fp32_init[name])
            tensor.name = self.fresh(name)
            self.graph.initializer.append(tensor)
            return tensor.name
        if name in self.fp32_inputs:
            return name if name in {i.name for i in self.graph.input} else None
        src = self.fp32_producer.get(name)
        if src is None:
            return None
        index = list(src.output).index(name)
        twin = self.nodes.get(src.name)
        if twin is not None and twin.op_type == src.op_type and len(twin.output) == len(src.output):
            return twin.output[index]
        # the quantizer deleted this node (a Relu or Clip folded into a Q/DQ pair): rebuild it in float
        clone = onnx.NodeProto()
        clone.CopyFrom(src)
        clone.name = self.fresh(src.name or src.op_type)
        for i, inp in enumerate(src.input):
            if inp:
                sub = self.float_tensor(inp)
                if sub is None:
                    return None
                clone.input[i] = sub
        for i, out in enumerate(src.output):
            if out:
                clone.output[i] = self.fresh(out)
        self.graph.node.append(clone)
        return clone.output[index]

    def float_weights(self, layer: onnx.NodeProto, twin: onnx.NodeProto) -> None:
        """Feed ``layer`` the FP32 initializers its FP32 twin reads (weights, bias)."""
        for i, name in enumerate(twin.input):
            if name in self.fp32_init:
                layer.input[i] = self.float_tensor(name)

    def float_activations(self, layer: onnx.NodeProto, twin: onnx.NodeProto) -> None:
        """Feed ``layer`` float activations, whatever its neighbours do."""
        for i, name in enumerate(twin.input):
            if name and name not in self.fp32_init:
                value = self.float_tensor(name)
                if value is None:
                    raise UsageError(
                        f"tensor '{name}' of layer '{layer.name}' has no float counterpart in the Q/DQ "
                        "model; pass the FP32 model it was quantized from"
                    )
                layer.input[i] = value

    def drop_orphan_pairs(self, floated: set[str]) -> None:
        """Remove the Q/DQ pairs that no quantized op asks for any more, as nodes_to_exclude would."""
        readers = _consumers(self.graph)
        pairs = self.pairs
        dropped = set(pairs) - _asked_pairs(self.graph, pairs, self.quantized, floated) - self.pinned
        for source in sorted(dropped):
            value = self.float_tensor(source)
            if value is None:
                continue
            for dq_out in pairs[source]:
                for reader in readers.get(dq_out, []):
                    reader.input[:] = [value if x == dq_out else x for x in reader.input]

    def finish(self) -> onnx.ModelProto:
        _prune(self.graph)
        _sort_nodes(self.graph)
        return self.model


def _op(node: onnx.NodeProto | None) -> str | None:
    return node.op_type if node is not None else None


def _qdq_pairs(graph: onnx.GraphProto) -> dict[str, list[str]]:
    """Each quantized activation tensor and the outputs of the DequantizeLinear nodes that restore it."""
    readers = _consumers(graph)
    init = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    pairs: dict[str, list[str]] = {}
    for q in graph.node:
        if q.op_type == "QuantizeLinear" and q.input[0] not in init:
            dqs = [r.output[0] for r in readers.get(q.output[0], []) if r.op_type == "DequantizeLinear"]
            if dqs and not any(o in outputs for o in dqs):
                pairs.setdefault(q.input[0], []).extend(dqs)
    return pairs


def _quantized_nodes(graph: onnx.GraphProto, fp32: onnx.GraphProto) -> set[str]:
    """Names of the nodes the quantizer quantized, read off the Q/DQ graph.

    A weighted layer is quantized when its weight is dequantized. Any other quantized op reads
    dequantized tensors and quantizes what it writes; a follower does so when its input is quantized.
    A float op squeezed between two quantized layers looks the same, so an op type counts as quantized
    only when no node of that type reads a dequantized tensor without being quantized itself. With
    asymmetric activations the quantizer deletes the Relu/Clip nodes it quantizes where it can, so those
    types count only when some node of the type was deleted.
    """
    producer, readers = _producers(graph), _consumers(graph)
    init = {t.name for t in graph.initializer}
    present = {n.name for n in graph.node}
    deleted = {n.op_type for n in fp32.node if n.op_type in _REMOVABLE and n.name not in present}

    def dequantized(name: str) -> bool:
        return _op(producer.get(name)) == "DequantizeLinear"

    def quantizes_outputs(node: onnx.NodeProto) -> bool:
        return all(any(r.op_type == "QuantizeLinear" for r in readers.get(o, [])) for o in node.output if o)

    quantized, float_types = set(), set()
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type in WEIGHTED_OPS:
            if len(node.input) > 1 and dequantized(node.input[1]):
                quantized.add(node.name)
            continue
        ins = [i for i in node.input if i and i not in init]
        if node.op_type in FOLLOWERS:
            ins = [node.input[i] for i in _FOLLOWED.get(node.op_type, (0,)) if i < len(node.input)]
            if not all(dequantized(i) for i in ins):
                continue
        if ins and all(dequantized(i) for i in ins) and quantizes_outputs(node):
            quantized.add(node.name)
        elif any(dequantized(i) for i in ins):
            float_types.add(node.op_type)
    if not _symmetric_activations(graph):
        float_types |= set(_REMOVABLE) - deleted
    by_name = {n.name: n for n in graph.node}
    return {name for name in quantized if by_name[name].op_type not in float_types}


def _symmetric_activations(graph: onnx.GraphProto) -> bool:
    """Whether every activation QuantizeLinear has an int8 zero point of 0."""
    init = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in init and len(node.input) > 2:
            zp = init.get(node.input[2])
            if zp is None or zp.data_type != onnx.TensorProto.INT8 or onnx.numpy_helper.to_array(zp).any():
                return False
    return True


def _asked_pairs(
    graph: onnx.GraphProto, pairs: dict[str, list[str]], quantized: set[str], floated: set[str]
) -> set[str]:
    """The quantized tensors some quantized op still asks for once ``floated`` layers ask for nothing.

    ONNX Runtime quantizes a tensor when its producer or a reader asks; followers ask only for their
    output, and only while their input is quantized, so dropping one pair can drop the next (fixed point).
    """
    producer, readers = _producers(graph), _consumers(graph)
    source_of = {dq: src for src, dqs in pairs.items() for dq in dqs}
    alive = set(pairs)

    def active(node: onnx.NodeProto | None) -> bool:
        return node is not None and node.name in quantized and node.name not in floated

    def asks_for_outputs(node: onnx.NodeProto | None) -> bool:
        if not active(node):
            return False
        follows = _FOLLOWED.get(node.op_type, (0,)) if node.op_type in FOLLOWERS else ()
        return all(source_of.get(node.input[i]) in alive for i in follows if i < len(node.input))

    changed = True
    while changed:
        changed = False
        for src in sorted(alive):
            readers_ask = any(
                active(r) and r.op_type not in FOLLOWERS for dq in pairs[src] for r in readers.get(dq, [])
            )
            if not readers_ask and not asks_for_outputs(producer.get(src)):
                alive.discard(src)
                changed = True
    return alive


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes nobody reads (to a fixed point, graph outputs kept), then unread initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        keep = [n for n in graph.node if any(o in read for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    read = {i for n in graph.node for i in n.input} | outputs
    init = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(init)
    alive = read | {o for n in graph.node for o in n.output}
    info = [v for v in graph.value_info if v.name in alive]
    del graph.value_info[:]
    graph.value_info.extend(info)


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Topological order, stable where the original order already works (rebuilt nodes sit at the end)."""
    available = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        waiting = []
        for node in pending:  # one sweep places everything whose inputs exist by then
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise UsageError(
                "the edited graph has a cycle or a dangling input; the FP32 model does not match"
            )
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)


def dequantize_layers(
    qdq: onnx.ModelProto, fp32: onnx.ModelProto, layers: Sequence[str], mode: str = "exclude"
) -> onnx.ModelProto:
    """A copy of ``qdq`` with each named layer running in float.

    ``fp32`` is the model the Q/DQ one was quantized from, after the quantizer's pre-processing
    (``ort_quant.prepare_for_quantization``). ``mode="exclude"`` gives what ONNX Runtime's
    ``nodes_to_exclude`` would: float
    weights and bias, and the Q/DQ pairs around the layers removed where no quantized op still needs them.
    ``mode="float"`` also feeds the named layers float inputs whatever their neighbours need (the most that
    floating a layer can give, though the quantizer would keep those inputs quantized).
    """
    if mode not in MODES:
        raise UsageError(f"unknown sensitivity mode '{mode}'; use one of {', '.join(MODES)}")
    surgeon = _Surgeon(qdq, fp32)
    floated: set[str] = set()
    for name in layers:
        layer = surgeon.nodes.get(name)
        if layer is None or layer.op_type not in WEIGHTED_OPS:
            known = ", ".join(weighted_layers(qdq)[:5])
            raise UsageError(
                f"'{name}' is not a weighted layer of the Q/DQ model; known layers include {known}"
            )
        twin = surgeon.fp32_nodes.get(name)
        if twin is None or twin.op_type != layer.op_type or len(twin.input) != len(layer.input):
            raise UsageError(
                f"layer '{name}' is missing or different in the FP32 model; pass the FP32 model the Q/DQ "
                "model was quantized from"
            )
        _check_weight_shape(qdq.graph, layer, twin, fp32.graph)
        surgeon.float_weights(layer, twin)
        if mode == "float":
            surgeon.float_activations(layer, twin)
        floated.add(name)
    surgeon.drop_orphan_pairs(floated)
    return surgeon.finish()


def _check_weight_shape(
    qgraph: onnx.GraphProto, layer: onnx.NodeProto, twin: onnx.NodeProto, fgraph: onnx.GraphProto
) -> None:
    """Refuse an FP32 model whose weight differs in shape from the quantized one (a different model)."""
    q_init = {t.name: t for t in qgraph.initializer}
    f_init = {t.name: t for t in fgraph.initializer}
    weight = f_init.get(twin.input[1]) if len(twin.input) > 1 else None
    dq = _producers(qgraph).get(layer.input[1]) if len(layer.input) > 1 else None
    stored = q_init.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if weight is not None and stored is not None and list(weight.dims) != list(stored.dims):
        raise UsageError(
            f"layer '{layer.name}' has weights {list(stored.dims)} in the Q/DQ model but {list(weight.dims)} "
            "in the FP32 model; pass the FP32 model it was quantized from"
        )


@dataclass
class LayerSensitivity:
    layer: str
    #: output error with only this layer in float (see ``output_error``)
    error: float
    #: fraction of the full-INT8 error that floating this layer removes (1 = all of it)
    recovered: float


class _Reference:
    """FP32 outputs on the ranking tensors, computed once, and the error of a candidate against them."""

    def __init__(
        self,
        fp32: onnx.ModelProto,
        input_name: str,
        tensors: Sequence[np.ndarray],
        threads: int,
        disabled_optimizers: Sequence[str],
    ) -> None:
        self.input_name, self.tensors, self.threads = input_name, list(tensors), threads
        self.disabled = list(disabled_optimizers)
        self.outputs = self.run(fp32)
        self.variance = [
            max(float(np.var(np.concatenate([o.ravel() for o in out]).astype(np.float64))), 1e-12)
            for out in self.outputs
        ]

    def run(self, model: onnx.ModelProto) -> list[list[np.ndarray]]:
        """Per graph output, the output for each tensor."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
        session = ort.InferenceSession(
            model.SerializeToString(),
            opts,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=self.disabled,
        )
        runs = [session.run(None, {self.input_name: t}) for t in self.tensors]
        return [[r[k] for r in runs] for k in range(len(session.get_outputs()))]

    def error(self, model: onnx.ModelProto) -> float:
        got = self.run(model)
        return float(
            sum(
                np.mean([np.mean((g.astype(np.float64) - r) ** 2) for g, r in zip(gs, rs, strict=True)]) / v
                for gs, rs, v in zip(got, self.outputs, self.variance, strict=True)
            )
        )


def output_error(
    model: onnx.ModelProto,
    fp32: onnx.ModelProto,
    input_name: str,
    tensors: Sequence[np.ndarray],
    threads: int = 0,
    disabled_optimizers: Sequence[str] = DISABLED_OPTIMIZERS,
) -> float:
    """Sum over graph outputs of the mean squared difference to FP32, each divided by the FP32 variance."""
    return _Reference(fp32, input_name, tensors, threads, disabled_optimizers).error(model)


def rank_layers(
    qdq_path: Path,
    fp32_path: Path,
    input_name: str,
    tensors: Sequence[np.ndarray],
    layers: Sequence[str] | None = None,
    progress: bool = False,
    mode: str = "exclude",
    threads: int = 0,
    disabled_optimizers: Sequence[str] = DISABLED_OPTIMIZERS,
    subpixel_deconv: bool = True,
) -> tuple[float, list[LayerSensitivity]]:
    """The full-INT8 error and every layer's sensitivity, most sensitive (most error recovered) first.

    ``fp32_path`` is the ONNX given to ``quantize_onnx``; it is pre-processed the same way here
    (``subpixel_deconv``: as the quantization config that made ``qdq_path`` says).
    ``layers`` defaults to every quantized layer; ``threads`` 0 lets ONNX Runtime choose. Sessions use
    ORT's default optimization level minus ``disabled_optimizers`` (see ``DISABLED_OPTIMIZERS``).
    """
    if not tensors:
        raise UsageError("sensitivity analysis needs at least one input tensor")
    qdq = onnx.load(str(qdq_path))
    fp32 = prepare_for_quantization(Path(fp32_path), subpixel_deconv)
    reference = _Reference(fp32, input_name, tensors, threads, disabled_optimizers)
    full = reference.error(qdq)
    names = list(quantized_layers(qdq) if layers is None else layers)
    results = []
    for name in _track(names, progress):
        error = reference.error(dequantize_layers(qdq, fp32, [name], mode=mode))
        results.append(LayerSensitivity(name, error, (full - error) / full if full > 0 else 0.0))
    results.sort(key=lambda s: s.error)
    return full, results


def _track(names: list[str], progress: bool) -> Iterable[str]:
    if not progress:
        return names
    from rich.progress import track

    return track(names, description="layer sensitivity")
