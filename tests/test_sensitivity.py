"""Layer sensitivity by graph surgery on real Q/DQ models made by ONNX Runtime from small torch nets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from edgepose.calibration.graph import weighted_layers  # noqa: E402
from edgepose.calibration.ort_quant import OrtQuantConfig, prepare_for_quantization, quantize_onnx  # noqa: E402
from edgepose.calibration.sensitivity import (  # noqa: E402
    dequantize_layers,
    output_error,
    quantized_layers,
    rank_layers,
)
from edgepose.runtimes.onnxruntime import DISABLED_OPTIMIZERS  # noqa: E402

from edgepose.errors import UsageError  # noqa: E402

SIZE = 32


class _Net(torch.nn.Module):
    """Four quantizable convolutions (a residual add among them) and two float-tail heads."""

    def __init__(self, act: torch.nn.Module) -> None:
        super().__init__()
        conv = torch.nn.Conv2d
        self.c1 = conv(3, 8, 3, padding=1)
        self.c2, self.c3 = conv(8, 8, 3, padding=1), conv(8, 8, 3, padding=1)
        self.c4, self.h1, self.h2 = conv(8, 8, 1), conv(8, 4, 1), conv(8, 2, 1)
        self.act = act

    def forward(self, x):
        a = self.act(self.c1(x))
        b = self.act(self.c3(self.act(self.c2(a)))) + a
        d = self.act(self.c4(b))
        return self.h1(d), self.h2(d)


class _Chain(torch.nn.Module):
    """Conv-ReLU chain with a max-pool: ONNX Runtime deletes quantized ReLUs (renaming the tensors before
    them), and only quantizes the max-pool when its input is quantized."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3)
        self.c3, self.head = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 3, 1)

    def forward(self, x):
        y = torch.relu(torch.nn.functional.max_pool2d(self.c2(torch.relu(self.c1(x))), 2))
        return self.head(self.c3(y))


def _export(net: torch.nn.Module, path: Path, outputs: list[str]) -> Path:
    with torch.no_grad():
        torch.onnx.export(
            net.eval(),
            (torch.zeros(1, 3, SIZE, SIZE),),
            str(path),
            input_names=["images"],
            output_names=outputs,
            dynamo=False,
            opset_version=17,
        )
    return path


def _tensors(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(1, 3, SIZE, SIZE)).astype(np.float32) for _ in range(n)]


