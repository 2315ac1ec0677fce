"""SAHR grouping by associative-embedding tags, the quarter-pixel adjustment, person scores and
refinement (steps 3-6 of ``edgepose.decoders.sahr``), in numba over the tiled parse map.

Tags arrive as (D, K, h, w): one value per joint and pixel (D = 1), or the flip test's two (the plain and
the mirrored pass's, D = 2), whose distance is Euclidean as in the official ``match_by_tag`` and ``refine``.
With D = 1 every distance is the plain ``|a - b|``."""

from __future__ import annotations

import numpy as np
from numba import njit

from edgepose.decoders.assignment import assign
from edgepose.decoders.sahr_resize import tag_at
from edgepose.decoders.sahr_tiles import EXACT, _ensure, _tags_into


@njit(cache=True, nogil=True)
def _row_dist(a, i, b, c):
    """The distance of tag vectors ``a[i]`` and ``b[c]`` (rows of D values): ``|a - b|`` for one value, else
    Euclidean (official)."""
    if a.shape[1] == 1:
        return abs(a[i, 0] - b[c, 0])
    s = 0.0
    for d in range(a.shape[1]):
        s += (a[i, d] - b[c, d]) ** 2
    return np.sqrt(s)


@njit(cache=True, nogil=True)
def _map_dist(tg, y, x, prev):
    """The distance of the tags ``tg`` (D, H, W) at one pixel from the vector ``prev`` (D,)."""
    if tg.shape[0] == 1:
        return abs(tg[0, y, x] - prev[0])
    s = 0.0
    for d in range(tg.shape[0]):
        s += (tg[d, y, x] - prev[d]) ** 2
    return np.sqrt(s)


@njit(cache=True, nogil=True)
def _box_dist(ranges, ty, tx, prev):
    """The nearest and farthest distance from ``prev`` (D,) to tile (ty, tx)'s box of tags, ``ranges``
    (th, tw, D, 2) holding each component's (low, high)."""
    if ranges.shape[2] == 1:
        lo, hi = ranges[ty, tx, 0, 0] - prev[0], ranges[ty, tx, 0, 1] - prev[0]
        return max(lo, -hi, 0.0), max(-lo, hi)
    near = far = 0.0
    for d in range(ranges.shape[2]):
        lo, hi = ranges[ty, tx, d, 0] - prev[d], ranges[ty, tx, d, 1] - prev[d]
        near += max(lo, -hi, 0.0) ** 2
        far += max(-lo, hi) ** 2
    return np.sqrt(near), np.sqrt(far)


@njit(cache=True, nogil=True)
def _group(heat, tag_lo, full, count, top, order, max_people, tag_thr, use_val, ignore_too_much, cand_tag):
    """Official ``match_by_tag``. -> joints (P, K, 3 + D): x, y (map pixels), heat, the D tag values; P
    people. Every candidate's tags go to ``cand_tag`` (K, topk, D) on the way (refinement reads them)."""
    k, _, w = heat.shape
    dims = tag_lo.shape[0]
    cap = k * top.shape[1]
    joints = np.zeros((cap, k, 3 + dims))
    tag_sum = np.zeros((cap, dims))
    tag_n = np.zeros(cap)
    p = 0
    for jj in range(k):
        j = order[jj]
        n = count[j]
        if n == 0:
            continue
        ys = top[j, :n] // w
        xs = top[j, :n] % w
        vals = np.empty(n)
        tags = np.empty((n, dims))
        for r in range(n):
            vals[r] = heat[j, ys[r], xs[r]]
            for d in range(dims):
                tags[r, d] = cand_tag[j, r, d] = tag_at(tag_lo[d], j, ys[r], xs[r], full)
        if p == 0:
            col4row = np.full(n, -1, np.int64)
            dist = np.zeros((n, 1))
        else:
            g = min(p, max_people)
            if ignore_too_much and g == max_people:
                continue
            means = np.empty((g, dims))
            for c in range(g):
                for d in range(dims):
                    means[c, d] = tag_sum[c, d] / tag_n[c]
            dist = np.empty((n, g))
            cost = np.empty((n, g))
            for r in range(n):
                for c in range(g):
                    d = _row_dist(tags, r, means, c)
                    dist[r, c] = d
                    cost[r, c] = np.rint(d) * 100.0 - vals[r] if use_val else d
            col4row = assign(cost)
        for r in range(n):
            c = col4row[r]
            if c < 0 or not dist[r, c] < tag_thr:
                c = p
                p += 1
            joints[c, j, 0] = xs[r]
            joints[c, j, 1] = ys[r]
            joints[c, j, 2] = vals[r]
            for d in range(dims):
                joints[c, j, 3 + d] = tags[r, d]
                tag_sum[c, d] += tags[r, d]
            tag_n[c] += 1.0
    return joints[:p]


