"""DEKR architecture: adaptive convolution vs an independent deformable convolution, official key names,
official checkpoints (network and rescoring net) in their key layout, fusion, zoo numbers, and the loss."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgepose.decoders.dekr_rescore import RescoreNet, feature_size, rescore_features  # noqa: E402
from edgepose.errors import CheckpointError, UsageError  # noqa: E402
from edgepose.models.adaptive_conv import AdaptBlock, GroupedAdaptBlock  # noqa: E402
from edgepose.models.dekr import DekrConfig, DekrModel  # noqa: E402
from edgepose.models.dekr_checkpoints import load_dekr_checkpoint, load_rescore_checkpoint  # noqa: E402
from edgepose.models.zoo import ZOO, build_model, measure  # noqa: E402
from edgepose.training.dekr_loss import DekrLoss, DekrLossConfig, build_targets  # noqa: E402
from tests.official_hrnet_keys import add_basic_block, add_bn, trunk_keys  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- an independent deformable convolution (torchvision.ops.deform_conv2d semantics, in numpy) ----------


def _bilinear_tv(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """torchvision's ``bilinear_interpolate``: 0 when y <= -1, y >= H, x <= -1 or x >= W; corners outside
    the map count as 0. img (C, H, W); y, x (H', W') -> (C, H', W')."""
    c, h, w = img.shape
    out = np.zeros((c, *y.shape))
    inside = (y > -1) & (y < h) & (x > -1) & (x < w)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    ly, lx = y - y0, x - x0
    for dy, dx, wt in (
        (0, 0, (1 - ly) * (1 - lx)),
        (0, 1, (1 - ly) * lx),
        (1, 0, ly * (1 - lx)),
        (1, 1, ly * lx),
    ):
        yy, xx = y0 + dy, x0 + dx
        ok = inside & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        vals = img[:, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        out += np.where(ok, wt, 0.0) * vals
    return out


def deform_conv_numpy(x, offset, weight, dilation=1):
    """torchvision ``deform_conv2d`` (3x3, stride 1, padding = dilation, no bias). offset (N, 18, H, W) with
    (dy, dx) per tap, taps row-major."""
    n, c, h, w = x.shape
    out = np.zeros((n, weight.shape[0], h, w))
    ys, xs = np.mgrid[0:h, 0:w]
    for b in range(n):
        for i in range(3):
            for j in range(3):
                t = 3 * i + j
                py = ys - dilation + i * dilation + offset[b, 2 * t]
                px = xs - dilation + j * dilation + offset[b, 2 * t + 1]
                out[b] += np.einsum("oc,chw->ohw", weight[:, :, i, j], _bilinear_tv(x[b], py, px))
    return out


def official_offsets(transform: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """The official AdaptBlock's offset tensor, written from its source: M @ regular - regular + t."""
    regular = np.array([[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1]], np.float64)
    n, _, h, w = transform.shape
    m = transform.transpose(0, 2, 3, 1).reshape(n * h * w, 2, 2)
    off = m @ regular - regular  # (NHW, 2, 9)
    off = off.transpose(0, 2, 1).reshape(n, h, w, 18).transpose(0, 3, 1, 2).copy()
    off[:, 0::2] += translation[:, 0:1]
    off[:, 1::2] += translation[:, 1:2]
    return off


