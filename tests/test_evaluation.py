"""OKS evaluation with pycocotools and COCO keypoint file validation."""

from __future__ import annotations

import copy
import hashlib
import json
import math

import cv2
import numpy as np
import pytest

from edgepose.data.coco import check_images, load_keypoint_annotations, validate_keypoint_annotations
from edgepose.data.synthetic import generate_dataset
from edgepose.errors import DataError
from edgepose.evaluation import STAT_NAMES, evaluate, evaluate_results, ground_truth_as_results
from edgepose.poses import Poses
from edgepose.preprocess import read_image
from edgepose.skeletons import COCO_17, CROWDPOSE_14

COCO_SIGMAS = COCO_17.sigmas_array
CROWD_SIGMAS = CROWDPOSE_14.sigmas_array


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("eval") / "val", 6, seed=3)


def _crowdpose_set() -> dict:
    """Two images, three people, 14 keypoints (two of them unlabelled per person), hand-made."""
    rng = np.random.default_rng(0)
    anns = []
    people = [(1, 100, 120, 150), (1, 300, 140, 110), (2, 200, 200, 220)]
    for ann_id, (image_id, cx, cy, h) in enumerate(people, 1):
        kp = np.zeros((14, 3))
        kp[:, 0] = cx + rng.uniform(-0.25, 0.25, 14) * h
        kp[:, 1] = cy + np.linspace(-0.5, 0.5, 14) * h
        kp[:, 2] = 2
        kp[[3, 9], :] = 0  # not labelled
        x0, y0 = kp[kp[:, 2] > 0, :2].min(0)
        x1, y1 = kp[kp[:, 2] > 0, :2].max(0)
        bbox = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        area = 0.6 * bbox[2] * bbox[3]
        anns.append({"id": ann_id, "image_id": image_id, "category_id": 1, "keypoints": kp.ravel().tolist(),
                     "num_keypoints": 12, "bbox": bbox, "area": area, "iscrowd": 0})  # fmt: skip
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 400, "height": 300},
            {"id": 2, "file_name": "b.jpg", "width": 400, "height": 400},
        ],
        "annotations": anns,
        "categories": [
            {
                "id": 1,
                "name": "person",
                "keypoints": list(CROWDPOSE_14.keypoints),
                "skeleton": [[a + 1, b + 1] for a, b in CROWDPOSE_14.limbs],
            }
        ],
    }


def _shift_to_oks(annotations: dict, sigmas: np.ndarray, oks: float) -> list[dict]:
    """GT as results, each keypoint moved sideways so that its OKS term (so each person's OKS) is ``oks``."""
    areas = {a["id"]: a["area"] for a in annotations["annotations"]}
    gts = [a for a in annotations["annotations"] if a["num_keypoints"] > 0]
    results = ground_truth_as_results(annotations)
    for r, gt in zip(results, gts):
        kp = np.reshape(r["keypoints"], (-1, 3))
        # OKS term: exp(-d^2 / (2 * area * (2 sigma)^2)) = oks
        kp[:, 0] += np.sqrt(-math.log(oks) * 2 * areas[gt["id"]] * (2 * sigmas) ** 2)
        r["keypoints"] = kp.ravel().tolist()
    return results


# ----------------------------------------------------------------------------------- AP values
def test_ground_truth_scores_one_on_synthetic_data(synth):
    ann = load_keypoint_annotations(synth / "annotations.json", 17)
    results = ground_truth_as_results(ann)
    assert len(results) == sum(a["num_keypoints"] > 0 for a in ann["annotations"]) > 6
    assert all(r["score"] == 1.0 for r in results)
    stats = evaluate_results(synth / "annotations.json", results, COCO_SIGMAS)
    assert list(stats) == list(STAT_NAMES)
    assert stats == pytest.approx(dict.fromkeys(STAT_NAMES, 1.0))


