"""INT8 for every target behind one function: quantize, measure agreement, and gate on AP.

``quantize_for_target`` takes the verified FP32 ONNX and a calibration set and returns the target's INT8
artifacts plus the manifest's ``calibration`` section:

- ``cpu``: ONNX Runtime Q/DQ ONNX (per-channel int8 weights, uint8 activations).
- ``openvino``: NNCF post-training quantization of the IR (default), or the Q/DQ ONNX converted to an IR
  (``openvino_source="qdq"``).
- ``jetson``: a symmetric Q/DQ ONNX for TensorRT's explicit quantization, built on the device; its
  accuracy is checked here by running that same Q/DQ ONNX in ONNX Runtime.

Every INT8 candidate is compared with FP32 on the held-back calibration images (pose agreement). With
validation data and ``max_ap_drop`` the gate evaluates FP32 and INT8 AP; when INT8 loses more, it first
tries the ``fallback_methods`` in turn (the other calibration methods, when the user did not pin one:
which range estimator suits a model varies, and a spread-out loss is in the ranges, not in any one
layer) until one fits, keeping the best tried; then the layers whose quantization hurts most
(``sensitivity.rank_layers``) are kept in float, a few more each round, until the drop is within
budget or the rounds run out (then ``ExportError`` with the table).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from edgepose.calibration.data import CalibrationSet, calibration_tensors
from edgepose.calibration.graph import float_stem, float_tail
from edgepose.calibration.ort_quant import (
    DEFAULT_METHOD,
    RANGE_ESTIMATORS,
    TENSORRT_CONFIG,
    OrtQuantConfig,
    QuantizedOnnx,
    prepare_for_quantization,
    quantize_onnx,
)
from edgepose.calibration.validation import ValidationSet
from edgepose.runtimes.base import Runtime, create_runtime

from edgepose.agreement import matched_pairs
from edgepose.errors import ExportError, UsageError
from edgepose.families import make_decoder
from edgepose.poses import Poses
from edgepose.preprocess import preprocess

OPENVINO_SOURCES = ("nncf", "qdq")
#: layers kept in float per gate round: 1, 2, 4, ... so a single bad layer costs one round
_MAX_GATE_ROUNDS = 6


@dataclass
class Int8Request:
    target: str
    fp32_onnx: Path
    workdir: Path
    input_name: str
    input_size: tuple[int, int]
    decoder_cfg: dict[str, Any]
    sigmas: np.ndarray
    calibration: CalibrationSet
    method: str = DEFAULT_METHOD
    #: calibration methods the gate tries, in order, when ``method`` loses more than ``max_ap_drop``
    fallback_methods: tuple[str, ...] = ()
    openvino_source: str = "nncf"
    validation: ValidationSet | None = None
    max_ap_drop: float | None = None
    log: Callable[[str], None] = print
    _tail: list[str] | None = field(default=None, repr=False)
    #: keyed by (``OrtQuantConfig.subpixel_deconv``, method, activation type): the prepared graph (and so
    #: its tensors) depends on the first, the activation ranges on all three
    _ranges: dict[tuple[bool, str, str], dict[str, tuple[float, float]]] = field(
        default_factory=dict, repr=False
    )
    _prepared: dict[bool, onnx.ModelProto] = field(default_factory=dict, repr=False)
    #: each Q/DQ configuration's build with nothing excluded (on this request's calibration tensors):
    #: later rounds float layers in it by surgery; the model is read once, by the first round that does
    _whole: dict[OrtQuantConfig, Path] = field(default_factory=dict, repr=False)
    _whole_models: dict[OrtQuantConfig, onnx.ModelProto] = field(default_factory=dict, repr=False)

    def float_tail(self) -> list[str]:
        """The FP32 graph's float tail, read once however many gate rounds quantize it."""
        if self._tail is None:
            self._tail = float_tail(onnx.load(str(self.fp32_onnx)))
        return self._tail

    def quantize(
        self, tensors: Sequence[np.ndarray], output: Path, config: OrtQuantConfig, exclude: Sequence[str] = ()
    ) -> QuantizedOnnx:
        """``quantize_onnx`` of the FP32 model. Its prepared graph, and the activation ranges of the
        methods edgepose estimates itself, are made once: they do not depend on which layers a gate round
        keeps in float.

        A Q/DQ build with ``exclude`` after one of the same configuration without it is that build with
        the layers floated by graph surgery (``dequantize_layers``), which gives what quantizing with them
        in ``nodes_to_exclude`` gives (``tests/test_sensitivity.py``) without re-running the quantizer
        (~5 s a round for kapao-t here, longer for larger models)."""
        form = config.subpixel_deconv
        if form not in self._prepared:
            self._prepared[form] = prepare_for_quantization(self.fp32_onnx, form)
        prepared = self._prepared[form]
        whole = self._whole.get(config)
        if exclude and whole is not None and config.format == "qdq":
            from edgepose.calibration.sensitivity import dequantize_layers, quantized_layers

            if config not in self._whole_models:
                self._whole_models[config] = onnx.load(str(whole))
            model = self._whole_models[config]  # dequantize_layers edits a copy
            if set(exclude) <= set(quantized_layers(model)):  # other nodes: the quantizer below
                onnx.save(dequantize_layers(model, prepared, exclude), str(output))
                tail = float_tail(prepared)
                stem = float_stem(prepared) if config.float_stem else []
                return QuantizedOnnx(Path(output), config, list(exclude), tail, stem, "graph surgery")
        ranges = None
        if config.method in RANGE_ESTIMATORS:
            key = (form, config.method, config.activations)
            if key not in self._ranges:
                estimate = RANGE_ESTIMATORS[config.method]
                self._ranges[key] = estimate(
                    prepared, self.input_name, tensors, activations=config.activations
                )
            ranges = self._ranges[key]
        built = quantize_onnx(
            self.fp32_onnx, output, self.input_name, tensors, config, exclude, ranges, prepared
        )
        if not exclude:
            self._whole[config] = Path(output)
        return built

    def calibration_method_applies(self) -> bool:
        """Whether the calibration method matters: the Q/DQ paths do; NNCF keeps its own estimator."""
        return self.target != "openvino" or self.openvino_source == "qdq"


