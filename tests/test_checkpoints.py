"""Checkpoint loading: official KAPAO pickles (written here by stand-ins of the official classes),
edgepose checkpoints, plain state dicts, and every way a file can be wrong or unsafe."""

from __future__ import annotations

import builtins
import copy
import hashlib
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgepose.errors import CheckpointError  # noqa: E402
from edgepose.models.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint  # noqa: E402
from edgepose.models.zoo import build_model  # noqa: E402

# --- a writer that mirrors the official KAPAO code (models/yolo.py, models/common.py) -------------
# Class names, module paths and attribute names follow the official repository, so torch.save
# writes the same globals and the same module tree as a real kapao_*.pt.

YAML_6 = {  # models/yolov5s6.yaml of github.com/wmcnally/kapao, with the multiples set per test
    "nc": 80,
    "depth_multiple": 0.33,
    "width_multiple": 0.125,
    "anchors": [
        [19, 27, 44, 40, 38, 94],
        [96, 68, 86, 152, 180, 137],
        [140, 301, 303, 264, 238, 542],
        [436, 615, 739, 380, 925, 792],
    ],
    "backbone": [
        [-1, 1, "Focus", [64, 3]],
        [-1, 1, "Conv", [128, 3, 2]],
        [-1, 3, "C3", [128]],
        [-1, 1, "Conv", [256, 3, 2]],
        [-1, 9, "C3", [256]],
        [-1, 1, "Conv", [512, 3, 2]],
        [-1, 9, "C3", [512]],
        [-1, 1, "Conv", [768, 3, 2]],
        [-1, 3, "C3", [768]],
        [-1, 1, "Conv", [1024, 3, 2]],
        [-1, 1, "SPP", [1024, [3, 5, 7]]],
        [-1, 3, "C3", [1024, False]],
    ],
    "head": [
        [-1, 1, "Conv", [768, 1, 1]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 8], 1, "Concat", [1]],
        [-1, 3, "C3", [768, False]],
        [-1, 1, "Conv", [512, 1, 1]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 6], 1, "Concat", [1]],
        [-1, 3, "C3", [512, False]],
        [-1, 1, "Conv", [256, 1, 1]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 4], 1, "Concat", [1]],
        [-1, 3, "C3", [256, False]],
        [-1, 1, "Conv", [256, 3, 2]],
        [[-1, 20], 1, "Concat", [1]],
        [-1, 3, "C3", [512, False]],
        [-1, 1, "Conv", [512, 3, 2]],
        [[-1, 16], 1, "Concat", [1]],
        [-1, 3, "C3", [768, False]],
        [-1, 1, "Conv", [768, 3, 2]],
        [[-1, 12], 1, "Concat", [1]],
        [-1, 3, "C3", [1024, False]],
        [[23, 26, 29, 32], 1, "Detect", ["nc", "anchors"]],
    ],
}


class Conv(nn.Module):
    __module__ = "models.common"

    def __init__(self, c1, c2, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Focus(nn.Module):
    __module__ = "models.common"

    def __init__(self, c1, c2, k=1):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k)

    def forward(self, x):
        return self.conv(
            torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
        )


