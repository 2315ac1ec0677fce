"""``edgepose compare``: per-pose agreement figures, bundle-vs-bundle runs, and the CLI's exit codes."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgepose.agreement import match_poses, matched_pairs, pose_agreement
from edgepose.compare import check_thresholds, compare_bundles, worst_images
from edgepose.errors import InputError, UsageError
from edgepose.poses import Poses
from edgepose.samples import assets_dir, sample_image_paths, sample_images, sample_video_path
from edgepose.skeletons import COCO_17, get_skeleton

SAMPLES = assets_dir() / "samples"


def _poses(keypoints: np.ndarray, scores: list[float], boxes: list[list[float]]) -> Poses:
    kp = np.asarray(keypoints, np.float32)
    return Poses(kp, np.array(scores), np.array(boxes, np.float32), np.zeros(kp.shape[:2], bool))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgepose.cli", "compare", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_matched_pairs_known_shift_gives_known_distance_and_oks():
    rng = np.random.default_rng(0)
    ref_kp = np.zeros((2, 17, 3), np.float32)
    ref_kp[0, :, :2] = rng.uniform([0, 0], [100, 200], (17, 2))
    ref_kp[1, :, :2] = rng.uniform([300, 0], [380, 160], (17, 2))
    ref_kp[:, :, 2] = 0.7
    ref = _poses(ref_kp, [0.9, 0.6], [[0, 0, 100, 200], [300, 0, 380, 160]])
    moved = ref_kp.copy()
    moved[0, :, :2] += (3.0, 4.0)  # 5 px for every keypoint of person 0; person 1 unchanged
    moved[1, :, 2] = 0.5
    # candidate lists the people in the other order, plus one far away that has no partner
    cand_kp = np.stack([moved[1], moved[0], np.full((17, 3), 900, np.float32)])
    boxes = [[300, 0, 380, 160], [3, 4, 103, 204], [890, 890, 910, 910]]
    cand = _poses(cand_kp, [0.65, 0.8, 0.3], boxes)

    m = matched_pairs(cand, ref, COCO_17.sigmas_array)
    assert sorted(m.pairs) == [(0, 1), (1, 0)]
    by_ref = {j: k for k, (_, j) in enumerate(m.pairs)}
    shifted, same = by_ref[0], by_ref[1]
    np.testing.assert_allclose(m.keypoint_px[shifted], 5.0, atol=1e-4)
    np.testing.assert_allclose(m.keypoint_px[same], 0.0, atol=1e-6)
    # COCO OKS: mean over keypoints of exp(-d^2 / (2 s^2 k^2)), s^2 = the reference box's area, k = 2 sigma
    expected = np.mean([math.exp(-25.0 / (2 * 100 * 200 * (2 * s) ** 2)) for s in COCO_17.sigmas])
    assert m.oks[shifted] == pytest.approx(expected, rel=1e-5)
    assert m.oks[same] == pytest.approx(1.0)
    assert m.score_diff[shifted] == pytest.approx(0.8 - 0.9) and m.score_diff[same] == pytest.approx(0.05)
    np.testing.assert_allclose(m.keypoint_score_diff[same], -0.2, atol=1e-6)

    ag = pose_agreement(cand, ref, COCO_17.sigmas_array)
    assert (ag.poses_a, ag.poses_b, ag.matched) == (3, 2, 2)
    assert ag.max_keypoint_px == pytest.approx(5.0, abs=1e-4)
    assert ag.mean_oks == pytest.approx((expected + 1.0) / 2, rel=1e-5)
    assert ag.max_score_diff == pytest.approx(0.2, abs=1e-6)


def test_zero_area_boxes_still_match_themselves():
    # Boxes clipped to the image edge can be lines; the same pose from two runs must still pair up.
    kp = np.full((2, 17, 3), 10, np.float32)
    p = _poses(kp, [0.5, 0.4], [[20, 480, 90, 480], [640, 0, 640, 480]])
    assert sorted(match_poses(p, p)) == [(0, 0), (1, 1)]


def test_bundle_against_itself_agrees_perfectly(kapao_t_bundle):
    res = compare_bundles(kapao_t_bundle, kapao_t_bundle, SAMPLES)
    s = res["summary"]
    assert s["images"] == len(sample_image_paths()) == len(res["per_image"])
    assert s["poses_a"] > 0, "the random-weight model should find poses on the samples (accuracy preset)"
    assert s["poses_a"] == s["poses_b"] == s["matched"] and s["unmatched_a"] == s["unmatched_b"] == 0
    assert (
        s["match_rate"] == 1.0 and s["mean_oks"] == pytest.approx(1.0) and s["min_oks"] == pytest.approx(1.0)
    )
    assert s["max_keypoint_px"] == 0.0 and s["p95_keypoint_px"] == 0.0 and s["mean_keypoint_px"] == 0.0
    assert s["mean_score_drift"] == 0.0 and s["max_score_diff"] == 0.0
    assert res["bundle_a"]["runtime"] == "onnxruntime" and res["bundle_a"]["input_size"] == [256, 256]
    json.dumps(res)  # JSON-able as it is

    arrays = compare_bundles(kapao_t_bundle, kapao_t_bundle, sample_images(), max_images=2)
    assert [r["image"] for r in arrays["per_image"]] == ["image_000000", "image_000001"]
    video = compare_bundles(kapao_t_bundle, kapao_t_bundle, sample_video_path(), max_images=3)
    assert video["summary"]["images"] == 3 and video["per_image"][0]["image"] == "people_000000"


def test_onnxruntime_and_openvino_agree(kapao_t_bundle):
    pytest.importorskip("openvino")
    res = compare_bundles(kapao_t_bundle, kapao_t_bundle, SAMPLES, runtime_b="openvino")
    s = res["summary"]
    assert (res["bundle_a"]["runtime"], res["bundle_b"]["runtime"]) == ("onnxruntime", "openvino")
    assert s["matched"] > 0 and s["match_rate"] >= 0.95
    assert s["mean_oks"] > 0.99 and s["p95_keypoint_px"] < 0.5 and s["max_score_diff"] < 1e-2
    # Score drift is B - A whichever bundle is the reference.
    flipped = compare_bundles(kapao_t_bundle, kapao_t_bundle, SAMPLES, runtime_b="openvino", reference="b")
    assert flipped["summary"]["mean_score_drift"] == pytest.approx(s["mean_score_drift"], abs=1e-9)
    assert len(worst_images(res, 2)) == 2


def test_skeleton_mismatch_is_refused(kapao_t_bundle, tmp_path):
    other = tmp_path / "crowdpose"
    shutil.copytree(kapao_t_bundle, other)
    manifest_path = other / "edgepose.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"]["skeleton"] = get_skeleton("crowdpose-14").to_dict()
    manifest_path.write_text(json.dumps(manifest, indent=2))  # the manifest itself carries no hash
    with pytest.raises(UsageError, match="different skeletons") as err:
        compare_bundles(kapao_t_bundle, other, SAMPLES)
    assert "\n" not in str(err.value) and "14 keypoints" in str(err.value)
    res = _cli(kapao_t_bundle, other, "--images", SAMPLES)
    assert res.returncode == 2 and res.stderr.strip().startswith("error: bundles ")
    assert len(res.stderr.strip().splitlines()) == 1


def test_thresholds_say_which_one_failed():
    s = {"images": 2, "poses_a": 4, "poses_b": 4, "matched": 4, "mean_oks": 0.97, "max_keypoint_px": 3.5}
    assert check_thresholds(s) is None and check_thresholds(s, max_keypoint_px=4, min_oks=0.9) is None
    assert check_thresholds(s, min_oks=0.98) == "mean OKS 0.9700 < --min-oks 0.98"
    both = check_thresholds(s, max_keypoint_px=1, min_oks=0.98)
    assert "--min-oks" in both and "--max-keypoint-px 1" in both
    none_matched = {**s, "matched": 0, "mean_oks": None, "max_keypoint_px": None}
    assert "no pose matched" in check_thresholds(none_matched, min_oks=0.5)


def test_cli_writes_json_and_fails_a_threshold(kapao_t_bundle, tmp_path):
    out = tmp_path / "cmp.json"
    res = _cli(
        kapao_t_bundle,
        kapao_t_bundle,
        "--images",
        SAMPLES,
        "--max-images",
        2,
        "--json",
        out,
        "--min-oks",
        1.01,
    )
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "agreement check failed: mean OKS 1.0000 < --min-oks 1.01"
    data = json.loads(out.read_text())
    assert data["summary"]["images"] == 2 and data["summary"]["match_rate"] == 1.0
    assert "match rate" in res.stdout and "keypoint px" in res.stdout and "worst images" in res.stdout

    ok = _cli(
        kapao_t_bundle,
        kapao_t_bundle,
        "--images",
        SAMPLES,
        "--max-images",
        1,
        "--min-oks",
        0.99,
        "--max-keypoint-px",
        0,
    )
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_cli_bad_images_is_one_line_error(kapao_t_bundle, tmp_path, kind):
    images = tmp_path / "imgs"
    if kind == "empty":
        images.mkdir()
    out = tmp_path / "cmp.json"
    res = _cli(kapao_t_bundle, kapao_t_bundle, "--images", images, "--json", out)
    assert res.returncode != 0 and not out.exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(images) in lines[0]
    with pytest.raises(InputError):
        compare_bundles(kapao_t_bundle, kapao_t_bundle, images)
