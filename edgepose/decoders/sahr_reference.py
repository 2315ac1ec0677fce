"""The SAHR/HigherHRNet decode in plain, vectorised numpy: the oracle for ``edgepose.decoders.sahr`` and its
baseline.

Written the way the official code is (``F.interpolate`` + average, ``MaxPool2d`` + ``eq`` NMS, ``topk``,
``match_by_tag``, ``adjust``, a whole-map ``refine`` per person), whole arrays at a time. The assignment is
the same shortest-augmenting-path algorithm as the numba kernel, its inner scan over columns vectorised,
so both break ties identically (the tests also check it against scipy). It shares nothing with the numba
kernels but the input checks and the final mapping to ``Poses``.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edgepose.decoders.sahr import (
    Outputs,
    SahrHead,
    SahrParams,
    keep_confident,
    parse_scale,
    read_outputs,
    to_poses,
)
from edgepose.poses import Poses
from edgepose.preprocess import LetterboxMeta

F32 = np.float32


def _taps(n: int) -> tuple[np.ndarray, ...]:
    o = np.arange(2 * n, dtype=F32)
    src = np.maximum(F32(0.5) * (o + F32(0.5)) - F32(0.5), F32(0.0))
    i0 = src.astype(np.int64)
    w1 = src - i0.astype(F32)
    return i0, np.minimum(i0 + 1, n - 1), F32(1.0) - w1, w1


def upsample2(src: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (C, 2h, 2w), bilinear with ``align_corners=False``, in float32."""
    _, h, w = src.shape
    y0, y1, wy0, wy1 = _taps(h)
    x0, x1, wx0, wx1 = _taps(w)
    a, b = src[:, y0], src[:, y1]
    top = wx0 * a[:, :, x0] + wx1 * a[:, :, x1]
    bottom = wx0 * b[:, :, x0] + wx1 * b[:, :, x1]
    return wy0[:, None] * top + wy1[:, None] * bottom


def aggregate(lo: np.ndarray, tag: np.ndarray, hi: np.ndarray, project2image: bool) -> tuple[np.ndarray, ...]:
    """-> (heat (K, H, W), tag) at the parse resolution; ``tag`` (K, h, w) or (D, K, h, w) keeps its shape."""
    heat = (upsample2(lo) + hi) / F32(2.0)
    up = upsample2 if tag.ndim == 3 else (lambda t: np.stack([upsample2(c) for c in t]))
    tag = up(tag)
    return (upsample2(heat), up(tag)) if project2image else (heat, tag)


