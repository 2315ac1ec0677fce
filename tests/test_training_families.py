"""Training DEKR and SAHR: targets + loss wired to the model, and the shared loop (save, validate, resume)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgepose.training.datasets import SyntheticStream, collate  # noqa: E402
from edgepose.training.families import training_family  # noqa: E402
from edgepose.training.trainer import train  # noqa: E402

#: zoo name -> (family, loss columns)
FAMILIES = {
    "dekr-t": ("dekr", ("heatmap", "offset")),
    "sahr-t": ("sahr", ("heatmap", "scale", "pull", "push")),
}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _render(seed: int, profile: str = "train-v1", k: int = 17):
    """People big enough for DEKR's centres at 128 px (keypoints drawn as red dots), 1-2 per image."""
    rng = np.random.default_rng(seed)
    img = np.full((240, 320, 3), 40, np.uint8)
    people = []
    for _ in range(int(rng.integers(1, 3))):
        h = rng.uniform(140, 220)
        w = 0.6 * h
        x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
        kp = np.stack([rng.uniform(x, x + w, k), rng.uniform(y, y + h, k), np.full(k, 2.0)], 1)
        for px, py, _ in kp:
            cv2.circle(img, (int(px), int(py)), 4, (0, 0, 255), -1)
        people.append({"keypoints": kp, "bbox": [x, y, w, h], "area": w * h})
    return img, people


def _coco_split(root: Path, split: str, n: int, first_seed: int) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img, people = _render(first_seed + i)
        name = f"{split}{i:02d}.jpg"
        cv2.imwrite(str(root / "images" / name), img)
        images.append({"id": first_seed + i, "file_name": name, "width": 320, "height": 240})
        for p in people:
            x, y, w, h = (float(v) for v in p["bbox"])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": first_seed + i,
                    "category_id": 1,
                    "iscrowd": 0,
                    "keypoints": p["keypoints"].reshape(-1).tolist(),
                    "num_keypoints": 17,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                }
            )
    cats = [{"id": 1, "name": "person", "keypoints": [f"k{j}" for j in range(17)]}]
    doc = {"images": images, "annotations": anns, "categories": cats}
    (root / f"person_keypoints_{split}.json").write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A COCO keypoint folder with 4 training and 2 validation images."""
    root = tmp_path_factory.mktemp("coco")
    _coco_split(root, "train", 4, 100)
    _coco_split(root, "val", 2, 200)
    return root


@pytest.mark.parametrize("name", list(FAMILIES))
def test_overfitting_one_batch_lowers_the_loss_and_learns_the_peaks(name):
    from edgepose.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model(name).init_weights().train()
    ds = SyntheticStream(imgsz=(128, 128), length=2, augment=False, renderer=_render)
    imgs, people = collate([ds[0], ds[1]])
    x = imgs.float() / 255
    fam = training_family(model, (128, 128))
    assert (fam.name, fam.columns) == FAMILIES[name]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        loss, parts = fam.step(model, x, people)
        assert torch.isfinite(loss) and parts.shape == (len(fam.columns),)
        assert float(parts.sum()) == pytest.approx(float(loss.detach()), rel=1e-4)  # parts add up to it
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(parts)
    first, last = history[0], history[-1]
    assert float(last.sum()) < 0.6 * float(first.sum()), (first, last)
    assert float(last[0]) < 0.6 * float(first[0])  # the heatmap term
    if name.startswith("dekr"):
        assert float(last[1]) < 0.8 * float(first[1])  # the offsets learn too
    # The heat rose where the targets have their peaks, not everywhere: targets and outputs line up.
    with torch.no_grad():
        targets = fam.targets(people, 2)
        out = fam.forward(model, x)[0]  # train mode: batch statistics, as in the steps above
        if name.startswith("dekr"):
            heat, gt = out, targets.heatmap
        else:  # SAHR's stride-4 training output is [scale, heatmaps, tags]
            heat, gt = out[:, 17:34], targets.heatmaps[0]
        on, off = float(heat[gt > 0.5].mean()), float(heat[gt == 0].mean())
    assert on > 3 * off and on > 0.1, (on, off)


def _tensors(state: dict) -> dict:
    out = {f"model.{k}": v for k, v in state["model"].items()}
    out.update({f"ema.{k}": v for k, v in state["ema"].items()})
    for pid, s in state["optimizer"]["state"].items():
        out.update({f"opt.{pid}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)})
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_run_validates_saves_and_resumes_exactly(name, data, tmp_path):
    from edgepose.models.checkpoints import load_checkpoint

    family, columns = FAMILIES[name]
    kw = dict(
        data=str(data),
        epochs=2,
        imgsz=128,
        batch=2,
        workers=0,
        threads=1,
        progress=False,
        seed=1,
        eval_every=2,
        val_images=2,
    )
    train(name, output=tmp_path / "straight", **kw)
    train(name, output=tmp_path / "split", callback=lambda r: r["epoch"] == 1, **kw)
    assert torch.load(tmp_path / "split" / "state.pt", weights_only=True)["epoch"] == 0
    best = train(name, output=tmp_path / "split", resume=True, **kw)

    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "state.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1 and a["ema_updates"] == b["ema_updates"] == 4
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=0, msg=key)

    def same(history):  # everything but the timings
        return [{k: v for k, v in r.items() if k not in ("wall_s", "img_per_s")} for r in history]

    assert same(a["history"]) == same(b["history"])
    assert ("offset_factor" if family == "dekr" else "scale_adaptive") in b["config"]["loss"]

    # Validation ran on the last epoch through the family's decoder, and kept the best weights.
    assert best.name == "best.pt"
    metrics = torch.load(best, weights_only=True)["metrics"]
    assert 0.0 <= metrics["AP"] <= 1.0 and metrics["epoch"] == 2
    with open(tmp_path / "split" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and list(rows[0])[2 : 2 + len(columns)] == list(columns) and "AP" in rows[1]
    assert float(rows[0]["loss"]) == pytest.approx(sum(float(rows[0][c]) for c in columns))

    model, info = load_checkpoint(tmp_path / "split" / "last.pt")
    assert (info["family"], info["name"], info["epoch"]) == (family, name, 2)
    assert model.family == family and model.cfg.name == name
    torch.testing.assert_close(model.state_dict(), b["ema"], rtol=0, atol=0)  # the EMA is what is saved


class _Perfect(torch.nn.Module):
    """A stand-in network for the validation path: ``forward`` returns fixed outputs (the targets of the
    validation images, as the deployed graph would lay them out) under a real model's family and head."""

    def __init__(self, real: torch.nn.Module, outputs: tuple) -> None:
        super().__init__()
        self.real, self.family, self.outputs = real, real.family, outputs

    def head_spec(self) -> dict:
        return self.real.head_spec()

    def forward(self, x):
        assert x.shape[0] == self.outputs[0].shape[0]
        return self.outputs


