"""NNCF post-training INT8 quantization of an OpenVINO model, the ``openvino`` target's INT8 path.

NNCF inserts FakeQuantize nodes that the CPU, GPU and NPU plugins execute as integer kernels. Its
ignored scope holds the float tail (the head convolutions that regress coordinates) and any layer the
accuracy gate keeps in float. Layers are named after the ONNX nodes they came from: the ONNX frontend
turns a ``Conv`` node ``X`` into a ``Convolution`` ``X/WithoutBiases`` plus a bias ``Add`` ``X``, so a
name covers the op with that friendly name and every op under ``X/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import openvino as ov

from edgepose.errors import UsageError

PRESETS = ("performance", "mixed")


def ov_names_for(model: ov.Model, onnx_names: Sequence[str]) -> list[str]:
    """The OpenVINO op names that implement the ONNX nodes ``onnx_names`` (see the module docstring)."""
    wanted = set(onnx_names)
    out = []
    for op in model.get_ops():
        name = op.get_friendly_name()
        if name in wanted or name.rsplit("/", 1)[0] in wanted:
            out.append(name)
    return out


def nncf_quantizer(
    tensors: Sequence[np.ndarray],
    keep_float: Sequence[str],
    preset: str = "performance",
    fast_bias_correction: bool = True,
) -> Callable[[ov.Model], ov.Model]:
    """A function that quantizes an ``ov.Model`` with NNCF, calibrated on ``tensors``.

    ``keep_float`` are ONNX node names (the float tail and the gate's excluded layers). ``performance``
    quantizes activations symmetrically (fastest on CPUs); ``mixed`` uses asymmetric activations, which
    can hold accuracy on non-ReLU networks at a small cost in speed.
    """
    import nncf

    if preset not in PRESETS:
        raise UsageError(f"unknown NNCF preset '{preset}'; use one of {', '.join(PRESETS)}")
    if not tensors:
        raise UsageError("quantization needs at least one calibration image")

    def quantize(model: ov.Model) -> ov.Model:
        ignored = ov_names_for(model, keep_float)
        return nncf.quantize(
            model,
            nncf.Dataset(list(tensors)),
            preset=nncf.QuantizationPreset.PERFORMANCE
            if preset == "performance"
            else nncf.QuantizationPreset.MIXED,
            subset_size=len(tensors),
            fast_bias_correction=fast_bias_correction,
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
        )

    return quantize


def describe(preset: str, keep_float: Sequence[str], fast_bias_correction: bool = True) -> dict[str, Any]:
    """The manifest's record of how the IR was quantized."""
    import nncf

    return {
        "quantizer": f"nncf.quantize (NNCF {nncf.__version__})",
        "preset": preset,
        "fast_bias_correction": fast_bias_correction,
        "ignored_scope": list(keep_float),
    }
