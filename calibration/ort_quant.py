"""ONNX Runtime static INT8 quantization: a Q/DQ ONNX for the ``cpu`` target and, symmetric, for TensorRT.

Q/DQ (QuantizeLinear/DequantizeLinear pairs around float operators) is the one INT8 ONNX form that every
consumer reads: ONNX Runtime fuses the pairs into integer kernels, TensorRT builds explicit-precision
engines from them, and OpenVINO turns them into FakeQuantize. Weights are quantized per output channel;
the float tail (``graph.float_tail``: the head convolutions that regress coordinates) is never quantized.
ONNX Runtime's recipe also keeps the stem in float (``graph.float_stem``: the convolution on the image's
3 channels), which its FP32 kernels run faster than its INT8 ones; TensorRT's quantizes it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from edgepose.calibration.graph import ensure_node_names, float_stem, float_tail
from edgepose.calibration.graph_rewrites import subpixel_deconvolutions

from edgepose.errors import UsageError

#: ``meanminmax``: the mean over calibration images of each tensor's per-image min and max (NNCF's
#: ``MEAN_MINMAX``, its default for per-tensor activations); ``entropy``: the KL-optimal range
#: (``entropy_ranges``); ``minmax`` and ``percentile`` are ONNX Runtime's calibrators
METHODS = ("meanminmax", "minmax", "entropy", "percentile")
DEFAULT_METHOD = "meanminmax"
#: what the accuracy gate tries, in order, when the default loses too much: ONNX Runtime's two first
#: (one range pass each), then the KL search (two passes, and it clips the rare peaks heatmaps carry)
GATE_FALLBACKS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class OrtQuantConfig:
    """How to quantize. The defaults are what measured fastest on x86 at equal accuracy (README table)."""

    method: str = DEFAULT_METHOD
    per_channel: bool = True
    #: "u8" (asymmetric uint8 activations, ORT's U8S8) or "s8" (int8 activations)
    activations: str = "u8"
    symmetric_activations: bool = False
    #: 7-bit weights: avoids the u8*s8 pair-sum saturation of VPMADDUBSW on AVX2/AVX-512 CPUs without VNNI
    reduce_range: bool = False
    #: operator types to quantize; empty means ONNX Runtime's default set
    op_types: tuple[str, ...] = ()
    percentile: float = 99.999
    #: "qdq" (portable: ORT, TensorRT and OpenVINO read it) or "qoperator" (QLinearConv & co., ORT only)
    format: str = "qdq"
    #: quantize stride-2 transposed convolutions in their exact sub-pixel form (``graph_rewrites``):
    #: ONNX Runtime has no INT8 ConvTranspose; TensorRT has, and keeps the original
    subpixel_deconv: bool = True
    #: keep the convolution on the image's 3 channels (and its activation) in float (``graph.float_stem``):
    #: ONNX Runtime runs it faster in FP32; TensorRT's recipe quantizes it
    float_stem: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown calibration method '{self.method}'; use one of {', '.join(METHODS)}")
        if self.activations not in ("u8", "s8"):
            raise UsageError(f"unknown activation type '{self.activations}'; use u8 or s8")
        if self.format not in ("qdq", "qoperator"):
            raise UsageError(f"unknown quantization format '{self.format}'; use qdq or qoperator")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "op_types": list(self.op_types), "format": self.format.upper()}


#: TensorRT's explicit quantization wants symmetric int8 everywhere, Q/DQ on convolution inputs and
#: weights and on residual adds (so the add runs in int8 between quantized convolutions).
TENSORRT_CONFIG = OrtQuantConfig(
    method="entropy",
    activations="s8",
    symmetric_activations=True,
    op_types=("Conv", "Add"),
    subpixel_deconv=False,
    float_stem=False,
)


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "meanminmax": CalibrationMethod.MinMax,  # ranges come from RANGE_ESTIMATORS (overrides)
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.MinMax,  # likewise
        "percentile": CalibrationMethod.Percentile,
    }[name]


class _FeedReader:
    """Adapts an iterable of input tensors to ONNX Runtime's ``CalibrationDataReader`` protocol."""

    def __init__(self, input_name: str, tensors: Iterable[np.ndarray]) -> None:
        self._it = iter([{input_name: t} for t in tensors])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - ORT calls it only with several calibration passes
        raise RuntimeError("calibration tensors are consumed once")


