"""SWAHR / HigherHRNet training targets and losses, after github.com/greatlog/SWAHR-HumanPose
(``lib/core/loss.py``, ``lib/dataset/target_generators``) and HigherHRNet's ``AELoss``.

Targets, from people rows in input pixels, at each output resolution (stride 4 and stride 2):

- heatmaps (K, H, W): per visible keypoint, at ``p = int(keypoint / stride)`` inside the map, a Gaussian
  of sigma ``sigma`` (2) output px on the whole pixels ``[round(p - 3 sigma - 1), round(p + 3 sigma + 2))``,
  peak 1 at ``p``; max over people (official ``HeatmapGenerator``). The mask is 1 everywhere (the official
  one zeroes crowd regions, which our data does not mark);
- joints (max_people, K, 2) at stride 4 only: for each person's visible in-map keypoint k at (x, y), the
  flat index ``k * H * W + y * W + x`` into the tag map and a 1 (official ``JointsGenerator``).

Losses per stage, as SWAHR's ``MultiLossFactory`` (each a per-image mean, then the batch mean):

- scale-adaptive heatmap targets (SAHR): the network also predicts a scale map s (masked to ``gt > 0``) and
  the target becomes ``gt^(1 + s)``, taken to second order in s as the official code does:
  ``gt * (1 + s ln gt + (s ln gt)^2 / 2)``; a regulariser ``mean(s^2 * mask)`` keeps s small;
- weight-adaptive (WAHR): ``(pred - target)^2`` is weighted by ``|1 - pred| gt^gamma + |pred| (1 - gt^gamma)``
  (gamma 0.01), which down-weights the easy background;
- associative embedding on the stride-4 tags (the only stage with tags): pull = the mean over people of
  the variance of a person's tags; push = ``sum_{i != j} exp(-(t_i - t_j)^2) / (n (n - 1)) / 2`` over the
  people's mean tags (``ae_type="exp"``; ``"max"`` uses ``max(0, 1 - |t_i - t_j|)``), factors 1e-3.

``SahrLossConfig(scale_adaptive=False, weight_adaptive=False)`` is HigherHRNet's plain masked MSE.
Outputs are ``SahrModel.forward_train``'s: (B, 3K, H/4, W/4) ``[scale, heatmaps, tags]`` and (B, 2K, H/2,
W/2) ``[scale, heatmaps]`` (without scale maps: ``[heatmaps, tags]`` and ``[heatmaps]``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

#: people rows from ``edgepose.training.datasets.collate``: image index, x1, y1, x2, y2, then K x (x, y, v)
PEOPLE_HEAD = 5


@dataclass(frozen=True)
class SahrLossConfig:
    """Loss settings; defaults are SWAHR's W32/W48 COCO experiments."""

    sigma: float = 2.0
    strides: tuple[int, int] = (4, 2)
    max_people: int = 30
    scale_adaptive: bool = True
    weight_adaptive: bool = True
    gamma: float = 0.01
    heatmap_factors: tuple[float, float] = (1.0, 1.0)
    push_factor: float = 1e-3
    pull_factor: float = 1e-3
    ae_type: str = "exp"

    def __post_init__(self) -> None:
        if self.ae_type not in ("exp", "max"):
            raise ValueError(f"ae_type must be 'exp' or 'max', got {self.ae_type!r}")
        if len(self.strides) != 2 or len(self.heatmap_factors) != 2:
            raise ValueError("SAHR losses have two stages: give two strides and two heatmap factors")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["strides"] = list(self.strides)
        d["heatmap_factors"] = list(self.heatmap_factors)
        return d


@dataclass
class SahrTargets:
    """Batched targets: heatmaps and masks per stage ((B, K, H_s, W_s), (B, H_s, W_s)) and the stride-4
    joints (B, max_people, K, 2) int64: flat tag index, visible."""

    heatmaps: tuple[torch.Tensor, torch.Tensor]
    masks: tuple[torch.Tensor, torch.Tensor]
    joints: torch.Tensor

    def to(self, device: torch.device | str) -> SahrTargets:
        return SahrTargets(
            tuple(t.to(device) for t in self.heatmaps),
            tuple(t.to(device) for t in self.masks),
            self.joints.to(device),
        )


