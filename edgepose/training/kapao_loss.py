"""KAPAO's multi-task loss, written from the paper and the official hyper-parameters.

Per level: CIoU box loss and class BCE on the assigned (object, anchor, cell) matches; objectness BCE
over every cell whose target is the detached, clamped IoU of the match (YOLOv5 with ``gr = 1``),
weighted per level (P3..P6: 4.0, 1.0, 0.25, 0.06); and, for pose objects, the mean Euclidean distance
between predicted and true offsets of the *visible* keypoints, with predictions decoded as
``(4 sigmoid - 2) * anchor`` in grid units (the official form). Gains follow ``hyp.kp-p6.yaml`` and
are rescaled like the official ``train.py``: by ``3 / nl`` for every term, by ``nc / 80`` for the
class term and by the input area over 640^2 for objectness. The total is multiplied by the batch
size, so gradients add over images as in YOLOv5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from edgepose.training.kapao_targets import LevelTargets, build_targets

DEFAULT_BALANCE = (4.0, 1.0, 0.25, 0.06, 0.02)


@dataclass(frozen=True)
class KapaoLossConfig:
    """Loss gains before rescaling (official ``hyp.kp-p6.yaml``) and target settings."""

    box: float = 0.05
    obj: float = 0.7
    cls: float = 0.3
    kp: float = 0.025
    anchor_t: float = 4.0
    kp_bbox: float = 0.05
    fl_gamma: float = 0.0
    label_smoothing: float = 0.0
    gr: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def bbox_ciou(pred: torch.Tensor, true: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matching rows of two (n, 4) cx, cy, w, h tensors (Zheng et al., 2020)."""
    p1, p2 = pred[:, :2] - pred[:, 2:4] / 2, pred[:, :2] + pred[:, 2:4] / 2
    t1, t2 = true[:, :2] - true[:, 2:4] / 2, true[:, :2] + true[:, 2:4] / 2
    inter = (torch.minimum(p2, t2) - torch.maximum(p1, t1)).clamp(min=0).prod(dim=1)
    wp, hp = pred[:, 2], pred[:, 3] + eps
    wt, ht = true[:, 2], true[:, 3] + eps
    union = wp * hp + wt * ht - inter + eps
    iou = inter / union
    enclose = torch.maximum(p2, t2) - torch.minimum(p1, t1)
    diag2 = (enclose**2).sum(dim=1) + eps
    centre2 = ((pred[:, :2] - true[:, :2]) ** 2).sum(dim=1)
    v = (4 / math.pi**2) * (torch.atan(wt / ht) - torch.atan(wp / hp)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (centre2 / diag2 + v * alpha)


def _bce(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean BCE with logits; with ``gamma > 0`` the focal form (alpha 0.25) of Lin et al."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma > 0:
        p = torch.sigmoid(logits)
        p_t = target * p + (1 - target) * (1 - p)
        alpha = target * 0.25 + (1 - target) * 0.75
        loss = loss * alpha * (1.0 - p_t) ** gamma
    return loss.mean()


class KapaoLoss:
    """Callable ``loss(raw, objects) -> (total, items)``; ``items`` = box, obj, cls, kp (detached).

    raw:     per-level logits ``(B, na, H, W, 5 + nc + 2K)`` as ``KapaoModel.forward`` returns them.
    objects: rows ``(M, 6 + 3K)`` from ``build_objects`` (image, class, cx, cy, w, h, keypoints).
    """

    def __init__(
        self,
        head_spec: dict,
        input_size: tuple[int, int],
        config: KapaoLossConfig | None = None,
    ) -> None:
        self.config = config or KapaoLossConfig()
        self.strides = [float(s) for s in head_spec["strides"]]
        anchors = torch.as_tensor(head_spec["anchors"], dtype=torch.float32)
        self.anchors = anchors.reshape(len(self.strides), -1, 2)
        self.num_keypoints = int(head_spec["num_keypoints"])
        self.nc = 1 + self.num_keypoints
        nl = len(self.strides)
        self.balance = list(DEFAULT_BALANCE[:nl]) if nl != 3 else [4.0, 1.0, 0.4]
        c = self.config
        w, h = input_size
        self.gain_box = c.box * 3.0 / nl
        self.gain_cls = c.cls * self.nc / 80.0 * 3.0 / nl
        self.gain_obj = c.obj * (w * h) / 640.0**2 * 3.0 / nl
        self.gain_kp = c.kp * 3.0 / nl
        self.cls_pos = 1.0 - 0.5 * c.label_smoothing
        self.cls_neg = 0.5 * c.label_smoothing

    def targets(self, raw: Sequence[torch.Tensor], objects: torch.Tensor) -> list[LevelTargets]:
        grids = [(int(p.shape[2]), int(p.shape[3])) for p in raw]
        return build_targets(objects, grids, self.strides, self.anchors, self.config.anchor_t)

    def __call__(
        self, raw: Sequence[torch.Tensor], objects: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = raw[0].device
        objects = objects.to(device=device, dtype=torch.float32)
        zero = torch.zeros((), device=device)
        lbox, lobj, lcls, lkp = zero, zero, zero, zero
        gamma = self.config.fl_gamma
        k = self.num_keypoints
        for lvl, (p, t) in enumerate(zip(raw, self.targets(raw, objects), strict=True)):
            tobj = torch.zeros_like(p[..., 4])
            if len(t):
                ps = p[t.image, t.anchor, t.gy, t.gx]
                pxy = torch.sigmoid(ps[:, 0:2]) * 2.0 - 0.5
                pwh = (torch.sigmoid(ps[:, 2:4]) * 2.0) ** 2 * t.anchor_wh
                iou = bbox_ciou(torch.cat([pxy, pwh], dim=1), t.box)
                lbox = lbox + (1.0 - iou).mean()

                vis = t.kps[..., 2] > 0
                if bool(vis.any()):
                    pkp = ps[:, 5 + self.nc : 5 + self.nc + 2 * k].reshape(-1, k, 2)
                    pkp = (torch.sigmoid(pkp) * 4.0 - 2.0) * t.anchor_wh[:, None, :]
                    lkp = lkp + torch.linalg.norm(pkp[vis] - t.kps[..., :2][vis], dim=-1).mean()

                score = iou.detach().clamp(min=0).to(tobj.dtype)
                tobj[t.image, t.anchor, t.gy, t.gx] = (1.0 - self.config.gr) + self.config.gr * score

                tcls = torch.full_like(ps[:, 5 : 5 + self.nc], self.cls_neg)
                tcls[torch.arange(len(t), device=device), t.cls] = self.cls_pos
                lcls = lcls + _bce(ps[:, 5 : 5 + self.nc], tcls, gamma)
            lobj = lobj + _bce(p[..., 4], tobj, gamma) * self.balance[lvl]

        items = torch.stack(
            [lbox * self.gain_box, lobj * self.gain_obj, lcls * self.gain_cls, lkp * self.gain_kp]
        )
        batch = raw[0].shape[0]
        return items.sum() * batch, items.detach()
