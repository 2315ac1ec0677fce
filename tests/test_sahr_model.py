"""SWAHR/HigherHRNet architecture: official key names (both repositories), official-layout checkpoints, the
scale-map channel order, deployment pruning and the FLOPs it saves, zoo numbers, and the losses."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from edgepose.errors import CheckpointError, UsageError  # noqa: E402
from edgepose.models.checkpoints import load_checkpoint  # noqa: E402
from edgepose.models.higherhrnet import SahrConfig, SahrModel  # noqa: E402
from edgepose.models.sahr_checkpoints import load_sahr_checkpoint  # noqa: E402
from edgepose.models.zoo import ZOO, build_model, measure  # noqa: E402
from edgepose.training.sahr_loss import (  # noqa: E402
    SahrLoss,
    SahrLossConfig,
    ae_loss,
    build_targets,
    sahr_target,
    wahr_weight,
)
from tests.official_hrnet_keys import add_basic_block, add_bn, trunk_keys  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- official key names --------------------------------------------------------------------------------


def official_keys(
    width: int,
    k: int,
    scale: bool,
    stem: int = 64,
    stem_blocks: int = 4,
    modules: tuple[int, int, int] = (1, 4, 3),
    blocks: int = 4,
    deconv_blocks: int = 4,
) -> dict[str, tuple[int, ...]]:
    """Every state-dict key (and shape) of ``PoseHigherResolutionNet`` in ``lib/models/pose_higher_hrnet.py``
    of HigherHRNet (``scale=False``) and SWAHR (``scale=True``), enumerated from that file's structure (not
    from our model): the released configs have stem 64 with 4 Bottlenecks, modules (1, 4, 3), 4 blocks per
    branch, one deconvolution (kernel 4, NUM_CHANNELS = width, 4 basic blocks), FINAL_CONV_KERNEL 1,
    TAG_PER_JOINT, WITH_AE_LOSS [True, False]. The other arguments only shrink it for test files."""
    keys = trunk_keys(width, stem, stem_blocks, modules, blocks, last_multi_scale=False)
    keys["final_layers.0.weight"] = (2 * k, width, 1, 1)
    keys["final_layers.0.bias"] = (2 * k,)
    keys["final_layers.1.weight"] = (k, width, 1, 1)
    keys["final_layers.1.bias"] = (k,)
    keys["deconv_layers.0.0.0.weight"] = (width + 2 * k, width, 4, 4)  # ConvTranspose2d: (in, out, k, k)
    add_bn(keys, "deconv_layers.0.0.1", width)
    for i in range(deconv_blocks):
        add_basic_block(keys, f"deconv_layers.0.{i + 1}.0", width)
    if scale:
        for i in range(2):
            keys[f"conv_scale_layers.{i}.0.weight"] = (k, width, 1, 1)
            keys[f"conv_scale_layers.{i}.0.bias"] = (k,)
            add_bn(keys, f"conv_scale_layers.{i}.1", k)
            keys[f"conv_scale_layers.{i}.3.weight"] = (k, 1, 9, 9)
            keys[f"conv_scale_layers.{i}.3.bias"] = (k,)
    return keys


TINY = {"stem": 16, "stem_blocks": 1, "modules": (1, 1, 1), "blocks": 1, "deconv_blocks": 1}  # sahr-t's shape


@pytest.mark.parametrize(
    ("name", "width", "k", "scale"),
    [
        ("sahr-w32", 32, 17, True),
        ("sahr-w48", 48, 17, True),
        ("sahr-w32", 32, 17, False),
        ("sahr-w32", 32, 14, True),
    ],
)
def test_state_dict_keys_and_shapes_are_the_official_ones(name, width, k, scale):
    cfg = SahrConfig.from_dict({**ZOO[name].config, "name": name, "num_keypoints": k, "scale_aware": scale})
    with torch.device("meta"):
        model = SahrModel(cfg)
    ours = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    assert ours == official_keys(width, k, scale)
    if k == 17 and scale:
        assert sum(p.numel() for p in model.parameters()) == ZOO[name].params


def _official_file(tmp_path, scale: bool, wrap: str = "plain", seed: int = 0, k: int = 17, **shape) -> tuple:
    """A state dict with the official keys (random values, BatchNorm statistics plausible), saved as
    the official repositories save theirs."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shp in official_keys(8, k, scale, **{**TINY, **shape}).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shp, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shp, generator=gen) * 0.1
    saved = state
    if wrap == "module":
        saved = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "state_dict":
        saved = {"state_dict": state}
    path = tmp_path / f"pose_higher_hrnet_{'swahr' if scale else 'hh'}_{wrap}.pth"
    torch.save(saved, path)
    return path, state


