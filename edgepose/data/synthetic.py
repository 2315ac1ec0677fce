"""Seeded synthetic multi-person data: images + COCO keypoint annotations, and a short annotated video.

No pretrained weights can be downloaded where edgepose is built, so the project trains its own small
reference models on this data and measures every accuracy number on it. Two rules make those numbers
reproducible: a ``Profile`` never changes once published (a new distribution gets a new name), and
every image is a pure function of ``(profile, sample seed)``.

Seed scheme: image ``i`` of stream ``s`` has sample seed ``sample_seed(s, i) = s * 1_000_003 + i``;
``generate_dataset(..., seed=s)`` writes images ``0..N-1`` of stream ``s``, and a trainer draws an
endless stream with ``render_sample(sample_seed(s, i), "train-v1")`` for i = 0, 1, 2, ...
Streams do not overlap while ``i < 1_000_003``. The profile name is mixed into the random generator,
so the same sample seed gives different images under different profiles.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from edgepose.data import figures as fg
from edgepose.data import scenes
from edgepose.data.scenes import SceneParams
from edgepose.errors import DataError, UsageError
from edgepose.skeletons import COCO_17

GENERATOR_VERSION = "1"
STREAM_STRIDE = 1_000_003
VIDEO_FPS = 30
# Fast lossless PNG: noisy synthetic images gain little from LZ matching, and the AVG filter with
# Huffman-only coding writes ~500 KB per 640x480 image in ~8 ms (default settings: ~20 ms). Older
# OpenCV builds without the filter flag fall back to their default filter.
_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    _PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG]


@dataclass(frozen=True)
class Profile:
    """A frozen, named data distribution. Never edit a published one; add ``*-v2`` instead."""

    name: str
    description: str
    scene: SceneParams


_VAL_V1 = SceneParams(
    width=640,
    height=480,
    min_people=1,
    max_people=8,
    min_stature=48.0,
    max_stature=400.0,
    truncation_p=0.25,
    group_p=0.35,
    occluder_p=0.15,
    max_roll=0.2,
    big_roll_p=0.0,
    clutter=(6, 24),
    distractors=(1, 6),
    noise=(0.03, 0.12),
    blur_p=0.5,
    photometric=0.0,
    jpeg_p=0.0,
)

PROFILES: dict[str, Profile] = {
    "val-v1": Profile(
        "val-v1",
        "640x480, 1-8 people of stature 48-400 px, overlap, occluders, truncation: the evaluation set",
        _VAL_V1,
    ),
    "train-v1": Profile(
        "train-v1",
        "val-v1's people and scenes plus photometric jitter, JPEG artefacts, blur and a few tilted people",
        SceneParams(
            **{**asdict(_VAL_V1), "big_roll_p": 0.05, "blur_p": 0.6, "photometric": 0.25, "jpeg_p": 0.2}
        ),
    ),
}


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise UsageError(f"unknown synthetic data profile '{profile}': use one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def sample_seed(stream: int, index: int) -> int:
    """The sample seed of image ``index`` of stream ``stream`` (see the module docstring)."""
    return int(stream) * STREAM_STRIDE + int(index)


@dataclass(frozen=True)
class SyntheticPerson:
    """One annotated person: COCO keypoints, the box and area of their visible pixels, their stature."""

    keypoints: np.ndarray  # (17, 3) float32: x, y, v (v: 0 not labelled, 1 hidden, 2 visible)
    bbox: tuple[float, float, float, float]  # x, y, w, h
    area: float  # visible pixels: the OKS scale
    stature: float  # standing height in pixels (the profile's "person height")

    @property
    def num_keypoints(self) -> int:
        return int(np.count_nonzero(self.keypoints[:, 2] > 0))

    def to_coco(self, ann_id: int, image_id: int) -> dict:
        kps: list[float | int] = []
        for x, y, v in self.keypoints:
            kps += [round(float(x), 2), round(float(y), 2), int(v)] if v > 0 else [0, 0, 0]
        return {
            "id": int(ann_id),
            "image_id": int(image_id),
            "category_id": 1,
            "keypoints": kps,
            "num_keypoints": self.num_keypoints,
            "bbox": [round(float(v), 2) for v in self.bbox],
            "area": float(self.area),
            "iscrowd": 0,
            "stature_px": round(self.stature, 2),
        }


def _rng(rng_seed: int, profile: Profile) -> np.random.Generator:
    if int(rng_seed) < 0:
        raise UsageError(f"seeds must be non-negative integers, got {rng_seed}")
    return np.random.default_rng([int(rng_seed), zlib.crc32(profile.name.encode())])


def annotate(labels: np.ndarray, figures: list[fg.PosedFigure]) -> list[SyntheticPerson | None]:
    """Per drawn figure: its annotation, or None when (almost) nothing of it is visible."""
    counts = cv2.calcHist([labels], [0], None, [256], [0, 256]).ravel()
    H, W = labels.shape
    out: list[SyntheticPerson | None] = []
    for i, fig in enumerate(figures):
        lo, hi = i * fg.NUM_PARTS + 1, (i + 1) * fg.NUM_PARTS + 1
        area = int(counts[lo:hi].sum())
        kps = fg.keypoint_visibility(labels, fig, i)
        if area < 16 or not np.any(kps[:, 2] > 0):
            out.append(None)
            continue
        x0, y0, x1, y1 = fig.bounds()
        bx0, by0 = max(0, int(x0) - 1), max(0, int(y0) - 1)
        roi = labels[by0 : min(H, int(y1) + 3), bx0 : min(W, int(x1) + 3)]
        mask = (roi >= lo) & (roi < hi)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        bbox = (
            float(bx0 + cols[0]),
            float(by0 + rows[0]),
            float(cols[-1] - cols[0] + 1),
            float(rows[-1] - rows[0] + 1),
        )
        out.append(SyntheticPerson(kps, bbox, float(area), fig.stature_px))
    return out


def render_sample(
    rng_seed: int, profile: str | Profile = "val-v1"
) -> tuple[np.ndarray, list[SyntheticPerson]]:
    """One synthetic image (H, W, 3 uint8 BGR) and its annotated people, a pure function of its inputs."""
    prof = get_profile(profile)
    p = prof.scene
    rng = _rng(rng_seed, prof)
    img = scenes.draw_background(rng, p)
    labels = np.zeros((p.height, p.width), np.uint8)
    figures = scenes.layout_people(rng, p)
    for i, fig in enumerate(figures):
        fg.paint_figure(img, labels, fig, i)
    if rng.uniform() < p.occluder_p:
        scenes.draw_occluders(rng, img, labels)
    people = [a for a in annotate(labels, figures) if a is not None]
    img = scenes.camera_effects(rng, img, p)
    return img, people


def coco_categories() -> list[dict]:
    return [
        {
            "id": 1,
            "name": "person",
            "supercategory": "person",
            "keypoints": list(COCO_17.keypoints),
            "skeleton": [[a + 1, b + 1] for a, b in COCO_17.limbs],
        }
    ]


def _info(prof: Profile, seed: int, **extra: object) -> dict:
    return {
        "description": "edgepose synthetic people",
        "generator": "edgepose.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "profile": prof.name,
        "profile_params": asdict(prof.scene),
        "seed": int(seed),
        "seed_scheme": f"image i uses render_sample(seed * {STREAM_STRIDE} + i, profile)",
        **extra,
    }


def _write_png(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", img, _PNG_PARAMS)
    if not ok:
        raise DataError(f"could not encode {path.name} as PNG")
    path.write_bytes(buf.tobytes())


def _dump_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")


def generate_dataset(
    out_dir: str | Path,
    num_images: int,
    seed: int,
    profile: str | Profile = "val-v1",
    video_seconds: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``out_dir/images/NNNNNN.png``, ``annotations.json`` and (if seconds > 0) ``video.mp4`` with
    ``video_annotations.json``. The folder appears complete or not at all: everything is written to a
    temporary sibling folder that is renamed into place. ``progress(done, total)`` is called per item.
    """
    prof = get_profile(profile)
    out = Path(out_dir)
    if int(num_images) < 0 or (int(num_images) == 0 and video_seconds <= 0):
        raise UsageError(f"the number of images (--images) must be at least 1, got {num_images}")
    if video_seconds < 0 or not math.isfinite(video_seconds):
        raise UsageError(f"video length must be a non-negative number of seconds, got {video_seconds}")
    if int(seed) < 0:
        raise UsageError(f"seeds must be non-negative integers, got {seed}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(
            f"output folder {out} exists and is not an empty folder; choose a new folder or empty it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    num_frames = int(round(video_seconds * VIDEO_FPS))
    total = int(num_images) + num_frames
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        images, annotations = [], []
        for i in range(int(num_images)):
            img, people = render_sample(sample_seed(seed, i), prof)
            name = f"{i:06d}.png"
            _write_png(tmp / "images" / name, img)
            images.append({"id": i, "file_name": name, "width": img.shape[1], "height": img.shape[0]})
            for person in people:
                annotations.append(person.to_coco(len(annotations) + 1, i))
            if progress is not None:
                progress(i + 1, total)
        data = {
            "info": _info(prof, seed, num_images=int(num_images)),
            "images": images,
            "annotations": annotations,
            "categories": coco_categories(),
        }
        _dump_json(tmp / "annotations.json", data)
        if num_frames > 0:
            _write_video(tmp, prof, seed, num_frames, progress, int(num_images), total)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_video(
    folder: Path,
    prof: Profile,
    seed: int,
    num_frames: int,
    progress: Callable[[int, int], None] | None,
    done: int,
    total: int,
) -> None:
    p = prof.scene
    path = folder / "video.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (p.width, p.height))
    if not writer.isOpened():
        raise DataError("this OpenCV build cannot write mp4v video; install opencv-python from PyPI")
    rng = _rng(sample_seed(seed, STREAM_STRIDE - 1), prof)
    background = scenes.draw_background(rng, p)
    images, annotations = [], []
    try:
        for f, tracks in enumerate(scenes.video_figures(rng, p, num_frames, VIDEO_FPS)):
            frame = background.copy()
            labels = np.zeros((p.height, p.width), np.uint8)
            for i, (_, fig) in enumerate(tracks):
                fg.paint_figure(frame, labels, fig, i)
            found = annotate(labels, [fig for _, fig in tracks])
            people = [(tid, a) for (tid, _), a in zip(tracks, found) if a is not None]
            cv2.addWeighted(frame, 1.0, fg.noise_crop(rng, p.width, p.height), 0.06, -128 * 0.06, dst=frame)
            writer.write(frame)
            images.append(
                {
                    "id": f,
                    "file_name": f"video.mp4#{f:06d}",
                    "frame_index": f,
                    "width": p.width,
                    "height": p.height,
                }
            )
            for track_id, person in people:
                ann = person.to_coco(len(annotations) + 1, f)
                ann["track_id"] = track_id
                annotations.append(ann)
            if progress is not None:
                progress(done + f + 1, total)
    finally:
        writer.release()
    data = {
        "info": _info(prof, seed, video="video.mp4", fps=VIDEO_FPS, num_frames=num_frames),
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    _dump_json(folder / "video_annotations.json", data)
