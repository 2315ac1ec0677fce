"""Synthetic people: geometry and visibility of single figures, frozen profiles, files on disk, video."""

from __future__ import annotations

import dataclasses
import json
import math

import cv2
import numpy as np
import pytest

from edgepose.data import figures as fg
from edgepose.data.coco import check_images, load_keypoint_annotations
from edgepose.data.synthetic import (
    PROFILES,
    SceneParams,
    generate_dataset,
    render_sample,
    sample_seed,
)
from edgepose.errors import UsageError
from edgepose.preprocess import read_image
from edgepose.skeletons import COCO_17

L_SHOULDER, R_SHOULDER, L_HIP, R_HIP = 5, 6, 11, 12


def _figure(yaw: float, stature: float = 300.0, at=(320.0, 240.0), seed: int = 3) -> fg.PosedFigure:
    """A standing figure with arms and legs down, turned by ``yaw``."""
    rng = np.random.default_rng(seed)
    pose = fg.Pose(
        yaw=yaw, roll=0.0, lean=0.0, bend=0.0, twist=0.0, head=(0.0, 0.0, 0.0),
        shoulder_flex=(0.0, 0.0), shoulder_abd=(0.15, 0.15), arm_twist=(0.0, 0.0), elbow=(0.2, 0.2),
        hip_flex=(0.0, 0.0), hip_abd=(0.05, 0.05), knee=(0.05, 0.05),
    )  # fmt: skip
    fig = fg.pose_figure(fg.sample_build(rng), pose, fg.sample_appearance(rng), stature)
    fig.translate(*at)
    return fig


def _draw(*figs: fg.PosedFigure, size=(640, 480)) -> tuple[np.ndarray, list[np.ndarray]]:
    img = np.full((size[1], size[0], 3), 128, np.uint8)
    labels = np.zeros((size[1], size[0]), np.uint8)
    for i, f in enumerate(figs):
        fg.paint_figure(img, labels, f, i)
    return img, [fg.keypoint_visibility(labels, f, i) for i, f in enumerate(figs)]


# ----------------------------------------------------------------------------------- single figures
def test_left_and_right_follow_the_view():
    _, (front,) = _draw(_figure(0.0))
    _, (back,) = _draw(_figure(math.pi))
    # Facing the camera, the person's left is on the image's right; from behind it is the other way.
    for a, b in ((L_SHOULDER, R_SHOULDER), (L_HIP, R_HIP), (1, 2), (3, 4), (15, 16)):
        assert front[a, 0] > front[b, 0]
    for a, b in ((L_SHOULDER, R_SHOULDER), (L_HIP, R_HIP)):
        assert back[a, 0] < back[b, 0]
    assert (front[:, 2] == 2).all()  # everything is seen from the front
    assert front[0, 1] < front[5, 1] < front[11, 1] < front[13, 1] < front[15, 1]  # head above feet


def test_face_points_turned_away_are_not_labelled():
    _, (back,) = _draw(_figure(math.pi))
    assert (back[:3] == 0).all()  # nose and eyes: COCO leaves them out (0, 0, 0)
    assert (back[3:5, 2] > 0).all()  # both ears are still annotated from behind
    assert (back[5:, 2] > 0).all()


def test_side_view_hides_the_far_side():
    # yaw +90 deg: the person faces the image's right and shows the camera their right side.
    _, (side,) = _draw(_figure(math.pi / 2))
    assert side[R_SHOULDER, 2] == 2 and side[L_SHOULDER, 2] == 1
    assert side[R_HIP, 2] == 2 and side[L_HIP, 2] == 1
    assert side[2, 2] == 2 and side[1, 2] == 0  # near eye seen, far eye turned away
    assert side[0, 0] > side[4, 0]  # the nose points the way the person faces


def test_people_hidden_behind_others_have_visibility_one():
    back_fig = _figure(0.0, stature=150.0, at=(320.0, 240.0))
    front_fig = _figure(0.0, stature=330.0, at=(320.0, 250.0), seed=4)
    _, (back, front) = _draw(back_fig, front_fig)
    torso = [L_SHOULDER, R_SHOULDER, L_HIP, R_HIP]
    assert (back[torso, 2] == 1).all()
    assert (front[torso, 2] == 2).all()
    # drawn the other way round, the small person is in front and fully visible
    _, (front2, back2) = _draw(front_fig, back_fig)
    assert (back2[torso, 2] == 2).all()


