"""ONNX graph facts the quantizers need: which nodes carry coordinates, and which layers can be quantized.

Every family's graph ends at raw head outputs (see DESIGN.md): a last convolution per output, then only
reshapes and transposes. Those last convolutions regress offsets, box sides and heatmap peaks, where an
INT8 step of a few percent of the range moves a keypoint by pixels. They stay in float on every target,
as do the sampling grids of DEKR's adaptive convolutions and the convolutions that predict them; the rest
of the network is what INT8 is for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import onnx

#: operators that hold weights: the layers sensitivity analysis ranks and the gate can keep in float
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


#: layers that end a sampling grid's walk back: the learned convolution that predicts the displacements
#: (a MatMul there is a constant change of units and is walked through)
GRID_SOURCE_OPS = ("Conv", "ConvTranspose", "Gemm")


def float_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that carry coordinates: they stay in float on every target.

    Two kinds of path, each walked back from where coordinates are read, through whatever carries them
    (reshapes, transposes, activations, adds), up to and including the layer that computes them:

    - from every graph output to its nearest weighted layer (the heads' regressions);
    - from the ``grid`` input of every ``GridSample`` (DEKR's adaptive convolution) to the convolution
      that predicts the displacements. A uint8 grid would move every tap by up to half a step of its
      range, about a third of a pixel at stride 4, and no runtime has an INT8 GridSample to gain from it.

    and one path walked forward: from every ``GridSample`` through its samples to the layer that applies
    the kernel to them (a batched MatMul). No runtime here has an INT8 GridSample or runs that MatMul in
    INT8 (ONNX Runtime folds its weight's DequantizeLinear and computes in float), so a Q/DQ pair on the
    nine-tap samples, the largest tensor in the graph, would be pure cost.

    Node names are what ``nodes_to_exclude`` (ONNX Runtime) and NNCF's ignored scope take.
    """
    graph = model.graph
    outputs = _walk_back(graph, [o.name for o in graph.output], WEIGHTED_OPS)
    samplers = [n for n in graph.node if n.op_type == "GridSample" and len(n.input) > 1]
    grids = _walk_back(graph, [n.input[1] for n in samplers], GRID_SOURCE_OPS)
    samples = _walk_forward(graph, samplers, WEIGHTED_OPS)
    return list(dict.fromkeys(outputs + grids + samples))


#: the most input channels a convolution reading the image can have (gray, RGB, RGBA)
STEM_MAX_CHANNELS = 4
#: what may stand between the image input and the first convolution (mean and std folded in elementwise)
PREPROCESS_OPS = ("Sub", "Add", "Mul", "Div", "Cast")
#: activations that follow a convolution (SiLU is a Sigmoid and a Mul reading the convolution's output)
ACTIVATION_OPS = ("Relu", "Sigmoid", "Mul", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish")


def float_stem(model: onnx.ModelProto) -> list[str]:
    """Names of the stem: every convolution that reads the image itself (a graph input with at most
    ``STEM_MAX_CHANNELS`` channels, through elementwise pre-processing only), that pre-processing, and the
    activation right after each such convolution.

    An ONNX Runtime recipe keeps them in float: its INT8 convolution on 3 input channels is several times
    slower than its FP32 one (blocked NCHWc kernels), while the layers after it gain from INT8 (README's
    INT8 table; kapao-n's 6x6 stem took 6.5 ms in INT8 against 2.5 ms in FP32, one thread).
    """
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    stem: list[str] = []
    frontier = [i.name for i in graph.input if i.name not in weights]
    seen: set[str] = set()
    while frontier:
        tensor = frontier.pop()
        for node in consumers.get(tensor, []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in PREPROCESS_OPS:
                stem.append(node.name)
                frontier.extend(node.output)
            elif node.op_type == "Conv" and node.input[0] == tensor and node.input[1] in weights:
                if weights[node.input[1]].dims[1] <= STEM_MAX_CHANNELS:
                    stem.append(node.name)
                    stem += [c.name for c in consumers.get(node.output[0], []) if c.op_type in ACTIVATION_OPS]
    return list(dict.fromkeys(stem))


def _walk_back(graph: onnx.GraphProto, tensors: list[str], stop_ops: Iterable[str]) -> list[str]:
    """The nodes from ``tensors`` back to the first ``stop_ops`` node on each path, that node included."""
    producer = _producers(graph)
    initializers = {t.name for t in graph.initializer}

    def inputs(node: onnx.NodeProto) -> list[onnx.NodeProto | None]:
        return [producer.get(i) for i in node.input if i and i not in initializers]

    return _walk([producer.get(t) for t in tensors], inputs, stop_ops)


def _walk_forward(graph: onnx.GraphProto, starts: list[onnx.NodeProto], stop_ops: Iterable[str]) -> list[str]:
    """``starts`` and the nodes after them up to the first ``stop_ops`` node on each path, that node
    included."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def outputs(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        return [c for out in node.output for c in consumers.get(out, ())]

    return _walk(starts, outputs, stop_ops)


def _walk(
    starts: list[onnx.NodeProto | None],
    neighbours: Callable[[onnx.NodeProto], list[onnx.NodeProto | None]],
    stop_ops: Iterable[str],
) -> list[str]:
    """Depth-first from ``starts`` along ``neighbours``, not past a ``stop_ops`` node: names, first visit
    order (``None`` is a graph input or a missing producer, and ends its path)."""
    stops = set(stop_ops)
    found: list[str] = []
    seen: set[str] = set()
    stack = list(starts)
    while stack:
        node = stack.pop()
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        found.append(node.name)
        if node.op_type not in stops:
            stack.extend(neighbours(node))
    return found


def weighted_layers(model: onnx.ModelProto, exclude: Iterable[str] = ()) -> list[str]:
    """Names of the weighted layers in graph order, minus ``exclude``."""
    skip = set(exclude)
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS and n.name not in skip]


def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give unnamed nodes stable names (op type + index): exclusion lists and manifests refer to them."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    return model
