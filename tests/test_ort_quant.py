"""ONNX Runtime Q/DQ calibration: the mean-of-per-image-ranges estimator computes what it says, and its
ranges (not ONNX Runtime's global extremes) are what the quantized graph's scales come from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")

from edgepose.calibration.ort_quant import (  # noqa: E402
    OrtQuantConfig,
    entropy_ranges,
    mean_minmax_ranges,
    quantize_onnx,
)

from edgepose.errors import UsageError  # noqa: E402

SIZE = 8


def _two_convs(path: Path) -> tuple[Path, np.ndarray]:
    """images -> a = conv1x1(images) -> s = sigmoid(a) -> out = conv1x1(s): conv2 is the float tail.
    conv1 reads the image, a stem: the range tests quantize it (``float_stem=False``)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(4, 3, 1, 1)).astype(np.float32)
    w2 = rng.normal(size=(2, 4, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "w1"], ["a"], name="conv1"),
            helper.make_node("Sigmoid", ["a"], ["s"], name="sig"),
            helper.make_node("Conv", ["s", "w2"], ["out"], name="conv2"),
        ],
        "two-convs",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, SIZE, SIZE])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path, w1.reshape(4, 3)


def _images(n: int) -> list[np.ndarray]:
    """Images whose extremes differ a lot from one to the next: one outlier image stretches MinMax."""
    rng = np.random.default_rng(1)
    out = [rng.uniform(0, 1, (1, 3, SIZE, SIZE)).astype(np.float32) for _ in range(n)]
    out[0] *= 8.0
    return out


def _scale_of(model: onnx.ModelProto, tensor: str) -> float:
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return float(init[q.input[1]])


def test_ranges_are_the_mean_of_each_images_extremes(tmp_path):
    path, w1 = _two_convs(tmp_path / "m.onnx")
    images = _images(5)
    ranges = mean_minmax_ranges(onnx.load(str(path)), "images", images)
    a = [np.einsum("oc,nchw->nohw", w1, x) for x in images]
    s = [1 / (1 + np.exp(-v)) for v in a]
    for name, values in (("images", images), ("a", a), ("s", s)):
        lo, hi = ranges[name]
        assert lo == pytest.approx(np.mean([v.min() for v in values]), rel=1e-5)
        assert hi == pytest.approx(np.mean([v.max() for v in values]), rel=1e-5)


def test_a_small_memory_budget_takes_more_passes_for_the_same_ranges(tmp_path, monkeypatch):
    import onnxruntime as ort
    from edgepose.calibration import ort_quant

    path, _ = _two_convs(tmp_path / "m.onnx")
    images = _images(3)
    sessions = []
    real = ort.InferenceSession

    def counting(*args, **kwargs):
        sessions.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    model = onnx.load(str(path))
    one_pass = ort_quant.mean_minmax_ranges(model, "images", images)
    assert len(sessions) == 1
    # Each tensor is 3 or 4 x 8 x 8 floats (768-1024 bytes): a 1,100-byte budget fits one per pass.
    per_tensor = ort_quant.mean_minmax_ranges(model, "images", images, max_bytes=1100)
    assert len(sessions) == 1 + 4  # images, a, s, out
    assert per_tensor.keys() == one_pass.keys()
    for name, (lo, hi) in one_pass.items():
        assert per_tensor[name] == pytest.approx((lo, hi), rel=1e-6)


def test_quantized_scales_come_from_the_mean_ranges_not_the_extremes(tmp_path):
    path, w1 = _two_convs(tmp_path / "m.onnx")
    images = _images(5)
    mean = quantize_onnx(
        path, tmp_path / "mean.onnx", "images", images, OrtQuantConfig(float_stem=False, method="meanminmax")
    )
    extreme = quantize_onnx(
        path, tmp_path / "ext.onnx", "images", images, OrtQuantConfig(float_stem=False, method="minmax")
    )
    a = [np.einsum("oc,nchw->nohw", w1, x) for x in images]
    lo = min(float(np.mean([v.min() for v in a])), 0.0)
    hi = max(float(np.mean([v.max() for v in a])), 0.0)
    got = _scale_of(onnx.load(str(mean.path)), "a")
    assert got == pytest.approx((hi - lo) / 255, rel=1e-4)  # uint8 asymmetric over the mean range
    wide = _scale_of(onnx.load(str(extreme.path)), "a")
    all_a = np.concatenate([v.ravel() for v in a])
    assert wide == pytest.approx((max(all_a.max(), 0) - min(all_a.min(), 0)) / 255, rel=1e-4)
    assert got < wide / 2  # the outlier image no longer sets the step for every image
    assert mean.summary()["method"] == "meanminmax"