@pytest.mark.parametrize(("scale", "wrap"), [(True, "plain"), (True, "module"), (False, "state_dict")])
def test_official_layout_files_load_strictly(tmp_path, scale, wrap):
    path, state = _official_file(tmp_path, scale, wrap)
    model, info = load_checkpoint(path)  # the general entry routes SWAHR/HigherHRNet state dicts
    assert info["family"] == "sahr" and info["num_keypoints"] == 17 and len(info["sha256"]) == 64
    assert info["name"] == ("sahr-t" if scale else "higherhrnet-t")
    assert info["format"] == ("swahr-official" if scale else "higherhrnet-official")
    assert model.cfg.scale_aware is scale and not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v.to(loaded[k].dtype)) for k, v in state.items())
    lo, tags, hi = model(torch.rand(1, 3, 64, 96))
    assert lo.shape == tags.shape == (1, 17, 16, 24) and hi.shape == (1, 17, 32, 48)
    again, _ = load_sahr_checkpoint(path, arch="sahr-t")  # a HigherHRNet-t passes for the sahr-t entry
    assert again.cfg.scale_aware is scale


def test_crowdpose_files_build_a_14_keypoint_model(tmp_path):
    path, _ = _official_file(tmp_path, True, k=14)
    model, info = load_checkpoint(path, arch="sahr-t")
    assert info["num_keypoints"] == 14 and model.cfg.num_keypoints == 14
    assert [t.shape[1] for t in model(torch.rand(1, 3, 64, 64))] == [14, 14, 14]


def test_bad_files_are_one_line_checkpoint_errors(tmp_path):
    path, state = _official_file(tmp_path, True)
    cases = {
        "missing": {k: v for k, v in state.items() if "deconv_layers.0.0.1." not in k},
        "shape": {**state, "final_layers.1.bias": torch.zeros(5)},
        "tags_once": {**state, "final_layers.0.weight": torch.zeros(18, 8, 1, 1)},  # TAG_PER_JOINT off
        "not_sahr": {"conv1.weight": torch.zeros(3)},
    }
    for name, s in cases.items():
        torch.save(s, tmp_path / f"{name}.pth")
    expect = {
        "missing": "key(s) missing",
        "shape": "has shape",
        "tags_once": "only the released layout",
        "not_sahr": "not a HigherHRNet/SWAHR",
    }
    for name, words in expect.items():
        with pytest.raises(CheckpointError) as err:
            load_sahr_checkpoint(tmp_path / f"{name}.pth")
        assert words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="not a sahr-w32; pass --arch sahr-t"):
        load_checkpoint(path, arch="sahr-w32")
    with pytest.raises(CheckpointError, match="not a HigherHRNet/SWAHR"):
        load_checkpoint(tmp_path / "not_sahr.pth", arch="sahr-t")


# --- channel order, pruning, fusion --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sahr_t():
    torch.manual_seed(0)
    model = build_model("sahr-t").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        for branch in model.conv_scale_layers:
            branch[-1].weight.normal_(0, 0.3)
    return model


