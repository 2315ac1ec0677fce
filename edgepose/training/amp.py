"""Mixed-precision training: which autocast dtype a run uses, and outputs back in float32 for the loss.

On CPUs with native bfloat16 (AMX-BF16 or AVX-512 BF16: Sapphire Rapids and later Xeons) oneDNN runs
the training step of kapao-n 1.88x faster than fp32 (batch 16 at 384x320 on the 2-core CI Xeon,
``benchmarks/train_step.py``: 19.2 vs 36.1 images/s). Weights, optimizer state, EMA and the loss stay
float32; only the forward's matmuls and convolutions run in bf16, which is what ``torch.autocast``
does. Without native bf16 oneDNN emulates it, slower than fp32, so ``auto`` turns it off there. On CUDA
``auto`` picks bf16 where the GPU supports it (no loss scaling needed) and fp32 elsewhere.
"""

from __future__ import annotations

from typing import Any

import torch

from edgepose.errors import UsageError

#: the ``--amp`` choices
AMP_CHOICES = ("auto", "bf16", "off")
_NATIVE_BF16_ISA = ("AMX-BF16", "AVX-512 BF16")


def cpu_has_native_bf16() -> bool:
    from edgepose.sysinfo import cpu_info

    return any(isa in cpu_info()["isa"] for isa in _NATIVE_BF16_ISA)


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The dtype ``torch.autocast`` should use for ``setting`` on ``device``; None means float32."""
    if setting not in AMP_CHOICES:
        raise UsageError(f"unknown --amp '{setting}'; use one of {', '.join(AMP_CHOICES)}")
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


def to_float(outputs: Any) -> Any:
    """``outputs`` (a tensor, or lists/tuples/dicts of them) with every floating tensor in float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, tuple) and hasattr(outputs, "_fields"):  # a named tuple
        return type(outputs)(*(to_float(v) for v in outputs))
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(to_float(v) for v in outputs)
    return outputs
