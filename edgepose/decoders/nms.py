"""Class-aware greedy box NMS in numba, with torchvision's semantics.

``batched_nms`` reproduces what YOLOv5-style code gets from ``torchvision.ops.nms`` on boxes offset by
``class * max_wh``: candidates in descending score order (ties: lower index first, which a stable sort
gives and torchvision does not promise), a box is dropped when its IoU with an already kept box is
strictly above the threshold, and only the first ``max_det`` kept boxes are returned. When the offset
keeps every class apart (the usual case) the work is done per class, which turns the O(n * kept) scan
over all candidates into a sum of much smaller per-class scans with exactly the same result; otherwise it
falls back to one scan over the offset boxes.

numba's on-disk cache does not notice when a function in another module changes: after editing this file,
delete the ``__pycache__/*.nbi`` files of the modules whose kernels call it (e.g. ``kapao``).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def _suppress_run(x1, y1, x2, y2, area, lo, hi, suppressed, iou_thr, max_keep):
    """Greedy NMS over rows ``lo:hi`` (already in score order); marks ``suppressed``.

    The inner loop has no branches (suppression is OR-ed in, already suppressed rows included) so it
    vectorises; error_model="numpy" makes 0 / 0 (two empty boxes) a NaN, which never exceeds the threshold.
    """
    kept = 0
    for a in range(lo, hi):
        if suppressed[a]:
            continue
        kept += 1
        if kept >= max_keep:
            # Nothing after the last box that can still be returned needs to be examined.
            suppressed[a + 1 : hi] = True
            return
        ax1, ay1, ax2, ay2, aa = x1[a], y1[a], x2[a], y2[a], area[a]
        for b in range(a + 1, hi):
            w = max(min(ax2, x2[b]) - max(ax1, x1[b]), 0.0)
            h = max(min(ay2, y2[b]) - max(ay1, y1[b]), 0.0)
            inter = w * h
            suppressed[b] |= inter / (aa + area[b] - inter) > iou_thr


@njit(cache=True, nogil=True)
def batched_nms(boxes, scores, classes, iou_thr, max_wh, max_nms, max_det):
    """Indices of the boxes kept by class-aware NMS, best first.

    boxes (n, 4) float64 xyxy, scores (n,) float64, classes (n,) int64 >= 0. At most ``max_nms`` top-scoring
    boxes enter NMS and at most ``max_det`` come out (YOLOv5's limits).
    """
    n = scores.shape[0]
    if n == 0 or max_det <= 0:
        return np.empty(0, np.int64)
    order = np.argsort(-scores, kind="mergesort")
    m = min(n, max_nms)
    lo_x = np.inf
    hi_x = -np.inf
    n_cls = 0
    for r in range(m):
        i = order[r]
        n_cls = max(n_cls, classes[i] + 1)
        lo_x = min(lo_x, boxes[i, 0])
        hi_x = max(hi_x, boxes[i, 2])
    # Rows are laid out class after class, each in score order (a stable counting sort of the sorted
    # candidates), so every class is one contiguous run. Boxes of different classes can only meet after
    # the class offset if some box spans max_wh pixels (the one-pixel margin keeps rounding out of it);
    # otherwise, or with NaN coordinates, all rows form a single run, exactly as the offset NMS sees them.
    per_class = hi_x - lo_x < max_wh - 1.0
    start = np.zeros(n_cls + 1, np.int64)
    if per_class:
        for r in range(m):
            start[classes[order[r]] + 1] += 1
        for c in range(n_cls):
            start[c + 1] += start[c]
    else:
        start[1:] = m
    fill = start[:n_cls].copy()
    row_of = np.empty(m, np.int64)
    x1 = np.empty(m, np.float64)
    y1 = np.empty(m, np.float64)
    x2 = np.empty(m, np.float64)
    y2 = np.empty(m, np.float64)
    area = np.empty(m, np.float64)
    for r in range(m):
        i = order[r]
        c = classes[i]
        row = fill[c] if per_class else r
        if per_class:
            fill[c] += 1
        row_of[r] = row
        off = c * max_wh
        x1[row] = boxes[i, 0] + off
        y1[row] = boxes[i, 1] + off
        x2[row] = boxes[i, 2] + off
        y2[row] = boxes[i, 3] + off
        area[row] = (x2[row] - x1[row]) * (y2[row] - y1[row])
    suppressed = np.zeros(m, np.bool_)
    for c in range(n_cls):
        if start[c + 1] > start[c]:
            _suppress_run(x1, y1, x2, y2, area, start[c], start[c + 1], suppressed, iou_thr, max_det)
    keep = np.empty(min(m, max_det), np.int64)
    k = 0
    for r in range(m):
        if not suppressed[row_of[r]]:
            keep[k] = order[r]
            k += 1
            if k == keep.shape[0]:
                break
    return keep[:k]
