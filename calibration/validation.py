"""The accuracy gate's validation data: COCO keypoint annotations with their images, or a synthetic profile.

Synthetic validation images come from the evaluation stream (1000), which training never draws from,
so a gate on ``synthetic`` measures what the model cards report.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgepose.calibration.data import coco_image_folders

from edgepose.data.coco import load_keypoint_annotations
from edgepose.errors import InputError, UsageError

#: the synthetic stream evaluation uses (``edgepose synth ... --seed 1000``; training uses 0..999)
EVAL_STREAM = 1000
DEFAULT_SIZE = 100


@dataclass(frozen=True)
class ValidationSet:
    annotations: dict
    images_dir: Path
    description: str

    @property
    def num_images(self) -> int:
        return len(self.annotations["images"])


def load_validation(
    spec: str | Path, num_keypoints: int, size: int = DEFAULT_SIZE, workdir: Path | None = None
) -> ValidationSet:
    """``spec``: ``synthetic[:PROFILE]``, a dataset folder (``annotations.json`` + ``images/``, what
    ``edgepose synth`` writes) or a COCO annotation file whose images lie in ``images/`` beside it or
    in its own folder. Synthetic data is generated into ``workdir`` (``size`` images)."""
    text = str(spec)
    if text == "synthetic" or text.startswith("synthetic:"):
        from edgepose.data.synthetic import generate_dataset

        profile = text.partition(":")[2] or "val-v1"
        if size < 1:
            raise UsageError(f"--val-size must be at least 1, got {size}")
        root = Path(workdir or tempfile.mkdtemp(prefix="edgepose-val-")) / "validation"
        generate_dataset(root, size, EVAL_STREAM, profile)
        data = load_keypoint_annotations(root / "annotations.json", num_keypoints=num_keypoints)
        return ValidationSet(data, root / "images", f"synthetic {profile}, {size} images, seed {EVAL_STREAM}")
    path = Path(spec)
    if path.is_dir():
        path = path / "annotations.json"
    if not path.is_file():
        raise InputError(
            f"validation data {spec} not found: give synthetic[:PROFILE], a folder with annotations.json "
            "and images/, or a COCO keypoint annotation file"
        )
    data = load_keypoint_annotations(path, num_keypoints=num_keypoints)
    images_dir = next(d for d in coco_image_folders(path) if d.is_dir())
    return ValidationSet(data, images_dir, f"{path} ({len(data['images'])} images)")
