"""SAHR/HigherHRNet decoder: the numba kernels against the vectorised numpy reference (random and hand-built
maps), the official conventions on hand-built people (adjustment, scores, refinement, grouping by tag),
the assignment against scipy, the aggregation against torch, and the parity measure."""

from __future__ import annotations

import numpy as np
import pytest

from edgepose.decoders import sahr, sahr_group, sahr_resize, sahr_tiles
from edgepose.decoders import sahr_reference as ref
from edgepose.decoders.assignment import assign
from edgepose.decoders.sahr import (
    PRESETS,
    SahrHead,
    SahrParams,
    decode,
    decoded_difference,
    default_joint_order,
    describe_outputs,
    warmup,
)
from edgepose.decoders.sahr_resize import _heat_into, aggregate, tag_at, upsample2
from edgepose.errors import BundleError, UsageError
from edgepose.preprocess import LetterboxMeta

K = 17
HEAD = SahrHead(K, detection_threshold=0.1)
NAMES = HEAD.output_names


def _meta(side: int, gain: float = 1.0, pad: tuple[float, float] = (0.0, 0.0), orig=None) -> LetterboxMeta:
    return LetterboxMeta(gain, pad, (side, side), orig or (side, side))


def _same(a, b) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.boxes, b.boxes)


def _both(outputs, meta, params, head=HEAD):
    got = decode(outputs, meta, params, head)
    _same(got, ref.decode_reference(outputs, meta, params, head))
    return got


def _random_outputs(seed: int, k: int = K, h: int = 16, w: int = 16, tag_scale: float = 2.0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        NAMES[0]: rng.uniform(0, 1, (1, k, h, w)).astype(np.float32),
        NAMES[1]: rng.normal(0, tag_scale, (1, k, h, w)).astype(np.float32),
        NAMES[2]: rng.uniform(0, 1, (1, k, 2 * h, 2 * w)).astype(np.float32),
    }


@pytest.mark.parametrize("seed", range(6))
def test_numba_equals_the_numpy_reference_on_random_maps(seed):
    out = _random_outputs(seed)
    meta = _meta(64, gain=0.8, pad=(0.0, 6.0), orig=(80, 70))
    variants = [
        {},
        {"detection_threshold": 0.6},
        {"use_detection_val": False},
        {"max_people": 3},
        {"max_people": 2, "ignore_too_much": True},
        {"adjust": False},
        {"refine": False},
        {"nms_kernel": 3, "tag_threshold": 0.5},
        {"min_score": 0.5},
    ]
    for preset in PRESETS.values():
        for v in variants:  # every group kept (min_score 0) unless the variant says otherwise
            got = _both(out, meta, preset.replace(**{"min_score": 0.0, **v}), HEAD)
            assert len(got) > 0


def test_min_score_drops_exactly_the_low_scoring_people_and_keeps_their_order():
    out = _random_outputs(0)
    meta = _meta(64)
    for preset in PRESETS.values():
        every = _both(out, meta, preset.replace(min_score=0.0))
        kept = _both(out, meta, preset.replace(min_score=0.5))
        mask = every.scores >= 0.5
        assert 0 < mask.sum() < len(every)
        np.testing.assert_array_equal(kept.keypoints, every.keypoints[mask])
        np.testing.assert_array_equal(kept.scores, every.scores[mask])
    with pytest.raises(UsageError, match="min_score"):
        PRESETS["realtime"].replace(min_score=1.5)