@pytest.mark.parametrize("name", list(FAMILIES))
def test_validation_decodes_outputs_like_the_targets_to_a_high_ap(name, data):
    """Validation goes through the family's deployment decoder: outputs equal to the training targets of
    the (letterboxed) validation images must decode back onto their people."""
    from edgepose.models.zoo import build_model
    from edgepose.skeletons import COCO_17
    from edgepose.training.datasets import CocoKeypointDataset
    from edgepose.training.validation import ValidationSet, evaluate_model

    ds = CocoKeypointDataset(data / "images", data / "person_keypoints_val.json", (128, 128), augment=False)
    val = ValidationSet.from_dataset(ds, 2)
    _, people = collate([ds[0], ds[1]])
    real = build_model(name)
    t = training_family(real, (128, 128)).targets(people, 2)
    if name.startswith("dekr"):
        outputs = (t.heatmap, t.offset)
    else:  # tags: one value per person at its keypoints (3, 6, ...), as associative embedding learns
        tags = torch.zeros_like(t.heatmaps[0])
        idx, vis = t.joints[..., 0], t.joints[..., 1] > 0  # (B, people, K): flat tag index, visible
        person = torch.arange(1, idx.shape[1] + 1, dtype=tags.dtype)[:, None].expand(idx.shape[1:])
        for b in range(2):
            tags[b].view(-1)[idx[b][vis[b]]] = 3.0 * person[vis[b]]
        outputs = (t.heatmaps[0], tags, t.heatmaps[1])
    stats = evaluate_model(_Perfect(real, outputs), val, (128, 128), COCO_17)
    assert stats["AP"] > 0.9, stats
