"""DEKR decoder: numba against the numpy reference, a hand-built scene with a known answer, the official
heat read (checked against torch's own upsampling), rescoring, parity helper and the decoder protocol."""

from __future__ import annotations

import numpy as np
import pytest

from edgepose.decoders import dekr
from edgepose.decoders.dekr import PRESETS, DekrHead, DekrParams, decode, decoded_difference
from edgepose.decoders.dekr_reference import decode_reference
from edgepose.decoders.dekr_rescore import RescoreNet, rescore_features
from edgepose.errors import BundleError, UsageError
from edgepose.families import decoder_config, make_decoder
from edgepose.preprocess import LetterboxMeta

HEAD = DekrHead(17)


def _assert_same(a, b) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(a.keypoints, b.keypoints, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-6, atol=1e-4)
    assert not a.fused.any() and not b.fused.any()


@pytest.mark.parametrize("seed", range(6))
def test_numba_equals_reference_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(6, 48, 2))
    heat = (rng.random((18, h, w)) ** 3).astype(np.float32)
    off = rng.normal(0, 4, (34, h, w)).astype(np.float32)
    if seed % 2:  # plateaus: equal neighbours are all maxima, and equal scores tie
        heat[17] = np.round(heat[17] * 4) / 4
    meta = LetterboxMeta(0.75, (2.0, 6.0), (4 * w, 4 * h), (int(4 * w / 0.75), int(4 * h / 0.75)))
    outputs = {"heatmap": heat[None], "offset": off[None]}
    for preset in PRESETS.values():
        for thre, num in ((0.05, 8), (0.5, 3), (2.0, 0)):
            p = preset.replace(nms_threshold=thre, nms_num_threshold=num, max_people=int(rng.integers(1, 40)))
            _assert_same(decode(outputs, meta, p, HEAD), decode_reference(outputs, meta, p, HEAD))


def _two_people() -> tuple[dict[str, np.ndarray], dict]:
    """A 32x32-map scene (128x128 input): persons A and B, and C, a weaker duplicate of A."""
    heat = np.zeros((18, 32, 32), np.float32)
    off = np.zeros((34, 32, 32), np.float32)
    j = np.arange(17)
    truth = {}
    for name, (cx, cy), peak, kx, ky, base in (
        ("A", (8, 10), 0.9, 4 + j % 3, 5 + j, 0.5),
        ("B", (22, 20), 0.7, 20 + j % 4, 9 + j, 0.3),
    ):
        heat[17, cy - 1 : cy + 2, cx - 1 : cx + 2] = 0.3 * peak
        heat[17, cy, cx] = peak
        off[0::2, cy, cx] = cx - kx  # centre - keypoint, output pixels
        off[1::2, cy, cx] = cy - ky
        joint = base + 0.02 * j
        heat[j, ky, kx] = np.maximum(heat[j, ky, kx], joint)
        truth[name] = (4.0 * np.stack([kx, ky], -1), joint, peak)
    # C: a local maximum 3 px below A's centre regressing A's pose moved by 1 input px: a duplicate of A
    heat[17, 13, 8] = 0.5
    off[0::2, 13, 8] = 8 - (4 + j % 3) - 0.25
    off[1::2, 13, 8] = 13 - (5 + j)
    return {"heatmap": heat[None], "offset": off[None]}, truth


@pytest.mark.parametrize("decoder", [decode, decode_reference], ids=["numba", "numpy"])
def test_hand_built_two_people(decoder):
    outputs, truth = _two_people()
    # a 256x192 image letterboxed into 128x128: gain 0.5, 16 px of padding on top
    meta = LetterboxMeta(0.5, (0.0, 16.0), (128, 128), (256, 192))
    for preset in ("accuracy", "realtime"):
        poses = decoder(outputs, meta, PRESETS[preset], HEAD)
        assert len(poses) == 2  # C is suppressed by pose NMS
        for i, name in enumerate("AB"):
            kp_in, joint, peak = truth[name]
            want = (kp_in - [0.0, 16.0]) / 0.5
            np.testing.assert_allclose(poses.keypoints[i, :, :2], want, atol=1e-4)
            np.testing.assert_allclose(poses.keypoints[i, :, 2], joint, rtol=1e-6)
            assert poses.scores[i] == pytest.approx(peak * joint.mean(), rel=1e-6)
            np.testing.assert_allclose(poses.boxes[i], [*want.min(0), *want.max(0)], atol=1e-4)
    only_a = decoder(outputs, meta, PRESETS["accuracy"].replace(center_threshold=0.8), HEAD)
    assert len(only_a) == 1 and only_a.scores[0] == pytest.approx(0.9 * truth["A"][1].mean(), rel=1e-6)
    loose = decoder(outputs, meta, PRESETS["accuracy"].replace(nms_threshold=0.001), HEAD)
    assert len(loose) == 3 and loose.scores[2] < loose.scores[1]  # without NMS, C comes back, last


