"""torch ``nn.Module`` -> ONNX file with a static input and named raw outputs.

We use torch's TorchScript-based exporter (``dynamo=False``): it needs no extra package (the dynamo
exporter needs onnxscript), handles every op our models use at opset 17, and produces the plain
Conv/Mul/Sigmoid graphs that ORT, OpenVINO and TensorRT all consume. The file carries its own
description in ``metadata_props`` so it stays self-describing outside a bundle.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from edgepose.export.options import DEFAULT_OPSET

from edgepose.errors import ExportError


def torch_to_onnx(
    model: torch.nn.Module,
    input_size: tuple[int, int],
    path: str | Path,
    output_names: Sequence[str],
    input_name: str = "images",
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, Any] | None = None,
    simplify: bool = True,
) -> Path:
    """Export ``model`` for a (1, 3, H, W) float32 input; returns the written path."""
    if opset < 17:
        raise ExportError(f"opset {opset} is too old; edgepose exports opset 17 or newer")
    path = Path(path)
    w, h = input_size
    dummy = torch.zeros(1, 3, h, w)
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=list(output_names),
                do_constant_folding=True,
            )
    except Exception as e:  # the exporter raises many unrelated types
        raise ExportError(f"torch could not export the model to ONNX: {e}") from e
    if simplify:
        simplify_onnx(path)
    proto = onnx.load(str(path))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key = str(key)
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def simplify_onnx(path: Path) -> None:
    """Fold constants and fuse redundant nodes with onnxslim (outputs are re-checked by the parity step)."""
    try:
        import onnxslim
    except ImportError as e:
        raise ExportError(
            "graph simplification needs onnxslim: pip install 'edgepose[export]', or pass --no-simplify"
        ) from e
    try:
        slim = onnxslim.slim(str(path))
    except Exception as e:
        raise ExportError(f"onnxslim failed on the exported graph: {e}; retry with --no-simplify") from e
    onnx.save(slim, str(path))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, as a dict of strings."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
