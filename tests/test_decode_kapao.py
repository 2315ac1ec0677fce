"""KAPAO decoder: numba == numpy reference, hand-built tensors with known answers, grid decode == torch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepose.decoders.kapao import PRESETS, KapaoHead, KapaoParams, decode, decode_grid, merge_flip, warmup
from edgepose.decoders.kapao_reference import decode_reference, nms_reference
from edgepose.decoders.nms import batched_nms
from edgepose.errors import BundleError, UsageError
from edgepose.preprocess import LetterboxMeta

ANCHORS = [  # the official *6 yaml anchors, (w, h) per level
    [[19, 27], [44, 40], [38, 94]],
    [[96, 68], [86, 152], [180, 137]],
    [[140, 301], [303, 264], [238, 542]],
    [[436, 615], [739, 380], [925, 792]],
]
NAMES = ("p3", "p4", "p5", "p6")
# 1280x960 letterboxed into 640x640: gain 0.5, 80 px of padding on top.
META = LetterboxMeta(0.5, (0.0, 80.0), (640, 640), (1280, 960))
# 1000x500 letterboxed into 640x384: gain 0.64, 32 px on top.
META_RECT = LetterboxMeta(0.64, (0.0, 32.0), (640, 384), (1000, 500))


def make_head(k: int = 17) -> KapaoHead:
    return KapaoHead((8, 16, 32, 64), np.array(ANCHORS, np.float64), k, NAMES)


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    warmup(make_head(17))


def sig(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-float(np.float32(t))))


def orig(x: float, y: float) -> tuple[float, float]:
    return x / META.gain, (y - META.pad[1]) / META.gain


def assert_same(a, b) -> None:
    assert len(a) == len(b)
    assert a.keypoints.shape == b.keypoints.shape
    np.testing.assert_allclose(a.keypoints, b.keypoints, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(a.fused, b.fused)


def both(levels, params, head, meta=META):
    """Decode with the numba path and the reference; assert they agree; return the numba result."""
    a = decode(levels, meta, params, head)
    assert_same(a, decode_reference(levels, meta, params, head))
    return a


def random_levels(seed: int, head: KapaoHead, w: int = 640, h: int = 384) -> list[np.ndarray]:
    """Mostly hopeless cells plus ~3% confident ones, so both presets see a few hundred candidates."""
    rng = np.random.default_rng(seed)
    out = []
    for s in head.strides:
        lv = rng.normal(0.0, 1.0, (1, head.na, h // s, w // s, head.no)).astype(np.float32)
        shape = lv.shape[:4]
        obj = rng.normal(-9.0, 2.5, shape)
        hot = rng.random(shape) < 0.03
        obj[hot] = rng.normal(2.0, 2.0, int(hot.sum()))
        lv[..., 4] = obj
        lv[..., 5 : 5 + head.nc] = rng.normal(0.0, 2.0, shape + (head.nc,))
        out.append(lv)
    return out


# ---------------------------------------------------------------- hand-built tensors


def blank(head: KapaoHead, w: int = 640, h: int = 640) -> list[np.ndarray]:
    """Every cell hopeless (obj and class logits -20); box and keypoint logits 0."""
    levels = []
    for s in head.strides:
        lv = np.zeros((1, head.na, h // s, w // s, head.no), np.float32)
        lv[..., 4 : 5 + head.nc] = -20.0
        levels.append(lv)
    return levels


def put(levels, head, lvl, a, gy, gx, cls, logit, box=(0.0, 0.0, 0.0, 0.0), kp=0.0) -> float:
    """Make one confident cell of class ``cls``; returns its score sigma(logit)^2."""
    cell = levels[lvl][0, a, gy, gx]
    cell[:4] = box
    cell[4] = logit
    cell[5 + cls] = logit
    cell[5 + head.nc :] = kp
    return sig(logit) ** 2


@pytest.mark.parametrize("preset", ["accuracy", "realtime"])
def test_no_candidates_gives_empty_poses(preset):
    head = make_head()
    poses = both(blank(head), PRESETS[preset], head)
    assert len(poses) == 0 and poses.keypoints.shape == (0, 17, 3) and poses.fused.shape == (0, 17)


@pytest.mark.parametrize("preset", ["accuracy", "realtime"])
def test_one_person_lands_where_the_formula_says(preset):
    head = make_head()
    levels = blank(head)
    # P3 cell (gy=20, gx=10), anchor 1 (44 x 40). Box logits 0: centre (g + 0.5) * 8, size = anchor.
    # Keypoint logits 0 put every keypoint on the cell corner g * 8; +/-30 moves it by +/-2 anchors.
    score = put(levels, head, 0, 1, 20, 10, 0, 4.0)
    kp = levels[0][0, 1, 20, 10, 5 + head.nc :]
    kp[0], kp[3] = 30.0, -30.0  # keypoint 0: x + 88; keypoint 1: y - 80
    poses = both(levels, PRESETS[preset], head)
    assert len(poses) == 1
    np.testing.assert_allclose(poses.scores, [score], atol=1e-6)
    x1, y1 = orig(84 - 22, 164 - 20)
    x2, y2 = orig(84 + 22, 164 + 20)
    np.testing.assert_allclose(poses.boxes[0], [x1, y1, x2, y2], atol=1e-4)
    expected = np.tile(orig(80, 160), (17, 1))
    expected[0] = orig(80 + 88, 160)
    expected[1] = orig(80, 160 - 80)
    np.testing.assert_allclose(poses.keypoints[0, :, :2], expected, atol=1e-4)
    assert not poses.fused.any() and not poses.keypoints[0, :, 2].any()


@pytest.mark.parametrize(("mode", "clipped"), [("all", 17), ("official", 2), ("none", 0)])
def test_keypoint_clipping_modes(mode, clipped):
    head = make_head()
    levels = blank(head)
    # P3 cell (gy=11, gx=1), anchor 2 (38 x 94); all keypoints at -2 anchors: (8 - 76, 88 - 188) input.
    put(levels, head, 0, 2, 11, 1, 0, 4.0, kp=-30.0)
    poses = both(levels, PRESETS["realtime"].replace(clip_keypoints=mode), head)
    x, y = orig(8 - 76, 88 - 188)
    expected = np.tile([x, y], (17, 1))
    expected[:clipped] = 0.0  # the official scale_coords clips only columns 0-3: keypoints 0 and 1
    np.testing.assert_allclose(poses.keypoints[0, :, :2], expected, atol=1e-4)
    assert (poses.boxes[0] >= 0).all()


@pytest.mark.parametrize("preset", ["accuracy", "realtime"])
def test_overlapping_candidates_one_survivor_per_class(preset):
    head = make_head()
    levels = blank(head)
    # A 3x3 block of P5 cells (stride 32) around (10, 10) whose boxes all overlap heavily: persons on
    # anchor 0 with w, h = 4 anchors, keypoint objects of class 3 (keypoint type 2) on anchor 1 with
    # w, h = 1.55 anchors (kept inside the image: fusion uses the centre of the *clipped* box, as val.py).
    for gy in range(9, 12):
        for gx in range(9, 12):
            bonus = 1.0 if (gy, gx) == (10, 10) else -abs(gy - 10) * 0.1 - abs(gx - 10) * 0.2
            put(levels, head, 2, 0, gy, gx, 0, 4.0 + bonus, box=(0.0, 0.0, 30.0, 30.0))
            put(levels, head, 2, 1, gy, gx, 3, 3.0 + bonus, box=(0.0, 0.0, 0.5, 0.5))
    poses = both(levels, PRESETS[preset], head)
    assert len(poses) == 1
    np.testing.assert_allclose(poses.scores, [sig(5.0) ** 2], atol=1e-6)
    c = 10.5 * 32
    x1, y1 = orig(c - 2 * 140, c - 2 * 301)
    x2, y2 = orig(c + 2 * 140, c + 2 * 301)
    np.testing.assert_allclose(
        poses.boxes[0], np.clip([x1, y1, x2, y2], 0, [1280, 960, 1280, 960]), atol=1e-4
    )
    # The one surviving keypoint object (the middle cell) lands on keypoint 2, 45 px from the regressed one.
    assert poses.fused[0].tolist() == [k == 2 for k in range(17)]
    np.testing.assert_allclose(poses.keypoints[0, 2], [*orig(c, c), sig(4.0) ** 2], atol=1e-4)
    np.testing.assert_allclose(poses.keypoints[0, 3], [*orig(c - 16, c - 16), 0.0], atol=1e-4)


def _spread_cells(levels, head, n, cls, logit0, step=0.1, row=10, first_col=2):
    """``n`` non-overlapping P3 cells 4 apart (32 px) with decreasing scores; returns scores best first."""
    return [put(levels, head, 0, 0, row, first_col + 4 * i, cls, logit0 - step * i) for i in range(n)]


def test_max_det_two_pass_keeps_the_best_per_pass():
    head = make_head()
    levels = blank(head)
    person_scores = _spread_cells(levels, head, 12, 0, 3.0)
    _spread_cells(levels, head, 10, 1, 6.0, row=30)
    poses = both(levels, PRESETS["accuracy"].replace(max_det=5), head)  # persons and kp objects: 5 each
    np.testing.assert_allclose(poses.scores, person_scores[:5], atol=1e-6)
    assert len(both(levels, PRESETS["accuracy"], head)) == 12


def test_max_det_combined_path_counts_every_class_as_official():
    head = make_head()
    levels = blank(head)
    person_scores = _spread_cells(levels, head, 12, 0, 3.0)
    _spread_cells(levels, head, 10, 1, 6.0, row=30)  # ten keypoint objects, all above every person
    params = PRESETS["realtime"]
    assert params.combined_nms
    assert len(both(levels, params.replace(max_det=5), head)) == 0
    np.testing.assert_allclose(
        both(levels, params.replace(max_det=12), head).scores, person_scores[:2], atol=1e-6
    )


@pytest.mark.parametrize("preset", ["accuracy", "realtime"])
def test_keypoint_object_without_nearby_pose_is_not_fused(preset):
    head = make_head()
    levels = blank(head)
    put(levels, head, 0, 0, 20, 10, 0, 4.0)  # keypoints at (80, 160) input = (160, 160) original
    put(levels, head, 0, 0, 60, 70, 6, 4.0)  # type 5, centre (564, 484): far away
    put(levels, head, 0, 0, 20, 11, 8, 4.0)  # type 7, centre (92, 164): 25.3 px away in the original
    poses = both(levels, PRESETS[preset], head)
    assert poses.fused[0].tolist() == [k == 7 for k in range(17)]
    assert poses.keypoints[0, 5, 2] == 0.0
    np.testing.assert_allclose(poses.keypoints[0, 5, :2], orig(80, 160), atol=1e-4)
    np.testing.assert_allclose(poses.keypoints[0, 7], [*orig(92, 164), sig(4.0) ** 2], atol=1e-4)


def test_low_scoring_person_takes_no_keypoint_objects():
    head = make_head()
    levels = blank(head)
    put(levels, head, 0, 0, 20, 10, 0, 0.5)  # score 0.388: a candidate in the accuracy preset
    put(levels, head, 0, 0, 20, 11, 8, 4.0)
    params = PRESETS["accuracy"]
    assert not both(levels, params.replace(conf_kp_person=0.4), head).fused.any()
    assert both(levels, params.replace(conf_kp_person=0.38), head).fused[0, 7]


@pytest.mark.parametrize("a_first", [True, False])
def test_fusion_tie_between_equidistant_persons_goes_to_the_first_in_nms_order(a_first):
    head = make_head()
    levels = blank(head)
    # Person A keypoints at x=160, person B at x=184 (input); the keypoint object centre is x=172: a tie.
    put(levels, head, 0, 0, 20, 20, 0, 4.0 if a_first else 3.0)
    put(levels, head, 0, 0, 20, 23, 0, 3.0 if a_first else 4.0)
    put(levels, head, 0, 0, 20, 21, 4, 5.0)  # type 3 at (172, 164)
    poses = both(levels, PRESETS["accuracy"], head)
    assert len(poses) == 2
    assert poses.fused[:, 3].tolist() == [True, False]  # the first pose in NMS order, whichever it is
    np.testing.assert_allclose(poses.boxes[0, 0], orig(164 if a_first else 188, 0)[0] - 19, atol=1e-4)
    np.testing.assert_allclose(poses.keypoints[0, 3], [*orig(172, 164), sig(5.0) ** 2], atol=1e-4)
    np.testing.assert_allclose(poses.keypoints[1, 3], [*orig(184 if a_first else 160, 160), 0.0], atol=1e-4)


def test_fusion_equal_confidence_does_not_overwrite():
    head = make_head()
    levels = blank(head)
    put(levels, head, 0, 0, 20, 12, 0, 4.0)  # keypoints at (96, 160)
    put(levels, head, 0, 0, 20, 11, 2, 3.0)  # same score, same type; NMS order: lower cell index first
    put(levels, head, 0, 0, 20, 13, 2, 3.0)  # 32 px from the moved keypoint: in range, but not better
    poses = both(levels, PRESETS["accuracy"], head)
    np.testing.assert_allclose(poses.keypoints[0, 1], [*orig(92, 164), sig(3.0) ** 2], atol=1e-4)
    levels[0][0, 0, 20, 13, 4] = levels[0][0, 0, 20, 13, 5 + 2] = 3.5  # now the second one is better
    poses = both(levels, PRESETS["accuracy"], head)
    np.testing.assert_allclose(poses.keypoints[0, 1], [*orig(108, 164), sig(3.5) ** 2], atol=1e-4)


def test_fusion_sees_keypoints_moved_by_earlier_objects():
    head = make_head()
    levels = blank(head)
    put(levels, head, 0, 0, 20, 10, 0, 4.0)  # A: keypoints at (80, 160)
    put(levels, head, 0, 0, 20, 30, 0, 3.5)  # B: keypoints at (240, 160)
    put(levels, head, 0, 0, 20, 11, 1, 5.0)  # type 0 at (92, 164): moves A's keypoint 0 there
    put(levels, head, 0, 0, 20, 20, 1, 3.0)  # type 0 at (164, 164): nearer B than A's *original* keypoint,
    # but nearer A's *moved* keypoint, whose score it does not beat: nobody takes it (val.py semantics).
    poses = both(levels, PRESETS["accuracy"].replace(overwrite_tol=500.0), head)
    assert poses.fused[:, 0].tolist() == [True, False]
    np.testing.assert_allclose(poses.keypoints[0, 0], [*orig(92, 164), sig(5.0) ** 2], atol=1e-4)


def test_combined_path_keeps_kp_objects_at_exactly_conf_kp_two_pass_does_not():
    head = make_head()
    levels = blank(head)
    put(levels, head, 0, 0, 20, 10, 0, 4.0)
    put(levels, head, 0, 0, 20, 11, 8, 0.0)  # obj 0.5 * cls 0.5 = 0.25 exactly
    combined = KapaoParams(0.001, 0.5, 0.25, 0.5, 0.2, 50)
    assert combined.combined_nms and not combined.replace(iou_kp=0.6).combined_nms
    assert both(levels, combined, head).fused[0, 7]  # run_nms's shortcut keeps score >= conf_kp
    assert not both(levels, combined.replace(iou_kp=0.6), head).fused.any()  # the second pass needs > conf_kp


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_combined_shortcut_equals_two_passes_on_random_tensors(seed):
    head = make_head()
    levels = random_levels(seed, head)
    combined = KapaoParams(0.3, 0.5, 0.4, 0.5, 0.3, 50, max_det=1000)  # no max_det cut: see the test above
    two_pass = combined.replace(iou_kp=0.5 + 1e-9)
    assert combined.combined_nms and not two_pass.combined_nms
    a = both(levels, combined, head, META_RECT)
    assert len(a) > 0 and a.fused.any()
    assert_same(a, both(levels, two_pass, head, META_RECT))


# ---------------------------------------------------------------- random tensors: numba == reference


@pytest.mark.parametrize("k", [17, 14])
@pytest.mark.parametrize("preset", ["accuracy", "realtime"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numba_matches_reference_on_random_tensors(seed, preset, k):
    head = make_head(k)
    poses = both(random_levels(seed, head), PRESETS[preset], head, META_RECT)
    assert len(poses) > 0 and poses.fused.any()
    assert (poses.boxes[:, [0, 2]] <= 1000).all() and (poses.boxes[:, [1, 3]] <= 500).all()


@pytest.mark.parametrize(
    "overrides",
    [
        {"clip_keypoints": "official"},
        {"clip_keypoints": "none"},
        {"use_kp_dets": False},
        {"max_det": 7},
        {"max_nms": 50},
        {"overwrite_tol": 1e6, "conf_kp_person": 0.0},
    ],
)
def test_numba_matches_reference_with_other_parameters(overrides):
    head = make_head()
    levels = random_levels(3, head)
    for preset in PRESETS.values():
        both(levels, preset.replace(**overrides), head, META_RECT)


def test_mapping_outputs_follow_output_names_or_grid_size():
    head = make_head()
    levels = random_levels(4, head)
    ref = decode(levels, META_RECT, PRESETS["realtime"], head)
    named = {n: lv for n, lv in zip(reversed(NAMES), reversed(levels))}
    assert_same(decode(named, META_RECT, PRESETS["realtime"], head), ref)
    anonymous = {f"out{i}": lv for i, lv in enumerate(reversed(levels))}
    assert_same(decode(anonymous, META_RECT, PRESETS["realtime"], head), ref)


def _channel_major(head: KapaoHead) -> KapaoHead:
    return KapaoHead(head.strides, head.anchors, head.num_keypoints, head.output_names, "B,A,C,H,W")


@pytest.mark.parametrize("preset", ["accuracy", "realtime"])
def test_channel_major_outputs_decode_like_the_training_layout(preset):
    """Exported graphs end at (1, A, C, H, W): same poses, read in place, whatever the output order."""
    head = make_head()
    levels = random_levels(5, head)
    ref = both(levels, PRESETS[preset], head, META_RECT)
    cm_head = _channel_major(head)
    cm = [np.ascontiguousarray(lv.transpose(0, 1, 4, 2, 3)) for lv in levels]
    assert_same(both(cm, PRESETS[preset], cm_head, META_RECT), ref)
    named = {n: lv for n, lv in zip(reversed(NAMES), reversed(cm))}  # found by grid size, not channels
    assert_same(
        decode({f"o{i}": v for i, v in enumerate(named.values())}, META_RECT, PRESETS[preset], cm_head), ref
    )
    np.testing.assert_array_equal(decode_grid(cm, cm_head), decode_grid(levels, head))


def test_channel_major_one_cell_grid_and_wrong_layout():
    """A 1x1 grid's transposed view is contiguous, the others are not: still one array type for numba."""
    head = _channel_major(make_head())
    tiny = [np.full((1, 3, head.no, 8 // (2**i), 8 // (2**i)), -8.0, np.float32) for i in range(4)]
    tiny[0][0, 0, 4, 2, 3] = 8.0
    tiny[0][0, 0, 5, 2, 3] = 8.0
    poses = decode(tiny, META, PRESETS["accuracy"], head)
    assert len(poses) == 1
    with pytest.raises(BundleError, match=r"57, H, W"):  # training-layout tensors under a channel-major head
        decode(blank(make_head()), META, PRESETS["realtime"], head)
    assert KapaoHead.from_dict(head.to_dict()) == head and head.to_dict()["layout"] == "B,A,C,H,W"
    assert (
        KapaoHead.from_dict({k: v for k, v in head.to_dict().items() if k != "layout"}).layout == "B,A,H,W,C"
    )
    with pytest.raises(UsageError, match="layout"):
        KapaoHead((8,), np.array(ANCHORS[:1]), 17, (), "H,W,C")


def test_bad_outputs_and_parameters_are_refused():
    head = make_head()
    levels = blank(head)
    with pytest.raises(BundleError):
        decode(levels[:3], META, PRESETS["realtime"], head)
    with pytest.raises(BundleError):
        decode(blank(make_head(14)), META, PRESETS["realtime"], head)
    with pytest.raises(UsageError):
        PRESETS["realtime"].replace(conf=1.5)
    with pytest.raises(UsageError):
        PRESETS["realtime"].replace(clip_keypoints="some")
    with pytest.raises(UsageError):
        KapaoParams.from_dict({**PRESETS["accuracy"].to_dict(), "conf_thres": 0.1})
    with pytest.raises(UsageError):
        KapaoHead((8, 16), np.array(ANCHORS), 17)


def test_params_and_head_round_trip():
    for params in PRESETS.values():
        assert KapaoParams.from_dict(params.to_dict()) == params
    head = make_head(14)
    assert KapaoHead.from_dict(head.to_dict()) == head
    assert head.no == 5 + 15 + 28 and head.nc == 15


# ---------------------------------------------------------------- NMS and the grid decode


@pytest.mark.parametrize("spread", [300.0, 3000.0])  # per-class fast path, and the global fallback
def test_batched_nms_matches_reference(spread):
    rng = np.random.default_rng(int(spread))
    n = 600
    xy = rng.uniform(0, 640, (n, 2))
    wh = rng.uniform(1, spread, (n, 2))
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
    scores = rng.random(n)
    scores[::7] = 0.5  # ties: lower index first
    classes = rng.integers(0, 5, n)
    for max_det in (300, 10):
        got = batched_nms(boxes, scores, classes, 0.45, 4096.0, 30000, max_det)
        np.testing.assert_array_equal(
            got, nms_reference(boxes, scores, classes, 0.45, 4096.0, 30000, max_det)
        )
    got = batched_nms(boxes, scores, classes, 0.45, 4096.0, 100, 300)
    np.testing.assert_array_equal(got, nms_reference(boxes, scores, classes, 0.45, 4096.0, 100, 300))


def test_batched_nms_keeps_the_official_cross_class_overlap_of_huge_boxes():
    # Offset by class * 4096, a class-1 box far to the upper left lands on a class-0 box (IoU 0.82).
    boxes = np.array([[3000.0, 0, 4000, 100], [-1000, -4096, 0, -3996]])
    keep = batched_nms(boxes, np.array([0.9, 0.8]), np.array([0, 1]), 0.5, 4096.0, 30000, 300)
    assert keep.tolist() == [0]


def test_decode_grid_matches_torch_detect_formula():
    torch = pytest.importorskip("torch")
    for k in (17, 14):
        head = make_head(k)
        levels = random_levels(5, head)
        got = decode_grid(levels, head)
        z = []
        for i, lv in enumerate(levels):
            x = torch.from_numpy(lv).double()
            _, na, ny, nx, no = x.shape
            yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).double()
            anchor = torch.tensor(ANCHORS[i], dtype=torch.float64).view(1, na, 1, 1, 2)
            y = x.sigmoid()
            y[..., 0:2] = (y[..., 0:2] * 2.0 - 0.5 + grid) * head.strides[i]
            y[..., 2:4] = (y[..., 2:4] * 2) ** 2 * anchor
            y[..., -2 * k :] = y[..., -2 * k :] * 4.0 - 2.0
            y[..., -2 * k :] *= anchor.repeat((1, 1, 1, 1, k))
            y[..., -2 * k :] += (grid * head.strides[i]).repeat((1, 1, 1, 1, k))
            z.append(y.view(1, -1, no))
        want = torch.cat(z, 1)[0].numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- flip test

COCO_FLIP = np.array([0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15])
CROWDPOSE_FLIP = np.array([1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13])


@pytest.mark.parametrize("k", [17, 14])
@pytest.mark.parametrize("preset", ["accuracy", "realtime"])
def test_flip_test_numba_matches_reference_on_random_tensors(preset, k):
    head = make_head(k)
    flip = COCO_FLIP if k == 17 else CROWDPOSE_FLIP
    merged = merge_flip(random_levels(6, head), random_levels(7, head), head, flip)
    poses = both(merged, PRESETS[preset].replace(flip=True), head, META_RECT)
    plain = decode(random_levels(6, head), META_RECT, PRESETS[preset], head)
    assert len(poses) > 0 and poses.fused.any()
    assert len(poses) != len(plain) or not np.allclose(poses.boxes, plain.boxes)  # the second pass counts


def test_flip_test_mirrors_the_second_pass_back():
    """A person and a keypoint object found only in the mirrored pass come back mirrored (x -> W - x),
    with left and right swapped, and the object fuses into the person's matching keypoint."""
    head = make_head()
    plain, mirrored = blank(head), blank(head)
    score = put(mirrored, head, 0, 1, 20, 10, 0, 4.0)  # box centre (84, 164), 44 x 40; keypoints at (80, 160)
    kp = mirrored[0][0, 1, 20, 10, 5 + head.nc :]
    kp[2 * 2] = 30.0  # the mirrored image's right eye (2): x + 88
    kp[2 * 5 + 1] = -30.0  # its left shoulder (5): y - 80
    # a keypoint object of type 4 (right ear in the mirrored image) centred at (84, 164), confident
    obj_score = put(mirrored, head, 0, 0, 20, 10, 1 + 4, 6.0)
    poses = both(merge_flip(plain, mirrored, head, COCO_FLIP), PRESETS["accuracy"].replace(flip=True), head)
    assert len(poses) == 1
    np.testing.assert_allclose(poses.scores, [score], atol=1e-6)
    np.testing.assert_allclose(poses.boxes[0], [*orig(640 - 106, 144), *orig(640 - 62, 184)], atol=1e-4)
    want = np.tile([640.0 - 80, 160.0], (17, 1))
    want[1] = (640 - 168, 160)  # its right eye is this image's left eye (1)
    want[6] = (640 - 80, 80)  # its left shoulder is this image's right shoulder (6)
    want[3] = (640 - 84, 164)  # its right-ear object is this image's left ear (3), fused
    np.testing.assert_allclose(poses.keypoints[0, :, :2], [orig(x, y) for x, y in want], atol=1e-4)
    assert poses.fused[0].tolist() == [k == 3 for k in range(17)]
    assert poses.keypoints[0, 3, 2] == pytest.approx(obj_score, abs=1e-6)


def test_flip_test_of_a_mirror_consistent_model_keeps_one_person():
    """Both passes see the same person: NMS keeps one, where it is."""
    head = make_head()
    plain, mirrored = blank(head), blank(head)
    put(plain, head, 0, 1, 20, 10, 0, 4.0)  # centre x 84; keypoints at the cell corner, x 80
    # the mirrored person: centre 640 - 84 = 556 = (0.5 + 69) * 8; keypoints at 640 - 80 = 560, 8 px right
    # of its cell corner 552: (4 sigma(t) - 2) * 44 = 8
    t = math.log((2 + 8 / 44) / 4 / (1 - (2 + 8 / 44) / 4))
    put(mirrored, head, 0, 1, 20, 69, 0, 3.0, kp=0.0)
    mirrored[0][0, 1, 20, 69, 5 + head.nc :: 2] = t
    params = PRESETS["accuracy"].replace(flip=True)
    poses = both(merge_flip(plain, mirrored, head, COCO_FLIP), params, head)
    alone = decode(plain, META, PRESETS["accuracy"], head)
    assert len(poses) == 1
    assert_same(poses, alone)
