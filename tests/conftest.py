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


@pytest.fixture(scope="session")
def kapao_t_bundle(tmp_path_factory):
    """One random-weight ``kapao-t`` CPU bundle at 256 px for every test that just needs *a* bundle.

    Treat it as read-only: copy it (``shutil.copytree``) before changing anything in it.
    """
    pytest.importorskip("torch")
    from edgepose.export.pipeline import ExportOptions, export_model

    out = tmp_path_factory.mktemp("shared-bundle") / "kapao-t-256"
    opts = ExportOptions(model="kapao-t", random_weights=True, imgsz="256", output=out)
    export_model(opts, log=lambda m: None)
    return out