@pytest.mark.parametrize("seed", range(4))
def test_numba_equals_the_reference_on_maps_full_of_ties(seed):
    """Heat in eighths and tags in quarters: plateaus for the NMS and the refinement argmax, distances of
    exactly 0.5 for rint, equally cheap assignments."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(4, 20, 2))
    out = {
        NAMES[0]: (rng.integers(0, 8, (K, h, w)) / 8).astype(np.float32),
        NAMES[1]: (rng.integers(-8, 8, (K, h, w)) / 4).astype(np.float32),
        NAMES[2]: (rng.integers(0, 8, (K, 2 * h, 2 * w)) / 8).astype(np.float32),
    }
    meta = LetterboxMeta(1.0, (0.0, 0.0), (4 * w, 4 * h), (4 * w, 4 * h))
    for params in (*PRESETS.values(), PRESETS["realtime"].replace(detection_threshold=0.0, max_people=5)):
        _both(out, meta, params)


def test_numba_equals_the_reference_on_other_shapes_and_keypoint_counts():
    for seed, (k, h, w) in enumerate([(14, 8, 12), (5, 12, 8), (17, 24, 16)]):
        out = _random_outputs(seed, k, h, w, tag_scale=5.0)
        head = SahrHead(k)
        assert head.joint_order == default_joint_order(k)
        for preset in PRESETS.values():
            _both(out, _meta(4 * max(h, w)), preset, head)


def test_flat_maps_give_no_poses_and_warmup_compiles():
    warmup(HEAD)
    out = {NAMES[0]: np.zeros((1, K, 8, 8), np.float32), NAMES[1]: np.zeros((1, K, 8, 8), np.float32)}
    out[NAMES[2]] = np.zeros((1, K, 16, 16), np.float32)
    for preset in PRESETS.values():
        assert len(_both(out, _meta(32), preset)) == 0


# --- hand-built scenes -----------------------------------------------------------------------------------
# Heatmaps are built at stride 2 (the realtime parse resolution): heatmaps_lo = 0 and heatmaps_hi = 2 x the
# wanted map, so the aggregated map is exactly the wanted one. Tags are set at stride 4.


def _scene(h: int = 32, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((K, 2 * h, 2 * w), np.float32), np.zeros((K, h, w), np.float32)


def _peak(heat: np.ndarray, j: int, x: int, y: int, v: float = 0.8) -> None:
    """A peak at (x, y) whose right and upper neighbours are the higher ones (adjust: +0.25 x, -0.25 y)."""
    heat[j, y, x] = v
    heat[j, y, x + 1], heat[j, y, x - 1] = 0.5 * v, 0.3 * v
    heat[j, y - 1, x], heat[j, y + 1, x] = 0.4 * v, 0.2 * v


def _outputs(heat: np.ndarray, tags: np.ndarray) -> dict:
    _, h, w = tags.shape
    return {NAMES[0]: np.zeros((1, K, h, w), np.float32), NAMES[1]: tags[None], NAMES[2]: 2 * heat[None]}


def _person(heat, x0: int, y0: int, skip: tuple[int, ...] = ()) -> np.ndarray:
    """17 joints in a column of peaks from (x0, y0), 3 px apart; returns their (x, y) at stride 2."""
    xy = np.array([(x0 + (j % 2) * 4, y0 + 3 * j) for j in range(K)])
    for j, (x, y) in enumerate(xy):
        if j not in skip:
            _peak(heat, j, x, y)
    return xy


def test_a_person_is_decoded_with_the_official_conventions():
    heat, tags = _scene()
    xy = _person(heat, 10, 6)
    tags[:] = 0.75
    meta = _meta(128, gain=0.5, pad=(4.0, 8.0), orig=(248, 240))
    realtime = PRESETS["realtime"].replace(detection_threshold=0.1)
    poses = _both(_outputs(heat, tags), meta, realtime)
    assert len(poses) == 1
    # stride-2 pixel (x, y) -> adjusted (x + 0.75, y + 0.25) -> input px x 2 -> original (p - pad) / gain
    want_x = (2 * (xy[:, 0] + 0.75) - 4.0) / 0.5
    want_y = (2 * (xy[:, 1] + 0.25) - 8.0) / 0.5
    np.testing.assert_allclose(poses.keypoints[0, :, 0], want_x, rtol=1e-6)
    np.testing.assert_allclose(poses.keypoints[0, :, 1], want_y, rtol=1e-6)
    np.testing.assert_allclose(poses.keypoints[0, :, 2], 0.8, rtol=1e-6)
    assert poses.scores[0] == pytest.approx(0.8)
    np.testing.assert_allclose(poses.boxes[0], [want_x.min(), want_y.min(), want_x.max(), want_y.max()])
    # at the input resolution (official PROJECT2IMAGE) the same person lands within an input pixel
    full = _both(_outputs(heat, tags), meta, PRESETS["accuracy"].replace(detection_threshold=0.1))
    assert len(full) == 1
    assert np.abs(full.keypoints[0, :, :2] - poses.keypoints[0, :, :2]).max() * meta.gain <= 1.0


def test_two_people_with_close_tags_are_told_apart_by_rounding():
    heat, tags = _scene()
    a = _person(heat, 8, 6)
    b = _person(heat, 40, 6)
    tags[:, :, :16] = 0.0
    tags[:, :, 16:] = 0.75  # 0.75 apart: under the tag threshold (1), but rint(0.75) = 1 costs 100
    poses = _both(_outputs(heat, tags), _meta(128), PRESETS["realtime"].replace(detection_threshold=0.1))
    assert len(poses) == 2
    xs = poses.keypoints[..., 0] / 2 - 0.75
    np.testing.assert_allclose(np.sort(xs, axis=0), np.stack([a[:, 0], b[:, 0]]), atol=1e-5)
    assert (poses.keypoints[..., 2] > 0).all()


def test_tags_within_half_a_unit_tie_and_both_decoders_break_the_tie_alike():
    heat, tags = _scene()
    _person(heat, 8, 6)
    _person(heat, 40, 6)
    tags[:, :, 16:] = 0.25  # rint(0.25) = 0: every match costs the same
    params = PRESETS["realtime"].replace(detection_threshold=0.1)
    poses = _both(_outputs(heat, tags), _meta(128), params)
    assert len(poses) == 2 and (poses.keypoints[..., 2] > 0).all()


def test_refinement_fills_a_missing_joint_from_the_persons_tag():
    heat, tags = _scene()
    xy = _person(heat, 10, 6, skip=(9,))
    x9, y9 = xy[9]
    heat[9, y9, x9] = 0.05  # under the threshold: grouping misses it
    heat[9, y9, x9 - 1] = 0.02  # left neighbour higher: adjust -0.25 on x
    heat[9, 40, 50] = 0.5  # a stronger response elsewhere, with another person's tag
    tags[:] = 0.75
    tags[9, 18:22, 23:27] = 3.0  # around (50, 40) at stride 2
    params = PRESETS["realtime"].replace(detection_threshold=0.1, min_score=0.0)  # official: keep every group
    poses = _both(_outputs(heat, tags), _meta(128), params)
    assert len(poses) == 2  # the stray response starts its own group
    person = poses.select(poses.scores > 0.5)
    assert person.scores[0] == pytest.approx(16 * 0.8 / 17)  # before refinement, missing counts 0
    kp = person.keypoints[0, 9]
    assert kp[2] == pytest.approx(0.05)
    # x: the left neighbour is higher (-0.25); y: a tie (0 and 0) also steps back (-0.25), as official
    assert kp[0] == pytest.approx(2 * (x9 + 0.25)) and kp[1] == pytest.approx(2 * (y9 + 0.25))
    unrefined = _both(_outputs(heat, tags), _meta(128), params.replace(refine=False))
    assert unrefined.select(unrefined.scores > 0.5).keypoints[0, 9, 2] == 0


def test_more_detections_than_people_start_new_groups():
    heat, tags = _scene()
    _person(heat, 8, 6)
    _person(heat, 40, 6)
    tags[:, :, :16] = 0.0
    tags[:, :, 16:] = 3.0
    for x, y, t in ((26, 10, 6.0), (26, 30, 9.0), (26, 50, 0.0)):  # three extra wrists (joint 9)
        _peak(heat, 9, x, y, 0.6)
        tags[9, y // 2 - 1 : y // 2 + 2, x // 2 - 1 : x // 2 + 2] = t
    params = PRESETS["realtime"].replace(detection_threshold=0.1, refine=False, min_score=0.0)  # official
    poses = _both(_outputs(heat, tags), _meta(128), params)
    found = (poses.keypoints[..., 2] > 0).sum(1)
    # the third extra wrist has person A's tag, but A already has a stronger wrist: it starts a group too
    assert len(poses) == 5 and sorted(found.tolist()) == [1, 1, 1, 17, 17]
    singles = poses.scores[found == 1]
    np.testing.assert_allclose(singles, 0.6 / 17, rtol=1e-6)
    # the realtime preset's min_score (0.1) drops the one-joint groups (0.6 / 17) and keeps A and B
    camera = _both(_outputs(heat, tags), _meta(128), params.replace(min_score=PRESETS["realtime"].min_score))
    assert len(camera) == 2 and (camera.keypoints[..., 2] > 0).all()
    capped = _both(_outputs(heat, tags), _meta(128), params.replace(max_people=2))
    assert (capped.keypoints[..., 2] > 0).sum(1).tolist() == [17, 17]  # top-2 per joint only


# --- pieces ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_assignment_equals_scipy_including_ties(seed):
    scipy_opt = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(seed)
    for nr, nc in ((5, 5), (3, 7), (8, 4), (1, 6), (6, 1), (30, 30)):
        for cost in (rng.normal(0, 1, (nr, nc)), rng.integers(0, 3, (nr, nc)).astype(float) * 100.0):
            rows, cols = scipy_opt.linear_sum_assignment(cost)
            got = assign(cost)
            assert np.array_equal(got[rows], cols) and (got >= 0).sum() == len(rows)
            assert np.array_equal(ref.assign(cost), got)
    assert assign(np.zeros((0, 3))).shape == (0,) and (assign(np.zeros((2, 0))) == -1).all()


def test_aggregation_matches_torch_and_the_fast_kernels_bit_for_bit():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    lo = rng.normal(0, 1, (3, 6, 10)).astype(np.float32)
    hi = rng.normal(0, 1, (3, 12, 20)).astype(np.float32)
    tag = rng.normal(0, 1, (3, 6, 10)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(lo)[None], size=(12, 20), mode="bilinear")[0]
    np.testing.assert_allclose(upsample2(lo), up.numpy(), atol=1e-6)
    for full in (False, True):
        heat, tags = aggregate(lo, tag, hi, full)
        want = (up + torch.from_numpy(hi)) / 2
        if full:
            want = torch.nn.functional.interpolate(want[None], scale_factor=2.0, mode="bilinear")[0]
        np.testing.assert_allclose(heat, want.numpy(), atol=1e-5)
        tile = 16 if full else 8
        into = np.empty_like(heat)
        tilemax = np.empty((3, -(-heat.shape[1] // tile), -(-heat.shape[2] // tile)), np.float32)
        _heat_into(lo, hi, full, tile, into, tilemax)
        assert np.array_equal(into, heat) and tilemax.max() == heat.max()
        assert tilemax[1, 0, 0] == heat[1, :tile, :tile].max()
        np.testing.assert_array_equal(ref.aggregate(lo, tag, hi, full)[0], heat)
        _, th, tw = tags.shape
        lazy = [tag_at(tag, j, y, x, full) for j in range(3) for y in range(th) for x in range(tw)]
        assert np.array_equal(np.array(lazy, np.float32).reshape(tags.shape), tags)


def test_head_and_params_validate_and_round_trip():
    head = SahrHead.from_dict(HEAD.to_dict())
    assert head == HEAD and SahrHead(14).joint_order == (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13)
    assert SahrHead(20).joint_order == tuple(range(20))
    for p in PRESETS.values():
        assert SahrParams.from_dict(p.to_dict()) == p
    assert PRESETS["accuracy"].threshold(SahrHead(17, detection_threshold=0.12)) == 0.12
    assert PRESETS["realtime"].threshold(HEAD) == 0.2
    with pytest.raises(UsageError, match="odd"):
        SahrParams(nms_kernel=4)
    with pytest.raises(UsageError, match="unknown SAHR decoder parameter"):
        PRESETS["realtime"].replace(conf=0.3)
    with pytest.raises(UsageError, match="permutation"):
        SahrHead(3, joint_order=(0, 1, 1))
    with pytest.raises(BundleError, match="lacks num_keypoints"):
        SahrHead.from_dict({})
    assert list(describe_outputs(HEAD)) == list(NAMES)


def test_outputs_that_do_not_match_the_head_are_refused():
    out = _random_outputs(0)
    with pytest.raises(BundleError, match="do not match"):
        decode({**out, NAMES[2]: out[NAMES[2]][:, :, :8]}, _meta(64), PRESETS["realtime"], HEAD)
    with pytest.raises(BundleError, match="needs outputs"):
        decode({"heatmap": out[NAMES[0]]}, _meta(64), PRESETS["realtime"], HEAD)


def test_decoded_difference_is_zero_for_equal_outputs_and_sees_a_moved_peak():
    heat, tags = _scene()
    _person(heat, 10, 6)
    tags[:] = 0.75
    out = _outputs(heat, tags)
    params = PRESETS["realtime"]
    same = decoded_difference(out, out, HEAD, params)
    assert same["decoded_max_px"] == 0 and same["decoded_cells"] >= 17 and same["decoded_tag_max_diff"] == 0
    moved = {k: v.copy() for k, v in out.items()}
    hi = moved[NAMES[2]][0, 4]
    y, x = np.unravel_index(int(np.argmax(hi)), hi.shape)
    hi[y, x + 1] = 2.0  # the peak moves one stride-2 pixel right: x + 0.75 -> x + 1.25, 1 input px
    diff = decoded_difference(out, moved, HEAD, params)
    assert diff["decoded_max_px"] == pytest.approx(1.0)
    noisy = {k: v + np.float32(1e-7) for k, v in out.items()}
    assert decoded_difference(out, noisy, HEAD, params)["decoded_max_px"] == 0


# --- the tiled kernels (the input-resolution map is resized a tile at a time) -----------------------------


def _people_outputs(seed: int, people: int = 8, h: int = 48, w: int = 40, weak: float = 0.25) -> dict:
    """Raw outputs shaped like a trained network's on people: a Gaussian (sigma 2 map px) at each keypoint
    at stride 4 and 2, peak ~U(0.3, 0.9) or, for a ``weak`` share, ~U(0.005, 0.1) (under the thresholds:
    refinement finds them, some in tiles no scan reached); person p's tag 1.5 p where its Gaussian is the
    highest, a blocky random tag field elsewhere; |N(0, 0.004)| background."""
    rng = np.random.default_rng(seed)
    lo = np.abs(rng.normal(0, 0.004, (K, h, w)))
    hi = np.abs(rng.normal(0, 0.004, (K, 2 * h, 2 * w)))
    coarse = rng.normal(0, 3, (K, h // 6 + 1, w // 6 + 1))
    tags = np.kron(coarse, np.ones((6, 6)))[:, :h, :w] + rng.normal(0, 0.05, (K, h, w))
    for p in range(people):
        cx, cy = rng.uniform(0, 4 * w), rng.uniform(0, 4 * h)  # input px
        for j in range(K):
            x, y = cx + rng.normal(0, 25), cy + rng.normal(0, 25)
            peak = rng.uniform(0.005, 0.1) if rng.uniform() < weak else rng.uniform(0.3, 0.9)
            for maps, s in ((lo, 4), (hi, 2)):
                ys, xs = np.ogrid[0 : maps.shape[1], 0 : maps.shape[2]]
                d2 = (xs - x / s + 0.5) ** 2 + (ys - y / s + 0.5) ** 2
                g = peak * np.exp(-d2 / 8.0)
                if s == 4:
                    owner = (d2 <= 36) & (g >= maps[j])
                    tags[j][owner] = 1.5 * p + rng.normal(0, 0.05, int(owner.sum()))
                np.maximum(maps[j], g, out=maps[j])
    return {NAMES[0]: lo[None], NAMES[1]: tags[None], NAMES[2]: hi[None]}


@pytest.mark.parametrize("seed", range(3))
def test_numba_equals_the_reference_on_scenes_of_people(seed):
    """Maps large enough for interior tiles everywhere, weak joints left to refinement, stray groups."""
    out = {k: v.astype(np.float32) for k, v in _people_outputs(seed).items()}
    meta = _meta(192, gain=0.75, pad=(0.0, 20.0), orig=(213, 229))
    for preset in PRESETS.values():
        for v in ({}, {"nms_kernel": 1}, {"nms_kernel": 7}, {"detection_threshold": 0.05}, {"refine": False}):
            assert len(_both(out, meta, preset.replace(**v))) > 0


def test_stale_buffers_from_earlier_frames_never_leak_into_a_decode():
    """Tiles a frame leaves out keep whatever was there: NaN, huge values, another frame's maps."""
    first = {k: v.astype(np.float32) for k, v in _people_outputs(7).items()}
    second = {k: v.astype(np.float32) for k, v in _people_outputs(8).items()}
    meta = _meta(192)
    for preset in PRESETS.values():
        for fill in (np.nan, 1e9, -1e9):
            for buf in sahr._buffers(K, 48, 40, preset.project2image):
                buf.fill(fill if buf.dtype.kind == "f" else 1)  # states say EXACT where nothing is
            _both(first, meta, preset)
        _both(second, meta, preset)
        _both(first, meta, preset)