def test_entropy_ranges_clip_rare_outliers_and_keep_the_seen_floor(tmp_path):
    """KL-optimal ranges with enough histogram bins to choose from: a few outlier pixels do not set the
    range (ONNX Runtime's own Entropy through quantize_static would give MinMax's), and a tensor that is
    never negative keeps its floor instead of the symmetric threshold's -t."""
    path, _ = _two_convs(tmp_path / "m.onnx")
    rng = np.random.default_rng(3)
    # activation-like: non-negative, most values small, a long tail (exponential, max ~1.2)
    images = [rng.exponential(0.2, (1, 3, SIZE, SIZE)).astype(np.float32) for _ in range(6)]
    seen = np.concatenate([x.ravel() for x in images])
    bulk_max = float(seen.max())
    images[2][0, :, 0, :2] = 50.0  # six outlier values among 1,152
    ranges = entropy_ranges(onnx.load(str(path)), "images", images)
    lo, hi = ranges["images"]
    assert lo == pytest.approx(seen.min(), abs=1e-6)  # the floor seen, not -threshold
    assert 0.5 * bulk_max <= hi <= 0.2 * 50.0, (hi, bulk_max)  # the bulk kept, the 50s clipped
    q = quantize_onnx(
        path, tmp_path / "e.onnx", "images", images, OrtQuantConfig(float_stem=False, method="entropy")
    )
    mm = quantize_onnx(
        path, tmp_path / "mm.onnx", "images", images, OrtQuantConfig(float_stem=False, method="minmax")
    )
    got = _scale_of(onnx.load(str(q.path)), "images")
    assert got == pytest.approx((hi - min(lo, 0.0)) / 255, rel=1e-4)
    assert got < _scale_of(onnx.load(str(mm.path)), "images") / 5


def test_unknown_method_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown calibration method 'kl'.*meanminmax"):
        OrtQuantConfig(method="kl")


def test_gate_rounds_prepare_and_measure_the_ranges_once(tmp_path, monkeypatch):
    from edgepose.calibration import ort_quant, quantize

    path, _ = _two_convs(tmp_path / "m.onnx")
    calls = []
    real = ort_quant.mean_minmax_ranges
    counting = lambda *a, **k: calls.append(1) or real(*a, **k)  # noqa: E731
    monkeypatch.setitem(ort_quant.RANGE_ESTIMATORS, "meanminmax", counting)
    prepares = []
    real_prepare = quantize.prepare_for_quantization

    def counting_prepare(path, subpixel_deconv=True):
        prepares.append(1)
        return real_prepare(path, subpixel_deconv)

    for module in (quantize, ort_quant):
        monkeypatch.setattr(module, "prepare_for_quantization", counting_prepare)
    req = quantize.Int8Request("cpu", path, tmp_path, "images", (SIZE, SIZE), {}, np.ones(1), None)
    images = _images(3)
    first = req.quantize(images, tmp_path / "r0.onnx", OrtQuantConfig(float_stem=False))
    again = req.quantize(images, tmp_path / "r1.onnx", OrtQuantConfig(float_stem=False), exclude=["sig"])
    assert len(calls) == 1
    assert _scale_of(onnx.load(str(first.path)), "a") == _scale_of(onnx.load(str(again.path)), "a")
    req.quantize(
        images, tmp_path / "mm.onnx", OrtQuantConfig(float_stem=False, method="minmax")
    )  # needs no ranges
    assert len(calls) == 1
    assert prepares == [1]  # every round quantizes the one prepared graph