class Bottleneck(nn.Module):
    __module__ = "models.common"

    def __init__(self, c1, c2, shortcut=True, e=0.5):
        super().__init__()
        self.cv1 = Conv(c1, int(c2 * e), 1, 1)
        self.cv2 = Conv(int(c2 * e), c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    __module__ = "models.common"

    def __init__(self, c1, c2, n=1, shortcut=True, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1, self.cv2, self.cv3 = Conv(c1, c_, 1, 1), Conv(c1, c_, 1, 1), Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*[Bottleneck(c_, c_, shortcut, e=1.0) for _ in range(n)])

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class SPP(nn.Module):
    __module__ = "models.common"

    def __init__(self, c1, c2, k=(5, 9, 13)):
        super().__init__()
        self.cv1 = Conv(c1, c1 // 2, 1, 1)
        self.cv2 = Conv(c1 // 2 * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k])

    def forward(self, x):
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class Concat(nn.Module):
    __module__ = "models.common"

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class Detect(nn.Module):
    __module__ = "models.yolo"
    stride = None

    def __init__(self, nc, anchors, ch, num_coords=0):
        super().__init__()
        self.nc, self.no, self.nl, self.na = nc, nc + 5, len(anchors), len(anchors[0]) // 2
        self.grid = [torch.zeros(1)] * self.nl
        a = torch.tensor(anchors).float().view(self.nl, -1, 2)
        self.register_buffer("anchors", a)
        self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = True
        self.num_coords = num_coords

    def forward(self, x):
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:  # the official in-place inference decode, keypoints included
                yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
                grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).float()
                y = x[i].sigmoid()
                y[..., 0:2] = (y[..., 0:2] * 2.0 - 0.5 + grid) * self.stride[i]
                y[..., 2:4] = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i]
                nk = self.num_coords
                y[..., -nk:] = y[..., -nk:] * 4.0 - 2.0
                y[..., -nk:] *= self.anchor_grid[i].repeat((1, 1, 1, 1, nk // 2))
                y[..., -nk:] += (grid * self.stride[i]).repeat((1, 1, 1, 1, nk // 2))
                z.append(y.view(bs, -1, self.no))
        return x if self.training else (torch.cat(z, 1), x)


class Model(nn.Module):
    __module__ = "models.yolo"

    def __init__(self, cfg, nc, num_coords):
        super().__init__()
        self.yaml = copy.deepcopy(cfg)
        self.yaml["nc"] = nc + num_coords
        self.model, self.save = _parse(copy.deepcopy(self.yaml))
        self.names = [str(i) for i in range(self.yaml["nc"])]
        self.inplace = True
        self.num_coords = num_coords
        m = self.model[-1]
        s = 128  # official: 256; any multiple of 64 gives the same strides, this is faster
        strides = [s / x.shape[-2] for x in self.forward(torch.zeros(1, 3, s, s))]
        m.stride = torch.tensor(strides)
        m.anchors /= m.stride.view(-1, 1, 1)
        self.stride = m.stride
        m.num_coords, m.nc = num_coords, nc
        for mi, s in zip(m.m, strides, strict=True):  # _initialize_biases (floats: also runs on meta)
            b = mi.bias.view(m.na, -1)
            b.data[:, 4] += math.log(8 / (640 / s) ** 2)
            b.data[:, 5 : 5 + m.nc] += math.log(0.6 / (m.nc - 0.99))
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)
        for mod in self.modules():  # initialize_weights
            if isinstance(mod, nn.BatchNorm2d):
                mod.eps, mod.momentum = 1e-3, 0.03

    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


def _parse(d):
    gd, gw, ch, layers, save = d["depth_multiple"], d["width_multiple"], [3], [], []
    nc = d["nc"]
    blocks = {"Focus": Focus, "Conv": Conv, "C3": C3, "SPP": SPP}
    for i, (f, n, name, args) in enumerate(d["backbone"] + d["head"]):
        n = max(round(n * gd), 1) if n > 1 else n
        if name in blocks:
            c2 = math.ceil(args[0] * gw / 8) * 8
            a = [ch[f], c2, *args[1:]]
            if name == "C3":
                a.insert(2, n)
            m = blocks[name](*a)
        elif name == "nn.Upsample":
            m, c2 = nn.Upsample(*args), ch[f]
        elif name == "Concat":
            m, c2 = Concat(*args), sum(ch[j] for j in f)
        else:
            m = Detect(nc, d["anchors"], [ch[j] for j in f])
        m.i, m.f, m.type, m.np = i, f, name, sum(p.numel() for p in m.parameters())
        save.extend(j % i for j in ([f] if isinstance(f, int) else f) if j != -1)
        layers.append(m)
        ch = [] if i == 0 else ch
        ch.append(c2 if name != "Detect" else 0)
    return nn.Sequential(*layers), sorted(save)


@pytest.fixture
def official_modules():
    """Register the writer classes as models.yolo / models.common while saving, then remove them."""
    pkg, yolo, common = (types.ModuleType(n) for n in ("models", "models.yolo", "models.common"))
    yolo.Model, yolo.Detect = Model, Detect
    for cls in (Conv, Focus, Bottleneck, C3, SPP, Concat):
        setattr(common, cls.__name__, cls)
    pkg.yolo, pkg.common = yolo, common
    names = {"models": pkg, "models.yolo": yolo, "models.common": common}
    before = {n: sys.modules.get(n) for n in names}
    sys.modules.update(names)

    def remove():
        for n, old in before.items():
            if old is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = old

    yield remove
    remove()


def _official_model(k=17, seed=0, width=0.125, anchors=None):
    torch.manual_seed(seed)
    cfg = dict(YAML_6, width_multiple=width)
    m = Model(cfg, nc=1 + k, num_coords=2 * k)
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5, generator=g)
            mod.bias.data.normal_(0, 0.2, generator=g)
            mod.running_mean.normal_(0, 0.2, generator=g)
            mod.running_var.uniform_(0.5, 2.0, generator=g)
    if anchors is not None:  # what autoanchor does to the Detect buffers
        det = m.model[-1]
        new = torch.tensor(anchors, dtype=torch.float32)
        det.anchor_grid[:] = new.view_as(det.anchor_grid)
        det.anchors[:] = new.view_as(det.anchors) / det.stride.view(-1, 1, 1)
    m.hyp = {"lr0": 0.01, "anchor_t": 4.0, "kp_bbox": 0.05}
    m.class_weights = torch.rand(1 + k)
    return m.eval()


def _save_official(path, remove_modules, k=17, ema=True, anchors=None):
    """Write a checkpoint like train.py / strip_optimizer would; return the fp32 copy of the weights used."""
    src = _official_model(k=k, anchors=anchors)
    used = copy.deepcopy(src).half()
    if ema:
        raw = copy.deepcopy(src)
        with torch.no_grad():
            for p in raw.parameters():
                p.add_(0.05)
        opt = torch.optim.SGD(raw.parameters(), lr=0.01, momentum=0.9)
        ckpt = {
            "epoch": 7,
            "best_fitness": np.array([0.61]),
            "model": raw.half(),
            "ema": used,
            "updates": 99,
            "optimizer": opt.state_dict(),
            "wandb_id": None,
        }
    else:
        for p in used.parameters():
            p.requires_grad = False
        ckpt = {
            "epoch": -1,
            "best_fitness": np.array([0.61]),
            "model": used,
            "ema": None,
            "updates": None,
            "optimizer": None,
            "wandb_id": None,
        }
    torch.save(ckpt, path)
    remove_modules()
    return copy.deepcopy(used).float().eval()


@pytest.mark.parametrize(
    ("name", "depth", "width"), [("kapao-s", 0.33, 0.5), ("kapao-m", 0.67, 0.75), ("kapao-l", 1.0, 1.0)]
)
def test_official_layout_has_our_keys_and_shapes(name, depth, width):
    assert len(YAML_6["backbone"]) + len(YAML_6["head"]) - 1 == 33  # Detect's index in the *6 yaml
    with torch.device("meta"):
        official = Model(dict(YAML_6, depth_multiple=depth, width_multiple=width), nc=18, num_coords=34)
        ours = build_model(name)
    theirs = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    assert theirs == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert isinstance(official.model[33], Detect) and "model.33.anchor_grid" in theirs


@pytest.mark.parametrize(
    ("k", "ema", "anchors"),
    [
        (17, False, None),
        (17, True, None),
        (
            14,
            True,
            [
                [[12.5, 17.0], [30.25, 28.0], [25.0, 70.5]],
                [[70, 50], [60, 120], [130, 100]],
                [[110, 230], [220, 200], [180, 400]],
                [[330, 470], [560, 300], [700, 610]],
            ],
        ),
    ],
)
def test_official_checkpoint_round_trip(tmp_path, official_modules, k, ema, anchors):
    path = tmp_path / "kapao_official.pt"
    ref = _save_official(path, official_modules, k=k, ema=ema, anchors=anchors)
    assert "models.yolo" not in sys.modules

    model, info = load_checkpoint(path)

    assert "models.yolo" not in sys.modules and "models.common" not in sys.modules
    assert info["format"] == "kapao-official" and info["name"] == "kapao-t"
    assert info["num_keypoints"] == k and info["weights"] == ("ema" if ema else "model")
    assert info["epoch"] == (7 if ema else None)
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    if anchors is not None:
        assert model.head_spec()["anchors"] == [[[float(v) for v in a] for a in lvl] for lvl in anchors]
    x = torch.rand(2, 3, 128, 192, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref_dec, ref_raw = ref(x)
        raw = model(x)
        dec = model.decode(raw)
    for a, b in zip(raw, ref_raw, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dec, ref_dec, rtol=1e-5, atol=1e-4)


def test_official_checkpoint_arch_check(tmp_path, official_modules):
    path = tmp_path / "k.pt"
    _save_official(path, official_modules, ema=False)
    model, _ = load_checkpoint(path, arch="kapao-t")
    assert model.cfg.name == "kapao-t"
    with pytest.raises(CheckpointError, match="not a kapao-s"):
        load_checkpoint(path, arch="kapao-s")


# --- edgepose format and plain state dicts --------------------------------------------------------


def _outputs(model, x):
    with torch.no_grad():
        return model.decode(model(x))


def test_edgepose_checkpoint_round_trip(tmp_path, kapao_t):
    model = copy.deepcopy(kapao_t)
    ema = copy.deepcopy(kapao_t)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.9)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 64, 64))[0].sum().backward()
    opt.step()
    path = tmp_path / "runs" / "last.pt"
    save_checkpoint(path, model, "kapao-t", epoch=3, ema=ema, optimizer=opt.state_dict(), note="x")
    assert sorted(os.listdir(path.parent)) == ["last.pt"]  # no temporary file left behind

    raw = torch.load(path, weights_only=True)  # the format needs no allow-list at all
    assert raw["format"] == "edgepose" and raw["format_version"] == 1 and raw["arch"] == "kapao-t"
    assert raw["config"]["num_keypoints"] == 17 and "optimizer" in raw

    loaded, info = load_checkpoint(path)
    assert info["format"] == "edgepose" and info["epoch"] == 3 and info["weights"] == "ema"
    assert info["extra_keys"] == ["epoch", "note", "optimizer"]
    x = torch.rand(1, 3, 64, 128)
    torch.testing.assert_close(_outputs(loaded, x), _outputs(ema.eval(), x))
    assert read_checkpoint(path)["optimizer"]["state"]  # resumable


def test_edgepose_checkpoint_fp16_and_anchors(tmp_path):
    anchors = [[[5, 6], [7, 8], [9, 10]]] * 4
    from edgepose.models.kapao import KapaoConfig, KapaoModel

    model = KapaoModel(KapaoConfig("kapao-t", 0.33, 0.125, 5, anchors)).eval().half()
    path = save_checkpoint(tmp_path / "h.pt", model, "kapao-t")
    loaded, info = load_checkpoint(path)
    assert info["num_keypoints"] == 5 and info["weights"] == "model"
    assert loaded.head_spec()["anchors"][0] == [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(_outputs(loaded, x), _outputs(model.float(), x))
    with pytest.raises(CheckpointError, match="holds a kapao-t, not a kapao-n"):
        load_checkpoint(path, arch="kapao-n")


def test_save_checkpoint_refuses_unsafe_extras(tmp_path, kapao_t):
    with pytest.raises(ValueError, match="'stats.best' is a ndarray"):
        save_checkpoint(tmp_path / "a.pt", kapao_t, "kapao-t", stats={"best": np.zeros(2)})
    with pytest.raises(ValueError, match="config"):
        save_checkpoint(tmp_path / "a.pt", kapao_t, "kapao-t", config={})
    assert not list(tmp_path.iterdir())


def test_plain_state_dict(tmp_path, kapao_t):
    sd = {f"module.{k}": v for k, v in kapao_t.state_dict().items()}
    path = tmp_path / "sd.pt"
    torch.save({"state_dict": sd, "epoch": 5}, path)
    loaded, info = load_checkpoint(path, arch="kapao-t")
    assert info["format"] == "state_dict" and info["epoch"] == 5
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(_outputs(loaded, x), _outputs(kapao_t, x))
    with pytest.raises(CheckpointError, match="plain state dict; name its architecture"):
        load_checkpoint(path)


def test_state_dict_for_another_keypoint_count(tmp_path):
    path = tmp_path / "k14.pt"
    torch.save(build_model("kapao-t", num_keypoints=14).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"model\.33\.m\.0\.weight.*\(144, 32, 1, 1\).*14 keypoints"):
        load_checkpoint(path, arch="kapao-t")


def test_state_dict_with_missing_and_unexpected_keys(tmp_path, kapao_t):
    sd = dict(kapao_t.state_dict())
    sd.pop("model.5.conv.weight")
    sd["model.99.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(
        CheckpointError, match=r"1 key\(s\) missing \(e\.g\. 'model\.5\.conv\.weight'\) and 1 unexpected"
    ):
        load_checkpoint(path, arch="kapao-t")


# --- broken and unsafe files ---------------------------------------------------------------------------


def test_missing_corrupt_truncated_and_unknown_files(tmp_path, kapao_t):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.pt").write_bytes(b"")
    good = save_checkpoint(tmp_path / "good.pt", kapao_t, "kapao-t")
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "tail.pt").write_bytes(data[:-200])
    for name in ("random.pt", "empty.pt", "truncated.pt", "tail.pt"):
        with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
            load_checkpoint(tmp_path / name)
    torch.save({"weights": [1, 2, 3]}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="unknown format"):
        load_checkpoint(tmp_path / "other.pt")


class _Evil:
    """Unpickling this calls ``func(*args)``: the classic pickle payload."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "builtins.eval", "subprocess.Popen"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / "pwned"
    payloads = {
        "os.system": (os.system, (f"touch {marker}",), f"{os.system.__module__}.system"),
        "builtins.exec": (builtins.exec, (f"open({str(marker)!r}, 'w').close()",), "builtins.exec"),
        "builtins.eval": (builtins.eval, (f"open({str(marker)!r}, 'w')",), "builtins.eval"),
        "subprocess.Popen": (subprocess.Popen, (["touch", str(marker)],), "subprocess.Popen"),
    }
    func, args, shown = payloads[kind]
    path = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "model": _Evil(func, args), "ema": None}, path)
    with pytest.raises(CheckpointError, match=rf"refers to '{shown}'.*refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_raw_protocol_0_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "legacy.pt"
    path.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(CheckpointError, match=r"refers to 'os\.system'"):
        load_checkpoint(path)
    assert not marker.exists()


def test_release_checkpoint_keeps_weights_and_provenance(tmp_path, kapao_t):
    import copy

    import torch

    from edgepose.models.checkpoints import (
        load_checkpoint,
        read_checkpoint,
        release_checkpoint,
        save_checkpoint,
    )

    model = copy.deepcopy(kapao_t)
    src = save_checkpoint(
        tmp_path / "last.pt",
        model,
        "kapao-t",
        epoch=3,
        command="edgepose train kapao-t",
        optimizer={"state": {}, "lr": 0.1},
        wall_time_s=12.5,
    )
    dst = release_checkpoint(src, tmp_path / "release.pt")
    raw = read_checkpoint(dst)
    assert raw["command"] == "edgepose train kapao-t" and raw["epoch"] == 3 and "optimizer" not in raw
    assert all(v.dtype == torch.float16 for v in raw["model"].values() if v.is_floating_point())
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    released, _ = load_checkpoint(dst)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        ref = [t for t in model.half().float()(x)]
        got = [t for t in released(x)]
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # a run resumed across sessions stores only its last command: the release can name the whole chain
    chained = release_checkpoint(src, tmp_path / "chained.pt", command="run 1; then run 2", wall_time_s=40.0)
    assert read_checkpoint(chained)["command"] == "run 1; then run 2"
    assert read_checkpoint(chained)["wall_time_s"] == 40.0 and read_checkpoint(dst)["wall_time_s"] == 12.5