@dataclass
class QuantizedOnnx:
    path: Path
    config: OrtQuantConfig
    excluded: list[str] = field(default_factory=list)
    float_tail: list[str] = field(default_factory=list)
    #: the stem kept in float by ``config.float_stem`` (empty without it)
    float_stem: list[str] = field(default_factory=list)
    #: how ``excluded`` were kept in float: ``nodes_to_exclude`` of ``quantize_static``, or graph surgery on
    #: the same configuration's build without them (``sensitivity.dequantize_layers``; the same model)
    excluded_by: str = "nodes_to_exclude"

    def summary(self) -> dict[str, Any]:
        return {
            "quantizer": "onnxruntime.quantization.quantize_static",
            **self.config.to_dict(),
            "float_tail": self.float_tail,
            **({"float_stem_layers": self.float_stem} if self.float_stem else {}),
            "excluded_layers": self.excluded,
            **({"excluded_by": self.excluded_by} if self.excluded else {}),
        }


def prepare_for_quantization(fp32_onnx: Path, subpixel_deconv: bool = True) -> onnx.ModelProto:
    """Nodes named, then ORT's documented pre-processing (shape inference, BatchNorm folding, clean-up),
    so calibration sees the tensors the optimized runtime graph has. Sensitivity analysis compares the
    Q/DQ model against this graph, not the raw export. ``subpixel_deconv``: stride-2 transposed
    convolutions in their exact sub-pixel form first (``OrtQuantConfig.subpixel_deconv``, whose default
    this follows; a graph without them is unchanged)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgepose-prep-") as tmp:
        named, prepared = Path(tmp) / "named.onnx", Path(tmp) / "prepared.onnx"
        model = ensure_node_names(onnx.load(str(fp32_onnx)))
        if subpixel_deconv:
            model, _ = subpixel_deconvolutions(model)
        onnx.save(model, str(named))
        quant_pre_process(str(named), str(prepared), skip_symbolic_shape=True)
        return onnx.load(str(prepared))


#: activation bytes one calibration pass may expose at once (kapao-s at 640 needs one pass; kapao-l at
#: 1280 would need several GB in one)
RANGE_PASS_BYTES = 1 << 30


def mean_minmax_ranges(
    model: onnx.ModelProto,
    input_name: str,
    tensors: Sequence[np.ndarray],
    max_bytes: int = RANGE_PASS_BYTES,
    activations: str = "u8",
) -> dict[str, tuple[float, float]]:
    """Each float tensor of ``model`` -> (mean of its per-image minima, mean of its per-image maxima).

    Why: ONNX Runtime's MinMax takes the extremes over all calibration images, and a few outlier pixels
    then stretch a tensor's uint8 step for every image. On kapao-n (val-v1, 250 images) that cost 0.038
    AP against FP32; averaging the per-image extremes, as NNCF does, cost 0.007 at the same speed.
    ``activations`` (the quantized type) does not change these ranges.
    """

    def estimate(group: list[str], run: Callable[[], Iterable[list[np.ndarray]]]) -> dict:
        lows, highs, n = np.zeros(len(group)), np.zeros(len(group)), 0
        for values in run():
            n += 1
            for i, value in enumerate(values):
                lows[i] += float(value.min())
                highs[i] += float(value.max())
        n = max(n, 1)
        return {name: (lows[i] / n, highs[i] / n) for i, name in enumerate(group)}

    return _tensor_ranges(model, input_name, tensors, estimate, max_bytes)


#: histogram resolution of the ``entropy`` method (TensorRT's calibrator: 2048 bins of |x|, 128 levels)
ENTROPY_BINS, ENTROPY_LEVELS = 2048, 128


def entropy_ranges(
    model: onnx.ModelProto,
    input_name: str,
    tensors: Sequence[np.ndarray],
    max_bytes: int = RANGE_PASS_BYTES,
    activations: str = "u8",
) -> dict[str, tuple[float, float]]:
    """Each float tensor of ``model`` -> the range whose quantization loses least information (KL).

    Why not ONNX Runtime's own ``Entropy`` through ``quantize_static``: it builds its histograms with 128
    bins for 128 levels, so its search has one candidate, the whole range, and the result is MinMax's
    ranges exactly (on sahr-n all 99 activation scales were equal). Here, as TensorRT's entropy
    calibrator: a first pass finds each tensor's extremes, a second builds a 2048-bin histogram of |x|
    over them, and ``kl_threshold`` picks the clipping threshold t. The range is [-t, t] clipped to
    the values seen, so a ReLU output keeps 0 as its floor. Levels: 128 per sign, as TensorRT's int8;
    a never-negative tensor quantized to uint8 (``activations="u8"``, the CPU target) has all 256.
    """

    def estimate(group: list[str], run: Callable[[], Iterable[list[np.ndarray]]]) -> dict:
        lows, highs = np.full(len(group), np.inf), np.full(len(group), -np.inf)
        for values in run():
            for i, value in enumerate(values):
                if value.size:
                    lows[i] = min(lows[i], float(np.nanmin(value)))
                    highs[i] = max(highs[i], float(np.nanmax(value)))
        tops = np.maximum(np.abs(lows), np.abs(highs))
        seen = np.isfinite(tops)
        hists = np.zeros((len(group), ENTROPY_BINS))
        for values in run():
            for i, value in enumerate(values):
                if seen[i] and tops[i] > 0:
                    hists[i] += np.histogram(np.abs(value), ENTROPY_BINS, (0.0, tops[i]))[0]
        out = {}
        for i, name in enumerate(group):
            if not seen[i]:  # never produced a value, or only infinite ones: nothing to choose from
                continue
            levels = 2 * ENTROPY_LEVELS if activations == "u8" and lows[i] >= 0 else ENTROPY_LEVELS
            t = tops[i] * kl_threshold(hists[i], levels) / ENTROPY_BINS if tops[i] > 0 else 0.0
            out[name] = (max(lows[i], -t), min(highs[i], t))
        return out

    return _tensor_ranges(model, input_name, tensors, estimate, max_bytes)


def kl_threshold(hist: np.ndarray, levels: int = 128, step: int = 8) -> int:
    """How many of ``hist``'s bins to keep so that quantizing them to ``levels`` levels, with everything
    beyond clipped into the last kept bin, diverges least (KL) from the clipped distribution.

    The calibration of TensorRT's INT8 entropy calibrator (Migacz, GTC 2017): candidates every ``step``
    bins from ``levels`` to all of them; a level's count spreads evenly over its non-empty bins; where
    the quantized distribution is 0 and the clipped one is not (the clipped tail landing in an empty
    bin), it counts as 1e-4, as MXNet's calibration smooths it.
    """
    hist = np.array(hist, np.float64)
    # A ReLU output's exact zeros pile up in bin 0; any level holding that spike would spread it over
    # its bins and look costly, so the search would clip to the narrowest range. Like NVIDIA's
    # pytorch-quantization, count bin 0 as its neighbour.
    hist[0] = hist[1] if len(hist) > 1 else hist[0]
    n = len(hist)
    if n <= levels or hist.sum() == 0:
        return n
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    best, best_kl = n, np.inf
    for i in range(levels, n + 1, step):
        ref = hist[:i]
        p = ref.copy()
        p[-1] += tail[i]
        starts = (np.arange(levels) * i) // levels
        widths = np.diff(np.append(starts, i))
        nonzero = ref > 0
        filled = np.add.reduceat(nonzero.astype(np.float64), starts)
        per_bin = np.add.reduceat(ref, starts) / np.maximum(filled, 1.0)
        q = np.repeat(per_bin, widths) * nonzero
        p /= p.sum()
        q_sum = q.sum()
        if q_sum == 0:
            continue
        q /= q_sum
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.where(q[mask] > 0, q[mask], 1e-4))))
        if kl < best_kl:
            best, best_kl = i, kl
    return best


def _tensor_ranges(
    model: onnx.ModelProto,
    input_name: str,
    tensors: Sequence[np.ndarray],
    estimate: Callable[[list[str], Callable[[], Iterable[list[np.ndarray]]]], dict[str, tuple[float, float]]],
    max_bytes: int,
) -> dict[str, tuple[float, float]]:
    """``estimate(names, run)`` over every float tensor of ``model``, where ``run()`` iterates over the
    images' values of ``names`` (call it again for another pass). Intermediate tensors
    are read as extra graph outputs, in as few passes over the images as keep each pass's exposed
    activations under ``max_bytes`` (from the inferred shapes; unknown sizes count 0)."""
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(model)  # a copy, with every tensor's type and shape
    graph = inferred.graph
    infos = {v.name: v.type.tensor_type for v in (*graph.value_info, *graph.output, *graph.input)}
    names = [input_name] + [
        o
        for node in graph.node
        for o in node.output
        if o and o in infos and infos[o].elem_type == onnx.TensorProto.FLOAT
    ]
    ranges: dict[str, tuple[float, float]] = {}
    for group in _passes(names, [_bytes(infos[n]) for n in names], max_bytes):
        probe = onnx.ModelProto()
        probe.CopyFrom(inferred)
        present = {o.name for o in probe.graph.output}
        probe.graph.output.extend(
            onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
            for n in group
            if n not in present
        )
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        ranges.update(
            estimate(group, lambda s=session, g=group: (s.run(g, {input_name: t}) for t in tensors))
        )
    return ranges


def _float_activations(model: onnx.ModelProto, input_name: str) -> set[str]:
    """The input and every node output that is, or may be, a float tensor ORT could calibrate.

    A tensor whose type shape inference cannot tell counts: the range estimators skip those, so their
    presence keeps ORT's own calibration on the full set.
    """
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.output)}
    float_type = onnx.TensorProto.FLOAT
    outputs = (o for node in graph.node for o in node.output if o)
    return {input_name} | {o for o in outputs if types.get(o, float_type) == float_type}


def _bytes(info: onnx.TypeProto.Tensor) -> int:
    dims = [d.dim_value for d in info.shape.dim] if info.HasField("shape") else []
    return 4 * int(np.prod(dims)) if dims and all(d > 0 for d in dims) else 0


def _passes(names: list[str], sizes: list[int], max_bytes: int) -> list[list[str]]:
    """Consecutive groups of ``names`` whose sizes add up to at most ``max_bytes`` (at least one each)."""
    groups: list[list[str]] = [[]]
    total = 0
    for name, size in zip(names, sizes, strict=True):
        if groups[-1] and total + size > max_bytes:
            groups.append([])
            total = 0
        groups[-1].append(name)
        total += size
    return groups


def quantize_onnx(
    fp32_onnx: Path,
    output: Path,
    input_name: str,
    tensors: Sequence[np.ndarray],
    config: OrtQuantConfig = OrtQuantConfig(),
    exclude: Sequence[str] = (),
    ranges: Mapping[str, tuple[float, float]] | None = None,
    prepared_model: onnx.ModelProto | None = None,
) -> QuantizedOnnx:
    """Statically quantize ``fp32_onnx`` to a Q/DQ ONNX at ``output``, calibrated on ``tensors``.

    ``exclude`` names extra layers to keep in float (the accuracy gate's sensitive layers). ``ranges``
    and ``prepared_model`` (``RANGE_ESTIMATORS[config.method]`` on ``tensors``, for the methods that
    have one, and ``prepare_for_quantization`` of ``fp32_onnx`` with ``config.subpixel_deconv``), when
    the caller quantizes the same model several times (the gate's rounds); made here when None.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if not tensors:
        raise UsageError("quantization needs at least one calibration image")
    with tempfile.TemporaryDirectory(prefix="edgepose-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        if prepared_model is None:
            prepared_model = prepare_for_quantization(fp32_onnx, config.subpixel_deconv)
        onnx.save(prepared_model, str(prepared))
        tail = float_tail(prepared_model)
        stem = float_stem(prepared_model) if config.float_stem else []
        extra: dict[str, Any] = {
            "ActivationSymmetric": config.symmetric_activations,
            "WeightSymmetric": True,
            # symmetric activations need symmetric calibrated ranges, or the zero point would be wasted
            "CalibTensorRangeSymmetric": config.symmetric_activations,
        }
        if config.method == "percentile":
            extra["CalibPercentile"] = config.percentile
        feed = tensors
        if config.method in RANGE_ESTIMATORS:
            if ranges is None:
                estimate = RANGE_ESTIMATORS[config.method]
                ranges = estimate(prepared_model, input_name, tensors, activations=config.activations)
            # The quantized range must hold 0 (zero padding, ReLU-like floors): widen it to include 0.
            extra["TensorQuantOverrides"] = {
                name: [{"rmin": np.float32(min(lo, 0.0)), "rmax": np.float32(max(hi, 0.0))}]
                for name, (lo, hi) in ranges.items()
            }
            # The overrides replace every range ORT's own MinMax pass would measure, but quantize_static
            # runs that pass regardless: one image keeps it from reading the whole calibration set again.
            if set(ranges) >= _float_activations(prepared_model, input_name):
                feed = tensors[:1]
        quantize_static(
            str(prepared),
            str(output),
            _FeedReader(input_name, feed),
            quant_format=QuantFormat.QDQ if config.format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=list(config.op_types) or None,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=QuantType.QUInt8 if config.activations == "u8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=[*tail, *stem, *exclude],
            calibrate_method=_calibration_method(config.method),
            extra_options=extra,
        )
    return QuantizedOnnx(Path(output), config, list(exclude), tail, stem)


#: methods whose activation ranges edgepose computes and hands to ``quantize_static`` as overrides
RANGE_ESTIMATORS: dict[str, Callable[..., dict[str, tuple[float, float]]]] = {
    "meanminmax": mean_minmax_ranges,
    "entropy": entropy_ranges,
}