def test_truncated_keypoints_are_zeroed():
    fig = _figure(0.0, at=(320.0, 420.0))  # legs below the bottom edge
    _, (kp,) = _draw(fig)
    outside = fig.keypoints[:, 1] > 479.5
    assert outside.any() and not outside.all()
    assert (kp[outside] == 0).all()
    assert (kp[~outside, 2] > 0).all()


# ----------------------------------------------------------------------------------- samples
def test_render_sample_is_deterministic_and_well_formed():
    img, people = render_sample(sample_seed(5, 0))
    img2, people2 = render_sample(sample_seed(5, 0))
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8
    assert np.array_equal(img, img2) and len(people) == len(people2)
    assert not np.array_equal(img, render_sample(sample_seed(5, 1))[0])
    assert not np.array_equal(img, render_sample(sample_seed(5, 0), "train-v1")[0])  # profile is in the seed
    assert 1 <= len(people) <= 8
    for p, q in zip(people, people2):
        assert np.array_equal(p.keypoints, q.keypoints) and p.bbox == q.bbox
        assert p.keypoints.shape == (17, 3) and p.keypoints.dtype == np.float32
        v = p.keypoints[:, 2]
        assert set(np.unique(v)) <= {0.0, 1.0, 2.0} and p.num_keypoints > 0
        assert (p.keypoints[v == 0, :2] == 0).all()
        x, y = p.keypoints[v > 0, 0], p.keypoints[v > 0, 1]
        assert (x >= -0.5).all() and (x < 639.5).all() and (y >= -0.5).all() and (y < 479.5).all()
        bx, by, bw, bh = p.bbox
        assert bx >= 0 and by >= 0 and bx + bw <= 640 and by + bh <= 480 and 16 <= p.area <= bw * bh


def test_seed_scheme_and_bad_arguments():
    assert sample_seed(2, 5) == 2 * 1_000_003 + 5
    with pytest.raises(UsageError, match="non-negative"):
        render_sample(-1)
    with pytest.raises(UsageError, match="val-v1"):
        render_sample(0, "val-v9")


def test_val_v1_is_frozen():
    assert PROFILES["val-v1"].scene == SceneParams(
        width=640, height=480, min_people=1, max_people=8, min_stature=48.0, max_stature=400.0,
        truncation_p=0.25, group_p=0.35, occluder_p=0.15, max_roll=0.2, big_roll_p=0.0, clutter=(6, 24),
        distractors=(1, 6), noise=(0.03, 0.12), blur_p=0.5, photometric=0.0, jpeg_p=0.0,
    )  # fmt: skip
    train = PROFILES["train-v1"].scene
    assert (
        dataclasses.replace(train, big_roll_p=0.0, blur_p=0.5, photometric=0.0, jpeg_p=0.0)
        == PROFILES["val-v1"].scene
    )


def test_val_v1_statistics_are_pinned():
    """40 images of stream 0. Any change to the generator moves these; then it is a new profile."""
    counts, heights, statures, vis, means = [], [], [], [], []
    for i in range(40):
        img, people = render_sample(sample_seed(0, i), "val-v1")
        counts.append(len(people))
        means.append(img.mean())
        heights += [p.bbox[3] for p in people]
        statures += [p.stature for p in people]
        vis.append(np.concatenate([p.keypoints[:, 2] for p in people]))
    v = np.concatenate(vis)
    assert (min(counts), max(counts), sum(counts)) == PINNED["people"]
    assert min(statures) >= 48 and max(statures) <= 400
    assert np.mean(statures) == pytest.approx(PINNED["mean_stature"], abs=0.05)
    assert (min(heights), max(heights)) == pytest.approx(PINNED["bbox_h_range"], abs=1.0)
    assert np.mean(heights) == pytest.approx(PINNED["mean_bbox_h"], abs=0.05)
    frac = [float(np.mean(v == k)) for k in (0, 1, 2)]
    assert frac == pytest.approx(PINNED["v_fraction"], abs=5e-4)
    assert np.mean(means) == pytest.approx(PINNED["mean_intensity"], abs=0.05)


PINNED = {  # measured with generator version 1; people: (min, max, total) over the 40 images
    "people": (1, 8, 168),
    "mean_stature": 178.304,
    "bbox_h_range": (9.0, 431.0),
    "mean_bbox_h": 159.78,
    "v_fraction": [0.13796, 0.20238, 0.65966],
    "mean_intensity": 106.467,
}