def test_ground_truth_scores_one_on_a_crowdpose_skeleton():
    data = _crowdpose_set()
    stats = evaluate_results(data, ground_truth_as_results(data), CROWD_SIGMAS)
    assert stats == pytest.approx(dict.fromkeys(STAT_NAMES, 1.0))
    large_only = evaluate_results(data, ground_truth_as_results(data), CROWD_SIGMAS, image_ids=[2])
    assert large_only["AP"] == pytest.approx(1.0) and large_only["APL"] == pytest.approx(1.0)
    assert large_only["APM"] == 0.0  # no medium-sized person there: pycocotools' -1 is reported as 0


@pytest.mark.parametrize("oks,ap", [(0.97, 1.0), (0.92, 0.9), (0.72, 0.5), (0.52, 0.1), (0.45, 0.0)])
def test_known_oks_gives_known_ap(oks, ap):
    """Every match at OKS ``oks`` passes exactly those thresholds (0.50, 0.55, ...) that are <= oks."""
    data = _crowdpose_set()
    stats = evaluate_results(data, _shift_to_oks(data, CROWD_SIGMAS, oks), CROWD_SIGMAS)
    assert stats["AP"] == pytest.approx(ap, abs=1e-6)
    assert stats["AP50"] == (1.0 if oks > 0.5 else 0.0) and stats["AP75"] == (1.0 if oks > 0.75 else 0.0)


def test_known_oks_on_synthetic_data(synth):
    data = load_keypoint_annotations(synth / "annotations.json", 17)
    stats = evaluate_results(data, _shift_to_oks(data, COCO_SIGMAS, 0.72), COCO_SIGMAS)
    assert stats["AP"] == pytest.approx(0.5, abs=1e-6) and stats["AP50"] == 1.0 and stats["AP75"] == 0.0


def test_ap_falls_monotonically_with_keypoint_noise(synth):
    data = load_keypoint_annotations(synth / "annotations.json", 17)
    scale = {a["id"]: math.sqrt(a["area"]) for a in data["annotations"]}
    gts = [a for a in data["annotations"] if a["num_keypoints"] > 0]
    aps = []
    for noise in (0.0, 0.02, 0.05, 0.1, 0.2):
        rng = np.random.default_rng(0)
        results = ground_truth_as_results(data)
        for r, gt in zip(results, gts):
            kp = np.reshape(r["keypoints"], (17, 3))
            kp[:, :2] += rng.normal(0.0, noise * scale[gt["id"]], (17, 2))
            r["keypoints"] = kp.ravel().tolist()
        aps.append(evaluate_results(data, results, COCO_SIGMAS)["AP"])
    assert aps[0] == 1.0 and aps[-1] < 0.2
    assert all(a > b for a, b in zip(aps, aps[1:])), aps


def test_empty_results_and_image_subsets(synth):
    path = synth / "annotations.json"
    assert evaluate_results(path, [], COCO_SIGMAS) == dict.fromkeys(STAT_NAMES, 0.0)
    results = ground_truth_as_results(path)
    first = [r for r in results if r["image_id"] == 0]
    partial = evaluate_results(path, first, COCO_SIGMAS)
    assert partial["AR"] < 1.0  # the other images' people were missed
    assert evaluate_results(path, first, COCO_SIGMAS, image_ids=[0])["AP"] == 1.0
    assert evaluate_results(path, first, COCO_SIGMAS, image_ids=[1]) == dict.fromkeys(STAT_NAMES, 0.0)


