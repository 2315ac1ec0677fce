"""Exact ONNX rewrites that let ONNX Runtime quantize what it otherwise runs in float.

ONNX Runtime has no INT8 transposed convolution: in a Q/DQ model a ``ConvTranspose`` is dequantized, run
in float and quantized again, and on sahr-n (HigherHRNet's stride-2 deconvolution) that one layer was a
fifth of the INT8 frame. A stride-2 transposed convolution is exactly a 3x3 convolution with four output
phases followed by ``DepthToSpace`` (the sub-pixel form), which quantizes like every other convolution.

The FP32 ONNX stays as exported, one file for every target (OpenVINO and TensorRT run the transposed
form faster, and TensorRT quantizes it); only the graph handed to ONNX Runtime's quantizer is rewritten.
``benchmarks/sahr_graph_forms.py`` measures both forms.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

SUFFIX = "_subpixel"


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _phase_taps(kernel: int, pad: int) -> np.ndarray | None:
    """taps[r, j]: the kernel index that output phase ``r`` reads at 3x3 position ``j`` (input offset
    ``j - 1``), -1 where it reads nothing; None when a phase would need an offset beyond one pixel.

    Output pixel ``2m + r`` of a stride-2 transposed convolution sums input pixels ``m + d`` with kernel
    tap ``r + pad - 2d``.
    """
    taps = np.full((2, 3), -1)
    for r in range(2):
        for d in range(-kernel, kernel + 1):
            k = r + pad - 2 * d
            if 0 <= k < kernel:
                if abs(d) > 1:
                    return None
                taps[r, d + 1] = k
    return taps


def subpixel_weights(weight: np.ndarray, pad: int) -> np.ndarray:
    """(C_in, C_out, k, k) transposed-convolution weights -> (4 C_out, C_in, 3, 3) convolution weights
    whose output channel ``c * 4 + ry * 2 + rx`` is phase (ry, rx) of output channel ``c``: the order
    ``DepthToSpace`` (mode CRD, block 2) and PyTorch's ``PixelShuffle`` interleave."""
    cin, cout, k, _ = weight.shape
    taps = _phase_taps(k, pad)
    if taps is None:
        raise ValueError(f"a {k}x{k} kernel with padding {pad} reads beyond the 3x3 neighbourhood")
    valid = taps >= 0
    idx = np.where(valid, taps, 0)
    w = weight[:, :, idx][:, :, :, :, idx]  # (C_in, C_out, ry, jy, rx, jx)
    mask = valid[:, :, None, None] & valid[None, None]
    w = w * mask.astype(weight.dtype)
    return np.ascontiguousarray(w.transpose(1, 2, 4, 0, 3, 5).reshape(4 * cout, cin, 3, 3))


def _rewritable(node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> int | None:
    """The padding of a ConvTranspose this module can rewrite exactly, or None."""
    if node.op_type != "ConvTranspose" or len(node.input) < 2 or node.input[1] not in weights:
        return None
    a = _attrs(node)
    w = weights[node.input[1]]
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        return None
    k = w.shape[2]
    pads = list(a.get("pads", [0, 0, 0, 0]))
    out_pad = list(a.get("output_padding", [0, 0]))
    plain = (
        list(a.get("strides", [1, 1])) == [2, 2]
        and a.get("group", 1) == 1
        and list(a.get("dilations", [1, 1])) == [1, 1]
        and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        and "output_shape" not in a
        and pads[0] == pads[1]
        and pads[2] == pads[3]
        and out_pad[0] == out_pad[1]
    )
    # exactly double the size: (H - 1) * 2 + k + output_padding - pad_begin - pad_end == 2H
    if not plain or k + out_pad[0] - pads[0] - pads[2] != 2 or _phase_taps(k, pads[0]) is None:
        return None
    return pads[0]


def subpixel_deconvolutions(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with every rewritable stride-2 ConvTranspose replaced by Conv + DepthToSpace;
    also the names of the nodes replaced. The new Conv is named ``<ConvTranspose name>_subpixel``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    replaced: list[str] = []
    for node in graph.node:
        pad = _rewritable(node, weights)
        if pad is None:
            nodes.append(node)
            continue
        base = node.name or f"ConvTranspose_{len(replaced)}"
        w = weights[node.input[1]]
        inputs = [node.input[0], base + SUFFIX + "_W"]
        graph.initializer.append(numpy_helper.from_array(subpixel_weights(w, pad), inputs[1]))
        if len(node.input) > 2 and node.input[2]:
            bias = np.repeat(weights[node.input[2]], 4)
            inputs.append(base + SUFFIX + "_B")
            graph.initializer.append(numpy_helper.from_array(bias, inputs[2]))
        phases = base + SUFFIX + "_phases"
        nodes.append(
            helper.make_node(
                "Conv", inputs, [phases], name=base + SUFFIX, kernel_shape=[3, 3], pads=[1, 1, 1, 1]
            )
        )
        nodes.append(
            helper.make_node(
                "DepthToSpace",
                [phases],
                list(node.output),
                name=base + SUFFIX + "_shuffle",
                blocksize=2,
                mode="CRD",
            )
        )
        replaced.append(node.name)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return out, replaced
