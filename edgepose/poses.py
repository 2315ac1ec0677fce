"""``Poses``: what every decoder returns and every consumer (drawing, JSON, evaluation) reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Poses:
    """Poses of the people in one image, in original-image pixels.

    keypoints: (N, K, 3) float32 -- x, y, score. A keypoint the model did not find has score 0.
    scores:    (N,) float32 -- the person's confidence.
    boxes:     (N, 4) float32 -- x1, y1, x2, y2.
    fused:     (N, K) bool -- True where the keypoint came from a keypoint object (KAPAO fusion).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    fused: np.ndarray

    def __post_init__(self) -> None:
        self.keypoints = np.ascontiguousarray(self.keypoints, dtype=np.float32)
        self.scores = np.ascontiguousarray(self.scores, dtype=np.float32).reshape(-1)
        self.boxes = np.ascontiguousarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.fused = np.ascontiguousarray(self.fused, dtype=bool)
        n = len(self.scores)
        if self.keypoints.ndim != 3 or self.keypoints.shape[0] != n or self.keypoints.shape[2] != 3:
            raise ValueError(f"keypoints must be (N, K, 3) with N={n}, got {self.keypoints.shape}")
        if self.boxes.shape[0] != n or self.fused.shape != self.keypoints.shape[:2]:
            raise ValueError("boxes must be (N, 4) and fused (N, K), matching keypoints")

    @classmethod
    def empty(cls, num_keypoints: int) -> Poses:
        return cls(
            keypoints=np.zeros((0, num_keypoints, 3), np.float32),
            scores=np.zeros(0, np.float32),
            boxes=np.zeros((0, 4), np.float32),
            fused=np.zeros((0, num_keypoints), bool),
        )

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def num_keypoints(self) -> int:
        return self.keypoints.shape[1]

    def select(self, index: np.ndarray | slice | list[int]) -> Poses:
        """The poses at ``index`` (a mask, a slice or indices), as a new ``Poses``."""
        return Poses(self.keypoints[index], self.scores[index], self.boxes[index], self.fused[index])

    def sorted(self) -> Poses:
        """Highest score first (stable), the order COCO evaluation and drawing expect."""
        return self.select(np.argsort(-self.scores, kind="stable"))

    def to_coco_results(self, image_id: int, category_id: int = 1) -> list[dict]:
        """COCO keypoint *results* entries (the format pycocotools' ``loadRes`` reads)."""
        out = []
        for kp, score, box in zip(self.keypoints, self.scores, self.boxes):
            x1, y1, x2, y2 = (float(v) for v in box)
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_id),
                    "keypoints": [round(float(v), 3) for v in kp.reshape(-1)],
                    "score": float(score),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                }
            )
        return out

    def to_dicts(self) -> list[dict]:
        """Plain-Python view for JSON: one dict per pose."""
        return [
            {
                "score": float(s),
                "box": [float(v) for v in b],
                "keypoints": [[float(x), float(y), float(c)] for x, y, c in kp],
                "fused": [bool(f) for f in fu],
            }
            for kp, s, b, fu in zip(self.keypoints, self.scores, self.boxes, self.fused)
        ]