def test_with_mean_ranges_for_every_tensor_orts_own_pass_reads_one_image_for_the_same_graph(
    tmp_path, monkeypatch
):
    from edgepose.calibration import ort_quant

    path, _ = _two_convs(tmp_path / "m.onnx")
    images = _images(5)[::-1]  # the outlier last: ORT's MinMax on the first image alone would differ
    fed = []
    real_reader, real_floats = ort_quant._FeedReader, ort_quant._float_activations

    def counting(name, tensors):
        tensors = list(tensors)
        fed.append(len(tensors))
        return real_reader(name, tensors)

    monkeypatch.setattr(ort_quant, "_FeedReader", counting)
    one = quantize_onnx(path, tmp_path / "one.onnx", "images", images, OrtQuantConfig(float_stem=False))
    # a tensor the mean ranges lack keeps ORT's pass on every image
    monkeypatch.setattr(ort_quant, "_float_activations", lambda *a: real_floats(*a) | {"unmeasured"})
    full = quantize_onnx(path, tmp_path / "full.onnx", "images", images, OrtQuantConfig(float_stem=False))
    assert fed == [1, 5]
    a, b = onnx.load(str(one.path)).graph, onnx.load(str(full.path)).graph
    assert [n.op_type for n in a.node] == [n.op_type for n in b.node]
    assert len(a.initializer) == len(b.initializer) > 0
    for x, y in zip(a.initializer, b.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(x), numpy_helper.to_array(y))


def _stem_graph(first_channels: int, preprocess: bool) -> onnx.ModelProto:
    """[Sub(mean) ->] conv_a (first_channels -> 4) -> SiLU (Sigmoid, Mul) -> conv_b -> Relu -> conv_c (the
    float tail)."""
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, first_channels, 3, 3)).astype(np.float32), "wa"),
        numpy_helper.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32), "wb"),
        numpy_helper.from_array(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), "wc"),
        numpy_helper.from_array(np.full((1, first_channels, 1, 1), 0.5, np.float32), "mean"),
    ]
    nodes = [helper.make_node("Sub", ["images", "mean"], ["x"], name="sub")] if preprocess else []
    nodes += [
        helper.make_node("Conv", ["x" if preprocess else "images", "wa"], ["a"], name="conv_a", pads=[1] * 4),
        helper.make_node("Sigmoid", ["a"], ["sa"], name="sig_a"),
        helper.make_node("Mul", ["a", "sa"], ["ya"], name="mul_a"),
        helper.make_node("Conv", ["ya", "wb"], ["b"], name="conv_b", pads=[1] * 4),
        helper.make_node("Relu", ["b"], ["yb"], name="relu_b"),
        helper.make_node("Conv", ["yb", "wc"], ["out"], name="conv_c"),
    ]
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, first_channels, SIZE, SIZE])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, SIZE, SIZE])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_stem_is_the_convolution_on_the_image_with_its_preprocessing_and_activation():
    from edgepose.calibration.graph import float_stem

    assert float_stem(_stem_graph(3, preprocess=False)) == ["conv_a", "sig_a", "mul_a"]
    assert float_stem(_stem_graph(3, preprocess=True)) == ["sub", "conv_a", "sig_a", "mul_a"]
    assert float_stem(_stem_graph(1, preprocess=True)) == ["sub", "conv_a", "sig_a", "mul_a"]  # gray
    assert float_stem(_stem_graph(8, preprocess=False)) == []  # not an image: quantized as any layer


def test_onnx_runtimes_recipe_keeps_the_stem_in_float_and_says_so(tmp_path):
    path = tmp_path / "stem.onnx"
    model = _stem_graph(3, preprocess=True)
    model.ir_version = 8
    onnx.save(model, str(path))
    images = [np.random.default_rng(i).uniform(0, 1, (1, 3, SIZE, SIZE)).astype(np.float32) for i in range(4)]
    for float_stem, want in (
        (True, {"conv_a": False, "conv_b": True, "conv_c": False}),  # conv_c: the float tail
        (False, {"conv_a": True, "conv_b": True, "conv_c": False}),
    ):
        q = quantize_onnx(
            path, tmp_path / f"q{float_stem}.onnx", "images", images, OrtQuantConfig(float_stem=float_stem)
        )
        out = onnx.load(str(q.path))
        producer = {o: n for n in out.graph.node for o in n.output}
        convs = {n.name: producer.get(n.input[1]) for n in out.graph.node if n.op_type == "Conv"}
        got = {name: p is not None and p.op_type == "DequantizeLinear" for name, p in convs.items()}
        assert got == want
        assert q.summary().get("float_stem_layers", []) == (
            ["sub", "conv_a", "sig_a", "mul_a"] if float_stem else []
        )