def heatmap_target(keypoints: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """keypoints (N, K, 3) in output px -> (K, H, W) float32 Gaussians (official ``HeatmapGenerator``)."""
    w, h = size
    k = keypoints.shape[1]
    heat = np.zeros((k, h, w), np.float32)
    for person in keypoints:
        for j, (x, y, v) in enumerate(person):
            if not v > 0:
                continue
            x, y = int(x), int(y)
            if x < 0 or y < 0 or x >= w or y >= h:
                continue
            x0, x1 = max(0, round(x - 3 * sigma - 1)), min(w, round(x + 3 * sigma + 2))
            y0, y1 = max(0, round(y - 3 * sigma - 1)), min(h, round(y + 3 * sigma + 2))
            xs, ys = np.arange(x0, x1), np.arange(y0, y1)
            g = np.exp(-((xs[None, :] - x) ** 2 + (ys[:, None] - y) ** 2) / (2 * sigma * sigma))
            np.maximum(heat[j, y0:y1, x0:x1], g, out=heat[j, y0:y1, x0:x1])
    return heat


def joint_indices(keypoints: np.ndarray, size: tuple[int, int], max_people: int) -> np.ndarray:
    """keypoints (N, K, 3) in output px -> (max_people, K, 2) int64: flat tag index and visible flag."""
    w, h = size
    k = keypoints.shape[1]
    out = np.zeros((max_people, k, 2), np.int64)
    for i, person in enumerate(keypoints[:max_people]):
        n = 0
        for j, (x, y, v) in enumerate(person):
            x, y = int(x), int(y)
            if v > 0 and 0 <= x < w and 0 <= y < h:
                out[i, n] = (j * h * w + y * w + x, 1)
                n += 1
    return out


def build_targets(
    people: torch.Tensor | np.ndarray,
    batch_size: int,
    num_keypoints: int,
    input_size: tuple[int, int],
    cfg: SahrLossConfig | None = None,
) -> SahrTargets:
    """Collated people rows (M, 5 + 3K) (image index first, input px) -> batched ``SahrTargets``."""
    cfg = cfg or SahrLossConfig()
    rows = people.detach().cpu().numpy() if isinstance(people, torch.Tensor) else np.asarray(people)
    rows = rows.reshape(-1, PEOPLE_HEAD + 3 * num_keypoints).astype(np.float64)
    w_in, h_in = input_size
    heat: list[list[np.ndarray]] = [[], []]
    joints = []
    for b in range(batch_size):
        kps = rows[rows[:, 0] == b, PEOPLE_HEAD:].reshape(-1, num_keypoints, 3)
        for s, stride in enumerate(cfg.strides):
            scaled = kps.copy()
            scaled[..., :2] /= stride
            size = (w_in // stride, h_in // stride)
            heat[s].append(heatmap_target(scaled, size, cfg.sigma))
            if s == 0:
                joints.append(joint_indices(scaled, size, cfg.max_people))
    maps = tuple(torch.from_numpy(np.stack(h)) for h in heat)
    masks = tuple(torch.ones(m.shape[0], *m.shape[2:]) for m in maps)
    return SahrTargets(maps, masks, torch.from_numpy(np.stack(joints)))


def sahr_target(gt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``gt^(1 + scale)`` to second order in ``scale`` (official SWAHR ``HeatmapLoss``); 0 stays 0."""
    log = torch.log(torch.where(gt > 0, gt, gt + 1))
    return gt + gt * log * scale + 0.5 * gt * log**2 * scale**2


def wahr_weight(pred: torch.Tensor, gt: torch.Tensor, gamma: float = 0.01) -> torch.Tensor:
    """WAHR's weight ``|1 - P| gt^gamma + |P| (1 - gt^gamma)`` (not detached, as the official code)."""
    g = gt**gamma
    return torch.abs(1 - pred) * g + torch.abs(pred) * (1 - g)


def heatmap_loss(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor | None, cfg: SahrLossConfig
) -> torch.Tensor:
    """Per-image heatmap loss (B,): masked, scale-adapted and weight-adapted squared error."""
    target = sahr_target(gt, scale) if scale is not None else gt
    loss = (pred - target) ** 2 * mask[:, None]
    if cfg.weight_adaptive:
        loss = loss * wahr_weight(pred, gt, cfg.gamma)
    return loss.mean(dim=(1, 2, 3))


def ae_loss(tags: torch.Tensor, joints: torch.Tensor, ae_type: str = "exp") -> tuple[torch.Tensor, ...]:
    """Associative embedding, per image: tags (B, K, H, W) one value per joint; joints (B, M, K, 2).
    -> (push (B,), pull (B,))."""
    b = tags.shape[0]
    flat = tags.reshape(b, -1)
    idx, vis = joints[..., 0], joints[..., 1].to(tags.dtype)  # (B, M, K)
    t = flat.gather(1, idx.reshape(b, -1)).reshape(idx.shape)
    count = vis.sum(-1)  # (B, M)
    person = count > 0
    safe = count.clamp(min=1)
    mean = (t * vis).sum(-1) / safe
    var = ((t - mean[..., None]) ** 2 * vis).sum(-1) / safe
    n = person.sum(-1).to(tags.dtype)  # people per image
    pull = (var * person).sum(-1) / n.clamp(min=1)
    diff = mean[:, :, None] - mean[:, None, :]
    pair = person[:, :, None] & person[:, None, :]
    if ae_type == "exp":
        close = torch.exp(-(diff**2))
    else:
        close = torch.clamp(1 - diff.abs(), min=0)
    push = ((close * pair).sum((1, 2)) - n) / (n * (n - 1)).clamp(min=1) * 0.5
    return torch.where(n > 1, push, torch.zeros_like(push)), pull


class SahrLoss:
    """``loss(outputs, targets) -> (total, {"heatmaps_lo", "heatmaps_hi", "scale", "push", "pull"})``."""

    def __init__(self, num_keypoints: int, cfg: SahrLossConfig | None = None) -> None:
        self.num_keypoints = int(num_keypoints)
        self.cfg = cfg or SahrLossConfig()

    def targets(self, people: torch.Tensor, batch_size: int, input_size: tuple[int, int]) -> SahrTargets:
        return build_targets(people, batch_size, self.num_keypoints, input_size, self.cfg)

    def __call__(
        self, outputs: tuple[torch.Tensor, torch.Tensor], targets: SahrTargets
    ) -> tuple[torch.Tensor, dict[str, float]]:
        t = targets.to(outputs[0].device)
        k, cfg = self.num_keypoints, self.cfg
        expect = (3 * k, 2 * k) if cfg.scale_adaptive else (2 * k, k)
        got = tuple(int(o.shape[1]) for o in outputs)
        if got != expect or any(o.shape[2:] != g.shape[2:] for o, g in zip(outputs, t.heatmaps)):
            raise ValueError(
                f"SAHR outputs {[tuple(o.shape) for o in outputs]} do not match the targets "
                f"{[tuple(g.shape) for g in t.heatmaps]} with {expect} channels "
                f"({'with' if cfg.scale_adaptive else 'without'} scale maps)"
            )
        total = outputs[0].new_zeros(())
        parts: dict[str, float] = {"scale": 0.0}
        for s, (out, gt, mask) in enumerate(zip(outputs, t.heatmaps, t.masks)):
            first = k if cfg.scale_adaptive else 0
            scale = None
            if cfg.scale_adaptive:
                scale = out[:, :k] * (gt > 0).to(out.dtype)
                reg = (scale**2 * mask[:, None]).mean(dim=(1, 2, 3)).mean()
                total = total + reg
                parts["scale"] += float(reg.detach())
            hm = heatmap_loss(out[:, first : first + k], gt, mask, scale, cfg).mean() * cfg.heatmap_factors[s]
            total = total + hm
            parts["heatmaps_lo" if s == 0 else "heatmaps_hi"] = float(hm.detach())
            if s == 0:
                push, pull = ae_loss(out[:, first + k :], t.joints, cfg.ae_type)
                push = push.mean() * cfg.push_factor
                pull = pull.mean() * cfg.pull_factor
                total = total + push + pull
                parts["push"], parts["pull"] = float(push.detach()), float(pull.detach())
        return total, parts
