"""KAPAO architecture: shapes, official key names, decode maths, fusion, and the zoo's numbers."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgepose.errors import UsageError  # noqa: E402
from edgepose.models.kapao import DEFAULT_ANCHORS, KapaoConfig, KapaoModel  # noqa: E402
from edgepose.models.zoo import ZOO, build_model, get_model_info, measure, shipped_weights_path  # noqa: E402

STRIDES = (8, 16, 32, 64)


def _meta(name: str, k: int | None = None) -> KapaoModel:
    with torch.device("meta"):
        return build_model(name, num_keypoints=k)


# --- shapes --------------------------------------------------------------------------------------

# (model, W, H, batch): small rectangular inputs; kapao-l is the only full-size L build in this file.
SHAPE_CASES = [
    ("kapao-s", 256, 192, 1),
    ("kapao-m", 128, 192, 1),
    ("kapao-l", 128, 64, 1),
    ("kapao-n", 192, 128, 2),
    ("kapao-t", 256, 64, 1),
]


def test_every_kapao_zoo_model_has_a_shape_case():
    assert {n for n, info in ZOO.items() if info.family == "kapao"} == {c[0] for c in SHAPE_CASES}


@pytest.mark.parametrize(("name", "w", "h", "b"), SHAPE_CASES)
def test_forward_and_decode_shapes(name, w, h, b):
    torch.manual_seed(0)
    model = build_model(name).eval()
    with torch.no_grad():
        raw = model(torch.rand(b, 3, h, w))
        dec = model.decode(raw)
    assert [tuple(r.shape) for r in raw] == [(b, 3, h // s, w // s, 57) for s in STRIDES]
    assert tuple(dec.shape) == (b, sum(3 * (h // s) * (w // s) for s in STRIDES), 57)
    assert model.stride.tolist() == list(STRIDES)
    assert torch.isfinite(dec).all()


@pytest.mark.parametrize(("k", "no"), [(17, 57), (14, 48), (1, 9), (21, 69)])
def test_other_keypoint_counts(k, no):
    model = build_model("kapao-t", num_keypoints=k).eval()
    with torch.no_grad():
        raw = model(torch.rand(1, 3, 64, 128))
    assert [r.shape[-1] for r in raw] == [no] * 4
    assert model.decode(raw).shape[-1] == no
    assert model.head_spec()["num_keypoints"] == k
    assert model.detect.nc == 1 + k and model.detect.num_coords == 2 * k


def test_input_not_multiple_of_64_is_refused(kapao_t):
    with pytest.raises(UsageError, match="multiple of 64"):
        kapao_t(torch.zeros(1, 3, 96, 128))


# --- official state-dict keys --------------------------------------------------------------------


def test_state_dict_keys_follow_the_official_layout():
    sd = _meta("kapao-s").state_dict()
    # Written out from yolov5s6.yaml: 12 backbone + 22 head layers, Detect is layer 33.
    expected = {
        "model.0.conv.conv.weight": (32, 12, 3, 3),  # Focus(64*0.5, k=3) on 4*3 channels
        "model.0.conv.bn.running_var": (32,),
        "model.1.conv.weight": (64, 32, 3, 3),
        "model.2.cv1.conv.weight": (32, 64, 1, 1),
        "model.2.m.0.cv1.conv.weight": (32, 32, 1, 1),
        "model.2.m.0.cv2.conv.weight": (32, 32, 3, 3),
        "model.2.cv3.conv.weight": (64, 64, 1, 1),
        "model.4.m.2.cv2.bn.bias": (64,),  # 9 * 0.33 -> 3 bottlenecks of half the 128 channels
        "model.9.conv.weight": (512, 384, 3, 3),  # P6/64 conv: 768*0.5 -> 1024*0.5
        "model.10.cv1.conv.weight": (256, 512, 1, 1),  # SPP(3, 5, 7)
        "model.10.cv2.conv.weight": (512, 1024, 1, 1),
        "model.15.cv1.conv.weight": (192, 768, 1, 1),  # C3 after Concat with layer 8
        "model.32.cv3.conv.weight": (512, 512, 1, 1),
        "model.33.anchors": (4, 3, 2),
        "model.33.anchor_grid": (4, 1, 3, 1, 1, 2),
        "model.33.m.0.weight": (3 * 57, 128, 1, 1),
        "model.33.m.1.weight": (3 * 57, 256, 1, 1),
        "model.33.m.2.weight": (3 * 57, 384, 1, 1),
        "model.33.m.3.weight": (3 * 57, 512, 1, 1),
        "model.33.m.3.bias": (3 * 57,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "model.4.m.3.cv1.conv.weight" not in sd
    assert "model.34.m.0.weight" not in sd and not any(k.startswith("model.33.m.4") for k in sd)
    assert all(k.startswith("model.") for k in sd)
    assert "stride" not in sd  # not in the official state dict
    assert "model.0.conv.bn.num_batches_tracked" in sd
    # Layers without parameters (Upsample 13/17/21, Concat 14/18/22/25/28/31) have no keys.
    indices = {int(k.split(".")[1]) for k in sd}
    assert indices == set(range(34)) - {13, 14, 17, 18, 21, 22, 25, 28, 31}


@pytest.mark.parametrize(
    ("name", "bottlenecks", "last_c3_width"), [("kapao-m", 6, 768), ("kapao-l", 9, 1024)]
)
def test_depth_and_width_of_m_and_l(name, bottlenecks, last_c3_width):
    sd = _meta(name).state_dict()
    assert f"model.6.m.{bottlenecks - 1}.cv1.conv.weight" in sd
    assert f"model.6.m.{bottlenecks}.cv1.conv.weight" not in sd
    assert sd["model.32.cv3.conv.weight"].shape[0] == last_c3_width
    assert sd["model.33.m.3.weight"].shape == (171, last_c3_width, 1, 1)


def test_anchor_buffers_and_head_spec(kapao_t):
    det = kapao_t.detect
    px = torch.tensor(DEFAULT_ANCHORS)
    assert torch.equal(det.anchor_grid.view(4, 3, 2), px)
    assert torch.allclose(det.anchors * torch.tensor(STRIDES).view(-1, 1, 1), px)
    spec = kapao_t.head_spec()
    assert spec["strides"] == [8, 16, 32, 64]
    assert spec["output_names"] == ["p3", "p4", "p5", "p6"]
    assert spec["anchors"] == [[list(p) for p in level] for level in DEFAULT_ANCHORS]
    assert spec["num_keypoints"] == 17 and spec["num_outputs"] == 57


def test_detect_bias_priors(kapao_t):
    det = kapao_t.detect
    for conv, s in zip(det.m, STRIDES, strict=True):
        bound = 1 / math.sqrt(conv.weight.shape[1])  # nn.Conv2d default bias init range
        b = conv.bias.detach().view(3, 57)
        obj = math.log(8 / (640 / s) ** 2)
        cls = math.log(0.6 / (18 - 0.99))
        assert ((b[:, 4] - obj).abs() <= bound).all()
        assert ((b[:, 5:23] - cls).abs() <= bound).all()
        assert (b[:, 23:].abs() <= bound).all()  # keypoint offsets keep the plain init


# --- decode -----------------------------------------------------------------------------------------


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_decode_matches_hand_computation():
    k = 2
    anchors = (
        ((10, 20), (30, 40), (50, 60)),
        ((11, 21), (31, 41), (51, 61)),
        ((1, 2), (3, 4), (5, 6)),
        ((7, 8), (9, 10), (11, 12)),
    )
    model = KapaoModel(KapaoConfig("t", 0.33, 0.125, num_keypoints=k, anchors=anchors)).eval()
    no = 5 + (1 + k) + 2 * k  # 12
    w, h = 128, 64
    raw = [torch.zeros(1, 3, h // s, w // s, no) for s in STRIDES]
    # Level 1 (stride 16, grid 8 wide x 4 high), anchor 2 = (51, 61) px, cell row 1, column 2.
    cell = raw[1][0, 2, 1, 2]
    cell[0], cell[1] = _logit(0.75), _logit(0.25)  # x, y
    cell[2], cell[3] = 0.0, _logit(0.75)  # w, h
    cell[4], cell[5], cell[6], cell[7] = _logit(0.9), _logit(0.8), _logit(0.3), _logit(0.6)  # obj, 3 classes
    cell[8], cell[9] = 0.0, _logit(0.75)  # keypoint 0 (x, y)
    cell[10], cell[11] = _logit(0.25), _logit(0.875)  # keypoint 1
    dec = model.decode(raw)
    n0 = 3 * (h // 8) * (w // 8)
    idx = n0 + 2 * (4 * 8) + 1 * 8 + 2  # level 1: anchor 2, row 1, column 2
    expected = [
        (2 * 0.75 - 0.5 + 2) * 16,  # x = 48
        (2 * 0.25 - 0.5 + 1) * 16,  # y = 16
        (2 * 0.5) ** 2 * 51,  # w
        (2 * 0.75) ** 2 * 61,  # h
        0.9,
        0.8,
        0.3,
        0.6,
        (4 * 0.5 - 2) * 51 + 2 * 16,  # kp0 x = 32
        (4 * 0.75 - 2) * 61 + 1 * 16,  # kp0 y = 77
        (4 * 0.25 - 2) * 51 + 2 * 16,  # kp1 x = -19
        (4 * 0.875 - 2) * 61 + 1 * 16,  # kp1 y = 107.5
    ]
    torch.testing.assert_close(dec[0, idx], torch.tensor(expected), rtol=1e-5, atol=1e-4)
    # An all-zero cell: level 0, anchor 0, row 0, column 0 (sigmoid 0.5 everywhere).
    z = dec[0, 0]
    torch.testing.assert_close(z[:5], torch.tensor([4.0, 4.0, 10.0, 20.0, 0.5]))
    torch.testing.assert_close(z[8:], torch.tensor([0.0, 0.0, 0.0, 0.0]))
    # Last cell of the last level: level 3 (stride 64, grid 2x1), anchor 2, row 0, column 1.
    torch.testing.assert_close(
        dec[0, -1, :4], torch.tensor([(1 - 0.5 + 1) * 64.0, (1 - 0.5) * 64, 11.0, 12.0])
    )


# --- fuse -------------------------------------------------------------------------------------------


def test_fuse_keeps_outputs(kapao_t):
    model = copy.deepcopy(kapao_t)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.2, generator=g)
            m.running_mean.normal_(0, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    x = torch.rand(2, 3, 128, 192, generator=g)
    with torch.no_grad():
        before = model(x)
        model.fuse()
        after = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.model[0].folded and model.model[0].conv.conv.kernel_size == (6, 6)
    for a, b in zip(before, after, strict=True):
        assert (a - b).abs().max().item() < 1e-5


def test_export_layout_is_the_training_layout_transposed(kapao_t):
    model = copy.deepcopy(kapao_t).eval()
    x = torch.rand(1, 3, 128, 192, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        train_out = model(x)
        train_dec = model.decode(train_out)
        assert model.head_spec()["layout"] == "B,A,H,W,C"
        export_out = model.use_export_layout()(x)
        export_dec = model.decode(export_out)
    assert model.head_spec()["layout"] == "B,A,C,H,W"
    for a, b in zip(train_out, export_out, strict=True):
        assert b.shape == (1, 3, 57, *a.shape[2:4])
        torch.testing.assert_close(b.permute(0, 1, 3, 4, 2), a, rtol=0, atol=0)
    torch.testing.assert_close(export_dec, train_dec, rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_focus_folds_into_one_strided_convolution(k):
    from edgepose.models.yolo_blocks import Focus

    g = torch.Generator().manual_seed(k)
    focus = Focus(3, 8, k).eval()
    focus.conv.conv.weight.data.normal_(0, 1, generator=g)
    focus.conv.bn.running_mean.normal_(0, 0.2, generator=g)
    x = torch.rand(2, 3, 24, 40, generator=g)
    with torch.no_grad():
        before = focus(x)
        focus.fold_()
        after = focus(x)
    assert focus.conv.conv.kernel_size == (2 * k, 2 * k) and focus.conv.conv.stride == (2, 2)
    assert before.shape == after.shape == (2, 8, 12, 20)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)  # a wrong tap moves outputs by ~1


def test_exported_kapao_graph_has_no_slices(tmp_path):
    """The folded stem reaches ONNX as a Conv: runtimes no longer slice the input four times."""
    onnx = pytest.importorskip("onnx")
    from edgepose.export.torch2onnx import torch_to_onnx

    model = build_model("kapao-t").fuse()
    path = torch_to_onnx(model, (128, 64), tmp_path / "m.onnx", ["p3", "p4", "p5", "p6"])
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Slice" not in ops and ops[0] == "Conv"


# --- config -----------------------------------------------------------------------------------------


def test_config_round_trip_and_validation():
    cfg = KapaoConfig("x", 0.5, 0.25, 14)
    assert KapaoConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.num_outputs == 48 and cfg.num_classes == 15 and cfg.num_coords == 28
    with pytest.raises(UsageError):
        KapaoConfig(num_keypoints=0)
    with pytest.raises(UsageError):
        KapaoConfig(anchors=DEFAULT_ANCHORS[:3])
    with pytest.raises(UsageError, match="unknown KAPAO config"):
        KapaoConfig.from_dict({"depth": 1.0})


# --- zoo --------------------------------------------------------------------------------------------


def _conv_flops(model: nn.Module, w: int, h: int) -> float:
    """2 x multiply-adds of every Conv2d, counted with forward hooks (independent of zoo.measure)."""
    total = 0

    def hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.empty(1, 3, h, w, device="meta"))
    for handle in handles:
        handle.remove()
    return total / 1e9


@pytest.mark.parametrize("name", sorted(n for n, i in ZOO.items() if i.family == "kapao"))
def test_zoo_params_and_gflops(name):
    info = get_model_info(name)
    model = _meta(name).eval()
    assert sum(p.numel() for p in model.parameters()) == info.params
    gflops = _conv_flops(model, *info.default_imgsz)
    assert abs(gflops - info.gflops) <= 0.02 * info.gflops
    params, measured = measure(name)
    assert params == info.params and abs(measured - info.gflops) <= 0.02 * info.gflops


def test_zoo_matches_published_kapao_sizes():
    # KAPAO paper (McNally et al., 2022), Table 1: 12.6M / 35.8M / 77.0M parameters at 1280 input.
    for name, millions in (("kapao-s", 12.6), ("kapao-m", 35.8), ("kapao-l", 77.0)):
        info = get_model_info(name)
        assert round(info.params / 1e6, 1) == millions
        assert info.default_imgsz == (1280, 1280)
    assert get_model_info("kapao-n").weights == "shipped: edgepose/weights/kapao-n.pt"
    assert get_model_info("kapao-n").default_imgsz == (512, 384)
    assert get_model_info("kapao-t").default_imgsz == (256, 256)


def test_shipped_weights_path():
    assert shipped_weights_path("kapao-s") is None and shipped_weights_path("kapao-t") is None
    path = shipped_weights_path("kapao-n")
    expected = _repo_root() / "edgepose" / "weights" / "kapao-n.pt"
    assert path is None if not expected.is_file() else path == expected


def test_models_table_says_which_reference_weights_exist():
    from edgepose.models.zoo import weights_status

    assert weights_status("kapao-n") == "shipped: edgepose/weights/kapao-n.pt"
    assert weights_status("kapao-s").startswith("official: kapao_s_coco.pt")
    assert weights_status("sahr-n") == "shipped: edgepose/weights/sahr-n.pt"
    if shipped_weights_path("dekr-n") is None:
        assert weights_status("dekr-n") == "not trained yet; will ship as edgepose/weights/dekr-n.pt"


def test_unknown_model_name():
    with pytest.raises(UsageError, match=r"unknown model 'kapao-xl'; known: .*kapao-s"):
        get_model_info("kapao-xl")
    with pytest.raises(UsageError):
        build_model("nope")


def test_zoo_import_is_torch_free():
    code = "import sys, edgepose.models.zoo; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_repo_root()))


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]