def test_scale_maps_come_first_and_feed_nothing(sahr_t):
    x = torch.rand(1, 3, 64, 64)
    model = copy.deepcopy(sahr_t)
    with torch.no_grad():
        lo, tags, hi = model(x)
        train_lo, train_hi = model.forward_train(x)
        feats = model.features((x - model.input_mean) / model.input_std)[0]
        scale_lo = model.conv_scale_layers[0](feats)
        for branch in model.conv_scale_layers:  # a different scale head changes nothing else
            branch[-1].bias.fill_(7.0)
        lo2, tags2, hi2 = model(x)
        train_lo2, train_hi2 = model.forward_train(x)
    k = 17
    assert train_lo.shape == (1, 3 * k, 16, 16) and train_hi.shape == (1, 2 * k, 32, 32)
    torch.testing.assert_close(train_lo[:, :k], scale_lo)
    torch.testing.assert_close(train_lo[:, k : 2 * k], lo)
    torch.testing.assert_close(train_lo[:, 2 * k :], tags)
    torch.testing.assert_close(train_hi[:, k:], hi)
    for a, b in ((lo, lo2), (tags, tags2), (hi, hi2), (train_lo[:, k:], train_lo2[:, k:])):
        assert torch.equal(a, b)
    assert not torch.equal(train_lo[:, :k], train_lo2[:, :k])
    assert (train_hi2[:, :k] - train_hi[:, :k]).mean() > 6