def _run(
    model: onnx.ModelProto, tensors: list[np.ndarray], disabled: Sequence[str] = DISABLED_OPTIMIZERS
) -> list[list[np.ndarray]]:
    """Outputs of an ONNX Runtime session that keeps float layers float, as sensitivity measures them."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )
    return [session.run(None, {"images": t}) for t in tensors]


def _max_diff(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> float:
    return max(
        float(np.abs(x - y).max()) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)
    )


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if tensor in n.output), None)


def _count(model: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in model.graph.node)


@pytest.fixture(scope="module")
def silu_net(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return _export(_Net(torch.nn.SiLU()), tmp_path_factory.mktemp("sens") / "silu.onnx", ["o1", "o2"])


@pytest.fixture(scope="module")
def calib() -> list[np.ndarray]:
    return _tensors(8, seed=1)


#: these nets' first convolution reads the image: quantized here (the tests are about every layer's Q/DQ)
QUANTIZED_STEM = OrtQuantConfig(float_stem=False)


def _quantize(
    fp32: Path, name: str, calib, config: OrtQuantConfig = QUANTIZED_STEM, exclude=()
) -> onnx.ModelProto:
    out = fp32.with_name(name)
    quantize_onnx(fp32, out, "images", calib, config, exclude=list(exclude))
    return onnx.load(str(out))


@pytest.fixture(scope="module")
def silu_qdq(silu_net, calib) -> onnx.ModelProto:
    return _quantize(silu_net, "silu-int8.onnx", calib)


def test_only_weighted_ops_quantized_dequantizing_all_gives_fp32_back(silu_net, calib):
    qdq = _quantize(
        silu_net, "silu-conv-only.onnx", calib, OrtQuantConfig(float_stem=False, op_types=("Conv",))
    )
    fp32 = prepare_for_quantization(silu_net)
    layers = quantized_layers(qdq)
    assert len(layers) == 4 and _count(qdq, "QuantizeLinear") > 0  # the two heads are the float tail
    floated = dequantize_layers(qdq, fp32, layers)
    assert _count(floated, "QuantizeLinear") == 0 and _count(floated, "DequantizeLinear") == 0
    tensors = _tensors(3, seed=2)
    assert _max_diff(_run(floated, tensors), _run(fp32, tensors)) < 1e-5
    assert _max_diff(_run(qdq, tensors), _run(fp32, tensors)) > 1e-3  # the INT8 model itself differs


def test_one_layer_matches_onnxruntime_excluding_it(silu_net, silu_qdq, calib):
    """The surgery predicts what re-quantizing with ``nodes_to_exclude`` gives, without recalibrating."""
    fp32 = prepare_for_quantization(silu_net)
    layers = quantized_layers(silu_qdq)
    target = layers[1]
    floated = dequantize_layers(silu_qdq, fp32, [target])
    onnx.checker.check_model(floated)

    weight = _node(floated, target).input[1]
    stored = {t.name: t for t in floated.graph.initializer}
    assert _producer(floated, weight) is None and weight in stored
    original = next(t for t in fp32.graph.initializer if t.name == _node(fp32, target).input[1])
    np.testing.assert_array_equal(
        onnx.numpy_helper.to_array(stored[weight]), onnx.numpy_helper.to_array(original)
    )
    assert _count(floated, "DequantizeLinear") == _count(silu_qdq, "DequantizeLinear") - 2  # weight and bias
    assert quantized_layers(floated) == [n for n in layers if n != target]

    excluded = _quantize(silu_net, "silu-excluded.onnx", calib, exclude=[target])
    tensors = _tensors(3, seed=3)
    assert _max_diff(_run(floated, tensors), _run(excluded, tensors)) < 1e-5
    assert _max_diff(_run(floated, tensors), _run(silu_qdq, tensors)) > 1e-4


@pytest.mark.parametrize(
    ("net", "config"),
    [
        ("relu", QUANTIZED_STEM),
        ("relu", OrtQuantConfig(float_stem=False, op_types=("Conv",))),
        (
            "silu",
            OrtQuantConfig(
                float_stem=False, activations="s8", symmetric_activations=True, op_types=("Conv", "Add")
            ),
        ),
    ],
    ids=["relu-default", "relu-conv-only", "silu-symmetric-conv-add"],
)
def test_surgery_matches_exclusion_across_configs(tmp_path, calib, silu_net, net, config):
    """Which pairs survive depends on the operator set and on deleted ReLUs; each case checks one rule."""
    torch.manual_seed(0)
    fp32_path = silu_net if net == "silu" else _export(_Chain(), tmp_path / "chain.onnx", ["out"])
    qdq = _quantize(fp32_path, f"{net}-{tmp_path.name}.onnx", calib, config)
    fp32, tensors = prepare_for_quantization(fp32_path), _tensors(2, seed=7)
    for target in quantized_layers(qdq)[1:3]:
        excluded = _quantize(fp32_path, f"{net}-excluded-{tmp_path.name}.onnx", calib, config, [target])
        floated = dequantize_layers(qdq, fp32, [target])
        assert _count(floated, "QuantizeLinear") == _count(excluded, "QuantizeLinear")
        assert _max_diff(_run(floated, tensors), _run(excluded, tensors)) < 1e-5


def test_deleted_relus_are_rebuilt_in_float(tmp_path, calib):
    """Quantized ReLUs vanish and each convolution's output takes its ReLU's name: the same tensor name
    holds pre-ReLU values in the Q/DQ graph. Rewiring by name alone would skip every ReLU."""
    torch.manual_seed(0)
    fp32_path = _export(_Chain(), tmp_path / "chain.onnx", ["out"])
    qdq = _quantize(fp32_path, "chain-int8.onnx", calib)
    fp32 = prepare_for_quantization(fp32_path)
    assert _count(qdq, "Relu") == 0 and _count(fp32, "Relu") == 2
    relu_out = _node(fp32, "/c2/Conv").input[0]
    assert _producer(qdq, relu_out).op_type == "Conv"  # same name, different value

    tensors = _tensors(3, seed=4)
    for mode in ("exclude", "float"):
        floated = dequantize_layers(qdq, fp32, weighted_layers(qdq), mode=mode)
        onnx.checker.check_model(floated)
        assert _count(floated, "Relu") == 2 and _count(floated, "QuantizeLinear") == 0
        assert _max_diff(_run(floated, tensors), _run(fp32, tensors)) < 1e-5


def test_float_mode_feeds_float_activations(silu_net, silu_qdq):
    fp32 = prepare_for_quantization(silu_net)
    target = quantized_layers(silu_qdq)[2]
    kept = dequantize_layers(silu_qdq, fp32, [target])
    floated = dequantize_layers(silu_qdq, fp32, [target], mode="float")
    assert _producer(kept, _node(kept, target).input[0]).op_type == "DequantizeLinear"  # neighbours keep it
    assert _node(floated, target).input[0] == _node(fp32, target).input[0]
    assert _producer(floated, _node(floated, target).input[0]).op_type == "Mul"


def test_ranking_finds_planted_sensitive_layer(tmp_path, calib):
    """One huge weight on an input channel that is always zero (both residual branches are zero there):
    harmless in float, but with one scale per tensor every other weight of that layer rounds to zero."""
    torch.manual_seed(0)
    net = _Net(torch.nn.SiLU())
    with torch.no_grad():
        net.c1.weight[5].zero_()
        net.c1.bias[5] = 0.0
        net.c3.weight[5].zero_()
        net.c3.bias[5] = 0.0
        net.c4.weight[0, 5, 0, 0] = 1000 * net.c4.weight.abs().max()
    fp32_path = _export(net, tmp_path / "planted.onnx", ["o1", "o2"])
    qdq_path = tmp_path / "planted-int8.onnx"
    quantize_onnx(fp32_path, qdq_path, "images", calib, OrtQuantConfig(float_stem=False, per_channel=False))

    full, ranked = rank_layers(qdq_path, fp32_path, "images", _tensors(4, seed=5), threads=1)
    assert full > 0.1
    assert [r.layer for r in ranked][0] == "/c4/Conv"
    assert ranked[0].recovered > 0.5 and ranked[0].error < full
    assert all(r.recovered < ranked[0].recovered for r in ranked[1:])
    assert sorted(r.layer for r in ranked) == sorted(quantized_layers(onnx.load(str(qdq_path))))

    only = rank_layers(qdq_path, fp32_path, "images", _tensors(4, seed=5), layers=["/c1/Conv"], threads=1)
    assert only[0] == pytest.approx(full) and [r.layer for r in only[1]] == ["/c1/Conv"]

    # ONNX Runtime's own exclusion agrees, but only where its session does not quantize the float layer
    # back: WeightBiasQuantization (ORT >= 1.21) does, per tensor, which is as bad as before.
    import onnxruntime as ort

    excluded = _quantize(
        fp32_path,
        "planted-excluded.onnx",
        calib,
        OrtQuantConfig(float_stem=False, per_channel=False),
        ["/c4/Conv"],
    )
    fp32, tensors = prepare_for_quantization(fp32_path), _tensors(4, seed=5)
    kept_float = output_error(excluded, fp32, "images", tensors, threads=1)
    assert kept_float == pytest.approx(ranked[0].error, rel=1e-3)
    if tuple(int(p) for p in ort.__version__.split(".")[:2]) >= (1, 21):
        requantized = output_error(excluded, fp32, "images", tensors, threads=1, disabled_optimizers=())
        assert requantized > 0.5 * full


def test_error_is_normalised_per_output(silu_net):
    """Shifting an output by k of its standard deviations costs k**2, whatever the output's scale."""
    fp32 = prepare_for_quantization(silu_net)
    tensors = _tensors(2, seed=6)
    assert output_error(fp32, fp32, "images", tensors, threads=1) == 0.0
    runs = _run(fp32, tensors)
    std = [float(np.concatenate([r[k].ravel() for r in runs]).astype(np.float64).std()) for k in (0, 1)]
    shift = {"h1.bias": 3 * std[0], "h2.bias": 1 * std[1]}  # o1 by 3 sigma, o2 by 1: 9 + 1
    shifted = onnx.ModelProto()
    shifted.CopyFrom(fp32)
    for t in shifted.graph.initializer:
        if t.name in shift:
            value = onnx.numpy_helper.to_array(t) + np.float32(shift[t.name])
            t.CopyFrom(onnx.numpy_helper.from_array(value, t.name))
    assert output_error(shifted, fp32, "images", tensors, threads=1) == pytest.approx(10.0, rel=1e-3)


def test_unknown_or_unweighted_layer_is_a_usage_error(silu_net, silu_qdq):
    fp32 = prepare_for_quantization(silu_net)
    with pytest.raises(UsageError, match="not a weighted layer"):
        dequantize_layers(silu_qdq, fp32, ["/no/such/Conv"])
    sigmoid = next(n.name for n in silu_qdq.graph.node if n.op_type == "Sigmoid")
    with pytest.raises(UsageError, match="not a weighted layer"):
        dequantize_layers(silu_qdq, fp32, [sigmoid])
    with pytest.raises(UsageError, match="sensitivity mode"):
        dequantize_layers(silu_qdq, fp32, quantized_layers(silu_qdq)[:1], mode="fast")


def test_a_different_fp32_model_is_refused(tmp_path, silu_qdq):
    torch.manual_seed(0)
    other = prepare_for_quantization(_export(_Chain(), tmp_path / "other.onnx", ["out"]))
    with pytest.raises(UsageError, match="FP32 model"):
        dequantize_layers(silu_qdq, other, ["/c3/Conv"])  # 1x1 there, 3x3 here
    with pytest.raises(UsageError, match="FP32 model"):
        dequantize_layers(silu_qdq, other, ["/c4/Conv"])  # no such layer there