@njit(cache=True, nogil=True)
def _quarter(m, x, y):
    """The official sub-pixel step: a quarter pixel toward the higher neighbour on x and on y, + 0.5."""
    h, w = m.shape
    dx = 0.25 if m[y, min(x + 1, w - 1)] > m[y, max(x - 1, 0)] else -0.25
    dy = 0.25 if m[min(y + 1, h - 1), x] > m[max(y - 1, 0), x] else -0.25
    return x + 0.5 + dx, y + 0.5 + dy


#: refinement visits a joint's tiles by bound, in this many buckets (a counting sort), highest first
BUCKETS = 64


@njit(cache=True, nogil=True)
def _tile_order(ub, lo_cut, hi_cut, order, starts, tops, bidx):
    """One joint's tiles with a bound in [lo_cut, hi_cut) (flat indices into ``ub`` (th, tw); hi_cut = inf:
    no upper limit), grouped by bound into BUCKETS equal value ranges, highest first: bucket b holds
    ``order[starts[b]:starts[b + 1]]`` and its largest bound is ``tops[b]``. A counting sort over the tiles
    in range, listed first in ``bidx``. -> the largest bound below ``lo_cut``."""
    u = ub.ravel()
    hi_cut = np.nan if hi_cut == np.inf else hi_cut  # not v >= nan: every v passes
    lo, hi, below, n = np.inf, -np.inf, -np.inf, 0
    for i in range(u.shape[0]):
        v = u[i]
        if v >= lo_cut and not v >= hi_cut:
            lo = v if v < lo else lo
            hi = v if v > hi else hi
            bidx[n] = i
            n += 1
        elif v < lo_cut:
            below = v if v > below else below
    scale = (BUCKETS - 1) / (hi - lo) if hi > lo else 0.0
    starts[:] = 0
    tops[:] = -np.inf
    for k in range(n):
        v = u[bidx[k]]
        f = (BUCKETS - 1) - (v - lo) * scale
        b = min(int(f), BUCKETS - 1) if f > 0 else 0
        starts[b + 1] += 1
        tops[b] = max(tops[b], v)
    for b in range(BUCKETS):
        starts[b + 1] += starts[b]
    for k in range(n):
        v = u[bidx[k]]
        f = (BUCKETS - 1) - (v - lo) * scale
        b = min(int(f), BUCKETS - 1) if f > 0 else 0
        order[starts[b]] = bidx[k]
        starts[b] += 1
    for b in range(BUCKETS, 0, -1):
        starts[b] = starts[b - 1]
    starts[0] = 0
    return below


@njit(cache=True, nogil=True)
def _tag_ranges(tag_lo, j, ty, tx, ranges):
    """The range of each component of joint j's aggregated tags in tile (ty, tx), into ``ranges[ty, tx]``
    (D, 2): the tile blends stride-4 tags [2t - 1, 2t + 2] on each axis (at either parse resolution), and
    blends stay in their sources' range (widened by a few float32 roundings)."""
    h, w = tag_lo.shape[2], tag_lo.shape[3]
    for d in range(tag_lo.shape[0]):
        a, b = np.inf, -np.inf
        for y in range(max(2 * ty - 1, 0), min(2 * ty + 3, h)):
            for x in range(max(2 * tx - 1, 0), min(2 * tx + 3, w)):
                v = tag_lo[d, j, y, x]
                a = min(a, v)
                b = max(b, v)
        ranges[ty, tx, d, 0] = a - 1e-6 * (abs(a) + 1.0)
        ranges[ty, tx, d, 1] = b + 1e-6 * (abs(b) + 1.0)


@njit(cache=True, nogil=True)
def _tile_best(m, tg, prev, y0, y1, x0, x1, floor):
    """The best ``heat - rint(|tag - prev|)`` in one rectangle that reaches ``floor``, and its lowest flat
    index (-1 when none does); ``tg`` (D, H, W), ``prev`` (D,). A pixel whose heat alone cannot reach the
    best so far is skipped."""
    w = m.shape[1]
    top = floor
    idx = -1
    for y in range(y0, y1):
        for x in range(x0, x1):
            v = m[y, x]
            if v < top or (v == top and idx >= 0):
                continue
            s = v - np.rint(_map_dist(tg, y, x, prev))
            if s > top or (s == top and idx < 0):
                top = s
                idx = y * w + x
    return top, idx


