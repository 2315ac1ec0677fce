"""Per-target packaging: the verified FP32 ONNX in, the target's artifacts and manifest fields out.

One function per target (``cpu``, ``openvino``, ``jetson``), the same signature each, so the pipeline
stays target-blind. Each says which runtime runs the bundle and what it measured.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from edgepose.export.parity import check_parity, measure_parity

from edgepose.errors import UsageError
from edgepose.families import decoded_difference_fn


@dataclass
class ExportContext:
    """Everything a target needs: the checked ONNX, the torch reference, and where to write."""

    onnx_path: Path
    workdir: Path
    precision: str
    model: torch.nn.Module
    images: Sequence[np.ndarray]
    input_size: tuple[int, int]
    input_name: str
    output_names: list[str]
    decoder_cfg: dict[str, Any]
    onnx_parity: dict[str, Any]
    ort_version: str
    dynamic: bool = False
    log: Callable[[str], None] = print
    #: INT8 only: the calibration set, validation data and gate settings (see edgepose.calibration.quantize)
    int8: dict[str, Any] | None = None


@dataclass
class TargetResult:
    artifacts: dict[str, Path]
    manifest: dict[str, Any] = field(default_factory=dict)
    #: build a TensorRT plan into the written bundle (export on a machine that has TensorRT)
    build_plan: bool = False


def _int8(ctx: ExportContext, target: str) -> TargetResult:
    """Quantize the verified FP32 ONNX for ``target``; the FP32 ONNX's parity stays the bundle's parity."""
    from edgepose.calibration.quantize import Int8Request, quantize_for_target

    if ctx.int8 is None:
        raise UsageError(
            "--precision int8 needs calibration images: pass --calib DIR|VIDEO|ANNOTATIONS|synthetic"
        )
    result = quantize_for_target(
        Int8Request(
            target=target,
            fp32_onnx=ctx.onnx_path,
            workdir=ctx.workdir,
            input_name=ctx.input_name,
            input_size=ctx.input_size,
            decoder_cfg=ctx.decoder_cfg,
            log=ctx.log,
            **ctx.int8,
        )
    )
    agree = result.manifest["calibration"]["agreement"]
    ctx.log(
        f"INT8 vs FP32 on {agree['images']} held-back images: {agree['matched']}/{agree['poses_a']} poses "
        f"matched, mean OKS {_fmt(agree['mean_oks'])}, "
        f"mean keypoint distance {_fmt(agree['mean_keypoint_px'])} px"
    )
    manifest = {
        "parity": {
            **ctx.onnx_parity,
            "runtime": "onnxruntime (the FP32 ONNX this INT8 model was quantized from)",
        },
        **result.manifest,
    }
    return TargetResult(result.artifacts, manifest)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def package_cpu(ctx: ExportContext) -> TargetResult:
    """ONNX Runtime runs the ONNX itself; its parity against torch is the bundle's parity."""
    if ctx.precision == "int8":
        result = _int8(ctx, "cpu")
        result.manifest["runtime"] = {"name": "onnxruntime", "version": ctx.ort_version}
        return result
    return TargetResult(
        {"model": ctx.onnx_path},
        {"runtime": {"name": "onnxruntime", "version": ctx.ort_version}, "parity": ctx.onnx_parity},
    )


def package_openvino(ctx: ExportContext) -> TargetResult:
    """IR (fp32 or fp16 weights) beside the ONNX; the IR's own parity against torch is measured."""
    from edgepose.export.onnx2openvino import onnx_to_openvino
    from edgepose.runtimes.openvino import OpenVinoRuntime

    if ctx.precision == "int8":
        result = _int8(ctx, "openvino")
        with OpenVinoRuntime(result.artifacts["ir"], device="CPU", precision="int8") as rt:
            float_layers = rt.effective_precision()
        result.manifest["openvino"] = {
            **result.manifest.get("openvino", {}),
            "cpu_float_layer_precision": float_layers,
            "note": (
                "INT8 layers run as integer kernels; the float tail and excluded layers run bf16 on CPUs "
                "that compute bf16 natively, f32 elsewhere (runtime option float_precision=f32 forces "
                f"f32); on the export CPU: {float_layers}"
            ),
        }
        return result
    converted = onnx_to_openvino(ctx.onnx_path, ctx.workdir / "ir", ctx.precision, dynamic=ctx.dynamic)
    xml = converted["artifacts"]["ir"]
    with OpenVinoRuntime(xml, device="CPU", precision=ctx.precision) as rt:
        ir_parity = measure_parity(
            ctx.model,
            rt,
            ctx.images,
            ctx.input_size,
            ctx.input_name,
            ctx.output_names,
            decoded_diff=decoded_difference_fn(ctx.decoder_cfg),
        )
        effective = rt.effective_precision()
    manifest = dict(converted["manifest"])
    manifest["openvino"] = {
        **manifest["openvino"],
        "cpu_effective_precision": effective,
        "note": (
            "fp16 weights are decompressed to f32 on CPUs; GPU and NPU compute in f16"
            if ctx.precision == "fp16"
            else "inference precision pinned to f32 (CPUs with bf16/AMX would otherwise run bf16)"
        ),
    }
    if ctx.precision == "fp32":
        check_parity(ir_parity, ctx.input_size)
        manifest["parity"] = {**ir_parity, "runtime": "openvino", "onnxruntime_parity": ctx.onnx_parity}
    else:
        # Reduced precision never fails on parity: it records its agreement with the FP32 reference.
        manifest["parity"] = {**ctx.onnx_parity, "runtime": "onnxruntime (the FP32 ONNX in this bundle)"}
        manifest["agreement"] = {**ir_parity, "runtime": "openvino", "precision": ctx.precision}
    ctx.log(
        f"OpenVINO {ctx.precision} IR vs torch: max_rel_diff={ir_parity['max_rel_diff']:.2e}, "
        f"decoded_max_px={ir_parity['decoded_max_px']:.2e}"
    )
    artifacts = {"model": ctx.onnx_path, **converted["artifacts"]}
    return TargetResult(artifacts, manifest)


def package_jetson(ctx: ExportContext) -> TargetResult:
    """The ONNX and what the device needs to build its plan; built right away when TensorRT is here."""
    has_trt = importlib.util.find_spec("tensorrt") is not None
    artifacts = {"model": ctx.onnx_path}
    extra: dict[str, Any] = {}
    if ctx.precision == "int8":
        # A symmetric Q/DQ ONNX (explicit quantization); checked here in ONNX Runtime, built on the device.
        result = _int8(ctx, "jetson")
        artifacts, extra = result.artifacts, result.manifest
    manifest = {
        "runtime": {"name": "tensorrt", "version": None},
        "parity": ctx.onnx_parity,
        "tensorrt": {
            "plans": {},
            "build": f"on the device: edgepose build BUNDLE (precision {ctx.precision})",
        },
        **extra,
    }
    if not has_trt:
        ctx.log("TensorRT is not installed here: run `edgepose build BUNDLE` on the Jetson to add its plan")
    return TargetResult(artifacts, manifest, build_plan=has_trt)


TARGETS: dict[str, Callable[[ExportContext], TargetResult]] = {
    "cpu": package_cpu,
    "openvino": package_openvino,
    "jetson": package_jetson,
}