@dataclass
class Int8Candidate:
    """One quantized build: its artifacts, how to run it here, and how it was made."""

    artifacts: dict[str, Path]
    runtime: str
    model_path: Path
    quantizer: dict[str, Any]
    #: target-specific manifest fields (the OpenVINO section of an IR)
    manifest: dict[str, Any] = field(default_factory=dict)
    #: the Q/DQ ONNX this build quantized, when it made one (not NNCF, which quantizes the IR)
    qdq_onnx: Path | None = None

    def open(self) -> Runtime:
        opts = {"precision": "int8"} if self.runtime == "openvino" else {}
        return create_runtime(self.runtime, self.model_path, **opts)


@dataclass
class Int8Result:
    artifacts: dict[str, Path]
    manifest: dict[str, Any] = field(default_factory=dict)


def cpu_isa() -> str:
    """The CPU's best integer-dot-product instruction set: INT8 rounding and saturation depend on it."""
    from edgepose.sysinfo import cpu_info

    isa = cpu_info()["isa"]
    for name in ("AMX-INT8", "AVX-512 VNNI", "AVX-VNNI", "NEON dot product"):
        if name in isa:
            return name
    no_vnni = next((n for n in ("AVX-512BW", "AVX2", "NEON") if n in isa), None)
    return f"{no_vnni} (no VNNI)" if no_vnni else platform.machine() or "unknown"


def qdq_config(req: Int8Request) -> OrtQuantConfig:
    """The Q/DQ recipe of ``req``'s target, with its calibration method: ONNX Runtime's (cpu; the stem in
    float), TensorRT's (jetson), and for OpenVINO from a Q/DQ ONNX, ONNX Runtime's with the stem quantized,
    as README's Q/DQ -> IR rows were measured (OpenVINO has its own INT8 kernels for a 3-channel input)."""
    if req.target == "jetson":
        return replace(TENSORRT_CONFIG, method=req.method)
    return OrtQuantConfig(method=req.method, float_stem=req.target == "cpu")


def _build(
    req: Int8Request, tensors: Sequence[np.ndarray], exclude: Sequence[str], tag: str
) -> Int8Candidate:
    """Quantize once with ``exclude`` kept in float (on top of the float tail)."""
    work = req.workdir / f"int8-{tag}"
    work.mkdir(parents=True, exist_ok=True)
    if req.target in ("cpu", "jetson"):
        q = req.quantize(tensors, work / "model.onnx", qdq_config(req), exclude)
        return Int8Candidate({"model": q.path}, "onnxruntime", q.path, q.summary(), qdq_onnx=q.path)
    if req.target == "openvino":
        from edgepose.calibration.openvino_quant import describe, nncf_quantizer
        from edgepose.export.onnx2openvino import onnx_to_openvino

        if req.openvino_source == "qdq":
            q = req.quantize(tensors, work / "qdq.onnx", qdq_config(req), exclude)
            converted = onnx_to_openvino(q.path, work / "ir", "int8")
            quantizer = {**q.summary(), "openvino": "Q/DQ ONNX converted to IR"}
            model = qdq = q.path
        else:
            keep = [*req.float_tail(), *exclude]
            converted = onnx_to_openvino(
                req.fp32_onnx, work / "ir", "int8", quantize=nncf_quantizer(tensors, keep)
            )
            quantizer = {**describe("performance", keep), "excluded_layers": list(exclude)}
            model, qdq = req.fp32_onnx, None
        xml = converted["artifacts"]["ir"]
        artifacts = {"model": model, **converted["artifacts"]}
        return Int8Candidate(artifacts, "openvino", xml, quantizer, converted["manifest"], qdq)
    raise UsageError(f"INT8 is not available for --target {req.target}")