@njit(cache=True, nogil=True)
def _first_max(m, y0, y1, x0, x1):
    """The maximum of a rectangle and the flat index of its first pixel."""
    w = m.shape[1]
    top, idx = -np.inf, -1
    for y in range(y0, y1):
        for x in range(x0, x1):
            if m[y, x] > top or idx < 0:
                top, idx = m[y, x], y * w + x
    return top, idx


@njit(cache=True, nogil=True)
def _best_pixel(lz, tile, j, prev, floor, tag_lo, full, tg, search, stamp, cut):
    """argmax of ``heat - rint(|tag - prev|)`` over joint j's map (lowest flat index on ties), exact, given
    ``floor``, the score of some pixel (a lower bound of the answer).

    Tiles are visited highest bound first (``_tile_order``), until none can reach ``floor``, which rises
    with every better pixel found: first those with a bound >= ``cut``, then, if the largest bound below it
    can still reach ``floor``, the others (ordered by the first search that needs them). A tile whose bound
    minus the smallest penalty its tag range allows (the penalty is never negative, and rint is monotone)
    is below ``floor`` is skipped. A tile whose tags all lie within 0.5 of ``prev`` has no penalty anywhere:
    its best pixel is its heat maximum, found without tags. A tile that may have no penalty is scored at
    once; one with a penalty is deferred until the visit ends and ``floor`` is high. ``search`` holds the
    joint's two orders (``tail[0]``: the largest bound below the cut; ``tail[1]``: whether the second order
    is there), its tag ranges (valid where ``rstamp`` == stamp) and scratch; the tag ranges and the tag
    tiles in ``tg`` (valid where ``tstamp`` == stamp) are shared by every person's search for this joint."""
    lo, hi, heat, ub, state, rows, hw = lz
    first, second, tail, bidx, ranges, rstamp, tstamp, defer, s2 = search
    dims = tag_lo.shape[0]
    m, u = heat[j], ub[j]
    h, w = m.shape
    tw = u.shape[1]
    best, best_idx, nd = -np.inf, -1, 0
    for phase in range(2):
        if phase == 1:
            if tail[0] < floor:
                break
            if tail[1] == 0:
                _tile_order(u, -np.inf, cut, second[0], second[1], second[2], bidx)
                tail[1] = 1
        order, starts, tops = first if phase == 0 else second
        for b in range(BUCKETS):
            if starts[b + 1] == starts[b]:
                continue
            if tops[b] < floor:
                break
            for t in order[starts[b] : starts[b + 1]]:
                ty, tx = t // tw, t % tw
                if u[ty, tx] < floor:
                    continue
                if rstamp[ty, tx] != stamp:
                    _tag_ranges(tag_lo, j, ty, tx, ranges)
                    rstamp[ty, tx] = stamp
                near, far = _box_dist(ranges, ty, tx, prev)
                penalty = np.rint(near)
                if u[ty, tx] - penalty < floor:
                    continue
                if penalty > 0:
                    defer[nd] = t
                    nd += 1
                    continue
                if state[j, ty, tx] != EXACT:
                    _ensure(lo, hi, heat, state, rows, hw, tile, j, ty, tx)
                y0, x0 = ty * tile, tx * tile
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                if far < 0.5:  # no pixel of the tile pays a penalty
                    top, i = _first_max(m, y0, y1, x0, x1)
                else:
                    if tstamp[ty, tx] != stamp:
                        for d in range(dims):
                            _tags_into(tag_lo[d], j, full, tile, ty, tx, tg[d], rows, s2)
                        tstamp[ty, tx] = stamp
                    top, i = _tile_best(m, tg, prev, y0, y1, x0, x1, floor)
                if i >= 0 and top >= floor and (top > best or (top == best and i < best_idx)):
                    best, best_idx = top, i
                    floor = max(floor, best)
    for n in range(nd):
        ty, tx = defer[n] // tw, defer[n] % tw
        penalty = np.rint(_box_dist(ranges, ty, tx, prev)[0])
        if u[ty, tx] - penalty < floor:
            continue
        if state[j, ty, tx] != EXACT:
            _ensure(lo, hi, heat, state, rows, hw, tile, j, ty, tx)
        if tstamp[ty, tx] != stamp:
            for d in range(dims):
                _tags_into(tag_lo[d], j, full, tile, ty, tx, tg[d], rows, s2)
            tstamp[ty, tx] = stamp
        y0, x0 = ty * tile, tx * tile
        top, i = _tile_best(m, tg, prev, y0, min(y0 + tile, h), x0, min(x0 + tile, w), floor)
        if i >= 0 and (top > best or (top == best and i < best_idx)):
            best, best_idx = top, i
            floor = max(floor, best)
    return max(best_idx, 0)


