"""SAHR aggregation kernels: 2x bilinear resizes as torch computes them (``align_corners=False``), the
averaged heatmaps and the resized tags. Step 1 of ``edgepose.decoders.sahr``; numba, float32 as torch."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _tap(o, n):
    """Output index ``o`` of a 2x bilinear resize of ``n`` samples (torch, ``align_corners=False``): the two
    source indices and their float32 weights."""
    src = np.float32(0.5) * (np.float32(o) + np.float32(0.5)) - np.float32(0.5)
    if src < 0:
        src = np.float32(0.0)
    f = int(src)
    w1 = src - np.float32(f)
    return f, (f + 1 if f < n - 1 else f), np.float32(1.0) - w1, w1


@njit(cache=True, nogil=True)
def _taps(n):
    i0 = np.empty(2 * n, np.int64)
    i1 = np.empty(2 * n, np.int64)
    w0 = np.empty(2 * n, np.float32)
    w1 = np.empty(2 * n, np.float32)
    for o in range(2 * n):
        i0[o], i1[o], w0[o], w1[o] = _tap(o, n)
    return i0, i1, w0, w1


@njit(cache=True, nogil=True)
def _hrow(a, out):
    """One row resized 2x: ``out[o] = w0 * a[i0] + w1 * a[i1]`` with the constant weights of ``_tap`` (both
    outputs between two source pixels in one loop, which vectorises)."""
    w = a.shape[0]
    q, t = np.float32(0.25), np.float32(0.75)
    out[0] = np.float32(1.0) * a[0] + np.float32(0.0) * a[0]
    for m in range(1, w):
        out[2 * m - 1] = t * a[m - 1] + q * a[m]
        out[2 * m] = q * a[m - 1] + t * a[m]
    out[2 * w - 1] = t * a[w - 1] + q * a[w - 1]


@njit(cache=True, nogil=True)
def upsample2(src):
    """(C, h, w) float32 -> (C, 2h, 2w): ``F.interpolate(bilinear, align_corners=False)`` (to 1 ulp: torch
    fuses multiply-adds), resizing rows first, then blending the resized rows."""
    c, h, w = src.shape
    y0, y1, wy0, wy1 = _taps(h)
    out = np.empty((c, 2 * h, 2 * w), np.float32)
    rows = np.empty((h, 2 * w), np.float32)
    for j in range(c):
        for r in range(h):
            _hrow(src[j, r], rows[r])
        for oy in range(2 * h):
            a, b, p, q, o = rows[y0[oy]], rows[y1[oy]], wy0[oy], wy1[oy], out[j, oy]
            for x in range(2 * w):
                o[x] = p * a[x] + q * b[x]
    return out


@njit(cache=True, nogil=True)
def _fold_max(acc, row):
    for x in range(row.shape[0]):
        acc[x] = max(acc[x], row[x])


@njit(cache=True, nogil=True)
def _tile_max(acc, tm, tile):
    """Per tile column, the maximum of the column-wise maxima ``acc`` of one tile row, into ``tm``."""
    w = acc.shape[0]
    for tx in range(tm.shape[0]):
        m = acc[tx * tile]
        for x in range(tx * tile, min(tx * tile + tile, w)):
            m = max(m, acc[x])
        tm[tx] = m


@njit(cache=True, nogil=True)
def _resize_rows(rows, y0, y1, wy0, wy1, out, tilemax, tile):
    """Blend 2x-resized rows into ``out`` rows (the vertical half of ``upsample2``); tile maxima on the way
    when ``tile`` > 0."""
    n, w = out.shape
    acc = np.empty(w, np.float32)
    for oy in range(n):
        a, b, p, q, o = rows[y0[oy]], rows[y1[oy]], wy0[oy], wy1[oy], out[oy]
        for x in range(w):
            o[x] = p * a[x] + q * b[x]
        if tile > 0:
            if oy % tile == 0:
                acc[:] = o
            else:
                _fold_max(acc, o)
            if oy % tile == tile - 1 or oy == n - 1:
                _tile_max(acc, tilemax[oy // tile], tile)


@njit(cache=True, nogil=True)
def _heat_into(lo, hi, project2image, tile, heat, tilemax):
    """The averaged heatmaps at the parse resolution into ``heat``, and each tile's maximum into ``tilemax``
    (K, ceil(H / tile), ceil(W / tile)). Same float32 arithmetic as ``aggregate``."""
    k, h, w = lo.shape
    y0, y1, wy0, wy1 = _taps(h)
    z0, z1, wz0, wz1 = _taps(2 * h)
    rows = np.empty((h, 2 * w), np.float32)
    half = np.empty((2 * h, 2 * w), np.float32)
    rows2 = np.empty((2 * h, 4 * w), np.float32) if project2image else rows
    acc = np.empty(2 * w, np.float32)
    two = np.float32(2.0)
    for j in range(k):
        for r in range(h):
            _hrow(lo[j, r], rows[r])
        for oy in range(2 * h):
            a, b, p, q, g = rows[y0[oy]], rows[y1[oy]], wy0[oy], wy1[oy], hi[j, oy]
            o = half[oy] if project2image else heat[j, oy]
            for x in range(2 * w):
                o[x] = (p * a[x] + q * b[x] + g[x]) / two
            if not project2image:
                if oy % tile == 0:
                    acc[:] = o
                else:
                    _fold_max(acc, o)
                if oy % tile == tile - 1 or oy == 2 * h - 1:
                    _tile_max(acc, tilemax[j, oy // tile], tile)
        if project2image:
            for r in range(2 * h):
                _hrow(half[r], rows2[r])
            _resize_rows(rows2, z0, z1, wz0, wz1, heat[j], tilemax[j], tile)


@njit(cache=True, nogil=True)
def aggregate(lo, tag_lo, hi, project2image):
    """-> (heat, tag) at stride 2 (or the input resolution): the official averaged heatmaps and tags."""
    heat = (upsample2(lo) + hi) / np.float32(2.0)
    tag = upsample2(tag_lo)
    if project2image:
        return upsample2(heat), upsample2(tag)
    return heat, tag


@njit(cache=True, nogil=True)
def _tag1(t, j, y, x):
    """The stride-4 tags resized to stride 2, at one pixel (bit-identical to ``upsample2``)."""
    y0, y1, p, q = _tap(y, t.shape[1])
    x0, x1, a, b = _tap(x, t.shape[2])
    return p * (a * t[j, y0, x0] + b * t[j, y0, x1]) + q * (a * t[j, y1, x0] + b * t[j, y1, x1])


@njit(cache=True, nogil=True)
def _tag2(t, j, y, x):
    """The tags resized twice (to the input resolution), at one pixel."""
    y0, y1, p, q = _tap(y, 2 * t.shape[1])
    x0, x1, a, b = _tap(x, 2 * t.shape[2])
    top = a * _tag1(t, j, y0, x0) + b * _tag1(t, j, y0, x1)
    return p * top + q * (a * _tag1(t, j, y1, x0) + b * _tag1(t, j, y1, x1))


@njit(cache=True, nogil=True)
def tag_at(t, j, y, x, project2image):
    """The aggregated tag of joint j at one pixel of the parse map, computed from the stride-4 tags."""
    return _tag2(t, j, y, x) if project2image else _tag1(t, j, y, x)