def test_heat_is_read_as_the_official_upsampled_map():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    k, h, w, s = 3, 7, 9, 4
    maps = rng.random((k, h, w)).astype(np.float32)
    # lib/utils/transforms.py up_interpolate: align_corners to (sH - s + 1, sW - s + 1), replicate 3 px
    up = torch.nn.functional.interpolate(
        torch.from_numpy(maps)[None], size=(s * h - s + 1, s * w - s + 1), mode="bilinear", align_corners=True
    )
    up = torch.nn.ReplicationPad2d((0, s - 1, 0, s - 1))(up)[0].double().numpy()
    pts = rng.uniform(-10, s * max(h, w) + 10, (200, 2))
    for x, y in pts:
        xi, yi = (int(np.clip(np.floor(v), 0, s * n - 1)) for v, n in ((x, w), (y, h)))
        for j in range(k):
            assert dekr._heat_at(maps[j], x, y, s) == pytest.approx(up[j, yi, xi], abs=1e-6)


def test_centre_pool_window_grows_with_the_map():
    p = DekrParams()
    assert [p.pool_radius(n, n) for n in (128, 200, 201, 300, 301)] == [1, 1, 2, 2, 3]
    rng = np.random.default_rng(1)
    heat = (rng.random((18, 210, 210)) * 0.005).astype(np.float32)
    heat[17, 100, 100], heat[17, 100, 102] = 0.9, 0.8  # two pixels apart: one peak in a 5x5 window
    off = np.zeros((34, 210, 210), np.float32)
    meta = LetterboxMeta(1.0, (0.0, 0.0), (840, 840), (840, 840))
    outputs = {"heatmap": heat, "offset": off}
    p = PRESETS["realtime"].replace(nms_threshold=0.0)
    assert len(decode(outputs, meta, p, HEAD)) == len(decode_reference(outputs, meta, p, HEAD)) == 1
    small = {"heatmap": heat[:, 80:200, 80:200], "offset": off[:, 80:200, 80:200]}
    assert len(decode(small, meta, p, HEAD)) == 2  # 120x120 map: 3x3 window, both peaks survive


def test_rescoring_multiplies_scores_by_the_predicted_oks(tmp_path):
    rng = np.random.default_rng(2)
    net = RescoreNet(
        {
            "l1.weight": rng.normal(0, 0.2, (16, 74)),
            "l1.bias": rng.normal(0, 0.1, 16),
            "l2.weight": rng.normal(0, 0.2, (16, 16)),
            "l2.bias": rng.normal(0, 0.1, 16),
            "l3.weight": rng.normal(0, 0.2, (1, 16)),
            "l3.bias": np.array([0.8]),
        }
    )
    head = DekrHead(17, rescore_file=str(net.save(tmp_path / "rescore.npz")))
    outputs, _ = _two_people()
    meta = LetterboxMeta(1.0, (0.0, 0.0), (128, 128), (128, 128))
    plain = decode(outputs, meta, PRESETS["accuracy"], HEAD)
    rescored = decode(outputs, meta, PRESETS["accuracy"], head)
    _assert_same(rescored, decode_reference(outputs, meta, PRESETS["accuracy"], head))
    ctr = np.array([0.9, 0.7])[:, None]
    oks = net(rescore_features(plain.keypoints[..., :2], ctr * plain.keypoints[..., 2]))
    np.testing.assert_allclose(rescored.scores, plain.scores * oks, rtol=1e-5)
    assert not np.allclose(rescored.scores, plain.scores)
    realtime = decode(outputs, meta, PRESETS["realtime"], head)  # realtime does not rescore
    np.testing.assert_allclose(realtime.scores, plain.scores)
    with pytest.raises(BundleError, match="missing or not an .npz"):
        decode(outputs, meta, PRESETS["accuracy"], DekrHead(17, rescore_file=str(tmp_path / "nope.npz")))


def test_empty_maps_and_wrong_shapes():
    meta = LetterboxMeta(1.0, (0.0, 0.0), (64, 64), (64, 64))
    zeros = {"heatmap": np.zeros((1, 18, 16, 16), np.float32), "offset": np.zeros((1, 34, 16, 16))}
    empty = decode(zeros, meta, PRESETS["accuracy"], HEAD)
    assert len(empty) == 0 and empty.keypoints.shape == (0, 17, 3)
    with pytest.raises(BundleError, match="do not match"):
        decode({"heatmap": np.zeros((1, 15, 16, 16)), "offset": np.zeros((1, 34, 16, 16))}, meta,
               PRESETS["accuracy"], HEAD)  # fmt: skip
    with pytest.raises(BundleError, match="needs outputs"):
        decode({"a": np.zeros(1), "b": np.zeros(1), "c": np.zeros(1)}, meta, PRESETS["accuracy"], HEAD)


