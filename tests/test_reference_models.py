"""The shipped reference model: its weights, its export without --weights, and OpenVINO == ONNX Runtime.

kapao-n's AP itself is measured by ``benchmarks/eval_reference.py`` (250 images, too slow for a test);
these tests check what a user of the shipped file relies on, on real held-out ``val-v1`` images.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("openvino")

from edgepose.export.pipeline import ExportOptions, export_model  # noqa: E402

import edgepose  # noqa: E402
from edgepose.data.synthetic import generate_dataset, render_sample, sample_seed  # noqa: E402
from edgepose.evaluation import run_bundle_eval  # noqa: E402
from edgepose.models.checkpoints import load_checkpoint  # noqa: E402
from edgepose.models.zoo import get_model_info, shipped_weights_path  # noqa: E402

#: the published evaluation stream (docs/reference-models.md): training never draws from it
EVAL_STREAM = 1000


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of x1 y1 x2 y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def test_kapao_n_ships_small_weights_that_say_how_they_were_made():
    path = shipped_weights_path("kapao-n")
    assert path is not None, "edgepose/weights/kapao-n.pt is missing from the package"
    assert path.stat().st_size < 10 * 2**20  # "a few MB"
    model, info = load_checkpoint(path)
    assert info["name"] == "kapao-n" and model.family == "kapao"
    raw = torch.load(path, map_location="cpu", weights_only=False)
    assert "edgepose train" in raw["command"] or "train" in raw["command"]
    assert raw["train"]["data"] == "synthetic" and raw["wall_time_s"] > 0
    card = path.with_suffix(".md")
    assert card.is_file(), "the model card ships beside the weights"
    assert "val-v1" in card.read_text() and "1000" in card.read_text()


@pytest.fixture(scope="module")
def kapao_n_bundles(tmp_path_factory) -> dict[str, Path]:
    """kapao-n exported with no --weights for ONNX Runtime and for OpenVINO (fp32), at its default size."""
    root = tmp_path_factory.mktemp("kapao-n")
    out = {}
    for target in ("cpu", "openvino"):
        out[target] = root / target
        export_model(ExportOptions(model="kapao-n", target=target, output=out[target]), log=lambda m: None)
    out["openvino-fp16"] = root / "openvino-fp16"
    export_model(
        ExportOptions(model="kapao-n", target="openvino", precision="fp16", output=out["openvino-fp16"]),
        log=lambda m: None,
    )
    return out


@pytest.fixture(scope="module")
def published_val(tmp_path_factory) -> Path:
    """The 250 `val-v1` images of the published stream the card's AP is measured on."""
    return generate_dataset(tmp_path_factory.mktemp("val") / "val", 250, EVAL_STREAM, "val-v1")


def test_openvino_gives_the_cpu_bundle_poses_on_val_v1(kapao_n_bundles):
    size = tuple(get_model_info("kapao-n").default_imgsz)
    with (
        edgepose.load(kapao_n_bundles["cpu"], preset="realtime") as cpu,
        edgepose.load(kapao_n_bundles["openvino"], preset="realtime") as ov,
    ):
        assert cpu.input_size == ov.input_size == size
        people = 0
        for i in range(6):
            img, _ = render_sample(sample_seed(EVAL_STREAM, i), "val-v1")
            a, b = cpu(img), ov(img)
            assert len(a) == len(b), f"image {i}: {len(a)} poses on ONNX Runtime, {len(b)} on OpenVINO"
            if not len(a):
                continue
            people += len(a)
            match = _iou(a.boxes, b.boxes).argmax(axis=1)
            assert len(set(match.tolist())) == len(a)  # one-to-one
            assert np.abs(a.keypoints[..., :2] - b.keypoints[match, :, :2]).max() <= 0.5
            assert np.abs(a.keypoints[..., 2] - b.keypoints[match, :, 2]).max() <= 1e-3
            assert np.abs(a.scores - b.scores[match]).max() <= 1e-3
        assert people >= 6, "the trained model should find people on six val-v1 images"


def _ap(bundle: Path, data: Path) -> float:
    return run_bundle_eval(bundle, data / "annotations.json", data / "images")["AP"]


def test_cpu_bundle_ap_matches_the_model_card(kapao_n_bundles, published_val):
    """The card's AP is what the exported CPU bundle scores on the published stream (issue: within 0.03)."""
    card = shipped_weights_path("kapao-n").with_suffix(".md").read_text()
    row = re.search(r"^\| AP \| AP50 .*\n\|[-| ]+\n\| ([0-9.]+) \|", card, re.MULTILINE)
    assert row, "the card has an AP table"
    assert abs(_ap(kapao_n_bundles["cpu"], published_val) - float(row.group(1))) <= 0.03


def test_openvino_fp16_keeps_the_fp32_ap(kapao_n_bundles, published_val):
    """fp16 weights (on a CPU: stored fp16, computed f32) cost at most 0.005 AP against the fp32 IR."""
    fp32 = _ap(kapao_n_bundles["openvino"], published_val)
    fp16 = _ap(kapao_n_bundles["openvino-fp16"], published_val)
    assert fp32 > 0.2 and abs(fp16 - fp32) <= 0.005, (fp32, fp16)