def _poses(runtime: Runtime, req: Int8Request, images: Sequence[np.ndarray]) -> list[Poses]:
    decoder = make_decoder(req.decoder_cfg, "accuracy", {})
    out = []
    for img in images:
        tensor, meta = preprocess(img, req.input_size)
        out.append(decoder(runtime.infer({req.input_name: tensor}), meta))
    return out


def agreement(reference: list[Poses], candidate: list[Poses], sigmas: np.ndarray) -> dict[str, Any]:
    """INT8-vs-FP32 pose agreement over images: matched poses, OKS, keypoint distance, score drift."""
    from edgepose.compare import AgreementStats

    stats = AgreementStats("a")
    for i, (a, b) in enumerate(zip(reference, candidate)):
        stats.add(f"held-back {i}", (0, 0), len(a), len(b), matched_pairs(b, a, sigmas))
    return stats.summary()


def _ap(runtime: Runtime, req: Int8Request, val: ValidationSet) -> float:
    from edgepose.evaluation import evaluate

    decoder = make_decoder(req.decoder_cfg, "accuracy", {})

    def predict(img: np.ndarray) -> Poses:
        tensor, meta = preprocess(img, req.input_size)
        return decoder(runtime.infer({req.input_name: tensor}), meta)

    return float(evaluate(predict, val.annotations, val.images_dir, req.sigmas)["AP"])


def quantize_for_target(req: Int8Request) -> Int8Result:
    """Quantize for ``req.target``; check agreement on held-back images; gate on AP when asked."""
    if req.target == "openvino" and req.openvino_source not in OPENVINO_SOURCES:
        raise UsageError(
            f"unknown --int8-source '{req.openvino_source}'; use one of {', '.join(OPENVINO_SOURCES)}"
        )
    if req.max_ap_drop is not None and req.validation is None:
        raise UsageError("--max-ap-drop needs --val (annotated images or synthetic[:PROFILE]) to measure AP")
    calib = req.calibration
    tensors = list(calibration_tensors(calib.images, req.input_size))
    check_images = calib.held_back or calib.images[: min(8, len(calib.images))]
    with create_runtime("onnxruntime", req.fp32_onnx) as fp32:
        fp32_poses = _poses(fp32, req, check_images)
        fp32_ap = _ap(fp32, req, req.validation) if req.validation is not None else None
    req.log(f"quantizing to INT8 for {req.target} on {len(tensors)} calibration images ({calib.source})")
    excluded: list[str] = []
    ranking: list[Any] = []
    rounds: list[dict[str, Any]] = []
    methods: list[dict[str, Any]] = []
    for round_no in range(_MAX_GATE_ROUNDS + 1):
        cand = _build(req, tensors, excluded, str(round_no))
        with cand.open() as rt:
            agree = agreement(fp32_poses, _poses(rt, req, check_images), req.sigmas)
            int8_ap = _ap(rt, req, req.validation) if req.validation is not None else None
        if fp32_ap is None or req.max_ap_drop is None:
            rounds.append({"excluded_layers": 0, "method": req.method, "AP": int8_ap})
            break
        drop = fp32_ap - int8_ap
        req.log(
            f"gate: FP32 AP {fp32_ap:.4f}, INT8 AP {int8_ap:.4f} (drop {drop:.4f}, "
            f"allowed {req.max_ap_drop:g}) with {len(excluded)} layer(s) in float"
        )
        search = req.fallback_methods and req.calibration_method_applies()
        if round_no == 0 and drop > req.max_ap_drop and search:
            first = (cand, agree, int8_ap)
            (cand, agree, int8_ap), methods = _try_methods(
                req, tensors, fp32_poses, check_images, fp32_ap, first
            )
            drop = fp32_ap - int8_ap
        rounds.append({"excluded_layers": len(excluded), "method": req.method, "AP": int8_ap})
        if drop <= req.max_ap_drop:
            break
        if round_no == _MAX_GATE_ROUNDS:
            table = "; ".join(
                [f"{m['method']}: AP {m['AP']:.4f}" for m in methods]
                + [f"{r['method']}, {r['excluded_layers']} in float: AP {r['AP']:.4f}" for r in rounds]
            )
            raise ExportError(
                f"INT8 loses {drop:.4f} AP (allowed {req.max_ap_drop:g}) even with {len(excluded)} layers "
                f"kept in float (FP32 AP {fp32_ap:.4f}; {table}); raise --max-ap-drop, calibrate on more "
                "representative images, or export fp16/fp32"
            )
        if not ranking:
            # a round-0 Q/DQ build is the very model the ranking needs: no second quantization
            ranking = _rank(req, tensors, check_images, cand.qdq_onnx)
            if not ranking:
                raise ExportError(
                    "the gate found no quantized layer to keep in float; export fp16/fp32 instead"
                )
        excluded = [r.layer for r in ranking[: min(len(ranking), 2**round_no)]]
    if req.max_ap_drop is None:
        req.log("accuracy gate off (no --val/--max-ap-drop): INT8-vs-FP32 agreement is the only check")
    manifest = {
        **cand.manifest,
        "calibration": {
            **calib.summary(),
            "method": req.method,
            "instruction_set": cpu_isa(),
            "quantizer": cand.quantizer,
            "excluded_layers": excluded,
            "agreement": {
                **agree,
                "images": len(check_images),
                "data": "held-back calibration images",
                "reference": "FP32 ONNX in ONNX Runtime",
            },
            "gate": _gate_record(req, fp32_ap, rounds, int8_ap, methods),
        },
    }
    if fp32_ap is not None:
        manifest["accuracy"] = {
            "AP": int8_ap,
            "fp32_AP": fp32_ap,
            "data": req.validation.description,
            "preset": "accuracy",
        }
    return Int8Result(cand.artifacts, manifest)


