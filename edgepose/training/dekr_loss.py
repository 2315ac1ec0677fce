"""DEKR training targets and loss, after github.com/HRNet/DEKR (``target_generators.py``, ``core/loss.py``).

Targets, at the output stride (4) from people rows in input pixels:

- heatmaps (K + 1, H, W): per visible keypoint inside the map a Gaussian (sigma 2 output px; the person
  centre, the mean of the visible keypoints, sigma 4) evaluated on whole pixels within
  ``[floor(p - 3 sigma - 1), ceil(p + 3 sigma + 2))``, max over people; the mask is 1 inside those windows
  and ``bg_weight`` (0.1) elsewhere (official ``HeatmapGenerator``);
- offsets (2K, H, W): around each person's centre pixel ``c = int(centre)``, for pixels ``c - r .. c + r - 1``
  (radius 4), ``pixel - keypoint`` per visible keypoint; where people overlap the smaller one keeps the
  pixel. Weights are ``1 / sqrt(area)`` (official ``OffsetGenerator``).

``area`` is the squared diagonal of the person's visible-keypoint extent in input pixels (the official code
measures the same extent, but over every keypoint slot, unlabelled ones at (0, 0) included; we take the
box's diagonal when fewer than two keypoints are visible). A person gets a centre when it has a visible
keypoint and its box covers ``min_center_area`` input pixels (official: segmentation area >= 32^2).

Loss: ``heatmap_factor * mean(mask * (pred - target)^2)`` + ``offset_factor * sum(weight *
smoothL1_beta(pred - target)) / #(weight > 0)`` with beta 1/9 and the official W32/W48 factors 1 and 0.03.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

#: people rows from ``edgepose.training.datasets.collate``: image index, x1, y1, x2, y2, then K x (x, y, v)
PEOPLE_HEAD = 5


@dataclass(frozen=True)
class DekrLossConfig:
    heatmap_factor: float = 1.0
    offset_factor: float = 0.03
    bg_weight: float = 0.1
    sigma: float = 2.0
    center_sigma: float = 4.0
    offset_radius: int = 4
    smooth_l1_beta: float = 1.0 / 9.0
    min_center_area: float = 32.0**2
    stride: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DekrTargets:
    """Batched targets: heatmap and mask (B, K+1, H, W), offset and offset_weight (B, 2K, H, W)."""

    heatmap: torch.Tensor
    mask: torch.Tensor
    offset: torch.Tensor
    offset_weight: torch.Tensor

    def to(self, device: torch.device | str) -> DekrTargets:
        return DekrTargets(
            *(t.to(device) for t in (self.heatmap, self.mask, self.offset, self.offset_weight))
        )


def person_geometry(people: np.ndarray, num_keypoints: int, cfg: DekrLossConfig) -> tuple[np.ndarray, ...]:
    """Rows (N, 4 + 3K) in input px -> centres (N, 3) x, y, v and areas (N,), both in input pixels."""
    n = len(people)
    boxes = people[:, :4].astype(np.float64)
    kps = people[:, 4:].reshape(n, num_keypoints, 3).astype(np.float64)
    vis = kps[..., 2] > 0
    count = vis.sum(1)
    safe = np.maximum(count, 1)[:, None]
    centres = np.zeros((n, 3))
    centres[:, :2] = (kps[..., :2] * vis[..., None]).sum(1) / safe
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    centres[:, 2] = (count > 0) & (box_area >= cfg.min_center_area)
    lo = np.where(vis[..., None], kps[..., :2], np.inf).min(1)
    hi = np.where(vis[..., None], kps[..., :2], -np.inf).max(1)
    kp_area = ((hi - lo) ** 2).sum(1) if n else np.zeros(0)
    box_diag = (boxes[:, 2] - boxes[:, 0]) ** 2 + (boxes[:, 3] - boxes[:, 1]) ** 2
    areas = np.where(count >= 2, kp_area, box_diag)
    return centres, np.maximum(np.nan_to_num(areas, posinf=1.0), 1.0)


def heatmap_targets(
    joints: np.ndarray, size: tuple[int, int], sigma: float, center_sigma: float, bg_weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """joints (N, K+1, 3) output px, centre last -> heatmap and mask (K+1, H, W) float32."""
    w, h = size
    c = joints.shape[1]
    heat = np.zeros((c, h, w), np.float32)
    mask = np.full((c, h, w), 2.0, np.float32)
    for person in joints:
        for j, (x, y, v) in enumerate(person):
            if not v > 0 or x < 0 or y < 0 or x >= w or y >= h:
                continue
            s = center_sigma if j == c - 1 else sigma
            x0, y0 = max(0, math.floor(x - 3 * s - 1)), max(0, math.floor(y - 3 * s - 1))
            x1, y1 = min(w, math.ceil(x + 3 * s + 2)), min(h, math.ceil(y + 3 * s + 2))
            xs, ys = np.arange(x0, x1), np.arange(y0, y1)
            g = np.exp(-((xs[None, :] - x) ** 2 + (ys[:, None] - y) ** 2) / (2 * s * s))
            np.maximum(heat[j, y0:y1, x0:x1], g, out=heat[j, y0:y1, x0:x1])
            mask[j, y0:y1, x0:x1] = 1.0
    mask[mask == 2.0] = bg_weight
    return heat, mask


def offset_targets(
    joints: np.ndarray, areas: np.ndarray, size: tuple[int, int], radius: int
) -> tuple[np.ndarray, np.ndarray]:
    """joints (N, K+1, 3) output px, centre last; areas (N,) -> offset and weight (2K, H, W) float32."""
    w, h = size
    k = joints.shape[1] - 1
    offset = np.zeros((2 * k, h, w), np.float32)
    weight = np.zeros((2 * k, h, w), np.float32)
    area_map = np.zeros((h, w), np.float32)
    for person, area in zip(joints, areas):
        cx, cy, cv = int(person[-1, 0]), int(person[-1, 1]), person[-1, 2]
        if cv < 1 or cx < 0 or cy < 0 or cx >= w or cy >= h:
            continue
        x0, y0 = max(cx - radius, 0), max(cy - radius, 0)
        x1, y1 = min(cx + radius, w), min(cy + radius, h)
        px, py = np.meshgrid(np.arange(x0, x1), np.arange(y0, y1))
        for j, (x, y, v) in enumerate(person[:-1]):
            if not v > 0 or x < 0 or y < 0 or x >= w or y >= h:
                continue
            ox, oy = offset[2 * j, y0:y1, x0:x1], offset[2 * j + 1, y0:y1, x0:x1]
            taken = ((ox != 0) | (oy != 0)) & (area_map[y0:y1, x0:x1] < area)
            free = ~taken
            ox[free] = (px - x)[free]
            oy[free] = (py - y)[free]
            weight[2 * j, y0:y1, x0:x1][free] = 1.0 / np.sqrt(area)
            weight[2 * j + 1, y0:y1, x0:x1][free] = 1.0 / np.sqrt(area)
            area_map[y0:y1, x0:x1][free] = area
    return offset, weight


def image_targets(
    people: np.ndarray, num_keypoints: int, input_size: tuple[int, int], cfg: DekrLossConfig
) -> tuple[np.ndarray, ...]:
    """One image's rows (N, 4 + 3K) in input px -> (heatmap, mask, offset, offset_weight) at the stride."""
    w_in, h_in = input_size
    size = (w_in // cfg.stride, h_in // cfg.stride)
    people = np.asarray(people, np.float64).reshape(-1, 4 + 3 * num_keypoints)
    centres, areas = person_geometry(people, num_keypoints, cfg)
    joints = np.concatenate([people[:, 4:].reshape(-1, num_keypoints, 3), centres[:, None]], axis=1)
    joints[..., :2] /= cfg.stride
    heat, mask = heatmap_targets(joints, size, cfg.sigma, cfg.center_sigma, cfg.bg_weight)
    offset, weight = offset_targets(joints, areas, size, cfg.offset_radius)
    return heat, mask, offset, weight


def build_targets(
    people: torch.Tensor | np.ndarray,
    batch_size: int,
    num_keypoints: int,
    input_size: tuple[int, int],
    cfg: DekrLossConfig | None = None,
) -> DekrTargets:
    """Collated people rows (M, 5 + 3K) (image index first, input px) -> batched ``DekrTargets``."""
    cfg = cfg or DekrLossConfig()
    rows = people.detach().cpu().numpy() if isinstance(people, torch.Tensor) else np.asarray(people)
    rows = rows.reshape(-1, PEOPLE_HEAD + 3 * num_keypoints)
    per_image = [
        image_targets(rows[rows[:, 0] == b, 1:], num_keypoints, input_size, cfg) for b in range(batch_size)
    ]
    return DekrTargets(*(torch.from_numpy(np.stack(parts)) for parts in zip(*per_image)))


def smooth_l1(diff: torch.Tensor, beta: float) -> torch.Tensor:
    a = diff.abs()
    return torch.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


class DekrLoss:
    """``loss(heatmap, offset, targets) -> (total, {"heatmap": float, "offset": float})``."""

    def __init__(self, num_keypoints: int, cfg: DekrLossConfig | None = None) -> None:
        self.num_keypoints = int(num_keypoints)
        self.cfg = cfg or DekrLossConfig()

    def targets(self, people: torch.Tensor, batch_size: int, input_size: tuple[int, int]) -> DekrTargets:
        return build_targets(people, batch_size, self.num_keypoints, input_size, self.cfg)

    def __call__(
        self, heatmap: torch.Tensor, offset: torch.Tensor, targets: DekrTargets
    ) -> tuple[torch.Tensor, dict[str, float]]:
        t = targets.to(heatmap.device)
        if heatmap.shape != t.heatmap.shape or offset.shape != t.offset.shape:
            raise ValueError(
                f"DEKR outputs {tuple(heatmap.shape)}, {tuple(offset.shape)} do not match the targets "
                f"{tuple(t.heatmap.shape)}, {tuple(t.offset.shape)}"
            )
        hm = ((heatmap - t.heatmap) ** 2 * t.mask).mean()
        positives = max(int((t.offset_weight > 0).sum()), 1)
        off = (smooth_l1(offset - t.offset, self.cfg.smooth_l1_beta) * t.offset_weight).sum() / positives
        total = self.cfg.heatmap_factor * hm + self.cfg.offset_factor * off
        return total, {"heatmap": float(hm.detach()), "offset": float(off.detach())}
