"""Training data: COCO keypoint files and an endless synthetic stream, with the same augmentation.

Every sample becomes a fixed ``W x H`` input the way deployment pre-processing makes it (letterbox,
grey 114 padding, RGB, later scaled by 1/255), so a model never sees a different input convention in
training than in use. Augmentation (YOLOv5/KAPAO style): a random scale and translation applied
together with the letterbox in one affine warp, optional 4-image mosaic, HSV jitter, and a left-right
flip that swaps the skeleton's flip pairs. Boxes are clipped (people that mostly leave the input are
dropped) and keypoints that leave the input become invisible (v = 0).

Each item is ``(image, people)``: a uint8 RGB ``(3, H, W)`` tensor and float32 rows
``(N, 4 + 3K)`` = x1, y1, x2, y2, then x, y, v per keypoint, in input pixels. Randomness comes from a
generator seeded by (seed, epoch, index), so an epoch is the same whichever worker renders it, and a
resumed run sees exactly the data it would have seen.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from edgepose.data.synthetic import sample_seed
from edgepose.errors import DataError
from edgepose.preprocess import IMAGE_SUFFIXES, letterbox, read_image
from edgepose.skeletons import COCO_17, Skeleton

PAD_VALUE = 114


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths. ``scale`` and ``translate`` are +- fractions (scale 0.5: x0.5 .. x1.5)."""

    scale: float = 0.5
    translate: float = 0.1
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    fliplr: float = 0.5
    mosaic: float = 0.0
    min_box: float = 2.0  # px: thinner people are dropped
    min_area_frac: float = 0.1  # people keeping less of their box inside the input are dropped


@dataclass
class PoseSample:
    """One image and its people: boxes (N, 4) x1 y1 x2 y2 and keypoints (N, K, 3) x, y, v, in its pixels."""

    image: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray

    def people(self) -> np.ndarray:
        n, k = len(self.boxes), self.keypoints.shape[1]
        rows = np.concatenate([self.boxes.reshape(n, 4), self.keypoints.reshape(n, 3 * k)], axis=1)
        return rows.astype(np.float32)