# ----------------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "val"
    seen = []
    generate_dataset(out, 4, seed=7, video_seconds=1.0, progress=lambda *counts: seen.append(counts))
    assert seen[-1] == (34, 34) and len(seen) == 34
    return out


def test_dataset_layout_and_coco_fields(dataset):
    names = sorted(p.name for p in dataset.iterdir())
    assert names == ["annotations.json", "images", "video.mp4", "video_annotations.json"]
    ann = load_keypoint_annotations(dataset / "annotations.json", num_keypoints=17)
    paths = check_images(ann, dataset / "images")
    assert [p.name for p in paths] == ["000000.png", "000001.png", "000002.png", "000003.png"]
    assert ann["info"]["profile"] == "val-v1" and ann["info"]["generator_version"] == "1"
    (cat,) = ann["categories"]
    assert cat["keypoints"] == list(COCO_17.keypoints)
    assert cat["skeleton"][0] == [16, 14] and len(cat["skeleton"]) == 19  # COCO's 1-based skeleton
    assert [a["id"] for a in ann["annotations"]] == list(range(1, len(ann["annotations"]) + 1))
    for a in ann["annotations"]:
        kp = np.asarray(a["keypoints"]).reshape(17, 3)
        assert a["num_keypoints"] == int((kp[:, 2] > 0).sum()) and a["iscrowd"] == 0 and a["category_id"] == 1
        assert a["area"] > 0 and len(a["bbox"]) == 4


def test_files_are_exactly_what_render_sample_returns(dataset):
    ann = json.loads((dataset / "annotations.json").read_text())
    for entry in ann["images"]:
        img, people = render_sample(sample_seed(7, entry["id"]))
        assert np.array_equal(read_image(dataset / "images" / entry["file_name"]), img)  # lossless PNG
        mine = [a for a in ann["annotations"] if a["image_id"] == entry["id"]]
        assert len(mine) == len(people)
        for a, p in zip(mine, people):
            np.testing.assert_allclose(np.reshape(a["keypoints"], (17, 3)), p.keypoints, atol=0.006)


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = generate_dataset(tmp_path / "a", 3, seed=11)
    b = generate_dataset(tmp_path / "b", 3, seed=11)
    c = generate_dataset(tmp_path / "c", 3, seed=12)
    for name in ("000000.png", "000001.png", "000002.png"):
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()
        assert (a / "images" / name).read_bytes() != (c / "images" / name).read_bytes()
    assert (a / "annotations.json").read_bytes() == (b / "annotations.json").read_bytes()


def test_output_folder_rules(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not an empty folder"):
        generate_dataset(busy, 1, seed=0)
    assert sorted(p.name for p in busy.iterdir()) == ["x.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (generate_dataset(empty, 1, seed=0) / "images" / "000000.png").is_file()

    def fail(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "half", 2, seed=0, progress=fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "empty"]  # no half-written folder left
    with pytest.raises(UsageError):
        generate_dataset(tmp_path / "none", 0, seed=0)


def test_video_and_its_annotations(dataset):
    cap = cv2.VideoCapture(str(dataset / "video.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(30.0)
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(frame)
        ok, frame = cap.read()
    cap.release()
    assert len(frames) == 30 and frames[0].shape == (480, 640, 3)
    ann = load_keypoint_annotations(dataset / "video_annotations.json", num_keypoints=17)
    assert ann["info"]["fps"] == 30 and len(ann["images"]) == 30
    by_frame: dict[int, list[dict]] = {}
    for a in ann["annotations"]:
        by_frame.setdefault(a["image_id"], []).append(a)
    centres = []
    for f in range(30):
        inside = []
        for a in by_frame[f]:
            x, y, w, h = a["bbox"]
            kp = np.reshape(a["keypoints"], (17, 3))
            if x > 0 and y > 0 and x + w < 640 and y + h < 480 and (kp[5:, 2] > 0).all():
                inside.append(a)
        assert inside, f"frame {f} has no person fully inside"
        (track0,) = [a for a in by_frame[f] if a["track_id"] == 0]
        hips = np.reshape(track0["keypoints"], (17, 3))[[L_HIP, R_HIP]]
        assert (hips[:, 2] > 0).all()
        centres.append(hips[:, :2].mean(0))
    step = np.abs(np.diff(np.asarray(centres), axis=0)).max()
    assert 0 < step < 10  # smooth motion: a few pixels per frame
