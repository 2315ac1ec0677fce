"""The SAHR parse map in tiles, and its candidates (steps 1 and 2 of ``edgepose.decoders.sahr``).

The parse map is cut into tiles of 2 x 2 stride-4 pixels (4 px at stride 2, 8 px at the input resolution),
so that a tile's tags blend a 4 x 4 block of stride-4 tags at either resolution. Each tile has an upper
bound of its heat (``ub``) and a state: EXACT once its heat is in the buffer. At stride 2 the averaged map
is computed densely, with exact tile maxima, and every tile is EXACT. At the input resolution each joint's
stride-2 map is computed into a scratch map that stays in cache, with the tile bounds, and the joint is
scanned at once: every tile whose bound passes the detection threshold is resized into the buffer, the
rest stay ABSENT (none of their pixels passes, so none can suppress a candidate in the max-pool NMS; the
peak tests skip them). A later step that reads an ABSENT tile (refinement, the quarter-pixel step)
recomputes the few stride-2 pixels it blends from the raw outputs. The steps after the scan get the maps
as one tuple ``lz = (lo, hi, heat, ub, state, rows, hw)``: the raw heatmaps, the parse map, the bounds
and states, and two scratch blocks; the kernels called per tile take the arrays one by one, and few
(handing a kernel a tuple of arrays costs about as much as resizing a tile).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from edgepose.decoders.sahr_resize import _heat_into, _hrow, _tap, _taps

#: tile states
ABSENT, EXACT = 0, 1


def tile_size(project2image: bool) -> int:
    """Tile side in parse-map pixels: 8 at the input resolution, 4 at stride 2 (2 x 2 stride-4 pixels)."""
    return 8 if project2image else 4


@njit(cache=True, nogil=True)
def _resize_rect(src, sr, sc, hs, ws, y0, y1, x0, x1, rows, out, orow, ocol):
    """Pixels [y0, y1) x [x0, x1) of the 2x bilinear resize of an (hs, ws) map, with ``upsample2``'s float32
    arithmetic (each source row resized, then two rows blended), into ``out[y - orow, x - ocol]``;
    ``src[r - sr, c - sc]`` holds source pixel (r, c); ``rows`` is scratch. For tiles on the map's border
    (``_up2_block`` does the others)."""
    r0, r1 = _tap(y0, hs)[0], _tap(y1 - 1, hs)[1]
    for r in range(r0, r1 + 1):
        for x in range(x0, x1):
            a, b, p, q = _tap(x, ws)
            rows[r - r0, x - x0] = p * src[r - sr, a - sc] + q * src[r - sr, b - sc]
    for y in range(y0, y1):
        a, b, p, q = _tap(y, hs)
        for x in range(x0, x1):
            out[y - orow, x - ocol] = p * rows[a - r0, x - x0] + q * rows[b - r0, x - x0]


@njit(cache=True, nogil=True)
def _inner(y0, n, hs):
    """An n-pixel run of a 2x resize starting at even y0 blends only source pixels 0 < m - 1 .. m + 1 < hs:
    ``_up2_block`` applies (it is away from the source map's border)."""
    return y0 >= 2 and y0 + n <= 2 * hs - 2


@njit(cache=True, nogil=True)
def _up2_block(src, sr, sc, y0, x0, n, rows, out, orow, ocol):
    """``_resize_rect`` of an n x n block at even (y0, x0) away from the source map's border (``_inner``):
    the same float32 products, the constant weights of output pair 2m, 2m + 1 written out."""
    q, t = np.float32(0.25), np.float32(0.75)
    r0, c0 = y0 // 2 - 1 - sr, x0 // 2 - sc
    for r in range(n // 2 + 2):
        for i in range(n // 2):
            m = c0 + i
            rows[r, 2 * i] = q * src[r0 + r, m - 1] + t * src[r0 + r, m]
            rows[r, 2 * i + 1] = t * src[r0 + r, m] + q * src[r0 + r, m + 1]
    for i in range(n // 2):
        y = y0 + 2 * i - orow
        for x in range(n):
            out[y, x0 - ocol + x] = q * rows[i, x] + t * rows[i + 1, x]
            out[y + 1, x0 - ocol + x] = t * rows[i + 1, x] + q * rows[i + 2, x]


@njit(cache=True, nogil=True, inline="always")
def _resize_tile(src, sr, sc, hs, ws, y0, x0, tile, rows, out):
    """The tile at (y0, x0) of the 2x resize of an (hs, ws) map into ``out`` at the same place; the map's
    pixel (0, 0) is ``src[sr, sc]``. The unrolled block when the tile is whole and clear of the borders,
    the general rectangle otherwise."""
    y1, x1 = min(y0 + tile, 2 * hs), min(x0 + tile, 2 * ws)
    if y1 - y0 == tile and x1 - x0 == tile and _inner(y0, tile, hs) and _inner(x0, tile, ws):
        _up2_block(src, sr, sc, y0, x0, tile, rows, out, 0, 0)
    else:
        _resize_rect(src, sr, sc, hs, ws, y0, y1, x0, x1, rows, out, 0, 0)


@njit(cache=True, nogil=True)
def _hrow_at(a, c):
    """Pixel c of ``_hrow(a)``."""
    w, m = a.shape[0], c // 2
    if c == 0:
        return np.float32(1.0) * a[0] + np.float32(0.0) * a[0]
    if c % 2 == 0:
        return np.float32(0.25) * a[m - 1] + np.float32(0.75) * a[m]
    return np.float32(0.75) * a[m] + np.float32(0.25) * a[min(m + 1, w - 1)]


@njit(cache=True, nogil=True)
def _ensure(lo, hi, heat, state, rows, hw, tile, j, ty, tx):
    """An ABSENT tile (ty, tx) of joint j into the buffer after the scan (its stride-2 map is gone): the
    stride-2 pixels it blends are recomputed from the raw outputs into ``hw`` (``_half_map``'s arithmetic),
    then resized."""
    h, w = lo.shape[1], lo.shape[2]
    h2, w2 = 2 * h, 2 * w
    y0, x0 = ty * tile, tx * tile
    y1, x1 = min(y0 + tile, 2 * h2), min(x0 + tile, 2 * w2)
    r0, c0 = _tap(y0, h2)[0], _tap(x0, w2)[0]
    for r in range(r0, _tap(y1 - 1, h2)[1] + 1):
        ya, yb, p, q = _tap(r, h)
        for c in range(c0, _tap(x1 - 1, w2)[1] + 1):
            a, b = _hrow_at(lo[j, ya], c), _hrow_at(lo[j, yb], c)
            hw[r - r0, c - c0] = (p * a + q * b + hi[j, r, c]) / np.float32(2.0)
    _resize_tile(hw, r0, c0, h2, w2, y0, x0, tile, rows, heat[j])
    state[j, ty, tx] = EXACT


@njit(cache=True, nogil=True)
def _half_map(lo, hi, j, taps, rows, out):
    """Joint j's averaged stride-2 heatmap into ``out`` (2h, 2w), with ``aggregate``'s float32 arithmetic
    (``taps``: ``_taps(h)``; ``rows``: (h, 2w) scratch)."""
    h = lo.shape[1]
    y0, y1, wy0, wy1 = taps
    for r in range(h):
        _hrow(lo[j, r], rows[r])
    two = np.float32(2.0)
    for oy in range(2 * h):
        a, b, p, q, g, o = rows[y0[oy]], rows[y1[oy]], wy0[oy], wy1[oy], hi[j, oy], out[oy]
        for x in range(o.shape[0]):
            o[x] = (p * a[x] + q * b[x] + g[x]) / two


@njit(cache=True, nogil=True)
def _bounds(m, ub, acc, blk):
    """Upper bounds of the input-resolution tiles (8 px) resized from the stride-2 map ``m`` into ``ub``
    (th, tw): a tile blends stride-2 pixels [4t - 1, 4t + 4] on each axis, its values are convex blends of
    them, and their maximum is widened by a few float32 roundings. Rows are folded first (vectorised),
    then each tile's 4 columns and the one on either side."""
    h2, w2 = m.shape
    for ty in range(ub.shape[0]):
        r0 = max(4 * ty - 1, 0)
        for x in range(w2):
            acc[x] = m[r0, x]
        for r in range(r0 + 1, min(4 * ty + 5, h2)):
            for x in range(w2):
                a, b = acc[x], m[r, x]
                acc[x] = b if b > a else a
        for t in range(ub.shape[1]):
            a0, a1 = acc[4 * t], acc[min(4 * t + 1, w2 - 1)]
            a2, a3 = acc[min(4 * t + 2, w2 - 1)], acc[min(4 * t + 3, w2 - 1)]
            b0, b1 = (a0 if a0 > a1 else a1), (a2 if a2 > a3 else a3)
            blk[t] = b0 if b0 > b1 else b1
        for t in range(ub.shape[1]):
            top, a, b = blk[t], acc[max(4 * t - 1, 0)], acc[min(4 * t + 4, w2 - 1)]
            top = a if a > top else top
            top = b if b > top else top
            ub[ty, t] = top + np.float32(1e-6) * abs(top) + np.float32(1e-30)


@njit(cache=True, nogil=True)
def _tags_into(tag_lo, j, full, tile, ty, tx, tg, rows, s2):
    """Joint j's aggregated tags over tile (ty, tx) of the parse map into ``tg`` (its tag map): the stride-4
    tags resized once (stride 2) or twice (the input resolution, through the stride-2 block ``s2``)."""
    _, h, w = tag_lo.shape
    t = tag_lo[j]
    if not full:
        _resize_tile(t, 0, 0, h, w, ty * tile, tx * tile, tile, rows, tg)
        return
    h2, w2 = 2 * h, 2 * w
    y0, x0 = ty * tile, tx * tile
    y1, x1 = min(y0 + tile, 2 * h2), min(x0 + tile, 2 * w2)
    sy, sx = y0 // 2 - 2, x0 // 2 - 2  # s2 holds stride-2 pixels [sy, sy + tile) x [sx, sx + tile)
    if y1 - y0 == tile and x1 - x0 == tile and _inner(sy, tile, h) and _inner(sx, tile, w):
        _up2_block(t, 0, 0, sy, sx, tile, rows, s2, sy, sx)
        _up2_block(s2, sy, sx, y0, x0, tile, rows, tg, 0, 0)
    else:
        ry0, ry1 = _tap(y0, h2)[0], _tap(y1 - 1, h2)[1] + 1
        rx0, rx1 = _tap(x0, w2)[0], _tap(x1 - 1, w2)[1] + 1
        _resize_rect(t, 0, 0, h, w, ry0, ry1, rx0, rx1, rows, s2, ry0, rx0)
        _resize_rect(s2, ry0, rx0, h2, w2, y0, y1, x0, x1, rows, tg, 0, 0)


# -- candidates --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _is_peak(m, state, tile, y, x, radius):
    """``m[y, x]`` is the maximum of its window (the max-pool NMS) among the tiles in the buffer (``state``
    of this joint's tiles; the others cannot hold a higher pixel); the 8 neighbours first, as almost every
    pixel that is not a peak has a higher one among them."""
    h, w = m.shape
    v = m[y, x]
    y0, y1 = max(y - radius, 0), min(y + radius + 1, h)
    x0, x1 = max(x - radius, 0), min(x + radius + 1, w)
    for yy in range(max(y - 1, y0), min(y + 2, y1)):
        for xx in range(max(x - 1, x0), min(x + 2, x1)):
            if m[yy, xx] > v and state[yy // tile, xx // tile] == EXACT:
                return False
    for yy in range(y0, y1):
        for xx in range(x0, x1):
            if m[yy, xx] > v and state[yy // tile, xx // tile] == EXACT:
                return False
    return True


@njit(cache=True, nogil=True)
def _top_insert(tv, ti, n, v, i):
    """Insert peak (value v, flat index i) into the top list ``tv``/``ti`` of n entries, kept in the
    reference's order (value descending, then index ascending) and capped at its length. -> new n."""
    cap = tv.shape[0]
    p = n if n < cap else cap - 1
    if n == cap and not (v > tv[p] or (v == tv[p] and i < ti[p])):
        return n
    while p > 0 and (v > tv[p - 1] or (v == tv[p - 1] and i < ti[p - 1])):
        tv[p], ti[p] = tv[p - 1], ti[p - 1]
        p -= 1
    tv[p], ti[p] = v, i
    return min(n + 1, cap)


@njit(cache=True, nogil=True)
def _any_peak8(m, y0, x0, thr, up, down, left, right):
    """Whether an 8 x 8 tile away from the map's border has a pixel above ``thr`` that none of its four
    neighbours exceeds (flags: the neighbour tile counts). Branch-free with constant sizes, so it unrolls
    and vectorises; a neighbour tile that does not count is read but ignored."""
    hit = False
    for i in range(8):
        y = y0 + i
        for k in range(8):
            x = x0 + k
            v = m[y, x]
            a = (v >= m[y - 1, x]) | (i == 0 and not up)
            b = (v >= m[y + 1, x]) | (i == 7 and not down)
            c = (v >= m[y, x - 1]) | (k == 0 and not left)
            d = (v >= m[y, x + 1]) | (k == 7 and not right)
            hit |= (v > thr) & a & b & c & d
    return hit


@njit(cache=True, nogil=True, inline="always")
def _peaks_in(m, state, ty, tx, tile, thr, radius, tv, ti, n):
    """Max-pool NMS peaks above ``thr`` in tile (ty, tx) into the top list. Most tiles have no pixel above
    ``thr`` that none of its four neighbours exceeds (``_any_peak8`` says so fast for 8-px tiles); else, per
    row of up to 64 pixels, a branch-free pass marks those pixels (a neighbour outside the map, or in a tile
    not in the buffer, reads as the pixel itself), and only those go to the window test, and only when they
    could enter the list (a partial selection). -> new n."""
    h, w = m.shape
    th, tw = state.shape
    cap = tv.shape[0]
    y0, y1 = ty * tile, min(ty * tile + tile, h)
    x0, x1 = tx * tile, min(tx * tile + tile, w)
    up = ty > 0 and state[ty - 1, tx] == EXACT
    down = ty < th - 1 and state[ty + 1, tx] == EXACT
    left = tx > 0 and state[ty, tx - 1] == EXACT
    right = tx < tw - 1 and state[ty, tx + 1] == EXACT
    inner = tile == 8 and 0 < ty < th - 1 and 0 < tx < tw - 1 and radius > 0
    if inner and not _any_peak8(m, y0, x0, thr, up, down, left, right):
        return n
    for y in range(y0, y1):
        ya = y - 1 if y > y0 or up else y
        yb = y + 1 if y < y1 - 1 or down else y
        for c0 in range(x0, x1, 64):
            c1 = min(c0 + 64, x1)
            bits = np.int64(0)
            for x in range(c0, c1):
                v = m[y, x]
                ok = v > thr
                if radius > 0:
                    xl = x - 1 if x > x0 or left else x
                    xr = x + 1 if x < x1 - 1 or right else x
                    ok &= (v >= m[ya, x]) & (v >= m[yb, x]) & (v >= m[y, xl]) & (v >= m[y, xr])
                bits |= np.int64(ok) << (x - c0)
            if bits == 0:
                continue
            for x in range(c0, c1):
                if (bits >> (x - c0)) & 1:
                    v = m[y, x]
                    if (n < cap or v >= tv[cap - 1]) and _is_peak(m, state, tile, y, x, radius):
                        n = _top_insert(tv, ti, n, v, y * w + x)
    return n


@njit(cache=True, nogil=True)
def _scan(heat, tilemax, thr, radius, topk, tile):
    """Per joint the ``topk`` highest local maxima above ``thr`` (value desc, then flat index asc) of a
    dense map, looking only inside tiles whose maximum passes. -> (count (K,), flat index (K, topk))."""
    k = heat.shape[0]
    count = np.zeros(k, np.int64)
    top = np.zeros((k, topk), np.int64)
    tv = np.empty(topk, np.float32)
    state = np.full(tilemax.shape[1:], EXACT, np.uint8)
    for j in range(k):
        n = 0
        for ty in range(tilemax.shape[1]):
            for tx in range(tilemax.shape[2]):
                if tilemax[j, ty, tx] > thr:
                    n = _peaks_in(heat[j], state, ty, tx, tile, thr, radius, tv, top[j], n)
        count[j] = n
    return count, top


@njit(cache=True, nogil=True)
def _scan_joint(j, src, heat, ub, state, tile, thr, radius, rows, tv, ti):
    """Joint j's candidates (``_scan``) on the tiled parse map: each tile whose bound passes is brought in
    from ``src`` (the joint's stride-2 map), with its neighbours whose bound passes, and searched. -> n.
    (Hot calls take few arrays: passing many arrays to a kernel costs more than an 8 x 8 resize.)"""
    th, tw = ub.shape[1], ub.shape[2]
    h2, w2 = src.shape
    m, u, st = heat[j], ub[j], state[j]
    reach = max((radius + tile - 1) // tile, 1)
    n = 0
    for ty in range(th):
        for tx in range(tw):
            if not u[ty, tx] > thr:
                continue
            for ny in range(max(ty - reach, 0), min(ty + reach + 1, th)):
                for nx in range(max(tx - reach, 0), min(tx + reach + 1, tw)):
                    if st[ny, nx] == EXACT or not u[ny, nx] > thr:
                        continue
                    _resize_tile(src, 0, 0, h2, w2, ny * tile, nx * tile, tile, rows, m)
                    st[ny, nx] = EXACT
            n = _peaks_in(m, st, ty, tx, tile, thr, radius, tv, ti, n)
    return n


@njit(cache=True, nogil=True)
def _parse_maps(lo, hi, full, heat, ub, state, scratch, thr, radius, topk):
    """The dense step and the candidates: at stride 2 the averaged map with exact tile maxima, then the
    scan; at the input resolution joint by joint the stride-2 map into ``scratch``, the tile bounds and the
    scan. -> (count (K,), top (K, topk), lz: the maps the later steps read)."""
    k, h, w = lo.shape
    tile = 8 if full else 4
    count = np.zeros(k, np.int64)
    top = np.zeros((k, topk), np.int64)
    tv = np.empty(topk, np.float32)
    rows = np.empty((tile, tile), np.float32)
    if full:
        state[:] = ABSENT
        hy = _taps(h)
        lo_rows = np.empty((h, 2 * w), np.float32)
        acc, blk = np.empty(2 * w, np.float32), np.empty(ub.shape[2], np.float32)
        for j in range(k):
            _half_map(lo, hi, j, hy, lo_rows, scratch)
            _bounds(scratch, ub[j], acc, blk)
            count[j] = _scan_joint(j, scratch, heat, ub, state, tile, thr, radius, rows, tv, top[j])
    else:
        _heat_into(lo, hi, False, tile, heat, ub)
        state[:] = EXACT
        for j in range(k):
            count[j] = _scan_joint(j, heat[j], heat, ub, state, tile, thr, radius, rows, tv, top[j])
    return count, top, (lo, hi, heat, ub, state, rows, np.empty((tile, tile), np.float32))