@pytest.mark.parametrize("dilation", [1, 2])
def test_adaptive_conv_equals_numpy_deformable_convolution(dilation):
    torch.manual_seed(dilation)
    blk = AdaptBlock(5, 6, dilation=dilation).eval()
    with torch.no_grad():  # large transforms and translations: many taps land outside the 7x9 map
        blk.transform_matrix_conv.weight.normal_(0, 0.6)
        blk.transform_matrix_conv.bias.copy_(torch.tensor([1.5, -0.4, 0.3, 0.8]))
        blk.translation_conv.weight.normal_(0, 1.0)
        blk.translation_conv.bias.copy_(torch.tensor([2.5, -3.0]))
    x = torch.randn(2, 5, 7, 9)
    with torch.no_grad():
        got = blk.adapt_conv(x, blk.displacement(x)).double().numpy()
        transform = blk.transform_matrix_conv(x).double().numpy()
        translation = blk.translation_conv(x).double().numpy()
    off = official_offsets(transform, translation)
    ys, xs = np.mgrid[0:7, 0:9]
    taps = np.stack([(ys + off[:, 2 * t]) for t in range(9)] + [(xs + off[:, 2 * t + 1]) for t in range(9)])
    outside = (taps[:9] <= -1) | (taps[:9] >= 7) | (taps[9:] <= -1) | (taps[9:] >= 9)
    assert outside.mean() > 0.15  # the case really exercises zero padding
    want = deform_conv_numpy(
        x.double().numpy(), off, blk.adapt_conv.weight.double().detach().numpy(), dilation
    )
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_grouped_blocks_equal_the_blocks_they_replace():
    torch.manual_seed(3)
    blocks = [AdaptBlock(4, 4).eval() for _ in range(3)]
    for b in blocks:
        with torch.no_grad():
            b.translation_conv.bias.normal_(0, 2.0)
            b.bn.running_mean.uniform_(-0.3, 0.3)
            b.bn.running_var.uniform_(0.5, 2.0)
            b.bn.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 12, 6, 10)
    with torch.no_grad():
        want = torch.cat([b(x[:, 4 * i : 4 * i + 4]) for i, b in enumerate(blocks)], 1)
        got = GroupedAdaptBlock(blocks)(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_adaptive_block_refuses_strides():
    with pytest.raises(UsageError, match="stride 1"):
        AdaptBlock(4, 4, stride=2)


# --- official key names --------------------------------------------------------------------------------


def official_keys(width: int, k: int) -> dict[str, tuple[int, ...]]:
    """Every state-dict key (and shape) of the official W32/W48 ``PoseHigherResolutionNet`` in
    ``lib/models/hrnet_dekr.py``, enumerated from that file's structure (not from our model)."""
    keys = trunk_keys(width)
    ch = [width * 2**b for b in range(4)]
    total = sum(ch)
    keys["transition_heatmap.0.weight"] = (width, total, 1, 1)
    add_bn(keys, "transition_heatmap.1", width)
    keys["transition_offset.0.weight"] = (15 * k, total, 1, 1)
    add_bn(keys, "transition_offset.1", 15 * k)
    add_basic_block(keys, "head_heatmap.0.0", width)
    keys["head_heatmap.1.weight"] = (k + 1, width, 1, 1)
    keys["head_heatmap.1.bias"] = (k + 1,)
    for j in range(k):
        for b in range(2):
            p = f"offset_feature_layers.{j}.{b}"
            keys[f"{p}.regular_matrix"] = (2, 9)
            keys[f"{p}.transform_matrix_conv.weight"] = (4, 15, 3, 3)
            keys[f"{p}.transform_matrix_conv.bias"] = (4,)
            keys[f"{p}.translation_conv.weight"] = (2, 15, 3, 3)
            keys[f"{p}.translation_conv.bias"] = (2,)
            keys[f"{p}.adapt_conv.weight"] = (15, 15, 3, 3)
            add_bn(keys, f"{p}.bn", 15)
        keys[f"offset_final_layer.{j}.weight"] = (2, 15, 1, 1)
        keys[f"offset_final_layer.{j}.bias"] = (2,)
    return keys


@pytest.mark.parametrize(
    ("name", "width", "k"), [("dekr-w32", 32, 17), ("dekr-w48", 48, 17), ("dekr-w32", 32, 14)]
)
def test_state_dict_keys_and_shapes_are_the_official_ones(name, width, k):
    with torch.device("meta"):
        model = build_model(name, num_keypoints=k)
    ours = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    assert ours == official_keys(width, k)
    if k == 17:
        assert sum(p.numel() for p in model.parameters()) == ZOO[name].params


def _official_file(tmp_path, model: DekrModel, wrap: str) -> str:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if wrap == "module":
        state = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "state_dict":
        state = {"state_dict": state}
    path = tmp_path / f"pose_dekr_{wrap}.pth"
    torch.save(state, path)
    return str(path)


@pytest.fixture(scope="module")
def dekr_t():
    torch.manual_seed(0)
    model = build_model("dekr-t").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("wrap", ["plain", "module", "state_dict"])
def test_official_layout_files_load_strictly_and_reproduce_the_model(tmp_path, dekr_t, wrap):
    model, info = load_dekr_checkpoint(_official_file(tmp_path, dekr_t, wrap))
    assert info["name"] == "dekr-t" and info["num_keypoints"] == 17 and len(info["sha256"]) == 64
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(model(x), dekr_t(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_crowdpose_file_builds_a_14_keypoint_model(tmp_path):
    torch.manual_seed(1)
    src = build_model("dekr-t", num_keypoints=14).eval()
    model, info = load_dekr_checkpoint(_official_file(tmp_path, src, "plain"), arch="dekr-t")
    assert info["num_keypoints"] == 14 and model.cfg.num_keypoints == 14
    heat, off = model(torch.rand(1, 3, 64, 64))
    assert heat.shape == (1, 15, 16, 16) and off.shape == (1, 28, 16, 16)


def test_bad_dekr_files_are_one_line_checkpoint_errors(tmp_path, dekr_t):
    state = dekr_t.state_dict()
    cases = {}
    cases["missing"] = {k: v for k, v in state.items() if "adapt_conv" not in k}
    shape = dict(state)
    shape["offset_final_layer.3.weight"] = torch.zeros(2, 5, 1, 1)
    cases["shape"] = shape
    cases["not_dekr"] = {"conv1.weight": torch.zeros(3)}
    for name, s in cases.items():
        torch.save(s, tmp_path / f"{name}.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 definitely not a zip")
    expect = {
        "missing": "key(s) missing",
        "shape": "has shape",
        "not_dekr": "not a DEKR",
        "corrupt": "not a readable",
    }
    for name, words in expect.items():
        with pytest.raises(CheckpointError) as err:
            load_dekr_checkpoint(tmp_path / f"{name}.pth")
        msg = str(err.value)
        assert words in msg and "\n" not in msg, msg
    with pytest.raises(CheckpointError, match="not a dekr-w32"):
        load_dekr_checkpoint(_official_file(tmp_path, dekr_t, "plain"), arch="dekr-w32")


def test_load_checkpoint_routes_dekr_files(tmp_path, dekr_t):
    from edgepose.models.checkpoints import load_checkpoint, save_checkpoint

    official = _official_file(tmp_path, dekr_t, "module")
    for arch in (None, "dekr-t"):
        model, info = load_checkpoint(official, arch=arch)
        assert isinstance(model, DekrModel) and info["name"] == "dekr-t" and info["format"] == "dekr-official"
        assert len(info["sha256"]) == 64
    ours = save_checkpoint(tmp_path / "ours.pt", dekr_t, "dekr-t", epoch=3)
    model, info = load_checkpoint(ours)
    assert isinstance(model, DekrModel) and info["format"] == "edgepose" and info["epoch"] == 3
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1], dekr_t(x)[1], rtol=0, atol=0)
    torch.save(build_model("kapao-t").state_dict(), tmp_path / "kapao.pth")
    with pytest.raises(CheckpointError, match="not a DEKR"):
        load_checkpoint(tmp_path / "kapao.pth", arch="dekr-t")


# --- the rescoring net ---------------------------------------------------------------------------------


def _official_rescore_net(features: int = 74) -> nn.Module:
    """``PredictOKSNet`` of lib/models/predictOKS.py (hidden 256), as a torch module with its key names."""

    class PredictOKSNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2, self.l3 = nn.Linear(features, 256), nn.Linear(256, 256), nn.Linear(256, 1)

        def forward(self, x):
            return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))

    torch.manual_seed(5)
    return PredictOKSNet().eval()


