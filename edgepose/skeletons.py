"""Skeletons as data: keypoint names, limbs for drawing, flip pairs, and OKS sigmas.

COCO-17 and CrowdPose-14 are built in; a user's skeleton is a JSON file with the same fields::

    {"name": "hand-5", "keypoints": ["a", ...], "limbs": [[0, 1], ...],
     "flip_pairs": [[1, 2], ...], "sigmas": [0.05, ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepose.errors import DataError, UsageError


@dataclass(frozen=True)
class Skeleton:
    name: str
    keypoints: tuple[str, ...]
    limbs: tuple[tuple[int, int], ...]
    flip_pairs: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]

    def __post_init__(self) -> None:
        k = len(self.keypoints)
        if k == 0:
            raise DataError(f"skeleton '{self.name}' has no keypoints")
        if len(self.sigmas) != k:
            raise DataError(f"skeleton '{self.name}' has {k} keypoints but {len(self.sigmas)} sigmas")
        for a, b in (*self.limbs, *self.flip_pairs):
            if not (0 <= a < k and 0 <= b < k):
                raise DataError(f"skeleton '{self.name}' names keypoint index {max(a, b)} but has only {k}")
        if any(s <= 0 for s in self.sigmas):
            raise DataError(f"skeleton '{self.name}' has a non-positive OKS sigma")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    @property
    def sigmas_array(self) -> np.ndarray:
        return np.asarray(self.sigmas, dtype=np.float64)

    def flip_index(self) -> np.ndarray:
        """Permutation that maps each keypoint to its mirror image (itself when unpaired)."""
        idx = np.arange(self.num_keypoints)
        for a, b in self.flip_pairs:
            idx[a], idx[b] = b, a
        return idx

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "keypoints": list(self.keypoints),
            "limbs": [list(p) for p in self.limbs],
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "sigmas": list(self.sigmas),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Skeleton:
        try:
            return cls(
                name=str(d["name"]),
                keypoints=tuple(str(k) for k in d["keypoints"]),
                limbs=tuple((int(a), int(b)) for a, b in d.get("limbs", [])),
                flip_pairs=tuple((int(a), int(b)) for a, b in d.get("flip_pairs", [])),
                sigmas=tuple(float(s) for s in d["sigmas"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"skeleton definition is missing or has a malformed field ({e})") from e


COCO_17 = Skeleton(
    name="coco-17",
    keypoints=(
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ),
    limbs=(
        (15, 13),
        (13, 11),
        (16, 14),
        (14, 12),
        (11, 12),
        (5, 11),
        (6, 12),
        (5, 6),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (1, 2),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    sigmas=(
        0.026,
        0.025,
        0.025,
        0.035,
        0.035,
        0.079,
        0.079,
        0.072,
        0.072,
        0.062,
        0.062,
        0.107,
        0.107,
        0.087,
        0.087,
        0.089,
        0.089,
    ),
)

CROWDPOSE_14 = Skeleton(
    name="crowdpose-14",
    keypoints=(
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
        "head",
        "neck",
    ),
    limbs=(
        (12, 13),
        (13, 0),
        (13, 1),
        (0, 2),
        (2, 4),
        (1, 3),
        (3, 5),
        (0, 6),
        (1, 7),
        (6, 7),
        (6, 8),
        (8, 10),
        (7, 9),
        (9, 11),
    ),
    flip_pairs=((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)),
    sigmas=(0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089, 0.079, 0.079),
)

BUILTIN: dict[str, Skeleton] = {s.name: s for s in (COCO_17, CROWDPOSE_14)}


def get_skeleton(name_or_path: str | Path) -> Skeleton:
    """A built-in skeleton by name (``coco-17``, ``crowdpose-14``) or a user's JSON file."""
    key = str(name_or_path)
    if key in BUILTIN:
        return BUILTIN[key]
    path = Path(key)
    if not path.suffix == ".json":
        raise UsageError(f"unknown skeleton '{key}': use one of {', '.join(BUILTIN)} or a .json file")
    return load_skeleton(path)


def load_skeleton(path: str | Path) -> Skeleton:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"skeleton file {path} does not exist") from e
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"skeleton file {path} is not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise DataError(f"skeleton file {path} must hold a JSON object")
    return Skeleton.from_dict(data)