def test_decoded_difference_measures_keypoint_motion():
    outputs, _ = _two_people()
    same = decoded_difference(outputs, outputs, HEAD, PRESETS["realtime"])
    assert same["decoded_max_px"] == 0.0 and same["decoded_cells"] == 100
    assert same["decoded_cells_over_threshold"] == 19  # A's and B's 3x3 blocks (all > 0.1) and C
    moved = {"heatmap": outputs["heatmap"], "offset": outputs["offset"] + np.float32(0.01)}
    diff = decoded_difference(outputs, moved, HEAD, PRESETS["realtime"])
    assert diff["decoded_max_px"] == pytest.approx(0.04, rel=1e-3)  # 4 x 0.01 output px


def test_decoder_protocol_and_presets():
    spec = {"num_keypoints": 17, "output_names": ["heatmap", "offset"], "stride": 4, "input_multiple": 32,
            "input_normalisation": "ignored by the decoder"}  # fmt: skip
    cfg = decoder_config("dekr", spec)
    assert cfg["head"] == {**HEAD.to_dict()} and set(cfg["presets"]) == {"accuracy", "realtime"}
    assert (
        cfg["presets"]["accuracy"]["center_threshold"] == 0.01
        and cfg["presets"]["accuracy"]["max_people"] == 30
    )
    assert (cfg["presets"]["accuracy"]["nms_threshold"], cfg["presets"]["accuracy"]["nms_num_threshold"]) == (
        0.05,
        8,
    )
    dec = make_decoder(cfg, "realtime", {"max_people": 5})
    assert dec.params.max_people == 5 and dec.params.center_threshold == 0.1
    dec.warmup()
    outputs, _ = _two_people()
    assert len(dec(outputs, LetterboxMeta(1.0, (0.0, 0.0), (128, 128), (128, 128)))) == 2
    assert DekrParams.from_dict(PRESETS["accuracy"].to_dict()) == PRESETS["accuracy"]
    assert set(dekr.describe_outputs(HEAD)) == {"heatmap", "offset"}
    with pytest.raises(UsageError, match="unknown DEKR decoder parameter"):
        PRESETS["accuracy"].replace(conf=0.3)
    with pytest.raises(UsageError, match="center_threshold"):
        DekrParams(center_threshold=-0.1)
    with pytest.raises(BundleError, match="num_keypoints"):
        DekrHead.from_dict({"stride": 4})


# --- flip test ---------------------------------------------------------------------------------------------

COCO_FLIP = np.array([0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15])


def _official_flip_average(out, out_f, flip):
    """``get_multi_stage_outputs(with_flip=True)`` of lib/core/inference.py, written out in numpy:
    heatmaps averaged with the flipped pass's channels swapped (centre kept), ``offset_to_pose`` posemaps
    (pixel - offset; the flipped one's joints swapped and x mirrored as ``w - x - 1``) averaged after
    mirroring the flipped posemap back. -> (heatmap, posemap (K, 2, H, W) in output pixels)."""
    heat, off = out["heatmap"][0], out["offset"][0]
    heat_f, off_f = out_f["heatmap"][0], out_f["offset"][0]
    k, h, w = off.shape[0] // 2, off.shape[1], off.shape[2]
    loc = np.stack(np.meshgrid(np.arange(w), np.arange(h)))  # (2, H, W): x, y
    pose = loc[None] - off.reshape(k, 2, h, w)
    pose_f = (loc[None] - off_f.reshape(k, 2, h, w))[flip]
    pose_f[:, 0] = w - pose_f[:, 0] - 1
    heat_avg = (heat + heat_f[:, :, ::-1][np.append(flip, k)]) / 2
    return heat_avg, (pose + pose_f[..., ::-1]) / 2