def test_rescore_checkpoint_loads_and_runs_in_numpy_like_torch(tmp_path):
    net = _official_rescore_net()
    path = tmp_path / "final_rescore_coco_kpt.pth"
    torch.save(net.state_dict(), path)
    ours = load_rescore_checkpoint(path, num_keypoints=17)
    feats = np.random.default_rng(0).normal(0, 1, (7, 74))
    with torch.no_grad():
        want = net(torch.from_numpy(feats).float()).numpy()[:, 0]
    np.testing.assert_allclose(ours(feats), want, rtol=1e-5, atol=1e-5)
    again = RescoreNet.load(ours.save(tmp_path / "rescore.npz"))
    np.testing.assert_array_equal(again(feats), ours(feats))


def test_bad_rescore_files_are_checkpoint_errors(tmp_path):
    state = _official_rescore_net().state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("l3")}, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="not a DEKR rescoring net"):
        load_rescore_checkpoint(tmp_path / "a.pth")
    torch.save(_official_rescore_net(59).state_dict(), tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match="needs 74"):
        load_rescore_checkpoint(tmp_path / "b.pth", num_keypoints=17)


def test_rescore_features_follow_the_official_construction():
    xy = np.zeros((1, 17, 2))
    xy[0, 5], xy[0, 11] = (0, 0), (0, 10)  # left shoulder, left hip: limb 9 has length 10
    xy[0, 6], xy[0, 12] = (4, 0), (4, 30)  # right side: limb 11 has length 30, so the norm is 20
    scores = np.linspace(0, 1, 17)[None]
    f = rescore_features(xy, scores)
    assert f.shape == (1, 74) == (1, feature_size(17))
    # limb 9 = joint 5 - joint 11 = (0, -10) / 20, interleaved x, y at columns 18, 19
    np.testing.assert_allclose(f[0, 18:20], [0.0, -0.5])
    np.testing.assert_allclose(f[0, 38 + 9], 0.5)  # its length / norm
    np.testing.assert_allclose(f[0, 57:], scores[0])
    tiny = rescore_features(xy * 0.01, scores)  # norm 0.2 < 1 px is floored at 1
    np.testing.assert_allclose(tiny[0, 38 + 9], 0.1)


