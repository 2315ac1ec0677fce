"""Exported model vs torch reference, on real image content: the ``parity`` section of a manifest."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from edgepose.runtimes.base import Runtime

from edgepose.errors import ParityError
from edgepose.preprocess import preprocess

#: an FP32 export fails when it disagrees with torch more than this (relative to the output's range) ...
MAX_REL_DIFF = 1e-3
#: ... or moves a decoded point by more than this fraction of the input's long side.
MAX_DECODED_PX_FRACTION = 2e-3

DecodedDiff = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], dict[str, Any]]


def torch_outputs(model: torch.nn.Module, tensor: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(tensor))
    if isinstance(out, torch.Tensor):
        out = [out]
    return {n: t.detach().float().numpy() for n, t in zip(names, out)}


def measure_parity(
    model: torch.nn.Module,
    runtime: Runtime,
    images_bgr: Sequence[np.ndarray],
    input_size: tuple[int, int],
    input_name: str,
    output_names: Sequence[str],
    decoded_diff: DecodedDiff | None = None,
) -> dict[str, Any]:
    """Largest raw and decoded differences between torch and ``runtime`` over ``images_bgr``."""
    max_abs, max_rel, decoded = 0.0, 0.0, {"decoded_max_px": 0.0, "decoded_cells": 0}
    model.eval()
    for img in images_bgr:
        tensor, _ = preprocess(img, input_size)
        ref = torch_outputs(model, tensor, output_names)
        got = runtime.infer({input_name: tensor})
        for name in output_names:
            if got[name].shape != ref[name].shape:
                raise ParityError(f"output {name} has shape {got[name].shape}, torch gives {ref[name].shape}")
            diff = float(np.abs(got[name].astype(np.float64) - ref[name]).max())
            scale = float(np.abs(ref[name]).max()) or 1.0
            max_abs, max_rel = max(max_abs, diff), max(max_rel, diff / scale)
        if decoded_diff is not None:
            d = decoded_diff(ref, got)
            decoded["decoded_max_px"] = max(decoded["decoded_max_px"], d["decoded_max_px"])
            decoded["decoded_cells"] += d.get("decoded_cells", 0)
            for k, v in d.items():
                if k not in ("decoded_max_px", "decoded_cells"):
                    decoded[k] = decoded.get(k, 0) + v
    return {
        "reference": "torch",
        "images": len(images_bgr),
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        **decoded,
    }


def check_parity(parity: Mapping[str, Any], input_size: tuple[int, int]) -> None:
    """Raise ``ParityError`` when an FP32 export is outside the tolerances."""
    limit_px = MAX_DECODED_PX_FRACTION * max(input_size)
    if parity["max_rel_diff"] > MAX_REL_DIFF:
        raise ParityError(
            f"exported model differs from torch by max_rel_diff={parity['max_rel_diff']:.2e} "
            f"(limit {MAX_REL_DIFF:.0e}); the export is wrong, not written"
        )
    if parity.get("decoded_max_px", 0.0) > limit_px:
        raise ParityError(
            f"exported model moves decoded points by {parity['decoded_max_px']:.4f} px "
            f"(limit {limit_px:.3f} px); the export is wrong, not written"
        )