# ---------------------------------------------------------------------------------------------- geometry
def _transform_labels(
    sample: PoseSample,
    gain: float,
    shift: tuple[float, float],
    region: tuple[float, float, float, float],
    cfg: AugmentConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Scale + shift boxes and keypoints, clip boxes to ``region`` (x1, y1, x2, y2), drop people mostly
    outside it and hide keypoints outside it."""
    rx1, ry1, rx2, ry2 = region
    sx, sy = shift
    boxes = sample.boxes.astype(np.float32).reshape(-1, 4) * gain
    boxes[:, 0::2] += sx
    boxes[:, 1::2] += sy
    kps = sample.keypoints.astype(np.float32).copy()
    kps[..., 0] = kps[..., 0] * gain + sx
    kps[..., 1] = kps[..., 1] * gain + sy
    full_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    boxes[:, 0::2] = boxes[:, 0::2].clip(rx1, rx2)
    boxes[:, 1::2] = boxes[:, 1::2].clip(ry1, ry2)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (bw > cfg.min_box) & (bh > cfg.min_box) & (bw * bh > cfg.min_area_frac * full_area)
    outside = (kps[..., 0] < rx1) | (kps[..., 0] >= rx2) | (kps[..., 1] < ry1) | (kps[..., 1] >= ry2)
    kps[..., 2] = np.where(outside | (kps[..., 2] <= 0), 0.0, kps[..., 2])
    return boxes[keep], kps[keep]


def _warp(img: np.ndarray, gain: float, shift: tuple[float, float], out_size: tuple[int, int]) -> np.ndarray:
    """Resample so that continuous point p maps to gain * p + shift (pixel centres at i + 0.5)."""
    # Pixel indices are centres at i + 0.5: index i' = gain * i + shift + 0.5 * gain - 0.5.
    off = 0.5 * gain - 0.5
    m = np.array([[gain, 0.0, shift[0] + off], [0.0, gain, shift[1] + off]], np.float64)
    # warpAffine has no area filter (INTER_AREA falls back to bilinear), as in YOLOv5's augmentation.
    return cv2.warpAffine(
        img, m, out_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3
    )


def random_affine(
    sample: PoseSample, out_size: tuple[int, int], rng: np.random.Generator, cfg: AugmentConfig
) -> PoseSample:
    """Letterbox to ``out_size`` with a random extra scale and a random placement of the image centre."""
    w, h = out_size
    h0, w0 = sample.image.shape[:2]
    gain = min(w / w0, h / h0) * rng.uniform(1 - cfg.scale, 1 + cfg.scale)
    cx = rng.uniform(0.5 - cfg.translate, 0.5 + cfg.translate) * w
    cy = rng.uniform(0.5 - cfg.translate, 0.5 + cfg.translate) * h
    shift = (cx - gain * w0 / 2, cy - gain * h0 / 2)
    img = _warp(sample.image, gain, shift, out_size)
    boxes, kps = _transform_labels(sample, gain, shift, (0, 0, w, h), cfg)
    return PoseSample(img, boxes, kps)


def letterbox_sample(sample: PoseSample, out_size: tuple[int, int], cfg: AugmentConfig) -> PoseSample:
    """The deployment letterbox (``edgepose.preprocess.letterbox``) with labels mapped alike."""
    img, meta = letterbox(sample.image, out_size, PAD_VALUE)
    boxes, kps = _transform_labels(sample, meta.gain, meta.pad, (0, 0, *out_size), cfg)
    return PoseSample(img, boxes, kps)


def mosaic4(
    samples: Sequence[PoseSample], out_size: tuple[int, int], rng: np.random.Generator, cfg: AugmentConfig
) -> PoseSample:
    """Four letterboxed images around a random centre of a 2W x 2H canvas, then a random affine crop."""
    w, h = out_size
    canvas = np.full((2 * h, 2 * w, 3), PAD_VALUE, np.uint8)
    xc = int(rng.uniform(0.5 * w, 1.5 * w))
    yc = int(rng.uniform(0.5 * h, 1.5 * h))
    all_boxes, all_kps = [], []
    for q, s in enumerate(samples[:4]):
        h0, w0 = s.image.shape[:2]
        g = min(w / w0, h / h0)
        tw, th = max(1, round(w0 * g)), max(1, round(h0 * g))
        tile = cv2.resize(s.image, (tw, th), interpolation=cv2.INTER_AREA if g < 1 else cv2.INTER_LINEAR)
        x0 = xc - tw if q in (0, 2) else xc
        y0 = yc - th if q in (0, 1) else yc
        ax1, ay1, ax2, ay2 = max(x0, 0), max(y0, 0), min(x0 + tw, 2 * w), min(y0 + th, 2 * h)
        canvas[ay1:ay2, ax1:ax2] = tile[ay1 - y0 : ay2 - y0, ax1 - x0 : ax2 - x0]
        # Labels of this tile, clipped to the part of the tile that made it onto the canvas.
        boxes, kps = _transform_labels(s, tw / w0, (x0, y0), (ax1, ay1, ax2, ay2), cfg)
        all_boxes.append(boxes)
        all_kps.append(kps)
    k = samples[0].keypoints.shape[1] if samples[0].keypoints.ndim == 3 else 0
    merged = PoseSample(
        canvas,
        np.concatenate(all_boxes).reshape(-1, 4),
        np.concatenate(all_kps).reshape(-1, k, 3),
    )
    # Crop back to W x H: scale about the canvas centre, then a random placement as in random_affine.
    gain = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
    cx = rng.uniform(0.5 - cfg.translate, 0.5 + cfg.translate) * w
    cy = rng.uniform(0.5 - cfg.translate, 0.5 + cfg.translate) * h
    shift = (cx - gain * w, cy - gain * h)
    img = _warp(canvas, gain, shift, out_size)
    boxes, kps = _transform_labels(merged, gain, shift, (0, 0, w, h), cfg)
    return PoseSample(img, boxes, kps)


def augment_hsv(img: np.ndarray, rng: np.random.Generator, hgain: float, sgain: float, vgain: float) -> None:
    """Random hue/saturation/value gains through lookup tables, in place on a BGR uint8 image."""
    if not (hgain or sgain or vgain):
        return
    r = rng.uniform(-1, 1, 3) * np.array([hgain, sgain, vgain]) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=img)


def flip_lr(sample: PoseSample, flip_index: np.ndarray) -> PoseSample:
    """Mirror the image; x -> W - x, and left/right keypoints trade places."""
    w = sample.image.shape[1]
    img = np.ascontiguousarray(sample.image[:, ::-1])
    boxes = sample.boxes.copy()
    boxes[:, [0, 2]] = w - sample.boxes[:, [2, 0]]
    kps = sample.keypoints[:, flip_index].copy()
    kps[..., 0] = w - kps[..., 0]
    return PoseSample(img, boxes, kps)


# ---------------------------------------------------------------------------------------------- datasets
class PoseDataset(Dataset, ABC):
    """Base class: subclasses provide ``__len__`` and ``load(index, epoch)`` (original pixels)."""

    def __init__(
        self,
        imgsz: tuple[int, int],
        skeleton: Skeleton,
        augment: bool = True,
        config: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.input_size = (int(imgsz[0]), int(imgsz[1]))
        self.skeleton = skeleton
        self.augment = augment
        self.config = config or AugmentConfig()
        self.seed = int(seed)
        self.epoch = 0
        self._flip = skeleton.flip_index()

    @property
    def num_keypoints(self) -> int:
        return self.skeleton.num_keypoints

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose randomness ``__getitem__`` uses (call before making an iterator)."""
        self.epoch = int(epoch)

    @abstractmethod
    def load(self, index: int, epoch: int) -> PoseSample:
        """The original image and labels of item ``index`` (``epoch`` for streams that change per epoch)."""

    def sample(self, index: int) -> PoseSample:
        """The item at ``index`` as a ``PoseSample`` in input pixels (BGR), after augmentation."""
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        cfg = self.config
        if not self.augment:
            return letterbox_sample(self.load(index, self.epoch), self.input_size, cfg)
        if cfg.mosaic > 0 and rng.uniform() < cfg.mosaic:
            others = rng.integers(0, len(self), size=3)
            parts = [self.load(int(i), self.epoch) for i in (index, *others)]
            out = mosaic4(parts, self.input_size, rng, cfg)
        else:
            out = random_affine(self.load(index, self.epoch), self.input_size, rng, cfg)
        augment_hsv(out.image, rng, cfg.hsv_h, cfg.hsv_s, cfg.hsv_v)
        if rng.uniform() < cfg.fliplr:
            out = flip_lr(out, self._flip)
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``key`` is an index (of the epoch set by ``set_epoch``) or an ``(epoch, index)`` pair."""
        if isinstance(key, tuple):
            self.epoch, key = int(key[0]), int(key[1])
        s = self.sample(key)
        rgb = np.ascontiguousarray(s.image[:, :, ::-1].transpose(2, 0, 1))
        return torch.from_numpy(rgb), torch.from_numpy(s.people())


class EpochSampler(Sampler):
    """A seeded shuffle per epoch that yields ``(epoch, index)`` keys.

    The epoch travels with every key, so persistent (spawned) workers, which hold their own copy of
    the dataset, still draw each epoch's augmentation; the order is a pure function of (seed, epoch).
    """

    def __init__(self, size: int, count: int, seed: int = 0) -> None:
        self.size, self.count, self.seed, self.epoch = int(size), int(count), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 9973 + self.epoch)
        order = torch.randperm(self.size, generator=gen)[: self.count].tolist()
        return iter([(self.epoch, i) for i in order])


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images; concatenate people with their image index in front: rows ``(N, 5 + 3K)``."""
    imgs = torch.stack([b[0] for b in batch])
    rows = []
    for i, (_, people) in enumerate(batch):
        idx = torch.full((people.shape[0], 1), float(i), dtype=torch.float32)
        rows.append(torch.cat([idx, people], dim=1))
    return imgs, torch.cat(rows, dim=0)


def people_arrays(people: Sequence, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Person records (dicts or objects with ``bbox`` xywh and ``keypoints``) -> boxes, keypoints."""
    boxes, kps = [], []
    for p in people:
        get = p.get if isinstance(p, dict) else lambda name, _p=p: getattr(_p, name, None)
        kp = np.asarray(get("keypoints"), dtype=np.float32).reshape(-1, 3)
        if kp.shape[0] != k:
            raise DataError(f"a person has {kp.shape[0]} keypoints but the skeleton has {k}")
        bbox = get("bbox")
        if bbox is None:
            vis = kp[kp[:, 2] > 0, :2]
            if not len(vis):
                continue
            x1, y1 = vis.min(0)
            x2, y2 = vis.max(0)
        else:
            x, y, bw, bh = (float(v) for v in bbox)
            x1, y1, x2, y2 = x, y, x + bw, y + bh
        boxes.append([x1, y1, x2, y2])
        kps.append(kp)
    return (
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(kps, np.float32).reshape(-1, k, 3),
    )


class CocoKeypointDataset(PoseDataset):
    """A COCO keypoint annotation file (any K) and the folder holding its images."""

    def __init__(
        self,
        images_dir: str | Path,
        annotations: str | Path | dict,
        imgsz: tuple[int, int],
        skeleton: Skeleton = COCO_17,
        augment: bool = True,
        config: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(imgsz, skeleton, augment, config, seed)
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise DataError(f"image folder {self.images_dir} does not exist")
        self.coco = annotations if isinstance(annotations, dict) else load_coco(annotations)
        k = skeleton.num_keypoints
        for cat in self.coco.get("categories", []):
            names = cat.get("keypoints")
            if names and len(names) != k:
                raise DataError(
                    f"the annotations' category '{cat.get('name')}' has {len(names)} keypoints but skeleton "
                    f"'{skeleton.name}' has {k}; pass the matching --skeleton"
                )
        by_image: dict[int, list[dict]] = {}
        for ann in self.coco.get("annotations", []):
            if ann.get("iscrowd", 0) or "keypoints" not in ann:
                continue
            if len(ann["keypoints"]) != 3 * k:
                raise DataError(
                    f"annotation {ann.get('id')} has {len(ann['keypoints']) // 3} keypoints but skeleton "
                    f"'{skeleton.name}' has {k}; pass the matching --skeleton"
                )
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
        self.images = list(self.coco.get("images", []))
        if not self.images:
            raise DataError("the annotation file lists no images")
        missing = [im["file_name"] for im in self.images if not (self.images_dir / im["file_name"]).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(self.images)} annotated images are not in {self.images_dir} "
                f"(first: {missing[0]})"
            )
        self._people = [people_arrays(by_image.get(int(im["id"]), []), k) for im in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def image_id(self, index: int) -> int:
        return int(self.images[index]["id"])

    def load(self, index: int, epoch: int) -> PoseSample:
        boxes, kps = self._people[index]
        img = read_image(self.images_dir / self.images[index]["file_name"])
        return PoseSample(img, boxes, kps)


def load_coco(path: str | Path) -> dict:
    """Read a COCO annotation file, with one-sentence errors for the usual mistakes."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"annotation file {path} is not readable JSON ({e})") from e
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataError(f"{path} is not a COCO annotation file (it needs 'images' and 'annotations')")
    return data


def find_coco_split(folder: str | Path, split: str = "train") -> tuple[Path, Path]:
    """(images folder, annotation file) of a data folder.

    Accepted layouts: ``annotations.json`` or ``annotations/*.json`` (a file naming ``split`` preferred)
    beside an ``images/`` folder (or ``images/<split>*``), or the images next to the JSON file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    candidates = sorted(folder.glob("*.json")) + sorted((folder / "annotations").glob("*.json"))
    if not candidates:
        raise DataError(
            f"data folder {folder} has no COCO annotation file (annotations.json or annotations/*.json)"
        )
    named = [c for c in candidates if split in c.stem]
    others = ("val", "test") if split == "train" else ("train", "test")
    plain = [c for c in candidates if not any(o in c.stem for o in others)]
    if split != "train" and not named:
        raise DataError(f"data folder {folder} has no '{split}' annotation file")
    ann = (named or plain or candidates)[0]
    images = folder / "images"
    if images.is_dir():
        sub = sorted(p for p in images.iterdir() if p.is_dir() and p.name.startswith(split))
        if sub:
            images = sub[0]
    else:
        images = ann.parent if ann.parent != folder / "annotations" else folder
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.iterdir()):
        raise DataError(f"data folder {folder} has no images in {images}")
    return images, ann


class SyntheticStream(PoseDataset):
    """Synthetic people rendered on the fly: item i of epoch e is ``render_sample(sample_seed(seed, n))``.

    With ``fresh=True`` n = e * length + i, so every epoch renders new images and a long run cannot
    over-fit a fixed set (the stream is the one ``edgepose.data.synthetic`` documents for trainers);
    with ``fresh=False`` n = i and every epoch re-uses the same ``length`` images.
    """

    def __init__(
        self,
        profile: str = "train-v1",
        seed: int = 0,
        imgsz: tuple[int, int] = (384, 384),
        length: int = 1000,
        augment: bool = True,
        config: AugmentConfig | None = None,
        fresh: bool = True,
        renderer: Callable | None = None,
    ) -> None:
        super().__init__(imgsz, COCO_17, augment, config, seed)
        self.profile = profile
        self.length = int(length)
        self.fresh = fresh
        if renderer is None:
            from edgepose.data.synthetic import render_sample

            renderer = render_sample
        self._render = renderer

    def __len__(self) -> int:
        return self.length

    def render_seed(self, index: int, epoch: int) -> int:
        """The renderer seed of item ``index`` in ``epoch``."""
        n = epoch * self.length + int(index) if self.fresh else int(index)
        return sample_seed(self.seed, n)

    def load(self, index: int, epoch: int) -> PoseSample:
        img, people = self._render(self.render_seed(index, epoch), self.profile)
        boxes, kps = people_arrays(people, self.num_keypoints)
        return PoseSample(img, boxes, kps)