def _try_methods(
    req: Int8Request,
    tensors: Sequence[np.ndarray],
    fp32_poses: list[Poses],
    check_images: Sequence[np.ndarray],
    fp32_ap: float,
    first: tuple[Int8Candidate, dict[str, Any], float],
) -> tuple[tuple[Int8Candidate, dict[str, Any], float], list[dict[str, Any]]]:
    """Quantize with each fallback calibration method until one fits the budget; keep the best build.

    ``first`` is the requested method's (candidate, agreement, AP). Returns the best of them all and the
    AP of every method tried; ``req.method`` ends as the chosen method, so later rounds (layers kept in
    float) and the manifest use it.
    """
    best, best_method = first, req.method
    tried = [{"method": req.method, "AP": first[2]}]
    for method in req.fallback_methods:
        req.method = method
        cand = _build(req, tensors, [], f"0-{method}")
        with cand.open() as rt:
            agree = agreement(fp32_poses, _poses(rt, req, check_images), req.sigmas)
            ap = _ap(rt, req, req.validation)
        tried.append({"method": method, "AP": ap})
        req.log(f"gate: calibration method {method}: INT8 AP {ap:.4f} (drop {fp32_ap - ap:.4f})")
        if ap > best[2]:
            best, best_method = (cand, agree, ap), method
        if fp32_ap - ap <= req.max_ap_drop:
            break
    req.method = best_method
    return best, tried


def _gate_record(
    req: Int8Request, fp32_ap: float | None, rounds: list, int8_ap: float | None, methods: list
) -> dict[str, Any]:
    if req.validation is None or req.max_ap_drop is None:
        return {
            "enabled": False,
            "note": "no --val/--max-ap-drop: the agreement figures are the only check",
            **({"fp32_AP": fp32_ap, "int8_AP": int8_ap} if fp32_ap is not None else {}),
        }
    return {
        "enabled": True,
        "max_ap_drop": req.max_ap_drop,
        "fp32_AP": fp32_ap,
        "int8_AP": int8_ap,
        "ap_drop": fp32_ap - int8_ap,
        "data": req.validation.description,
        "rounds": rounds,
        **({"methods_tried": methods} if methods else {}),
    }


def _rank(
    req: Int8Request,
    tensors: Sequence[np.ndarray],
    images: Sequence[np.ndarray],
    qdq: Path | None = None,
) -> list[Any]:
    """Layers by how much INT8 error keeping each in float removes, measured on a Q/DQ ONNX of the model.

    ``qdq``: that Q/DQ ONNX when the caller has it already (``req.method``'s round-0 build, nothing
    excluded: cpu, jetson, OpenVINO from Q/DQ, all with the config used here); made here otherwise
    (NNCF quantizes the IR and leaves no Q/DQ ONNX).
    """
    from edgepose.calibration.sensitivity import rank_layers

    config = qdq_config(req)
    if qdq is None:
        path = req.workdir / "sensitivity" / "qdq.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        qdq = req.quantize(tensors, path, config).path
    probe = list(calibration_tensors(images, req.input_size))
    full, ranked = rank_layers(
        qdq, req.fp32_onnx, req.input_name, probe, subpixel_deconv=config.subpixel_deconv
    )
    req.log(
        f"sensitivity: full INT8 error {full:.4g}; most sensitive: "
        + ", ".join(f"{r.layer} ({r.recovered:.0%})" for r in ranked[:4])
    )
    return [r for r in ranked if r.recovered > 0]