def test_tile_resizes_equal_upsample2_bit_for_bit():
    rng = np.random.default_rng(0)
    rows = np.empty((8, 8), np.float32)
    for h, w in ((7, 9), (12, 16)):
        src = rng.normal(0, 1, (h, w)).astype(np.float32)
        full = upsample2(src[None])[0]
        for n in (4, 8):
            for y0 in range(0, 2 * h, 2):
                for x0 in range(0, 2 * w, 2):
                    if sahr_tiles._inner(y0, n, h) and sahr_tiles._inner(x0, n, w):
                        out = np.full((2 * h, 2 * w), np.nan, np.float32)
                        sahr_tiles._up2_block(src, 0, 0, y0, x0, n, rows, out, 0, 0)
                        np.testing.assert_array_equal(
                            out[y0 : y0 + n, x0 : x0 + n], full[y0 : y0 + n, x0 : x0 + n]
                        )
        for y0, y1, x0, x1 in ((0, 3, 0, 5), (2 * h - 4, 2 * h, 2 * w - 3, 2 * w), (5, 9, 1, 2)):
            out = np.full((y1 - y0, x1 - x0), np.nan, np.float32)
            r0, c0 = max((y0 - 1) // 2, 0), max((x0 - 1) // 2, 0)  # a window of the source is enough
            sahr_tiles._resize_rect(src[r0:, c0:], r0, c0, h, w, y0, y1, x0, x1, rows, out, y0, x0)
            np.testing.assert_array_equal(out, full[y0:y1, x0:x1])


@pytest.mark.parametrize("seed", range(3))
def test_tile_bounds_cover_every_input_resolution_tile(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(3, 14, 2))
    for lo, hi in (
        (rng.normal(0, 1, (2, h, w)), rng.normal(0, 1, (2, 2 * h, 2 * w))),
        (rng.integers(-2, 3, (2, h, w)) / 4, rng.integers(-2, 3, (2, 2 * h, 2 * w)) / 4),
        (np.full((2, h, w), -0.3), np.full((2, 2 * h, 2 * w), -0.3)),
    ):
        lo, hi = lo.astype(np.float32), hi.astype(np.float32)
        half = np.empty((2 * h, 2 * w), np.float32)
        ub = np.empty((-(-h // 2), -(-w // 2)), np.float32)
        full = upsample2(ref.aggregate(lo, lo, hi, False)[0])
        for j in range(2):
            sahr_tiles._half_map(lo, hi, j, sahr_resize._taps(h), np.empty((h, 2 * w), np.float32), half)
            np.testing.assert_array_equal(half, ref.aggregate(lo, lo, hi, False)[0][j])
            sahr_tiles._bounds(half, ub, np.empty(2 * w, np.float32), np.empty(ub.shape[1], np.float32))
            for ty in range(ub.shape[0]):
                for tx in range(ub.shape[1]):
                    tile = full[j, 8 * ty : 8 * ty + 8, 8 * tx : 8 * tx + 8]
                    assert tile.max() <= ub[ty, tx] <= tile.max() + 2.0 * np.abs(half).max() + 1e-6


@pytest.mark.parametrize("project2image", [True, False])
def test_tiles_left_out_by_the_scan_are_resized_exactly_later(project2image):
    out = {k: v.astype(np.float32) for k, v in _people_outputs(3).items()}
    lo, tags_lo, hi = sahr.read_outputs(out, HEAD)
    tag = tags_lo[0]  # one tag per joint: (K, h, w)
    heat_ref, tag_ref = ref.aggregate(lo, tag, hi, project2image)
    scratch, heat, ub, state, tags = sahr._buffers(K, 48, 40, project2image)
    heat.fill(np.nan)
    _, _, lz = sahr_tiles._parse_maps(lo, hi, project2image, heat, ub, state, scratch, 0.3, 2, 30)
    tile = sahr_tiles.tile_size(project2image)
    exact = np.repeat(np.repeat(state == sahr_tiles.EXACT, tile, 1), tile, 2)
    exact = exact[:, : heat.shape[1], : heat.shape[2]]
    np.testing.assert_array_equal(heat[exact], heat_ref[exact])
    assert project2image == (not exact.all())  # at the input resolution most tiles are never resized
    rows, hw, s2 = (np.empty((tile, tile), np.float32) for _ in range(3))
    for j, ty, tx in zip(*np.nonzero(state != sahr_tiles.EXACT)):
        sahr_tiles._ensure(lo, hi, heat, state, rows, hw, tile, j, ty, tx)
    np.testing.assert_array_equal(heat, heat_ref)
    for j in range(K):
        tags.fill(np.nan)
        for ty in range(ub.shape[1]):
            for tx in range(ub.shape[2]):
                sahr_tiles._tags_into(tag, j, project2image, tile, ty, tx, tags[0], rows, s2)
        np.testing.assert_array_equal(tags[0], tag_ref[j])


def test_the_unrolled_local_maximum_test_matches_a_brute_force_one():
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = (rng.integers(0, 6, (24, 24)) / 5).astype(np.float32)
        thr = float(rng.choice([0.0, 0.3, 0.7]))
        flags = [bool(f) for f in rng.integers(0, 2, 4)]  # up, down, left, right
        y0, x0 = 8 * int(rng.integers(1, 2)), 8
        want = False
        for y in range(y0, y0 + 8):
            for x in range(x0, x0 + 8):
                nbrs = [(y - 1, x, y == y0 and not flags[0]), (y + 1, x, y == y0 + 7 and not flags[1])]
                nbrs += [(y, x - 1, x == x0 and not flags[2]), (y, x + 1, x == x0 + 7 and not flags[3])]
                ok = all(skip or m[y, x] >= m[yy, xx] for yy, xx, skip in nbrs)
                want |= bool(m[y, x] > thr and ok)
        assert sahr_tiles._any_peak8(m, y0, x0, thr, *flags) == want


def test_the_top_list_keeps_the_references_order_and_length():
    rng = np.random.default_rng(0)
    for cap in (1, 3, 30):
        vals = (rng.integers(0, 5, 60) / 4).astype(np.float32)
        idx = rng.permutation(60)
        tv, ti = np.empty(cap, np.float32), np.empty(cap, np.int64)
        n = 0
        for i in idx:
            n = sahr_tiles._top_insert(tv, ti, n, vals[i], i)
        want = np.lexsort((np.arange(60), -vals))[:cap]
        assert n == min(cap, 60) and np.array_equal(ti[:n], want) and np.array_equal(tv[:n], vals[want])


def test_the_tile_order_groups_tiles_by_bound_highest_first():
    rng = np.random.default_rng(0)
    for lo_cut, hi_cut in ((0.2, np.inf), (-np.inf, 0.2), (-np.inf, np.inf)):
        ub = (rng.integers(0, 9, (9, 7)) / 8).astype(np.float32)
        ub[0, 0], ub[1, 1], ub[2, 2] = np.inf, -np.inf, 0.2
        n = sahr_group.BUCKETS
        order, starts, tops, bidx = (
            np.empty(63, np.int64),
            np.empty(n + 1, np.int64),
            np.empty(n),
            np.empty(63, np.int64),
        )
        below = sahr_group._tile_order(ub, lo_cut, hi_cut, order, starts, tops, bidx)
        u = ub.ravel()
        inside = (u >= lo_cut) & (u < hi_cut) | ((u >= lo_cut) & (hi_cut == np.inf))
        listed = order[: starts[n]]
        assert sorted(listed.tolist()) == np.flatnonzero(inside).tolist()
        assert below == (u[u < lo_cut].max() if (u < lo_cut).any() else -np.inf)
        previous = np.inf
        for b in range(n):
            members = u[order[starts[b] : starts[b + 1]]]
            if members.size:
                assert members.max() == tops[b] and members.max() <= previous
                previous = members.min()


def test_the_mapping_to_original_pixels_equals_to_poses():
    rng = np.random.default_rng(0)
    kps = np.concatenate([rng.uniform(-5, 140, (6, K, 2)), rng.uniform(0, 1, (6, K, 1))], axis=2)
    kps[..., 2][rng.uniform(size=(6, K)) < 0.3] = 0.0
    for scale, meta, clip in ((1, _meta(128, 0.7, (3.0, 11.5), (170, 150)), True), (2, _meta(256), False)):
        params = PRESETS["accuracy"].replace(clip=clip)
        want = sahr.to_poses(kps, np.ones(6), scale, meta, params, K)
        (w, h), (px, py) = meta.original_size, meta.pad
        keypoints, boxes = sahr._to_original(kps, scale, meta.gain, px, py, w, h, clip)
        np.testing.assert_array_equal(keypoints, want.keypoints)
        np.testing.assert_array_equal(boxes, want.boxes)


def test_a_peak_whose_nms_window_reaches_a_tile_the_scan_left_out():
    """A sharp peak 3 input px from a tile whose stride-2 sources are all 0 (its bound stays under the
    threshold, so the scan never resizes it): the 7 x 7 window reads that tile, which must count as holding
    nothing higher whatever stale values it has."""
    heat, tags = _scene()
    heat[0, 10, 10] = 1.0  # input px 20-21 (tile 2 of 8 px); tile 3 (px 24-31) blends stride-2 px 11-16
    params = PRESETS["accuracy"].replace(nms_kernel=7)
    for stale in (np.nan, 1e9):
        for buf in sahr._buffers(K, 32, 32, True):
            buf.fill(stale if buf.dtype.kind == "f" else 0)
        assert len(_both(_outputs(heat, tags), _meta(128), params)) == 4  # a 2 x 2 plateau, 4 maxima


# --- the flip test (2-D tags) ------------------------------------------------------------------------------

COCO_FLIP = np.array([0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15])


def _with_flip_tags(outputs: dict, flip_tags: np.ndarray) -> dict:
    """``outputs`` whose tags gain a second value per joint and pixel, as ``merge_flip`` stacks them."""
    return {**outputs, NAMES[1]: np.stack([outputs[NAMES[1]], flip_tags], axis=-1).astype(np.float32)}


def test_merge_flip_equals_the_official_flip_test():
    """The official order (each pass aggregated, the mirrored one flipped back and swapped, then the passes
    averaged; tags resized per pass and stacked) against ``merge_flip`` and then the decoder's aggregation."""
    torch = pytest.importorskip("torch")
    fn = torch.nn.functional
    rng = np.random.default_rng(3)
    h, w = 6, 10
    passes = [
        {
            NAMES[0]: rng.random((1, K, h, w), np.float32),
            NAMES[1]: rng.normal(0, 2, (1, K, h, w)).astype(np.float32),
            NAMES[2]: rng.random((1, K, 2 * h, 2 * w), np.float32),
        }
        for _ in range(2)
    ]
    heats, tags = [], []
    for i, out in enumerate(passes):
        lo, tag, hi = (torch.from_numpy(out[n]) for n in NAMES)
        heat = (fn.interpolate(lo, scale_factor=2.0, mode="bilinear", align_corners=False) + hi) / 2
        tag = fn.interpolate(tag, scale_factor=2.0, mode="bilinear", align_corners=False)
        if i == 1:
            heat, tag = torch.flip(heat, [3])[:, COCO_FLIP], torch.flip(tag, [3])[:, COCO_FLIP]
        heats.append(heat)
        tags.append(tag.unsqueeze(4))
    want_heat, want_tags = ((heats[0] + heats[1]) / 2)[0].numpy(), torch.cat(tags, 4)[0].numpy()
    merged = sahr.merge_flip(passes[0], passes[1], HEAD, COCO_FLIP)
    assert merged[NAMES[1]].shape == (1, K, h, w, 2)
    lo, tag, hi = sahr.read_outputs(merged, HEAD)
    assert tag.shape == (2, K, h, w)
    heat, up_tags = ref.aggregate(lo, tag, hi, False)
    np.testing.assert_allclose(heat, want_heat, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.moveaxis(up_tags, 0, -1), want_tags, rtol=1e-6, atol=1e-6)
    with pytest.raises(BundleError, match="flip index of 17"):
        sahr.merge_flip(passes[0], passes[1], HEAD, COCO_FLIP[:5])
    x = rng.random((1, 3, 8, 16), np.float32)
    mirrored = sahr.flip_input(x, HEAD)
    assert np.array_equal(mirrored, x[..., ::-1]) and mirrored.flags.c_contiguous


@pytest.mark.parametrize("seed", range(3))
def test_numba_equals_the_reference_with_the_flip_tests_tags(seed):
    """2-D tags on random maps and on scenes of people, through every step (grouping, refinement's pruned
    search with Euclidean tag distances)."""
    rng = np.random.default_rng(100 + seed)
    random = _random_outputs(seed)
    people = {k: v.astype(np.float32) for k, v in _people_outputs(seed).items()}
    cases = [
        (_with_flip_tags(random, rng.normal(0, 2.0, random[NAMES[1]].shape)), _meta(64)),
        (_with_flip_tags(people, people[NAMES[1]] + rng.normal(0, 0.6, people[NAMES[1]].shape)), _meta(192)),
    ]
    for out, meta in cases:
        for preset in PRESETS.values():
            for v in ({}, {"tag_threshold": 0.5}, {"refine": False}, {"use_detection_val": False}):
                assert len(_both(out, meta, preset.replace(**{"min_score": 0.0, **v}))) > 0


def test_the_flip_tests_second_tag_tells_apart_people_the_first_cannot():
    heat, tags = _scene()
    a = _person(heat, 8, 6)
    b = _person(heat, 40, 6)
    tags[:, :, 16:] = 0.25  # one tag: A and B within half a unit, every match costs the same
    second = np.zeros_like(tags)
    second[:, :, 16:] = 3.0  # the mirrored pass keeps them apart
    params = PRESETS["realtime"].replace(detection_threshold=0.1)
    out = _with_flip_tags(_outputs(heat, tags), second[None])
    poses = _both(out, _meta(128), params)
    assert len(poses) == 2 and (poses.keypoints[..., 2] > 0).all()
    xs = poses.keypoints[..., 0] / 2 - 0.75
    for person in xs:  # every joint of a pose from one person, not a mix
        assert np.allclose(person, a[:, 0]) or np.allclose(person, b[:, 0])
    assert not np.allclose(xs[0], xs[1])
    # Euclidean, not per component: (0.8, 0.8) apart is 1.13 > the tag threshold: two groups, where one
    # tag 0.8 apart would be matched (under 1; its rint costs 100 but there is no one else)
    heat, tags = _scene()
    _person(heat, 8, 6)
    tags[:] = 0.0
    tags[5:, :, :] = 0.8  # joints 5.. of the same person carry another tag
    params = params.replace(min_score=0.0, refine=False)
    one = _both(_outputs(heat, tags), _meta(128), params)
    two = _both(_with_flip_tags(_outputs(heat, tags), tags[None]), _meta(128), params)
    assert len(one) == 1 and len(two) == 2
    assert sorted((two.keypoints[..., 2] > 0).sum(1).tolist()) == [5, 12]


def test_refinement_with_the_flip_tests_tags_reads_both_values():
    heat, tags = _scene()
    xy = _person(heat, 10, 6, skip=(9,))
    x9, y9 = xy[9]
    heat[9, y9, x9] = 0.05  # under the threshold: grouping misses it, refinement should find it
    heat[9, 40, 50] = 0.5  # stronger, with the person's first tag but another second one
    tags[:] = 0.75
    second = np.full_like(tags, 0.75)
    second[9, 18:22, 23:27] = 3.0  # around (50, 40) at stride 2: rint(2.25) = 2 costs more than 0.45
    params = PRESETS["realtime"].replace(detection_threshold=0.1, min_score=0.0)
    one = _both(_outputs(heat, tags), _meta(128), params)
    person = one.select(one.scores > 0.5)
    assert person.keypoints[0, 9, 2] == pytest.approx(0.5)  # one tag: the stray response wins
    two = _both(_with_flip_tags(_outputs(heat, tags), second[None]), _meta(128), params)
    person = two.select(two.scores > 0.5)
    assert person.keypoints[0, 9, 2] == pytest.approx(0.05)
    assert person.keypoints[0, 9, 0] / 2 - 0.25 == pytest.approx(x9, abs=0.5)


def test_flip_is_an_option_of_the_family_and_warms_up():
    from edgepose.families import decoder_config, make_decoder

    assert PRESETS["accuracy"].flip is False and PRESETS["realtime"].flip is False
    dec = make_decoder(decoder_config("sahr", HEAD.to_dict()), "accuracy", {"flip": True})
    assert dec.flip and dec.params.flip
    warmup(HEAD, flip=True)
