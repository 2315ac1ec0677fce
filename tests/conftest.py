"""Shared fixtures: tiny models built once per session. Torch is imported inside fixtures only,
so test files that do not need it still collect on a machine without torch."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def kapao_t():
    """A seeded, randomly initialised ``kapao-t`` (COCO-17, eval mode). Shared: deepcopy it to change it."""
    torch = pytest.importorskip("torch")
    from edgepose.models.zoo import build_model

    torch.manual_seed(0)
    return build_model("kapao-t").eval()
