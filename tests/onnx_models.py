"""Tiny ONNX graphs with known outputs, built with onnx.helper, for runtime and bundle tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_sigmoid_model(
    path: Path, channels: int = 4, size: int = 8, seed: int = 0
) -> tuple[Path, np.ndarray]:
    """images (1,3,S,S) -> y = conv1x1(images) + b, z = sigmoid(y). Returns the path and the weight."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(channels, 3, 1, 1)).astype(np.float32)
    b = rng.normal(size=(channels,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "w", "b"], ["y"]),
            helper.make_node("Sigmoid", ["y"], ["z"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, channels, size, size]),
        ],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path, np.concatenate([w.reshape(channels, 3), b[:, None]], axis=1)


def conv_sigmoid_reference(x: np.ndarray, wb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w, b = wb[:, :3], wb[:, 3]
    y = np.einsum("oc,nchw->nohw", w, x) + b[None, :, None, None]
    return y, 1 / (1 + np.exp(-y))
