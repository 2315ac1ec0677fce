"""``edgepose predict``: a bundle over an image, a folder or a video -> annotated files + one JSON.

The JSON is COCO-style: ``images`` (id, file_name, width, height) and ``annotations`` in the COCO
keypoint *results* format, so pycocotools' ``loadRes`` reads ``data["annotations"]`` directly.
Every file is written to a temporary name and renamed, so an interrupted run leaves no torn files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgepose.draw import draw_poses
from edgepose.errors import InputError, UsageError
from edgepose.estimator import PoseEstimator
from edgepose.preprocess import IMAGE_SUFFIXES, list_images, read_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def _frames(source: Path) -> Iterator[tuple[str, np.ndarray]]:
    if source.is_dir():
        paths = list_images(source)
        if not paths:
            raise InputError(f"folder {source} has no images ({', '.join(IMAGE_SUFFIXES)})")
        for p in paths:
            yield p.name, read_image(p)
    elif source.suffix.lower() in VIDEO_SUFFIXES:
        cap = cv2.VideoCapture(str(source))
        if not cap.isOpened():
            raise InputError(f"{source} is not a readable video")
        i = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield f"{source.stem}_{i:06d}", frame
                i += 1
        finally:
            cap.release()
        if i == 0:
            raise InputError(f"{source} has no readable frames")
    elif source.exists():
        yield source.name, read_image(source)
    else:
        raise InputError(f"source {source} does not exist")


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def _imwrite(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(path.suffix, img)
    if not ok:
        raise InputError(f"cannot encode {path.name}")
    buf.tofile(str(path))


def run_predict(
    bundle: Path,
    source: Path,
    output: Path,
    preset: str = "realtime",
    runtime: str | None = None,
    device: str | None = None,
    draw_boxes: bool = False,
    overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Predict on every frame of ``source``; returns a summary (images, poses, output folder)."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"source {source} does not exist")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"output {output} exists and is not a folder")
    est = PoseEstimator(bundle, preset=preset, runtime=runtime, device=device, **(overrides or {}))
    is_video = source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES
    fps = _video_fps(source) if is_video else 0.0
    frames = _frames(source)
    first = next(frames)  # reads (and validates) the source before anything is written
    output.mkdir(parents=True, exist_ok=True)
    images, results = [], []
    writer = None
    video_tmp = output / f".{source.stem}.tmp.mp4"
    try:
        for image_id, (name, frame) in enumerate(_chain(first, frames)):
            poses = est(frame)
            h, w = frame.shape[:2]
            images.append({"id": image_id, "file_name": name, "width": w, "height": h})
            results.extend(poses.to_coco_results(image_id))
            drawn = draw_poses(frame, poses, est.skeleton, draw_boxes=draw_boxes, copy=False)
            if is_video:
                if writer is None:
                    writer = cv2.VideoWriter(str(video_tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                writer.write(drawn)
            else:
                out_name = Path(name).with_suffix(".jpg").name
                _write_atomic(output / out_name, lambda p, img=drawn: _imwrite(p, img))
    finally:
        if writer is not None:
            writer.release()
        est.close()
    if is_video:
        os.replace(video_tmp, output / f"{source.stem}.mp4")
    data = {
        "info": {"bundle": str(bundle), "preset": preset, "model": est.bundle.model_name},
        "images": images,
        "annotations": results,
        "categories": [
            {
                "id": 1,
                "name": "person",
                "keypoints": list(est.skeleton.keypoints),
                "skeleton": [[a + 1, b + 1] for a, b in est.skeleton.limbs],
            }
        ],
    }
    _write_atomic(
        output / "predictions.json",
        lambda p: p.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8"),
    )
    return {"images": len(images), "poses": len(results), "output": str(output)}


def _video_fps(path: Path) -> float:
    """The source's frame rate (30 when the container does not say), so the output plays at its speed."""
    cap = cv2.VideoCapture(str(path))
    try:
        return cap.get(cv2.CAP_PROP_FPS) or 30.0
    finally:
        cap.release()


def _chain(first: tuple[str, np.ndarray], rest: Iterator[tuple[str, np.ndarray]]):
    yield first
    yield from rest