def test_fuse_is_the_pruned_deploy_form_with_the_same_outputs(sahr_t):
    fused = copy.deepcopy(sahr_t).fuse()
    assert fused.deploy and not hasattr(fused, "conv_scale_layers")
    assert not any("conv_scale" in k for k in fused.state_dict())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert fused.input_std is None  # folded into conv1: the graph divides nothing
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(fused(x), sahr_t(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(UsageError, match="fused for deployment"):
        fused.forward_train(x)


def _gflops(fn, x) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(x)
    return counter.get_total_flops() / 1e9


@pytest.mark.parametrize("name", ["sahr-w32", "sahr-n"])
def test_pruning_saves_exactly_the_scale_branch_flops(name):
    with torch.device("meta"):
        model = build_model(name).eval()
    w, h = ZOO[name].default_imgsz
    x = torch.empty(1, 3, h, w, device="meta")
    deployed, trained = _gflops(model, x), _gflops(model.forward_train, x)
    c, k = model.cfg, model.cfg.num_keypoints
    per_pixel = [2 * (k * cin + k * 81) for cin in (c.width, c.deconv_channels)]  # 1x1 conv + 9x9 depthwise
    saved = (per_pixel[0] * (h // 4) * (w // 4) + per_pixel[1] * (h // 2) * (w // 2)) / 1e9
    assert trained - deployed == pytest.approx(saved, rel=1e-9)
    assert deployed == pytest.approx(ZOO[name].gflops, rel=1e-3)
    if name == "sahr-w32":  # 0.315 of 92.7 GFLOPs (0.34 %) at 512
        assert saved == pytest.approx(0.3147, abs=1e-4)


@pytest.mark.parametrize("name", ["sahr-t", "sahr-n"])
def test_zoo_numbers_are_measured(name):
    params, gflops = measure(name)
    assert params == ZOO[name].params
    assert gflops == pytest.approx(ZOO[name].gflops, rel=1e-3)


def test_normalisation_is_in_the_graph(sahr_t):
    x = torch.rand(1, 3, 64, 64)
    plain = copy.deepcopy(sahr_t)
    plain.input_mean.zero_()
    plain.input_std.fill_(1.0)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        for a, b in zip(sahr_t(x), plain((x - mean) / std)):
            torch.testing.assert_close(a, b)


def test_official_init_starts_with_zero_scale_maps():
    torch.manual_seed(0)
    model = build_model("sahr-t").init_weights().eval()
    with torch.no_grad():
        lo, hi = model.forward_train(torch.rand(1, 3, 64, 64))
    assert lo[:, :17].abs().max() == 0 and hi[:, :17].abs().max() == 0
    assert float(model.conv1.weight.detach().std()) == pytest.approx(0.001, rel=0.3)


def test_config_round_trip_and_refusals():
    cfg = SahrConfig(name="x", width=16, deconv_channels=16, num_modules=[1, 2, 1], scale_aware=False)
    assert SahrConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UsageError, match="unknown SAHR config"):
        SahrConfig.from_dict({"widht": 3})
    with pytest.raises(UsageError, match="deconv_kernel"):
        SahrConfig(deconv_kernel=5)
    with pytest.raises(UsageError, match="detection_threshold"):
        SahrConfig(detection_threshold=2.0)


# --- targets and losses on hand-built cases --------------------------------------------------------------


def _person_rows(k: int = 17, image: int = 0, dx: float = 0.0) -> np.ndarray:
    """One person in a 128x128 input: keypoint j at (41 + 2j + dx, 21 + 4j) input px; 16 is unlabelled."""
    kps = np.zeros((k, 3))
    kps[:, 0] = 41 + 2 * np.arange(k) + dx
    kps[:, 1] = 21 + 4 * np.arange(k)
    kps[:, 2] = 2
    kps[16] = 0
    row = np.concatenate([[image, 30.0, 10.0, 90.0, 100.0], kps.ravel()])
    return row[None].astype(np.float32)


def test_targets_of_a_hand_built_person():
    t = build_targets(_person_rows(), 1, 17, (128, 128))
    lo, hi = t.heatmaps
    assert lo.shape == (1, 17, 32, 32) and hi.shape == (1, 17, 64, 64)
    # keypoint 0 at (41, 21) input px: int(10.25), int(5.25) = (10, 5) at stride 4, (20, 10) at stride 2
    assert lo[0, 0, 5, 10] == 1 and lo[0, 0, 5, 11] == pytest.approx(np.exp(-1 / 8))
    assert hi[0, 0, 10, 20] == 1 and hi[0, 0, 12, 21] == pytest.approx(np.exp(-5 / 8))
    # the official window is [p - 7, p + 8) for sigma 2: nothing at 8 px to the right
    assert lo[0, 0, 5, 17] == pytest.approx(np.exp(-49 / 8)) and lo[0, 0, 5, 18] == 0
    assert lo[0, 16].max() == 0 and hi[0, 16].max() == 0  # unlabelled
    assert torch.equal(t.masks[0], torch.ones(1, 32, 32))
    j = t.joints[0, 0]
    assert j[:16, 1].sum() == 16 and j[16, 1] == 0 and t.joints[0, 1:].sum() == 0
    assert int(j[3, 0]) == 3 * 32 * 32 + int((21 + 12) / 4) * 32 + int((41 + 6) / 4)


def test_a_perfect_prediction_has_zero_heatmap_loss():
    loss = SahrLoss(17)
    t = loss.targets(torch.from_numpy(_person_rows()), 1, (128, 128))
    lo, hi = t.heatmaps
    zeros_lo, zeros_hi = torch.zeros_like(lo), torch.zeros_like(hi)
    tags = torch.full_like(lo, 0.5)
    total, parts = loss((torch.cat([zeros_lo, lo, tags], 1), torch.cat([zeros_hi, hi], 1)), t)
    assert parts["heatmaps_lo"] == 0 and parts["heatmaps_hi"] == 0 and parts["scale"] == 0
    assert parts["pull"] == 0 and parts["push"] == 0 and float(total) == 0
    # HigherHRNet's plain MSE: the same, without scale channels
    plain = SahrLoss(17, SahrLossConfig(scale_adaptive=False, weight_adaptive=False))
    total, _ = plain((torch.cat([lo, tags], 1), hi), t)
    assert float(total) == 0
    with pytest.raises(ValueError, match="channels"):
        plain((torch.cat([zeros_lo, lo, tags], 1), torch.cat([zeros_hi, hi], 1)), t)


def test_scale_adapted_target_and_wahr_weight_follow_their_formulas():
    gt = torch.tensor([0.0, 0.01, 0.3, 0.8, 1.0], dtype=torch.float64)
    s = torch.tensor([0.5, 0.1, -0.2, 0.3, 0.7], dtype=torch.float64)
    ln = torch.log(gt.clamp(min=1e-300))
    want = torch.where(gt > 0, gt * (1 + s * ln + (s * ln) ** 2 / 2), torch.zeros_like(gt))
    torch.testing.assert_close(sahr_target(gt, s), want)
    small = s * 0.01  # second order: gt^(1+s) to O(s^3)
    exact = gt[1:] ** (1 + small[1:])
    torch.testing.assert_close(sahr_target(gt[1:], small[1:]), exact, atol=1e-7, rtol=1e-7)
    pred = torch.tensor([0.2, -0.1, 0.5, 1.3, 0.9], dtype=torch.float64)
    g = gt**0.01
    torch.testing.assert_close(wahr_weight(pred, gt), (1 - pred).abs() * g + pred.abs() * (1 - g))
    assert float(wahr_weight(pred, gt)[0]) == pytest.approx(0.2)  # background: |P|
    assert float(wahr_weight(pred, gt)[-1]) == pytest.approx(0.1)  # at the peak: |1 - P|


def test_heatmap_loss_is_the_weighted_squared_error_to_the_scaled_target():
    loss = SahrLoss(17)
    t = loss.targets(torch.from_numpy(_person_rows()), 1, (128, 128))
    gen = torch.Generator().manual_seed(0)
    lo = torch.rand(1, 51, 32, 32, generator=gen)
    hi = torch.rand(1, 34, 64, 64, generator=gen)
    _, parts = loss((lo, hi), t)
    for out, gt, name in ((lo, t.heatmaps[0], "heatmaps_lo"), (hi, t.heatmaps[1], "heatmaps_hi")):
        s = out[:, :17] * (gt > 0)
        pred = out[:, 17:34]
        want = ((pred - sahr_target(gt, s)) ** 2 * wahr_weight(pred, gt)).mean()
        assert parts[name] == pytest.approx(float(want), rel=1e-5)
    scale = sum(float(((o[:, :17] * (g > 0)) ** 2).mean()) for o, g in zip((lo, hi), t.heatmaps))
    assert parts["scale"] == pytest.approx(scale, rel=1e-5)


def test_ae_loss_pulls_a_person_together_and_pushes_people_apart():
    t = build_targets(np.concatenate([_person_rows(), _person_rows(dx=40.0)]), 1, 17, (128, 128))
    idx = t.joints[0, :2, :16, 0]
    tags = torch.zeros(1, 17 * 32 * 32)
    tags[0, idx[0]] = 1.0
    tags[0, idx[1]] = 11.0
    tags = tags.view(1, 17, 32, 32)
    push, pull = ae_loss(tags, t.joints)
    assert float(pull) == 0 and float(push) == pytest.approx(np.exp(-100.0), abs=1e-30)
    tags.view(-1)[idx[1]] = 1.5  # two people with close tags: push exp(-0.25) for each ordered pair
    push, _ = ae_loss(tags, t.joints)
    assert float(push) == pytest.approx(2 * np.exp(-0.25) / 2 * 0.5)
    tags.view(-1)[idx[0, :8]] = 0.0  # person 0: half its joints at 0, half at 1 -> variance 0.25
    _, pull = ae_loss(tags, t.joints)
    assert float(pull) == pytest.approx(0.25 / 2)
    push, _ = ae_loss(tags, t.joints, "max")
    assert float(push) == 0  # means 0.5 and 1.5: max(0, 1 - |d|) = 0


def test_a_training_step_reaches_every_head_and_lowers_the_loss():
    torch.manual_seed(0)
    model = build_model("sahr-t").train()
    loss = SahrLoss(17)
    rows = np.concatenate([_person_rows(), _person_rows(image=1, dx=20.0)])
    t = loss.targets(torch.from_numpy(rows), 2, (128, 128))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 128, 128)
    values = []
    for _ in range(3):
        opt.zero_grad()
        total, _ = loss(model.forward_train(x), t)
        total.backward()
        values.append(float(total.detach()))
        opt.step()
    assert model.conv_scale_layers[1][-1].weight.grad.abs().sum() > 0
    assert model.final_layers[0].weight.grad[17:].abs().sum() > 0  # the tag channels
    assert model.deconv_layers[0][0][0].weight.grad.abs().sum() > 0
    assert values[-1] < values[0]