@njit(cache=True, nogil=True)
def _neighbours_in(lz, tile, j, y, x):
    """The tiles the quarter-pixel step at (y, x) reads into the buffer."""
    lo, hi, heat, ub, state, rows, hw = lz
    h, w = heat.shape[1], heat.shape[2]
    for ty in range(max(y - 1, 0) // tile, min(y + 1, h - 1) // tile + 1):
        for tx in range(max(x - 1, 0) // tile, min(x + 1, w - 1) // tile + 1):
            if state[j, ty, tx] != EXACT:
                _ensure(lo, hi, heat, state, rows, hw, tile, j, ty, tx)


@njit(cache=True, nogil=True)
def _adjust_score(joints, lz, tile, adjust):
    """Quarter-pixel adjustment of the grouped joints and the person scores (before refinement).
    -> (keypoints (P, K, 3), scores (P,))."""
    heat = lz[2]
    p, k = joints.shape[0], joints.shape[1]
    kps = np.zeros((p, k, 3))
    scores = np.zeros(p)
    for i in range(p):
        total = 0.0
        for j in range(k):
            x, y, v = joints[i, j, 0], joints[i, j, 1], joints[i, j, 2]
            if v > 0 and adjust:
                _neighbours_in(lz, tile, j, int(y), int(x))
                x, y = _quarter(heat[j], int(x), int(y))
            kps[i, j, 0], kps[i, j, 1], kps[i, j, 2] = x, y, v
            total += v
        scores[i] = total / k
    return kps, scores


@njit(cache=True, nogil=True)
def _refine(kps, joints, lz, tile, tag_lo, full, tags, count, top, cand_tag, thr):
    """Every joint a person lacks becomes its ``_best_pixel`` when the heat there is positive (in place);
    ``tags``: one joint's tag maps (D, parse resolution), filled a tile at a time as the searches need it.
    The joint's candidates (``count``, ``top`` of the scan, ``cand_tag`` of the grouping) seed each search
    with their exact scores."""
    lo, hi, heat, ub, state, rows, hw = lz
    p, k = kps.shape[0], kps.shape[1]
    if p == 0:
        return
    w = heat.shape[2]
    th, tw = ub.shape[1], ub.shape[2]
    dims = tag_lo.shape[0]
    # each person's mean tag over its grouped joints (refinement of one joint does not change it)
    prev = np.zeros((p, dims))
    for i in range(p):
        for d in range(dims):
            s, n = 0.0, 0
            for j in range(k):
                if kps[i, j, 2] > 0:
                    s += joints[i, j, 3 + d]
                    n += 1
            prev[i, d] = s / n
    ranges = np.empty((th, tw, dims, 2))
    rstamp = np.zeros((th, tw), np.int64)
    tstamp = np.zeros((th, tw), np.int64)
    first = (np.empty(th * tw, np.int64), np.empty(BUCKETS + 1, np.int64), np.empty(BUCKETS))
    second = (np.empty(th * tw, np.int64), np.empty(BUCKETS + 1, np.int64), np.empty(BUCKETS))
    tail = np.empty(2)
    bidx, defer, s2 = (
        np.empty(th * tw, np.int64),
        np.empty(th * tw, np.int64),
        np.empty((tile, tile), np.float32),
    )
    search = (first, second, tail, bidx, ranges, rstamp, tstamp, defer, s2)
    seed = np.empty(p)
    for j in range(k):  # joint by joint, so one map stays in cache for every person's search
        if (kps[:, j, 2] != 0).all():
            continue
        low = np.inf
        cj = cand_tag[j]
        for i in range(p):  # each search starts from the best candidate of this joint (an exact score)
            seed[i] = -np.inf
            for c in range(count[j]):
                v = heat[j, top[j, c] // w, top[j, c] % w]
                seed[i] = max(seed[i], v - np.rint(_row_dist(cj, c, prev, i)))
            if kps[i, j, 2] == 0:
                low = min(low, seed[i])
        # tiles below every search's seed are never visited; those below thr / 4 (background) are
        # ordered only when a search gets that far
        cut = max(thr / 4, low)
        tail[0] = _tile_order(ub[j], cut, np.inf, first[0], first[1], first[2], bidx)
        tail[1] = 0
        for i in range(p):
            if kps[i, j, 2] != 0:
                continue
            best = _best_pixel(lz, tile, j, prev[i], seed[i], tag_lo, full, tags, search, j + 1, cut)
            y, x = best // w, best % w
            v = heat[j, y, x]
            if v > 0:
                _neighbours_in(lz, tile, j, y, x)
                kx, ky = _quarter(heat[j], x, y)
                kps[i, j, 0], kps[i, j, 1], kps[i, j, 2] = kx, ky, v