def tag_distance(tags: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Euclidean distance over the last axis (the tag's D values), as the official ``np.linalg.norm``."""
    return np.sqrt(((tags - means) ** 2).sum(-1))


def candidates(heat: np.ndarray, thr: float, kernel: int, topk: int) -> list[np.ndarray]:
    """Per joint, flat indices of the max-pool NMS peaks: top-k by value (then index), above ``thr``."""
    r = kernel // 2
    padded = np.pad(heat, ((0, 0), (r, r), (r, r)), constant_values=-np.inf)
    pooled = sliding_window_view(padded, (kernel, kernel), axis=(1, 2)).max(axis=(-2, -1))
    masked = np.where(pooled == heat, heat, 0.0).reshape(len(heat), -1)
    out = []
    for row in masked:
        order = np.lexsort((np.arange(row.size), -row))[:topk]
        out.append(order[row[order] > thr])
    return out


def assign(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost assignment (shortest augmenting path, scipy's tie-breaking): the column of each row."""
    nr, nc = cost.shape
    if nr == 0 or nc == 0:
        return np.full(nr, -1, np.int64)
    if nc < nr:
        row4col = assign(cost.T)
        col4row = np.full(nr, -1, np.int64)
        col4row[row4col] = np.arange(nc)
        return col4row
    u, v = np.zeros(nr), np.zeros(nc)
    path = np.full(nc, -1, np.int64)
    col4row = np.full(nr, -1, np.int64)
    row4col = np.full(nc, -1, np.int64)
    for cur in range(nr):
        spc = np.full(nc, np.inf)
        sr, sc = np.zeros(nr, bool), np.zeros(nc, bool)
        remaining = np.arange(nc)[::-1].copy()
        min_val, i, sink = 0.0, cur, -1
        while sink == -1:
            sr[i] = True
            js = remaining
            r = min_val + cost[i, js] - u[i] - v[js]
            better = r < spc[js]
            path[js[better]] = i
            spc[js[better]] = r[better]
            vals = spc[js]
            lowest = vals.min()
            tied = vals == lowest
            free = np.flatnonzero(tied & (row4col[js] == -1))
            index = int(free[-1]) if free.size else int(np.argmax(tied))
            min_val = lowest
            j = js[index]
            if row4col[j] == -1:
                sink = j
            else:
                i = row4col[j]
            sc[j] = True
            remaining[index] = remaining[-1]
            remaining = remaining[:-1]
        u[cur] += min_val
        others = sr.copy()
        others[cur] = False
        u[others] += min_val - spc[col4row[others]]
        v[sc] -= min_val - spc[sc]
        j = sink
        while True:
            i = path[j]
            row4col[j] = i
            col4row[i], j = j, col4row[i]
            if i == cur:
                break
    return col4row


def group(heat: np.ndarray, tag: np.ndarray, cands: list[np.ndarray], params: SahrParams, head: SahrHead):
    """Official ``match_by_tag`` on tags (D, K, H, W). -> joints (P, K, 3 + D): x, y, heat, tag values."""
    k, _, w = heat.shape
    dims = tag.shape[0]
    people: list[np.ndarray] = []
    tag_sum: list[np.ndarray] = []
    tag_n: list[int] = []
    for j in head.joint_order:
        flat = cands[j]
        if flat.size == 0:
            continue
        ys, xs = np.divmod(flat, w)
        vals = heat[j, ys, xs].astype(np.float64)
        tags = tag[:, j, ys, xs].T.astype(np.float64)  # (n, D)
        if not people:
            col4row = np.full(len(flat), -1)
            dist = np.zeros((len(flat), 1))
        else:
            g = min(len(people), params.max_people)
            if params.ignore_too_much and g == params.max_people:
                continue
            means = np.array(tag_sum[:g]) / np.array(tag_n[:g])[:, None]
            dist = tag_distance(tags[:, None, :], means[None, :, :])
            cost = np.rint(dist) * 100.0 - vals[:, None] if params.use_detection_val else dist
            col4row = assign(cost)
        for r in range(len(flat)):
            c = int(col4row[r])
            if c < 0 or not dist[r, c] < params.tag_threshold:
                c = len(people)
                people.append(np.zeros((k, 3 + dims)))
                tag_sum.append(np.zeros(dims))
                tag_n.append(0)
            people[c][j] = (xs[r], ys[r], vals[r], *tags[r])
            tag_sum[c] += tags[r]
            tag_n[c] += 1
    return np.array(people).reshape(-1, k, 3 + dims)


def quarter(heat: np.ndarray, js: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, ...]:
    """Official adjustment of integer positions (x, y) on joint maps js: +-0.25 toward the higher neighbour,
    then +0.5."""
    _, h, w = heat.shape
    right = heat[js, ys, np.minimum(xs + 1, w - 1)] > heat[js, ys, np.maximum(xs - 1, 0)]
    down = heat[js, np.minimum(ys + 1, h - 1), xs] > heat[js, np.maximum(ys - 1, 0), xs]
    return xs + 0.5 + np.where(right, 0.25, -0.25), ys + 0.5 + np.where(down, 0.25, -0.25)


def finish(joints: np.ndarray, heat: np.ndarray, tag: np.ndarray, params: SahrParams):
    """Adjust, score, refine (tags (D, K, H, W)). -> keypoints (P, K, 3) in map pixels, scores (P,)."""
    p, k = joints.shape[:2]
    kps = joints[..., :3].copy()
    found = kps[..., 2] > 0
    if params.adjust and found.any():
        pi, ji = np.nonzero(found)
        x, y = quarter(heat, ji, kps[pi, ji, 0].astype(np.int64), kps[pi, ji, 1].astype(np.int64))
        kps[pi, ji, 0], kps[pi, ji, 1] = x, y
    scores = np.add.accumulate(kps[..., 2], axis=1)[:, -1] / k  # sequential sums, as the kernel
    if not params.refine:
        return kps, scores
    _, h, w = heat.shape
    for i in range(p):
        have = np.flatnonzero(kps[i, :, 2] > 0)
        ix, iy = kps[i, have, 0].astype(np.int64), kps[i, have, 1].astype(np.int64)
        prev = np.add.accumulate(tag[:, have, iy, ix].astype(np.float64), axis=1)[:, -1] / have.size
        miss = np.flatnonzero(kps[i, :, 2] == 0)
        if miss.size == 0:
            continue
        score = heat[miss] - np.rint(tag_distance(np.moveaxis(tag[:, miss], 0, -1), prev))
        ys, xs = np.divmod(score.reshape(len(miss), -1).argmax(1), w)
        vals = heat[miss, ys, xs].astype(np.float64)
        x, y = quarter(heat, miss, xs, ys)
        ok = vals > 0
        kps[i, miss[ok]] = np.stack([x, y, vals], 1)[ok]
    return kps, scores


def decode_reference(outputs: Outputs, meta: LetterboxMeta, params: SahrParams, head: SahrHead) -> Poses:
    lo, tag_lo, hi = read_outputs(outputs, head)
    heat, tag = aggregate(lo, tag_lo, hi, params.project2image)
    cands = candidates(heat, params.threshold(head), params.nms_kernel, params.max_people)
    joints = group(heat, tag, cands, params, head)
    kps, scores = keep_confident(*finish(joints, heat, tag, params), params)
    return to_poses(kps, scores, parse_scale(params, head), meta, params, head.num_keypoints)
