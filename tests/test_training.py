"""Training: KAPAO targets and loss, data pipeline geometry, and the training loop (resume, other K)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgepose.errors import CheckpointError, DataError, UsageError  # noqa: E402
from edgepose.skeletons import COCO_17, CROWDPOSE_14  # noqa: E402
from edgepose.training.datasets import (  # noqa: E402
    AugmentConfig,
    CocoKeypointDataset,
    PoseSample,
    SyntheticStream,
    collate,
    flip_lr,
    letterbox_sample,
    mosaic4,
    people_arrays,
    random_affine,
)
from edgepose.training.kapao_loss import KapaoLoss, bbox_ciou  # noqa: E402
from edgepose.training.kapao_targets import build_objects, build_targets  # noqa: E402
from edgepose.training.trainer import train  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tests are tiny, and spinning OpenMP threads crawl on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A hand-built head for 128 x 128 inputs whose anchors make every match easy to work out by hand.
SPEC = {
    "strides": [8, 16, 32, 64],
    "anchors": [
        [[10, 10], [16, 16], [100, 100]],
        [[40, 80], [200, 200], [300, 300]],
        [[64, 128], [500, 500], [600, 600]],
        [[700, 700], [700, 700], [700, 700]],
    ],
    "num_keypoints": 3,
}
GRIDS = [(16, 16), (8, 8), (4, 4), (2, 2)]


def _one_person() -> np.ndarray:
    """One person (box 42,20 - 82,100) with keypoints (50, 30) v=2, (70, 90) v=0, (66, 70) v=1."""
    row = np.zeros((1, 5 + 9), np.float32)
    row[0, :5] = [0, 42, 20, 82, 100]
    row[0, 5:] = [50, 30, 2, 70, 90, 0, 66, 70, 1]
    return row


def _targets():
    objects = torch.from_numpy(build_objects(_one_person(), 3, (128, 128), kp_bbox=0.05))
    anchors = torch.tensor(SPEC["anchors"], dtype=torch.float32)
    return objects, build_targets(objects, GRIDS, SPEC["strides"], anchors, anchor_t=4.0)


def test_objects_follow_the_official_labels():
    obj = build_objects(_one_person(), 3, (128, 128), kp_bbox=0.05)
    assert obj.shape == (3, 6 + 9)  # the pose object and the two visible keypoints
    np.testing.assert_allclose(obj[0, :6], [0, 0, 62, 60, 40, 80])
    np.testing.assert_allclose(obj[1:, :6], [[0, 1, 50, 30, 6.4, 6.4], [0, 3, 66, 70, 6.4, 6.4]], rtol=1e-6)
    assert not obj[1:, 6:].any()  # keypoint objects carry no keypoints


def test_targets_land_in_the_expected_cells_anchors_and_offsets():
    _, levels = _targets()
    got = [
        {(int(c), int(a), int(y), int(x)) for c, a, y, x in zip(t.cls, t.anchor, t.gy, t.gx, strict=True)}
        for t in levels
    ]
    # P3 (stride 8): the person only fits anchor 2 (100 px); centre (7.75, 7.5) also takes the right cell.
    # Keypoint objects (6.4 px) fit anchors 0 and 1; (6.25, 3.75) adds left + down, (8.25, 8.75) too.
    p3 = {(0, 2, 7, 7), (0, 2, 7, 8)}
    for a in (0, 1):
        p3 |= {(1, a, 3, 6), (1, a, 3, 5), (1, a, 4, 6), (3, a, 8, 8), (3, a, 8, 7), (3, a, 9, 8)}
    assert got[0] == p3
    assert got[1] == {(0, 0, 3, 3), (0, 0, 3, 4), (0, 0, 4, 3)}  # (3.875, 3.75): right and down
    assert got[2] == {(0, 0, 1, 1), (0, 0, 1, 2), (0, 0, 2, 1)}
    assert got[3] == set()
    t = levels[0]
    own = [i for i in range(len(t)) if int(t.cls[i]) == 0 and int(t.gx[i]) == 7]
    assert len(own) == 1
    i = own[0]
    np.testing.assert_allclose(t.box[i].numpy(), [0.75, 0.5, 5.0, 10.0])
    np.testing.assert_allclose(t.anchor_wh[i].numpy(), [12.5, 12.5])
    # Keypoint offsets in grid units from the cell's corner; the invisible one stays invisible.
    np.testing.assert_allclose(t.kps[i].numpy(), [[-0.75, -3.25, 2], [1.75, 4.25, 0], [1.25, 1.75, 1]])
    right = [j for j in range(len(t)) if int(t.cls[j]) == 0 and int(t.gx[j]) == 8][0]
    np.testing.assert_allclose(t.box[right].numpy()[:2], [-0.25, 0.5])


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p / (1 - p))


def _perfect_prediction(levels, k: int, batch: int = 1) -> list[torch.Tensor]:
    """Raw logits that decode exactly to every target, with confident objectness and class."""
    no = 5 + (1 + k) + 2 * k
    raw = [torch.full((batch, 3, h, w, no), -20.0, dtype=torch.float64) for h, w in GRIDS]
    for p, t in zip(raw, levels, strict=True):
        for i in range(len(t)):
            cell = (int(t.image[i]), int(t.anchor[i]), int(t.gy[i]), int(t.gx[i]))
            a = t.anchor_wh[i].double()
            p[cell][0:2] = _logit((t.box[i, :2].double() + 0.5) / 2)
            p[cell][2:4] = _logit(torch.sqrt(t.box[i, 2:4].double() / a) / 2)
            p[cell][4] = 20.0
            p[cell][5 + int(t.cls[i])] = 20.0
            kp = t.kps[i, :, :2].double()
            vis = (t.kps[i, :, 2] > 0)[:, None].expand(k, 2)
            p[cell][5 + 1 + k :] = torch.where(vis, _logit((kp / a + 2) / 4), 0.0).reshape(-1)
    return [r.requires_grad_(True) for r in raw]


def test_a_perfect_prediction_has_near_zero_loss_and_gradients_point_back_to_it():
    objects, levels = _targets()
    loss_fn = KapaoLoss(SPEC, (128, 128))
    raw = _perfect_prediction(levels, 3)
    total, items = loss_fn(raw, objects.double())
    assert torch.isfinite(total)
    assert float(items[0]) < 1e-6 and float(items[3]) < 1e-6  # box and keypoints exact
    assert float(total.detach()) < 1e-5
    # Moving the pose object's first keypoint logit costs keypoint loss, and only that.
    t = levels[0]
    i = [j for j in range(len(t)) if int(t.cls[j]) == 0][0]
    cell = (int(t.image[i]), int(t.anchor[i]), int(t.gy[i]), int(t.gx[i]))
    worse = [r.detach().clone() for r in raw]
    worse[0][cell][5 + 4] += 1.0
    _, items2 = loss_fn(worse, objects.double())
    assert float(items2[3]) > 1e-3 and float(items2[0]) < 1e-6
    # From a perturbed prediction, a small step against the gradient lowers box and keypoint loss.
    gen = torch.Generator().manual_seed(0)
    noisy = [
        (r.detach() + 0.3 * torch.randn(r.shape, generator=gen, dtype=r.dtype)).requires_grad_(True)
        for r in raw
    ]
    before, parts = loss_fn(noisy, objects.double())
    before.backward()
    scale = max(float(r.grad.abs().max()) for r in noisy)
    after, parts_after = loss_fn([r.detach() - 0.05 * r.grad / scale for r in noisy], objects.double())
    assert float(after) < float(before.detach())
    assert float(parts_after[0]) < float(parts[0]) and float(parts_after[3]) < float(parts[3])


def test_ciou_is_one_for_identical_boxes_and_lower_otherwise():
    a = torch.tensor([[1.0, 1.0, 2.0, 3.0]])
    assert abs(float(bbox_ciou(a, a)) - 1) < 1e-5
    b = torch.tensor([[1.5, 1.0, 2.0, 3.0]])
    assert float(bbox_ciou(a, b)) < float(bbox_ciou(a, a)) - 0.1


# ---------------------------------------------------------------------------------------------- data
def _dots_render(seed: int, profile: str = "train-v1", k: int = 17):
    """A stand-in renderer: people whose keypoints are red dots (so geometry can be checked on pixels)."""
    rng = np.random.default_rng(seed)
    img = np.full((480, 640, 3), 40, np.uint8)
    people = []
    for _ in range(int(rng.integers(1, 4))):
        h = rng.uniform(80, 300)
        w = h * 0.5
        x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
        kp = np.stack([rng.uniform(x, x + w, k), rng.uniform(y, y + h, k), np.full(k, 2.0)], 1)
        for px, py, _ in kp:
            cv2.circle(img, (int(px), int(py)), 8, (0, 0, 255), -1)
        people.append({"keypoints": kp, "bbox": [x, y, w, h], "area": w * h * 0.6})
    return img, people


def _assert_keypoints_on_dots(s: PoseSample) -> int:
    vis = s.keypoints[..., 2] > 0
    for x, y in s.keypoints[vis][:, :2]:
        b, g, r = (int(v) for v in s.image[int(y), int(x)])
        assert r > 120 and r > b + 60, (x, y, (b, g, r))
    return int(vis.sum())


def test_affine_and_mosaic_move_keypoints_with_their_pixels():
    cfg = AugmentConfig(scale=0.5, translate=0.2, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0)
    seen = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        img, people = _dots_render(seed)
        base = PoseSample(img, *people_arrays(people, 17))
        seen += _assert_keypoints_on_dots(random_affine(base, (320, 256), rng, cfg))
        parts = []
        for j in range(4):
            im, pp = _dots_render(seed + j)
            parts.append(PoseSample(im, *people_arrays(pp, 17)))
        seen += _assert_keypoints_on_dots(mosaic4(parts, (320, 256), rng, cfg))
    assert seen > 100


def test_keypoints_leaving_the_image_become_invisible_and_boxes_are_clipped():
    img = np.zeros((100, 100, 3), np.uint8)
    kps = np.array([[[10, 50, 2], [90, 50, 2], [50, 50, 1]]], np.float32)
    s = PoseSample(img, np.array([[5, 5, 95, 95]], np.float32), kps)

    class Draws:  # random_affine draws the extra scale, then the centre's x and y fractions
        values = [2.0, 0.5, 0.5]

        def uniform(self, lo, hi):
            return self.values.pop(0)

    out = random_affine(s, (100, 100), Draws(), AugmentConfig())  # x2 about the centre: 10 -> -30, 90 -> 130
    np.testing.assert_array_equal(out.keypoints[0, :, 2], [0, 0, 1])
    np.testing.assert_allclose(out.keypoints[0, 2, :2], [50, 50])
    np.testing.assert_allclose(out.boxes[0], [0, 0, 100, 100])


def test_flip_swaps_left_and_right_keypoints():
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, :5] = 255
    kps = np.zeros((1, 17, 3), np.float32)
    kps[0, :, 0] = np.arange(17)
    kps[0, :, 2] = 2
    s = PoseSample(img, np.array([[2, 1, 8, 9]], np.float32), kps)
    f = flip_lr(s, COCO_17.flip_index())
    assert f.image[:, -5:].min() == 255 and f.image[:, :-5].max() == 0
    np.testing.assert_allclose(f.boxes[0], [12, 1, 18, 9])
    assert f.keypoints[0, 1, 0] == 20 - 2 and f.keypoints[0, 2, 0] == 20 - 1  # left eye <- right eye
    assert f.keypoints[0, 0, 0] == 20  # nose keeps its index
    assert f.keypoints[0, 15, 0] == 20 - 16 and f.keypoints[0, 16, 0] == 20 - 15


def test_dataset_flip_is_a_mirror_of_the_unflipped_sample():
    cfg = dict(scale=0, translate=0, hsv_h=0, hsv_s=0, hsv_v=0)

    def stream(p: float) -> SyntheticStream:
        aug = AugmentConfig(fliplr=p, **cfg)
        return SyntheticStream(imgsz=(128, 128), length=4, config=aug, renderer=_dots_render)

    plain, flip = stream(0.0), stream(1.0)
    a, b = plain.sample(1), flip.sample(1)
    np.testing.assert_array_equal(b.image, a.image[:, ::-1])
    idx = COCO_17.flip_index()
    np.testing.assert_allclose(b.keypoints[..., 0], 128 - a.keypoints[:, idx, 0], atol=1e-4)
    np.testing.assert_allclose(b.keypoints[..., 1], a.keypoints[:, idx, 1], atol=1e-4)


def test_letterbox_sample_matches_deployment_preprocessing():
    from edgepose.preprocess import letterbox

    img, people = _dots_render(3)
    s = PoseSample(img, *people_arrays(people, 17))
    out = letterbox_sample(s, (256, 256), AugmentConfig())
    ref, meta = letterbox(img, (256, 256))
    np.testing.assert_array_equal(out.image, ref)
    np.testing.assert_allclose(out.keypoints[..., :2], meta.to_input(s.keypoints[..., :2]), atol=1e-4)


def test_stream_is_deterministic_per_index_and_epoch():
    ds = SyntheticStream(imgsz=(128, 128), length=8, renderer=_dots_render, seed=3)
    a1, p1 = ds[2]
    a2, p2 = ds[2]
    assert torch.equal(a1, a2) and torch.equal(p1, p2)
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], a1)
    blank = np.zeros((48, 64, 3), np.uint8)
    nobody = SyntheticStream(imgsz=(128, 128), length=1, renderer=lambda *_: (blank, []))
    imgs, people = collate([ds[0], nobody[0], ds[1]])
    assert imgs.shape == (3, 3, 128, 128) and imgs.dtype == torch.uint8
    assert people.shape[1] == 5 + 3 * 17 and set(people[:, 0].tolist()) == {0.0, 2.0}


# ---------------------------------------------------------------------------------------------- loop
def test_loss_falls_when_overfitting_one_batch():
    from edgepose.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("kapao-t").train()
    ds = SyntheticStream(imgsz=(128, 128), length=2, augment=False, renderer=_dots_render)
    imgs, people = collate([ds[0], ds[1]])
    x = imgs.float() / 255
    objects = torch.from_numpy(build_objects(people.numpy(), 17, (128, 128)))
    loss_fn = KapaoLoss(model.head_spec(), (128, 128))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss, items = loss_fn(model(x), objects)
        assert torch.isfinite(loss) and items.shape == (4,)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def _coco_dir(root: Path, n: int, k: int, split: str | None = None) -> Path:
    """A small COCO keypoint folder (``annotations.json`` + ``images/``) drawn by ``_dots_render``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img, people = _dots_render(100 + i, k=k)
        cv2.imwrite(str(root / "images" / f"{i:03d}.jpg"), img)
        images.append({"id": i + 1, "file_name": f"{i:03d}.jpg", "width": 640, "height": 480})
        for p in people:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "iscrowd": 0,
                    "keypoints": np.asarray(p["keypoints"]).reshape(-1).tolist(),
                    "num_keypoints": k,
                    "bbox": [float(v) for v in p["bbox"]],
                    "area": float(p["area"]),
                }
            )
    name = "annotations.json" if split is None else f"person_keypoints_{split}.json"
    cats = [{"id": 1, "name": "person", "keypoints": [f"k{j}" for j in range(k)]}]
    (root / name).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in state["model"].items()}
    out.update({f"ema.{k}": v for k, v in state["ema"].items()})
    for pid, s in state["optimizer"]["state"].items():
        out.update({f"opt.{pid}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)})
    return out


def test_resume_continues_exactly(tmp_path):
    data = _coco_dir(tmp_path / "data", 4, 17)
    kw = dict(data=str(data), epochs=2, imgsz=128, batch=4, workers=0, threads=1, progress=False, seed=1)
    train("kapao-t", output=tmp_path / "straight", **kw)
    train("kapao-t", output=tmp_path / "split", callback=lambda r: r["epoch"] == 1, **kw)
    half = torch.load(tmp_path / "split" / "state.pt", weights_only=True)
    assert half["epoch"] == 0
    with pytest.raises(UsageError):
        train("kapao-t", output=tmp_path / "split", **kw)  # a run is there: resume it or pick another
    train("kapao-t", output=tmp_path / "split", resume=True, **kw)
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "state.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1 and a["ema_updates"] == b["ema_updates"]
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        torch.testing.assert_close(ta[name], tb[name], rtol=0, atol=0, msg=name)
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    from edgepose.models.checkpoints import load_checkpoint

    model, info = load_checkpoint(tmp_path / "split" / "last.pt")
    assert info["epoch"] == 2  # the EMA weights are saved as the model
    raw = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert raw["command"] and raw["wall_time_s"] > 0


def test_a_14_keypoint_dataset_trains_and_validates(tmp_path):
    data = _coco_dir(tmp_path / "crowd", 4, 14, split="train")
    _coco_dir(data, 2, 14, split="val")
    train_json = data / "person_keypoints_train.json"
    with pytest.raises(DataError, match="14 keypoints"):
        CocoKeypointDataset(data / "images", train_json, (128, 128), COCO_17)
    out = train(
        "kapao-t",
        data=str(data),
        skeleton="crowdpose-14",
        epochs=1,
        imgsz=128,
        batch=4,
        output=tmp_path / "run",
        workers=1,
        threads=1,
        progress=False,
        eval_every=1,
        val_images=2,
    )
    assert out.name == "best.pt"  # validation ran and kept its best
    from edgepose.models.checkpoints import load_checkpoint

    model, info = load_checkpoint(out)
    assert model.cfg.num_keypoints == 14 == CROWDPOSE_14.num_keypoints
    assert [r.shape[-1] for r in model(torch.zeros(1, 3, 128, 128))] == [5 + 15 + 28] * 4
    metrics = torch.load(out, weights_only=True)["metrics"]
    assert 0.0 <= metrics["AP"] <= 1.0 and metrics["epoch"] == 1


def test_user_mistakes_are_one_sentence_errors(tmp_path):
    with pytest.raises(DataError, match="--data must be"):
        train("kapao-t", data=str(tmp_path / "nope"), output=tmp_path / "a", progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train("kapao-t", output=tmp_path / "b", resume=True, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="annotation"):
        train("kapao-t", data=str(empty), output=tmp_path / "c", progress=False)
    with pytest.raises(UsageError):
        train(
            "kapao-x",
            data=str(_coco_dir(tmp_path / "d", 4, 17)),
            imgsz=128,
            batch=4,
            output=tmp_path / "e",
            progress=False,
        )
    for device, message in [("banana", "unknown --device"), ("mps", "unsupported --device")] + (
        [] if torch.cuda.is_available() else [("cuda", "no CUDA device")]
    ):
        with pytest.raises(UsageError, match=message):
            train("kapao-t", output=tmp_path / "f", device=device, progress=False)
    assert not (tmp_path / "f").exists()  # refused before anything was written


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_training_on_cuda_saves_checkpoints_a_cpu_loads_and_resumes_on_the_cpu(tmp_path):
    kw = dict(data="synthetic", epochs=2, imgsz=128, batch=4, images_per_epoch=8, workers=0, progress=False)
    train("kapao-t", output=tmp_path / "run", device="cuda", callback=lambda r: r["epoch"] == 1, **kw)
    from edgepose.models.checkpoints import load_checkpoint

    model, info = load_checkpoint(tmp_path / "run" / "last.pt")
    assert info["epoch"] == 1 and next(model.parameters()).device.type == "cpu"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    train("kapao-t", output=tmp_path / "run", resume=True, device="cpu", threads=1, **kw)
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["epoch"] == 1


def test_cli_trains_resumes_and_reports_mistakes_in_one_line(tmp_path):
    import subprocess
    import sys

    data = _coco_dir(tmp_path / "data", 4, 17)
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "edgepose.cli",
        "train",
        "kapao-t",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--imgsz",
        "128",
        "--batch",
        "4",
        "--workers",
        "0",
        "--threads",
        "1",
        "--output",
        str(out),
    ]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    # stderr is a pipe, not a terminal: progress comes as plain lines, not a live bar
    assert "epoch 1/1" in res.stderr and "[1/1]" in res.stderr
    from edgepose.models.checkpoints import load_checkpoint

    model, info = load_checkpoint(out / "last.pt")
    assert info["epoch"] == 1 and model.cfg.num_keypoints == 17
    assert "edgepose train kapao-t" in torch.load(out / "last.pt", weights_only=True)["command"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=120)  # a run is there already
    assert res.returncode != 0 and "--resume" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run(
        [*args[:-1], str(tmp_path / "none"), "--resume"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode != 0 and "nothing to resume" in res.stderr and "Traceback" not in res.stderr


def test_progress_off_a_terminal_is_one_line_per_tenth_of_an_epoch():
    import io

    from rich.console import Console
    from rich.progress import Progress

    from edgepose.training.trainer import _progress

    log = io.StringIO()
    console, bar = _progress(True, Console(file=log, force_terminal=False))
    assert console is not None and not isinstance(bar, Progress)
    with bar:
        task = bar.add_task("epoch 1/2", total=25)
        for i in range(25):
            bar.update(task, advance=1, description=f"epoch 1/2 loss {1.0 / (i + 1):.4f}")
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1] == "epoch 1/2 loss 0.0400 [25/25]"
    assert lines[0].endswith("[3/25]")  # the first tenth is complete after 3 of 25 batches
    _, live = _progress(True, Console(file=io.StringIO(), force_terminal=True))
    assert isinstance(live, Progress)
    assert _progress(False) == (None, None)