# --- the model ---------------------------------------------------------------------------------------


def test_outputs_head_spec_and_input_checks(dekr_t):
    heat, off = dekr_t(torch.rand(2, 3, 96, 128))
    assert heat.shape == (2, 18, 24, 32) and off.shape == (2, 34, 24, 32)
    spec = dekr_t.head_spec()
    assert spec["output_names"] == ["heatmap", "offset"] and spec["input_multiple"] == 32
    assert spec["num_keypoints"] == 17 and spec["stride"] == 4
    with pytest.raises(UsageError, match="multiple of 32"):
        dekr_t(torch.rand(1, 3, 80, 96))


def test_fused_model_equals_the_reference(dekr_t):
    x = torch.rand(1, 3, 128, 96)
    fused = copy.deepcopy(dekr_t).fuse()
    assert fused.grouped_offset is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert fused.input_std is None  # folded into conv1, padded borders included
    with torch.no_grad():
        for a, b in zip(fused(x), dekr_t(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_input_normalisation_is_imagenet_mean_std_inside_the_graph(dekr_t):
    x = torch.rand(1, 3, 64, 64)
    plain = copy.deepcopy(dekr_t)
    plain.input_mean.zero_()
    plain.input_std.fill_(1.0)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        for a, b in zip(dekr_t(x), plain((x - mean) / std)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["dekr-t", "dekr-n"])
def test_zoo_numbers_are_measured(name):
    params, gflops = measure(name)
    assert params == ZOO[name].params
    assert gflops == pytest.approx(ZOO[name].gflops, rel=1e-3)


def test_official_init_puts_every_adaptive_tap_on_its_pixel():
    torch.manual_seed(0)
    model = build_model("dekr-t").init_weights().eval()
    blk = model.offset_feature_layers[2][1]
    x = torch.randn(1, 8, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(
            blk.adapt_conv(x, blk.displacement(x)),
            nn.functional.conv2d(x, blk.adapt_conv.weight.sum((2, 3), keepdim=True)),
            atol=1e-6,
            rtol=1e-5,
        )
    assert float(model.conv1.weight.detach().std()) == pytest.approx(0.001, rel=0.3)


def test_config_round_trip_and_refusals():
    cfg = DekrConfig(name="x", width=16, heatmap_channels=16, num_modules=[1, 2, 1])
    assert DekrConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UsageError, match="unknown DEKR config"):
        DekrConfig.from_dict({"widht": 3})
    with pytest.raises(UsageError, match="final_kernel"):
        DekrConfig(final_kernel=5)


# --- loss and targets on a hand-built person -------------------------------------------------------------


def _person_rows(k: int = 17) -> np.ndarray:
    """One person in a 128x128 input: keypoint j at (40 + 2j, 20 + 4j) input px, keypoint 16 unlabelled."""
    kps = np.zeros((k, 3))
    kps[:, 0] = 40 + 2 * np.arange(k)
    kps[:, 1] = 20 + 4 * np.arange(k)
    kps[:, 2] = 2
    kps[16] = 0
    row = np.concatenate([[0.0, 30.0, 10.0, 90.0, 100.0], kps.ravel()])  # image 0, box, keypoints
    return row[None].astype(np.float32)


def test_targets_of_a_hand_built_person():
    cfg = DekrLossConfig()
    t = build_targets(_person_rows(), 1, 17, (128, 128), cfg)
    assert t.heatmap.shape == (1, 18, 32, 32) and t.offset.shape == (1, 34, 32, 32)
    # keypoint 0 at (40, 20) input px = (10, 5) output px: heat 1 there, exp(-1/(2 sigma^2)) one pixel off
    assert t.heatmap[0, 0, 5, 10] == pytest.approx(1.0)
    assert t.heatmap[0, 0, 5, 11] == pytest.approx(np.exp(-1 / 8))
    assert t.heatmap[0, 16].max() == 0  # unlabelled keypoint: no Gaussian
    # centre = mean of the 16 labelled keypoints = (55, 50) input px = (13.75, 12.5) output px
    cy, cx = divmod(int(t.heatmap[0, 17].argmax()), 32)
    assert (cx, cy) in {(13, 12), (14, 12), (13, 13), (14, 13)}
    assert t.heatmap[0, 17, 12, 14] == pytest.approx(np.exp(-(0.25**2 + 0.5**2) / 32))
    # mask: 1 in the windows, bg_weight elsewhere
    assert t.mask[0, 0, 5, 10] == 1 and t.mask[0, 0, 30, 30] == pytest.approx(cfg.bg_weight)
    # offsets on the centre pixel (13, 12): pixel - keypoint, weight 1/sqrt(area of the keypoint extent)
    area = (30**2 + 60**2) * 1.0  # keypoints 0..15 span 30 x 60 input px
    assert t.offset[0, 0, 12, 13] == pytest.approx(13 - 10.0) and t.offset[0, 1, 12, 13] == pytest.approx(
        12 - 5.0
    )
    assert t.offset_weight[0, 0, 12, 13] == pytest.approx(1 / np.sqrt(area))
    assert (t.offset_weight[0, 0] > 0).sum() == 64  # the official window: centre - 4 .. centre + 3
    assert t.offset_weight[0, 32].max() == 0  # keypoint 16 is unlabelled


def test_loss_is_zero_at_the_target_and_trains():
    loss_fn = DekrLoss(17)
    targets = loss_fn.targets(torch.from_numpy(_person_rows()), 1, (128, 128))
    total, parts = loss_fn(targets.heatmap.clone(), targets.offset.clone(), targets)
    assert float(total) == 0.0 and parts == {"heatmap": 0.0, "offset": 0.0}
    heat = torch.zeros_like(targets.heatmap, requires_grad=True)
    off = torch.zeros_like(targets.offset, requires_grad=True)
    total, parts = loss_fn(heat, off, targets)
    assert parts["heatmap"] > 0 and parts["offset"] > 0
    total.backward()
    assert heat.grad.abs().sum() > 0 and off.grad[0, 0, 12, 13] != 0 and off.grad[0, 0, 0, 0] == 0
    # the offset term is a smooth L1 (beta 1/9) averaged over weighted entries, scaled by 0.03
    w = targets.offset_weight
    diff = targets.offset.abs()
    sl1 = torch.where(diff < 1 / 9, 0.5 * diff**2 * 9, diff - 0.5 / 9)
    assert parts["offset"] == pytest.approx(float((sl1 * w).sum() / (w > 0).sum()), rel=1e-5)


def test_a_training_step_reaches_every_branch_and_lowers_the_loss():
    torch.manual_seed(0)
    model = build_model("dekr-t").train()
    loss_fn = DekrLoss(17)
    rows = np.concatenate(
        [_person_rows(), _person_rows() + np.r_[1.0, np.zeros(4 + 51)]]
    )  # same person, 2 images
    targets = loss_fn.targets(torch.from_numpy(rows), 2, (128, 128))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 128, 128)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        total, _ = loss_fn(*model(x), targets)
        total.backward()
        losses.append(float(total.detach()))
        opt.step()
    blk = model.offset_feature_layers[5][0]
    assert (
        blk.transform_matrix_conv.weight.grad.abs().sum() > 0
        and blk.translation_conv.weight.grad.abs().sum() > 0
    )
    assert losses[-1] < losses[0]
