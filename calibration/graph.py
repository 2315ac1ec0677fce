"""ONNX graph facts the quantizers need: which nodes carry coordinates, and which layers can be quantized.

Every family's graph ends at raw head outputs (see DESIGN.md): a last convolution per output, then only
reshapes and transposes. Those last convolutions regress offsets, box sides and heatmap peaks, where an
INT8 step of a few percent of the range moves a keypoint by pixels. They stay in float on every target;
the rest of the network is what INT8 is for.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

#: operators that hold weights: the layers sensitivity analysis ranks and the gate can keep in float
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def float_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes between each graph output and its nearest weighted layer, that layer included.

    Walks back from every output through whatever follows the heads (reshapes, transposes, activations);
    stops at (and includes) the first weighted layer on each path. Node names are what
    ``nodes_to_exclude`` (ONNX Runtime) and NNCF's ignored scope take.
    """
    graph = model.graph
    producer = _producers(graph)
    initializers = {t.name for t in graph.initializer}
    tail: list[str] = []
    seen: set[str] = set()
    stack = [o.name for o in graph.output]
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        tail.append(node.name)
        if node.op_type not in WEIGHTED_OPS:
            stack.extend(i for i in node.input if i and i not in initializers)
    return tail


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
