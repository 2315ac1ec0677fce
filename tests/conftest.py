"""Shared fixtures: tiny models built once per session. Torch is imported inside fixtures only,
so test files that do not need it still collect on a machine without torch."""

from __future__ import annotations

import os

import pytest

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Parallel workers share the cores: one inference thread each (runtimes read EDGEPOSE_THREADS, and
    # so do the CLI subprocesses tests start). On 2 cores, two workers running dekr-n at one thread each
    # did 1.5x the images per second of two at the runtimes' default of one thread per core.
    os.environ.setdefault("EDGEPOSE_THREADS", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models on a shared machine: one intra-op thread avoids OpenMP oversubscription stalls
    (measured here: a dekr-t forward takes 0.07 s on one thread, seconds on two busy ones). A module
    opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
