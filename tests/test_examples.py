"""Every script in examples/ runs on the shipped media, so the examples users copy never rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgepose.samples import sample_image_paths, sample_video_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def bundle(kapao_t_bundle) -> Path:
    return kapao_t_bundle


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    res = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=90, env=env
    )
    assert res.returncode == 0, res.stderr
    return res


def test_predict_image(bundle, tmp_path):
    image = sample_image_paths()[0]
    out = tmp_path / "annotated.jpg"
    res = _run("predict_image.py", str(bundle), str(image), "--output", str(out))
    assert res.stdout.splitlines()[0].endswith(f"people in {image.name} (640x480)")
    assert out.stat().st_size > 10_000


def test_webcam_loop_on_a_video_file(bundle):
    res = _run(
        "webcam.py", str(bundle), "--source", str(sample_video_path()), "--max-frames", "5", "--no-show"
    )
    assert [s.split(":")[0] for s in res.stdout.splitlines()] == [f"frame {i}" for i in range(1, 6)]


@pytest.mark.parametrize("shared", [False, True])
def test_multi_camera(bundle, shared):
    video = str(sample_video_path())
    args = [str(bundle), video, video, "--max-frames", "8", "--no-show"] + (["--shared"] if shared else [])
    res = _run("multi_camera.py", *args)
    lines = res.stdout.splitlines()
    assert lines[0].startswith("one shared estimator" if shared else "2 estimators")
    assert lines[0].count("FPS") == 2 and lines[1].startswith("total")


def test_readme_covers_every_example():
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for script in sorted(p.name for p in EXAMPLES.glob("*.py")):
        assert script in readme, script
    assert "jetson/README.md" in readme
