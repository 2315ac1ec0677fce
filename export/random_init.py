"""Seeded random weights that behave like a trained network's, for latency work and parity checks.

Plain random initialisation makes activations collapse or explode through deep conv stacks, and then a
parity check compares two near-constant outputs and proves nothing. We re-estimate every BatchNorm's
running statistics from a few forward passes over real image content, so each layer's activations are
normalised the way a trained network's are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from edgepose.preprocess import preprocess


def randomize_weights(
    model: torch.nn.Module,
    images_bgr: Sequence[np.ndarray],
    input_size: tuple[int, int],
    seed: int = 0,
    passes: int = 2,
) -> torch.nn.Module:
    """Re-initialise ``model`` from ``seed`` and recalibrate its BatchNorm statistics on ``images_bgr``."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d | torch.nn.Linear):
            module.reset_parameters()
    batch = torch.from_numpy(np.concatenate([preprocess(img, input_size)[0] for img in images_bgr]))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(batch)
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    return model.eval()