def test_flip_merge_equals_the_official_posemap_average():
    rng = np.random.default_rng(5)
    h, w = 12, 20
    out, out_f = (
        {
            "heatmap": rng.random((1, 18, h, w), np.float32),
            "offset": rng.normal(0, 5, (1, 34, h, w)).astype(np.float32),
        }
        for _ in range(2)
    )
    merged = dekr.merge_flip(out, out_f, HEAD, COCO_FLIP)
    heat_avg, posemap = _official_flip_average(out, out_f, COCO_FLIP)
    np.testing.assert_allclose(merged["heatmap"][0], heat_avg, rtol=1e-6, atol=1e-6)
    loc = np.stack(np.meshgrid(np.arange(w), np.arange(h)))
    np.testing.assert_allclose(loc[None] - merged["offset"][0].reshape(17, 2, h, w), posemap, atol=1e-4)
    with pytest.raises(BundleError, match="flip index of 17"):
        dekr.merge_flip(out, out_f, HEAD, COCO_FLIP[:5])


def test_flip_input_is_mirrored_and_shifted_as_official():
    x = np.random.default_rng(0).random((1, 3, 8, 16), np.float32)
    want = x[..., ::-1].copy()
    want[..., :-3] = want[..., 3:].copy()  # image[:, :, :, :-3] = image[:, :, :, 3:]
    got = dekr.flip_input(x, HEAD)
    np.testing.assert_array_equal(got, want)
    assert got.flags.c_contiguous


def _mirrored_pass(outputs, flip, shift_px=0.0):
    """The raw outputs a mirror-consistent model gives for ``flip_input(image)``: each person's centre at
    the mirrored output pixel ``w - 1 - x``, its joints mirrored in input pixels (``x' = W - stride - x``,
    what mirroring and the stride - 1 shift do) with left and right swapped; ``shift_px`` moves every
    mirrored joint right by that many input pixels (a model that disagrees with itself)."""
    heat, off = outputs["heatmap"][0], outputs["offset"][0]
    k, w = off.shape[0] // 2, heat.shape[2]
    heat_f = heat[np.append(flip, k)][:, :, ::-1].copy()
    off_f = np.zeros_like(off)
    for y, x in zip(*np.nonzero(heat[k])):
        xs = x - off[0::2, y, x]  # joints in output pixels
        ys = y - off[1::2, y, x]
        xm = (4 * w - 4 - 4 * xs[flip] + shift_px) / 4  # mirrored, swapped joints, output pixels
        off_f[0::2, y, w - 1 - x] = (w - 1 - x) - xm
        off_f[1::2, y, w - 1 - x] = y - ys[flip]
    return {"heatmap": heat_f[None], "offset": off_f[None]}


def test_flip_test_of_a_mirror_consistent_model_finds_the_same_people():
    outputs, truth = _two_people()
    outputs["heatmap"][0, 17, 13, 8] = 0.0  # no duplicate C: moved joints read less heat and C would win NMS
    meta = LetterboxMeta(1.0, (0.0, 0.0), (128, 128), (128, 128))
    params = PRESETS["accuracy"]
    plain = decode(outputs, meta, params, HEAD)
    np.testing.assert_allclose(plain.keypoints[:, :, :2], np.stack([truth["A"][0], truth["B"][0]]), atol=1e-4)
    merged = dekr.merge_flip(outputs, _mirrored_pass(outputs, COCO_FLIP), HEAD, COCO_FLIP)
    flipped = decode(merged, meta, params, HEAD)
    _assert_same(flipped, plain)
    # A mirrored pass that puts every joint 2 input px further right (in the mirrored image, so 2 px left
    # in this one) moves each decoded joint 1 px left: the two passes are averaged.
    merged = dekr.merge_flip(outputs, _mirrored_pass(outputs, COCO_FLIP, shift_px=2.0), HEAD, COCO_FLIP)
    moved = decode(merged, meta, params.replace(clip=False), HEAD)
    np.testing.assert_allclose(moved.keypoints[:, :, 0], plain.keypoints[:, :, 0] - 1.0, atol=1e-4)
    np.testing.assert_allclose(moved.keypoints[:, :, 1], plain.keypoints[:, :, 1], atol=1e-4)


def test_flip_is_an_option_and_a_decoder_without_it_refuses_it(monkeypatch):
    import types

    from edgepose import families

    assert PRESETS["accuracy"].flip is False and PRESETS["realtime"].flip is False
    dec = make_decoder(decoder_config("dekr", HEAD.to_dict()), "accuracy", {"flip": True})
    assert dec.flip and dec.params.flip
    # a family whose decoder module has no merge_flip (a future one) says so in one sentence
    bare = types.SimpleNamespace(**{k: v for k, v in vars(dekr).items() if k != "merge_flip"})
    monkeypatch.setattr(families, "decoder_module", lambda family: bare)
    with pytest.raises(UsageError, match="dekr family has no flip test"):
        make_decoder(decoder_config("dekr", HEAD.to_dict()), "accuracy", {"flip": True})
    assert not make_decoder(decoder_config("dekr", HEAD.to_dict()), "accuracy").flip