def test_evaluate_runs_a_predictor_over_the_images(synth):
    ann = load_keypoint_annotations(synth / "annotations.json", 17)
    truth: dict[str, Poses] = {}
    for entry, path in zip(ann["images"], check_images(ann, synth / "images")):
        people = [a for a in ann["annotations"] if a["image_id"] == entry["id"] and a["num_keypoints"] > 0]
        kp = np.array([np.reshape(a["keypoints"], (17, 3)) for a in people], np.float32).reshape(-1, 17, 3)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in people)]).reshape(-1, 4)
        poses = Poses(kp, np.ones(len(people)), boxes, np.zeros((len(people), 17), bool))
        truth[hashlib.sha1(read_image(path).tobytes()).hexdigest()] = poses

    def oracle(img: np.ndarray) -> Poses:
        return truth[hashlib.sha1(img.tobytes()).hexdigest()]

    assert evaluate(oracle, synth / "annotations.json", synth / "images", COCO_SIGMAS)["AP"] == 1.0
    blind = evaluate(lambda img: Poses.empty(17), synth / "annotations.json", synth / "images", COCO_SIGMAS)
    assert blind == dict.fromkeys(STAT_NAMES, 0.0)
    with pytest.raises(DataError, match="predicts 17 keypoints but the annotations have 14"):
        data = _crowdpose_set()
        data["images"] = [dict(ann["images"][0], id=1)]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 1]
        evaluate(oracle, data, synth / "images", CROWD_SIGMAS)


# ----------------------------------------------------------------------------------- bad inputs
def test_bad_annotation_files(tmp_path, synth):
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match="does not exist"):
        load_keypoint_annotations(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        evaluate_results(bad, [], COCO_SIGMAS)
    det = tmp_path / "det.json"
    det.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25}],
        "categories": [{"id": 1, "name": "person"}],
    }))  # fmt: skip
    with pytest.raises(DataError, match="detection-only"):
        load_keypoint_annotations(det)
    with pytest.raises(DataError, match="not a COCO annotation file"):
        validate_keypoint_annotations({"images": []})
    crowd = tmp_path / "crowd.json"
    crowd.write_text(json.dumps(_crowdpose_set()))
    with pytest.raises(DataError, match="annotations have 14 keypoints but the skeleton has 17"):
        load_keypoint_annotations(crowd, num_keypoints=17)
    with pytest.raises(DataError, match="14 keypoints but the skeleton has 17"):
        evaluate_results(crowd, [], COCO_SIGMAS)
    data = _crowdpose_set()
    data["annotations"][0]["image_id"] = 99
    with pytest.raises(DataError, match="image_id 99"):
        validate_keypoint_annotations(data)


def test_missing_fields_are_filled_for_pycocotools():
    data = _crowdpose_set()
    for a in data["annotations"]:
        for key in ("bbox", "area", "iscrowd", "num_keypoints"):
            del a[key]
    original = copy.deepcopy(data)
    fixed = validate_keypoint_annotations(data, 14)
    assert data == original  # the caller's dict is left alone
    a = fixed["annotations"][0]
    assert a["num_keypoints"] == 12 and a["iscrowd"] == 0
    assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
    assert evaluate_results(data, ground_truth_as_results(data), CROWD_SIGMAS)["AP"] == 1.0


def test_bad_results(synth):
    path = synth / "annotations.json"
    good = ground_truth_as_results(path)
    with pytest.raises(DataError, match="result has 14 keypoints but the skeleton has 17"):
        evaluate_results(path, [dict(good[0], keypoints=good[0]["keypoints"][:42])], COCO_SIGMAS)
    with pytest.raises(DataError, match="image_id 12345"):
        evaluate_results(path, [dict(good[0], image_id=12345)], COCO_SIGMAS)
    with pytest.raises(DataError, match="non-finite"):
        evaluate_results(path, [dict(good[0], keypoints=[math.nan] * 51)], COCO_SIGMAS)


def test_missing_and_empty_image_folders(tmp_path, synth):
    ann = load_keypoint_annotations(synth / "annotations.json")
    folder = tmp_path / "imgs"
    folder.mkdir()
    with pytest.raises(DataError, match="has no images"):
        check_images(ann, folder)
    for entry in ann["images"][:4]:
        cv2.imwrite(str(folder / entry["file_name"]), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"2 of 6 images .* missing .*first: 000004\.png"):
        check_images(ann, folder)
    with pytest.raises(DataError, match="does not exist"):
        check_images(ann, tmp_path / "nowhere")
    with pytest.raises(DataError, match="2 of 6"):
        evaluate(lambda img: Poses.empty(17), ann, folder, COCO_SIGMAS)
