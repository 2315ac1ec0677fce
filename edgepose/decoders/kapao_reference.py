"""KAPAO post-processing in plain vectorised numpy: the oracle for ``kapao.decode`` and its baseline.

Written from the official code (``non_max_suppression_kp``, ``run_nms``, ``post_process_batch``) without
numba and without sharing the numba path's kernels, so the tests compare two independent readings of the
same semantics. Only cells whose objectness could pass are decoded, as any sensible numpy version would.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgepose.decoders.kapao import FLIP_INDEX, FLIPPED, KapaoHead, KapaoParams, LevelOutputs, ordered_levels
from edgepose.poses import Poses
from edgepose.preprocess import LetterboxMeta


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _candidates(
    levels: tuple[np.ndarray, ...], head: KapaoHead, thr_person: float, thr_kp: float, width: float, flip
):
    """Rows passing obj > thr and obj * cls > thr, thr chosen by the best class (``non_max_suppression_kp``).

    Returns (level, anchor, gy, gx) per candidate, class, score and xyxy boxes (input pixels), cell order.
    Levels past the head's own are a pass on the mirrored input: as the official ``_descale_pred``, their
    class scores are swapped by ``flip`` and their box centres mirrored (``width - x``).
    """
    nc = head.nc
    lo = min(thr_person, thr_kp)
    parts = []
    for index, arr in enumerate(levels):
        lvl, mirrored = index % head.nl, index >= head.nl
        _, na, h, w, no = arr.shape
        flat = arr.reshape(-1, no)
        obj = _sigmoid(flat[:, 4])
        rows = np.flatnonzero(obj > lo)
        obj = obj[rows]
        logits = flat[rows, 5 : 5 + nc]
        if mirrored:
            logits = logits[:, np.concatenate([[0], 1 + flip])]
        best = np.argmax(logits, axis=1)
        thr = np.where(best == 0, thr_person, thr_kp)
        conf = obj * _sigmoid(logits[np.arange(len(rows)), best])
        ok = (obj > thr) & (conf > thr)
        rows, best, conf = rows[ok], best[ok], conf[ok]
        a, gy, gx = rows // (h * w), (rows // w) % h, rows % w
        t = _sigmoid(flat[rows, :4])
        s = float(head.strides[lvl])
        cx = (2.0 * t[:, 0] - 0.5 + gx) * s
        if mirrored:
            cx = width - cx
        cy = (2.0 * t[:, 1] - 0.5 + gy) * s
        bw = (2.0 * t[:, 2]) ** 2 * head.anchors[lvl, a, 0]
        bh = (2.0 * t[:, 3]) ** 2 * head.anchors[lvl, a, 1]
        xyxy = np.stack([cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0], axis=1)
        parts.append((np.stack([np.full_like(a, index), a, gy, gx], axis=1), best, conf, xyxy))
    where = np.concatenate([p[0] for p in parts]).astype(np.int64)
    return (
        where,
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        np.concatenate([p[3] for p in parts]),
    )


def nms_reference(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou_thr: float,
    max_wh: float,
    max_nms: int,
    max_det: int,
) -> np.ndarray:
    """Greedy NMS over class-offset boxes, torchvision semantics (IoU > thr suppresses), best first."""
    order = np.argsort(-scores, kind="stable")[:max_nms]
    b = boxes[order] + (classes[order] * max_wh)[:, None]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = np.zeros(len(order), bool)
    keep: list[int] = []
    for r in range(len(order)):
        if suppressed[r]:
            continue
        keep.append(r)
        if len(keep) == max_det:
            break
        rest = b[r + 1 :]
        w = np.clip(np.minimum(b[r, 2], rest[:, 2]) - np.maximum(b[r, 0], rest[:, 0]), 0.0, None)
        h = np.clip(np.minimum(b[r, 3], rest[:, 3]) - np.maximum(b[r, 1], rest[:, 1]), 0.0, None)
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (area[r] + area[r + 1 :] - inter)
        suppressed[r + 1 :] |= iou > iou_thr
    return order[np.array(keep, dtype=np.int64)]


def _scale(xy: np.ndarray, meta: LetterboxMeta, clip: np.ndarray | bool) -> np.ndarray:
    """Input pixels (..., 2) -> original pixels; ``clip`` selects (broadcast) which points are clipped."""
    out = (xy - np.array(meta.pad, np.float64)) / float(meta.gain)
    clipped = np.clip(out, 0.0, np.array(meta.original_size, np.float64))
    return np.where(np.asarray(clip)[..., None], clipped, out)


def decode_reference(
    outputs: LevelOutputs, meta: LetterboxMeta, params: KapaoParams, head: KapaoHead
) -> Poses:
    """Same contract and semantics as ``kapao.decode``; see that module for the rules."""
    k_num = head.num_keypoints
    flip = np.arange(k_num)
    if isinstance(outputs, Mapping) and FLIP_INDEX in outputs:  # merge_flip's: plain, then mirrored
        flip = np.asarray(outputs[FLIP_INDEX])
        plain = {n: v for n, v in outputs.items() if n != FLIP_INDEX and not n.startswith(FLIPPED)}
        mirrored = {n[len(FLIPPED) :]: v for n, v in outputs.items() if n.startswith(FLIPPED)}
        levels = ordered_levels(plain, head) + ordered_levels(mirrored, head)
    else:
        levels = ordered_levels(outputs, head)
    width = float(meta.input_size[0])
    combined = params.iou == params.iou_kp and params.conf_kp >= params.conf
    thr_kp = params.conf if combined else params.conf_kp
    where, cls, score, box = _candidates(levels, head, params.conf, thr_kp, width, flip)

    nms_args = (params.max_wh, params.max_nms, params.max_det)
    if combined:
        keep = nms_reference(box, score, cls, params.iou, *nms_args)
        persons = keep[cls[keep] == 0]
        kpdets = keep[(cls[keep] > 0) & (score[keep] >= params.conf_kp)]
    else:
        idx = np.flatnonzero(cls == 0)
        persons = idx[nms_reference(box[idx], score[idx], cls[idx], params.iou, *nms_args)]
        idx = np.flatnonzero(cls > 0)
        kpdets = idx[nms_reference(box[idx], score[idx], cls[idx], params.iou_kp, *nms_args)]

    n = len(persons)
    if n == 0:
        return Poses.empty(k_num)
    # Regressed keypoints of the kept persons: (4 sigma - 2) * anchor + grid * stride.
    lvl, a, gy, gx = where[persons].T
    first = 5 + head.nc
    raw = np.stack([levels[li][0, ai, yi, xi, first:] for li, ai, yi, xi in zip(lvl, a, gy, gx)])
    offsets = (4.0 * _sigmoid(raw) - 2.0).reshape(n, k_num, 2)
    mirrored = lvl >= head.nl
    lvl = lvl % head.nl
    stride = head._strides_f64[lvl]
    grid = np.stack([gx * stride, gy * stride], axis=1)[:, None, :]
    xy = offsets * head.anchors[lvl, a][:, None, :] + grid
    # a mirrored pass's poses: x mirrored back, and joint k is the mirror image of joint flip[k]
    xy[mirrored] = xy[mirrored][:, flip]
    xy[mirrored, :, 0] = width - xy[mirrored, :, 0]
    clip_mask = np.arange(k_num) < params.clip_count(k_num)
    xy = _scale(xy, meta, np.broadcast_to(clip_mask, (n, k_num)))
    poses = np.concatenate([xy, np.zeros((n, k_num, 1))], axis=2)
    boxes = _scale(box[persons].reshape(n, 2, 2), meta, True).reshape(n, 4)
    scores = score[persons]
    fused = np.zeros((n, k_num), bool)

    mask = scores > params.conf_kp_person
    if params.use_kp_dets and len(kpdets) and mask.any():
        chosen = np.flatnonzero(mask)
        sub = poses[chosen]
        centres = _scale(box[kpdets].reshape(-1, 2, 2), meta, True).sum(axis=1) / 2.0
        for (cx, cy), conf, c in zip(centres, score[kpdets], cls[kpdets]):
            k = int(c) - 1
            dist = np.linalg.norm(sub[:, k, :2] - np.array([cx, cy]), axis=-1)
            m = int(np.argmin(dist))
            if conf > sub[m, k, 2] and dist[m] < params.overwrite_tol:
                sub[m, k] = (cx, cy, conf)
                fused[chosen[m], k] = True
        poses[chosen] = sub
    return Poses(poses, scores, boxes, fused)
