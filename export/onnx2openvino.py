"""ONNX -> OpenVINO IR (``model.xml`` + ``model.bin``): fp32 or fp16 weights, static or dynamic H/W.

One verified ONNX serves every target, so the IR is converted from it (``openvino.convert_model``), not
from torch. ``save_model`` compresses weights to fp16 *unless told otherwise*, so the precision is
always passed explicitly. The IR describes itself in ``rt_info["edgepose"]`` (edgepose version, model,
family, precision), so an IR found outside its bundle still says what it is. Needs no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import openvino as ov

from edgepose.errors import ExportError, UsageError
from edgepose.version import __version__

PRECISIONS = ("fp32", "fp16", "int8")
#: ONNX metadata_props copied into rt_info["edgepose"] (torch2onnx writes them)
_COPIED_METADATA = ("model", "family", "skeleton")


def onnx_to_openvino(
    onnx_path: str | Path,
    out_dir: str | Path,
    precision: str = "fp32",
    dynamic: bool = False,
    quantize: Callable[[ov.Model], ov.Model] | None = None,
) -> dict[str, Any]:
    """Convert ``onnx_path`` into ``out_dir/model.xml`` + ``model.bin``.

    ``precision``: ``fp32`` keeps fp32 weights; ``fp16`` stores fp16 weights (half the file; GPUs and NPUs
    compute in f16, CPUs decompress to f32); ``int8`` expects a Q/DQ ONNX from the calibration step and
    keeps its quantized weights, unless ``quantize`` is given: it receives the converted float model and
    returns the quantized one (NNCF, see ``edgepose.calibration.openvino_quant``).
    ``dynamic`` makes the input's H and W dynamic, and is refused when the
    graph has its size baked in (e.g. constant Reshape targets), because such an IR would fail at any
    other size. Returns ``{"artifacts": {role: path}, "manifest": {fields}}`` for the bundle writer.
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}' for OpenVINO; use one of {', '.join(PRECISIONS)}")
    if not onnx_path.is_file():
        raise ExportError(f"ONNX file {onnx_path} does not exist")
    proto = onnx.load(str(onnx_path), load_external_data=False)
    metadata = {p.key: p.value for p in proto.metadata_props}
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    if precision == "int8" and not quantized and quantize is None:
        raise ExportError(
            f"{onnx_path.name} has no QuantizeLinear/DequantizeLinear nodes: INT8 IRs come from a Q/DQ "
            "ONNX made by the calibration step (edgepose export --precision int8 --calib DIR)"
        )
    del proto
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # the frontends raise several unrelated types
        raise ExportError(
            f"OpenVINO could not convert {onnx_path.name}: {' '.join(str(e).split())[:240]}"
        ) from e
    if quantize is not None:
        model = quantize(model)
    if dynamic:
        _make_dynamic(model, onnx_path.name)
    model.set_rt_info(__version__, ["edgepose", "version"])
    model.set_rt_info(precision, ["edgepose", "precision"])
    model.set_rt_info(str(bool(dynamic)).lower(), ["edgepose", "dynamic"])
    for key in _COPIED_METADATA:
        if key in metadata:
            model.set_rt_info(metadata[key], ["edgepose", key])
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / "model.xml"
    compress = precision == "fp16"
    try:
        ov.save_model(model, str(xml), compress_to_fp16=compress)
    except Exception as e:
        raise ExportError(f"OpenVINO could not write {xml}: {e}") from e
    inputs = {p.get_any_name(): _shape_list(p.get_partial_shape()) for p in model.inputs}
    return {
        "artifacts": {"ir": xml, "ir_weights": xml.with_suffix(".bin")},
        "manifest": {
            "runtime": {"name": "openvino", "version": ov.__version__.split("-")[0]},
            "openvino": {
                "version": ov.__version__.split("-")[0],
                "ir_precision": precision,
                "compress_to_fp16": compress,
                "dynamic": bool(dynamic),
                "inputs": inputs,
            },
        },
    }


def _shape_list(shape: ov.PartialShape) -> list[int | None]:
    return [d.get_length() if d.is_static else None for d in shape]


def _make_dynamic(model: ov.Model, name: str) -> None:
    """Make every NCHW input's H and W dynamic, after proving the graph accepts another size."""
    images = [p for p in model.inputs if p.get_partial_shape().rank.get_length() == 4]
    if not images:
        raise ExportError(f"{name} has no 4-D image input to make dynamic")
    doubled, dynamic = {}, {}
    for port in images:
        dims = [-1 if d is None else d for d in _shape_list(port.get_partial_shape())]
        dynamic[port.get_any_name()] = ov.PartialShape(dims[:2] + [-1, -1])
        if min(dims) > 0:
            doubled[port.get_any_name()] = ov.PartialShape(dims[:2] + [2 * dims[2], 2 * dims[3]])
    try:
        model.clone().reshape(doubled)
    except Exception as e:
        raise ExportError(
            f"{name} has its input size baked into the graph (a node refuses another size), so a dynamic "
            "IR would fail at any other size: export it without --dynamic, at the size you need"
        ) from e
    model.reshape(dynamic)


def read_ir_metadata(xml_path: str | Path) -> dict[str, str]:
    """The ``rt_info["edgepose"]`` section of an IR, as strings (empty when it has none)."""
    model = ov.Core().read_model(str(xml_path))
    info = model.get_rt_info()
    if "edgepose" not in info:
        return {}
    return {key: model.get_rt_info(["edgepose", key]).astype(str) for key in info["edgepose"]}
