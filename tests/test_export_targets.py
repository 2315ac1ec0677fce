"""--target openvino and --target jetson through the same pipeline; agreement with the CPU bundle."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from edgepose.export.parity import MAX_DECODED_PX_FRACTION, MAX_REL_DIFF
from edgepose.export.pipeline import ExportOptions, export_model

import edgepose
from edgepose.agreement import match_poses, pose_agreement
from edgepose.bundle import load_bundle
from edgepose.errors import BundleError, UsageError
from edgepose.poses import Poses
from edgepose.preprocess import read_image
from edgepose.samples import sample_image_paths
from edgepose.skeletons import COCO_17

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """CPU, OpenVINO fp32 and fp16, and Jetson bundles of one checkpoint."""
    import torch
    from edgepose.export.random_init import randomize_weights

    from edgepose.models.checkpoints import save_checkpoint
    from edgepose.models.zoo import build_model
    from edgepose.samples import sample_images

    root = tmp_path_factory.mktemp("targets")
    torch.manual_seed(0)
    model = randomize_weights(build_model("kapao-t"), sample_images(4), (256, 256), seed=3)
    ckpt = save_checkpoint(root / "kapao-t.pt", model, "kapao-t")
    out = {}
    for key, target, precision in (
        ("cpu", "cpu", "fp32"),
        ("ov", "openvino", "fp32"),
        ("ov16", "openvino", "fp16"),
        ("jetson", "jetson", "fp16"),
    ):
        out[key] = export_model(
            ExportOptions(
                model="kapao-t",
                weights=ckpt,
                target=target,
                precision=precision,
                imgsz="256",
                output=root / key,
            ),
            log=lambda m: None,
        ).path
    return out


def test_openvino_manifest(bundles):
    m = load_bundle(bundles["ov"]).manifest
    assert m["runtime"]["name"] == "openvino" and m["target"] == "openvino"
    assert {"model", "ir", "ir_weights"} <= set(m["artifacts"])
    assert m["parity"]["runtime"] == "openvino" and m["parity"]["max_rel_diff"] <= MAX_REL_DIFF
    assert m["parity"]["decoded_max_px"] <= MAX_DECODED_PX_FRACTION * 256
    assert m["openvino"]["cpu_effective_precision"] == "fp32"
    m16 = load_bundle(bundles["ov16"]).manifest
    assert m16["openvino"]["compress_to_fp16"] is True and "agreement" in m16
    assert "decompressed" in m16["openvino"]["note"]
    size = lambda b, n: (b / n).stat().st_size  # noqa: E731
    assert size(bundles["ov16"], "model.bin") < 0.6 * size(bundles["ov"], "model.bin")


def test_openvino_gives_the_same_poses_as_the_cpu_bundle(bundles):
    sigmas = COCO_17.sigmas_array
    with (
        edgepose.load(bundles["cpu"], preset="accuracy") as cpu,
        edgepose.load(bundles["ov"], preset="accuracy") as ov,
    ):
        assert ov.runtime.name == "openvino"
        total = 0
        for path in sample_image_paths():
            img = read_image(path)
            a, b = ov(img), cpu(img)
            assert len(a) == len(b)
            agreement = pose_agreement(a, b, sigmas)
            assert agreement.matched == len(b)
            assert agreement.max_keypoint_px <= 0.5 and agreement.max_score_diff <= 1e-3
            total += len(b)
        assert total > 0


def test_cpu_bundle_also_runs_on_openvino(bundles):
    img = read_image(sample_image_paths()[0])
    with edgepose.load(bundles["cpu"], runtime="openvino") as ov, edgepose.load(bundles["cpu"]) as cpu:
        a, b = ov(img), cpu(img)
    assert len(match_poses(a, b)) == len(a) == len(b)


def test_jetson_bundle_without_tensorrt(bundles):
    m = load_bundle(bundles["jetson"]).manifest
    assert m["runtime"]["name"] == "tensorrt" and m["precision"] == "fp16" and m["tensorrt"]["plans"] == {}
    if sys.modules.get("tensorrt") is None:
        with pytest.raises(BundleError, match="edgepose build"):
            edgepose.load(bundles["jetson"])
    res = subprocess.run(
        [sys.executable, "-m", "edgepose.cli", "build", str(bundles["jetson"])],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0 and res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1


def test_invalid_combinations_are_refused(tmp_path):
    with pytest.raises(UsageError, match="not supported"):
        export_model(
            ExportOptions(model="kapao-t", random_weights=True, precision="fp16", output=tmp_path / "a")
        )
    with pytest.raises(UsageError, match="openvino only"):
        export_model(ExportOptions(model="kapao-t", random_weights=True, dynamic=True, output=tmp_path / "b"))
    assert list(tmp_path.iterdir()) == []


def test_every_target_has_its_precisions_declared():
    """``options.SUPPORTED`` (checked without torch) and ``targets.TARGETS`` (the packagers) name the same
    targets, so no flag check can accept a target nothing packages, or refuse one that exists."""
    from edgepose.export.options import SUPPORTED
    from edgepose.export.targets import TARGETS

    assert set(SUPPORTED) == set(TARGETS)


def test_agreement_matches_and_measures():
    kp = np.zeros((2, 17, 3), np.float32)
    kp[0, :, :2], kp[1, :, :2] = 50, 200
    boxes = np.array([[0, 0, 100, 100], [150, 150, 250, 250]], np.float32)
    ref = Poses(kp, np.array([0.9, 0.8]), boxes, np.zeros((2, 17), bool))
    moved = kp.copy()
    moved[1, 3, 0] += 3.0
    other = Poses(moved[::-1], np.array([0.8, 0.85]), boxes[::-1], np.zeros((2, 17), bool))
    ag = pose_agreement(other, ref, COCO_17.sigmas_array)
    assert ag.matched == 2 and ag.max_keypoint_px == pytest.approx(3.0)
    assert ag.max_score_diff == pytest.approx(0.05) and 0.9 < ag.mean_oks < 1.0
