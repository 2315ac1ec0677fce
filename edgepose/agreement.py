"""Pose-level agreement of two predictions of the same image (two runtimes, precisions or bundles).

Poses are matched greedily by box IoU, highest first, which is what a user means by "the same person";
the figures then say how far matched keypoints and scores moved, and how many poses have no partner.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgepose.poses import Poses


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _at_least_1px(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to at least 1 px per side around its centre.

    A box clipped to the image edge can have zero width or height, and its IoU with itself would be 0:
    the same pose from two runs could never match.
    """
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = np.maximum((boxes[:, 2:] - boxes[:, :2]) / 2, 0.5)
    return np.concatenate([centre - half, centre + half], axis=1)


def match_poses(a: Poses, b: Poses, min_iou: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of ``a`` and ``b`` by box IoU (pairs with IoU >= ``min_iou``)."""
    if len(a) == 0 or len(b) == 0:
        return []
    iou = box_iou(_at_least_1px(a.boxes), _at_least_1px(b.boxes))
    pairs: list[tuple[int, int]] = []
    used_a, used_b = set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] < min_iou:
            break
        if i not in used_a and j not in used_b:
            pairs.append((i, j))
            used_a.add(i)
            used_b.add(j)
    return pairs


def oks(kp_a: np.ndarray, kp_b: np.ndarray, sigmas: np.ndarray, area: float) -> float:
    """Object keypoint similarity of two (K, 3) poses, treating ``kp_b`` as the reference."""
    d2 = np.sum((kp_a[:, :2] - kp_b[:, :2]) ** 2, axis=1)
    var = (2 * sigmas) ** 2
    return float(np.mean(np.exp(-d2 / (2 * max(area, 1.0) * var))))


@dataclass
class Agreement:
    poses_a: int
    poses_b: int
    matched: int
    max_keypoint_px: float
    mean_keypoint_px: float
    max_score_diff: float
    mean_oks: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class MatchedPairs:
    """Per-pose figures of the matched pairs of ``a`` (candidate) and ``b`` (reference).

    ``compare`` needs these per pose (percentiles, minimum OKS, signed score drift over a whole run),
    which the per-image ``Agreement`` summary cannot give.
    """

    pairs: list[tuple[int, int]]  # (index in a, index in b), best IoU first
    oks: np.ndarray  # (M,) OKS with the reference's box area as the scale
    keypoint_px: np.ndarray  # (M, K) distance of each keypoint, pixels
    score_diff: np.ndarray  # (M,) signed person score, a - b
    keypoint_score_diff: np.ndarray  # (M, K) signed keypoint score, a - b

    def __len__(self) -> int:
        return len(self.pairs)


def matched_pairs(a: Poses, b: Poses, sigmas: np.ndarray, min_iou: float = 0.5) -> MatchedPairs:
    """Match ``a`` to the reference ``b`` and measure every matched pair."""
    pairs = match_poses(a, b, min_iou)
    k = a.num_keypoints
    if not pairs:
        empty = np.zeros(0, np.float64)
        return MatchedPairs([], empty, np.zeros((0, k)), empty, np.zeros((0, k)))
    ia, ib = (np.array(x) for x in zip(*pairs))
    dist = np.linalg.norm(a.keypoints[ia, :, :2] - b.keypoints[ib, :, :2], axis=2)
    areas = np.prod(b.boxes[ib, 2:] - b.boxes[ib, :2], axis=1)
    oks_values = [oks(a.keypoints[i], b.keypoints[j], sigmas, float(ar)) for i, j, ar in zip(ia, ib, areas)]
    return MatchedPairs(
        pairs,
        np.asarray(oks_values, np.float64),
        dist.astype(np.float64),
        (a.scores[ia] - b.scores[ib]).astype(np.float64),
        (a.keypoints[ia, :, 2] - b.keypoints[ib, :, 2]).astype(np.float64),
    )


def pose_agreement(a: Poses, b: Poses, sigmas: np.ndarray, min_iou: float = 0.5) -> Agreement:
    """How well ``a`` reproduces ``b`` (the reference) on one image."""
    m = matched_pairs(a, b, sigmas, min_iou)
    if not len(m):
        return Agreement(len(a), len(b), 0, 0.0, 0.0, 0.0, 1.0 if len(a) == len(b) == 0 else 0.0)
    score_diff = max(float(np.abs(m.score_diff).max()), float(np.abs(m.keypoint_score_diff).max(initial=0.0)))
    return Agreement(
        len(a),
        len(b),
        len(m),
        float(m.keypoint_px.max()),
        float(m.keypoint_px.mean()),
        score_diff,
        float(np.mean(m.oks)),
    )
