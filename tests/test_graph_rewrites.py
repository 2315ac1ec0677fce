"""The sub-pixel rewrite of stride-2 transposed convolutions: exact against ONNX Runtime's own
ConvTranspose (every phase, every border pixel, odd sizes), and left alone where it would not be exact."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from edgepose.calibration.graph_rewrites import subpixel_deconvolutions, subpixel_weights  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

CIN, COUT, H, W = 6, 5, 7, 10


def _deconv_model(kernel: int, pads: list[int], bias: bool, seed: int = 0, **attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((CIN, COUT, kernel, kernel)).astype(np.float32), "w")
    ]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(COUT).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node(
        "ConvTranspose",
        inputs,
        ["y"],
        name="up",
        kernel_shape=[kernel, kernel],
        strides=[2, 2],
        pads=pads,
        **attrs,
    )
    relu = helper.make_node("Relu", ["y"], ["out"], name="relu")  # a consumer: outputs keep their names
    graph = helper.make_graph(
        [node, relu],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, CIN, H, W])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, COUT, None, None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    ("kernel", "pads", "output_padding"),
    [(4, [1, 1, 1, 1], None), (3, [1, 1, 1, 1], [1, 1]), (2, [0, 0, 0, 0], None)],
)
@pytest.mark.parametrize("bias", [True, False])
def test_subpixel_form_equals_the_transposed_convolution(kernel, pads, output_padding, bias):
    attrs = {"output_padding": output_padding} if output_padding else {}
    model = _deconv_model(kernel, pads, bias, seed=kernel, **attrs)
    rewritten, replaced = subpixel_deconvolutions(model)
    assert replaced == ["up"]
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops == ["Conv", "DepthToSpace", "Relu"]
    assert {t.name for t in rewritten.graph.initializer}.isdisjoint({"w", "b"})  # the old weights are gone
    onnx.checker.check_model(rewritten)
    x = np.random.default_rng(1).standard_normal((2, CIN, H, W)).astype(np.float32)
    want, got = _run(model, x), _run(rewritten, x)
    assert got.shape == want.shape == (2, COUT, 2 * H, 2 * W)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose", "Relu"]  # the input is not modified


def test_subpixel_weights_place_each_tap_in_its_phase():
    """A kernel-4 deconvolution with one non-zero tap (ky, kx) = (3, 2): output row phase 0 reads it at
    input offset -1 (3x3 row 0), column phase 1 at offset 0 (3x3 column 1), nowhere else."""
    w = np.zeros((1, 1, 4, 4), np.float32)
    w[0, 0, 3, 2] = 7.0
    w3 = subpixel_weights(w, pad=1)
    assert w3.shape == (4, 1, 3, 3)
    nonzero = np.argwhere(w3 != 0)
    assert nonzero.tolist() == [[1, 0, 0, 1]]  # channel 0 * 4 + ry 0 * 2 + rx 1
    assert w3[1, 0, 0, 1] == 7.0


@pytest.mark.parametrize(
    ("kernel", "pads", "attrs"),
    [
        (4, [1, 1, 1, 1], {"group": 1, "dilations": [2, 2]}),  # dilated
        (4, [0, 0, 0, 0], {}),  # output 2H + 2: not a plain doubling
        (4, [1, 1, 2, 2], {}),  # asymmetric padding
    ],
)
def test_what_is_not_exactly_a_doubling_stays_as_it_is(kernel, pads, attrs):
    model = _deconv_model(kernel, pads, bias=False, **attrs)
    rewritten, replaced = subpixel_deconvolutions(model)
    assert replaced == []
    assert [n.op_type for n in rewritten.graph.node] == ["ConvTranspose", "Relu"]


def test_large_kernels_are_refused_by_the_weight_rewrite():
    with pytest.raises(ValueError, match="3x3 neighbourhood"):
        subpixel_weights(np.zeros((1, 1, 8, 8), np.float32), pad=3)
