"""SAHR/HigherHRNet post-processing in numba: raw heatmaps + tags -> grouped poses, as the official test.

The graph ends at three raw outputs: ``heatmaps_lo`` (1, K, H/4, W/4), ``tags`` (1, K, H/4, W/4: one
associative-embedding value per joint) and ``heatmaps_hi`` (1, K, H/2, W/2). The decode follows
``lib/core/inference.py`` (``get_multi_stage_outputs``, ``aggregate_results``) and ``lib/core/group.py``
(``HeatmapParser``) of github.com/HRNet/HigherHRNet-Human-Pose-Estimation and SWAHR-HumanPose, single
scale, no flip:

1. aggregation: the stride-4 heatmaps and tags are resized to stride 2 (bilinear, ``align_corners=False``)
   and the two heatmaps averaged. With ``project2image`` (the official TEST.PROJECT2IMAGE, the accuracy
   preset) both are resized once more, to the input resolution, and everything below runs there;
   without it (realtime) it runs at stride 2, on a quarter of the pixels;
2. candidates: max-pool NMS (window ``nms_kernel``, 5), the ``max_people`` (30) highest maxima per joint,
   those above ``detection_threshold``;
3. grouping (``match_by_tag``), joint by joint in the official order (head, shoulders, *hips*, elbows,
   wrists, knees, ankles): the first joint with candidates starts one person each; every later joint's
   candidates are matched to the first ``max_people`` people by an optimal assignment (a numba shortest
   augmenting path, the algorithm and tie-breaking of scipy's ``linear_sum_assignment``) on the cost
   ``round(|tag - person's mean tag|) * 100 - heat`` (``use_detection_val``); a match joins the person when
   the tag distance is below ``tag_threshold`` (1.0), anything else starts a new person;
4. ``adjust``: each grouped joint moves a quarter pixel toward its higher neighbour on x and on y, then by
   half a pixel (pixel centres);
5. person score: the mean heat over all K joints, missing joints counting 0, before refinement;
6. ``refine``: every joint a person lacks becomes the pixel maximising ``heat - round(|tag - the person's
   mean tag|)`` over the whole map, kept when its heat is positive (quarter-pixel adjusted as in 4).

Coordinates are mapped from the parse resolution to input pixels (x 2 at stride 2) and through the
letterbox to original pixels, clipped to the image (``clip``). Poses keep the official order (creation
order of the groups); keypoint scores are the heat, 0 where a joint is missing after refinement (its
x, y are then the map's origin, as official). Boxes span the keypoints with a positive score.

The CPU touches every stride-2 pixel once and then only what can matter. Each joint's averaged stride-2
map is computed into a scratch map that stays in cache; at the input resolution (accuracy) it is cut into
8-px tiles with an upper bound each (a resized pixel is a convex blend of its sources), and only the tiles
whose bound passes the threshold are resized (with the unrolled constant weights of the 2x resize) and
searched for NMS peaks, most of them dismissed by an unrolled "any local maximum?" test; top-k is a
partial selection. Refinement is exact but pruned: each person's search starts from the best score among
the joint's candidates, visits tiles by bound (a counting sort, highest first) until none can reach the
best pixel found, skips tiles whose tag range rules them out (the penalty is never negative and rint is
monotone), takes the heat maximum of tiles whose tags all lie within 0.5 of the person's mean (no
penalty there), and computes tags, and resizes tiles the scan left out, only for the tiles it visits.
Ties resolve to the lowest flat index, as ``np.argmax``. These dense steps stay out of the graph: on ONNX
Runtime (CPU) resize + average + max-pool + top-k take ~4x the numba time (``benchmarks/decode_sahr.py
--in-graph``), and refinement needs the whole maps at the parse resolution anyway, which are larger than
the raw outputs. ``benchmarks/decode_sahr.py --stages`` times each step.

Where this differs from the official code, deliberately: people are a list, not a dict keyed by their
first tag value (the official code merges two new people whose first tags are bit-identical); tag means
and distances are float64; and equally cheap assignments are broken as scipy does, not as the ``munkres``
package (both are optimal). ``sahr_reference.decode_reference`` is the same decode in vectorised numpy.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from edgepose.errors import BundleError, UsageError
from edgepose.poses import Poses
from edgepose.preprocess import LetterboxMeta

Outputs = Mapping[str, np.ndarray]

#: official COCO grouping order (``Params.joint_order``): the first K entries are used when they are a
#: permutation of range(K) (CrowdPose's 14 are), else the natural order
COCO_JOINT_ORDER = (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)


def default_joint_order(k: int) -> tuple[int, ...]:
    order = COCO_JOINT_ORDER[:k]
    return order if sorted(order) == list(range(k)) else tuple(range(k))


@dataclass(frozen=True)
class SahrHead:
    """The head's constants, as the bundle manifest stores them.

    strides: input pixels per output pixel of (heatmaps_lo and tags, heatmaps_hi).
    detection_threshold: the model's official TEST.DETECTION_THRESHOLD (SWAHR W32 0.12, else 0.1), which
    the presets use unless they set their own. joint_order: the grouping order (default: official).
    """

    num_keypoints: int
    output_names: tuple[str, ...] = ("heatmaps_lo", "tags", "heatmaps_hi")
    strides: tuple[int, int] = (4, 2)
    input_multiple: int = 32
    detection_threshold: float = 0.1
    joint_order: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        try:
            k, m = int(self.num_keypoints), int(self.input_multiple)
            strides = tuple(int(s) for s in self.strides)
            thr = float(self.detection_threshold)
        except (TypeError, ValueError) as e:
            raise UsageError("SAHR head needs integer num_keypoints, strides and input_multiple") from e
        if k < 1 or m < 1:
            raise UsageError("SAHR num_keypoints and input_multiple must be at least 1")
        if strides != (4, 2):
            raise UsageError(f"SAHR heads have outputs at strides (4, 2), got {strides}")
        names = tuple(str(n) for n in self.output_names)
        if len(names) != 3:
            raise UsageError(f"SAHR head has three outputs (heatmaps_lo, tags, heatmaps_hi), got {names}")
        order = default_joint_order(k) if self.joint_order is None else tuple(map(int, self.joint_order))
        if sorted(order) != list(range(k)):
            raise UsageError(f"SAHR joint_order must be a permutation of 0..{k - 1}, got {order}")
        if not 0.0 <= thr <= 1.0:
            raise UsageError(f"SAHR detection_threshold={thr} must be between 0 and 1")
        for name, value in (
            ("num_keypoints", k),
            ("input_multiple", m),
            ("strides", strides),
            ("output_names", names),
            ("joint_order", order),
            ("detection_threshold", thr),
        ):
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SahrHead:
        if "num_keypoints" not in d:
            raise BundleError("SAHR head description lacks num_keypoints")
        fields = {f.name for f in dataclasses.fields(cls)}
        seqs = ("output_names", "strides", "joint_order")
        return cls(
            **{k: (tuple(v) if k in seqs and v is not None else v) for k, v in d.items() if k in fields}
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("output_names", "strides", "joint_order"):
            d[k] = list(d[k])
        return d


@dataclass(frozen=True)
class SahrParams:
    """Decoder settings, named after the official ``TEST``/``DATASET`` config keys they come from.

    detection_threshold: TEST.DETECTION_THRESHOLD; None takes the head's (the model's official value).
    max_people: DATASET.MAX_NUM_PEOPLE (top-k per joint, and how many people a joint is matched against).
    nms_kernel: TEST.NMS_KERNEL. tag_threshold: TEST.TAG_THRESHOLD. use_detection_val, ignore_too_much,
    adjust, refine: TEST.USE_DETECTION_VAL/IGNORE_TOO_MUCH/ADJUST/REFINE. project2image: TEST.PROJECT2IMAGE
    (parse at the input resolution rather than at stride 2). clip: clip keypoints to the image.
    min_score: people scoring below it are dropped (not official: the COCO test keeps every group, and
    AP wants them; on a camera the low scorers are fragments of two or three joints).
    """

    detection_threshold: float | None = None
    max_people: int = 30
    nms_kernel: int = 5
    tag_threshold: float = 1.0
    use_detection_val: bool = True
    ignore_too_much: bool = False
    adjust: bool = True
    refine: bool = True
    project2image: bool = True
    clip: bool = True
    min_score: float = 0.0

    def __post_init__(self) -> None:
        if self.detection_threshold is not None:
            thr = float(self.detection_threshold)
            if not 0.0 <= thr <= 1.0:
                raise UsageError(f"detection_threshold={thr} must be between 0 and 1")
            object.__setattr__(self, "detection_threshold", thr)
        if int(self.max_people) < 1:
            raise UsageError("max_people must be at least 1")
        if int(self.nms_kernel) < 1 or int(self.nms_kernel) % 2 == 0:
            raise UsageError(f"nms_kernel must be an odd number >= 1, got {self.nms_kernel}")
        if not float(self.tag_threshold) > 0.0:
            raise UsageError("tag_threshold must be positive")
        object.__setattr__(self, "max_people", int(self.max_people))
        object.__setattr__(self, "nms_kernel", int(self.nms_kernel))
        object.__setattr__(self, "tag_threshold", float(self.tag_threshold))
        if not 0.0 <= float(self.min_score) <= 1.0:
            raise UsageError(f"min_score={self.min_score} must be between 0 and 1")
        object.__setattr__(self, "min_score", float(self.min_score))
        for f in ("use_detection_val", "ignore_too_much", "adjust", "refine", "project2image", "clip"):
            object.__setattr__(self, f, bool(getattr(self, f)))

    def threshold(self, head: SahrHead) -> float:
        return head.detection_threshold if self.detection_threshold is None else self.detection_threshold

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SahrParams:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UsageError(f"unknown SAHR decoder parameter(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def replace(self, **overrides: Any) -> SahrParams:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UsageError(f"unknown SAHR decoder parameter(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides)


PRESETS: dict[str, SahrParams] = {
    # The official COCO test settings (single scale, no flip): the model's threshold, parse at the input
    # resolution.
    "accuracy": SahrParams(),
    # A camera: parse at stride 2 (a quarter of the pixels; positions in steps of 2 input px, adjusted by
    # 0.5 px), only confident joints (0.2, the official default config's threshold), and no fragments: a
    # person scoring under 0.1 has fewer than ~4 of 17 joints at heat 0.4.
    "realtime": SahrParams(detection_threshold=0.2, project2image=False, min_score=0.1),
}


def read_outputs(outputs: Outputs | Sequence[np.ndarray], head: SahrHead) -> tuple[np.ndarray, ...]:
    """(heatmaps_lo (K, h, w), tags (K, h, w), heatmaps_hi (K, 2h, 2w)) as C-contiguous float32."""
    names = head.output_names
    if isinstance(outputs, Mapping):
        if not all(n in outputs for n in names):
            raise BundleError(f"SAHR decoder needs outputs {', '.join(names)}, got {', '.join(outputs)}")
        arrays = [outputs[n] for n in names]
    else:
        arrays = list(outputs)
        if len(arrays) != 3:
            raise BundleError(f"SAHR decoder needs three outputs ({', '.join(names)}), got {len(arrays)}")
    lo, tag, hi = (np.ascontiguousarray(a[0] if np.ndim(a) == 4 else a, dtype=np.float32) for a in arrays)
    k = head.num_keypoints
    ok = lo.ndim == 3 and lo.shape[0] == k and tag.shape == lo.shape
    if not ok or hi.shape != (k, 2 * lo.shape[1], 2 * lo.shape[2]):
        raise BundleError(
            f"SAHR outputs have shapes {lo.shape}, {tag.shape} and {hi.shape}, expected ({k}, h, w) twice "
            f"and ({k}, 2h, 2w) for a head with {k} keypoints; the bundle's model and manifest do not match"
        )
    return lo, tag, hi


# -- aggregation -------------------------------------------------------------------------------------------


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


# -- tiles of the parse map --------------------------------------------------------------------------------
# The parse map is cut into tiles of 2 x 2 stride-4 pixels (4 px at stride 2, 8 px at the input resolution),
# so that a tile's tags blend a 4 x 4 block of stride-4 tags at either resolution. Each tile has an upper
# bound of its heat (``ub``) and a state: EXACT once its heat is in the buffer. At stride 2 the averaged map
# is computed densely, with exact tile maxima, and every tile is EXACT. At the input resolution each joint's
# stride-2 map is computed into a scratch map that stays in cache, with the tile bounds, and the joint is
# scanned at once: every tile whose bound passes the detection threshold is resized into the buffer, the
# rest stay ABSENT (none of their pixels passes, so none can suppress a candidate in the max-pool NMS; the
# peak tests skip them). A later step that reads an ABSENT tile (refinement, the quarter-pixel step)
# recomputes the few stride-2 pixels it blends from the raw outputs. The steps after the scan get the maps
# as one tuple ``lz = (lo, hi, heat, ub, state, rows, hw)``: the raw heatmaps, the parse map, the bounds
# and states, and two scratch blocks; the kernels called per tile take the arrays one by one, and few
# (handing a kernel a tuple of arrays costs about as much as resizing a tile).

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
    if y1 - y0 == tile and x1 - x0 == tile and _inner(y0, tile, h2) and _inner(x0, tile, w2):
        _up2_block(hw, r0, c0, y0, x0, tile, rows, heat[j], 0, 0)
    else:
        _resize_rect(hw, r0, c0, h2, w2, y0, y1, x0, x1, rows, heat[j], 0, 0)
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
        h2, w2 = 2 * h, 2 * w
        y0, x0 = ty * tile, tx * tile
        y1, x1 = min(y0 + tile, h2), min(x0 + tile, w2)
        if y1 - y0 == tile and x1 - x0 == tile and _inner(y0, tile, h) and _inner(x0, tile, w):
            _up2_block(t, 0, 0, y0, x0, tile, rows, tg, 0, 0)
        else:
            _resize_rect(t, 0, 0, h, w, y0, y1, x0, x1, rows, tg, 0, 0)
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
    h, w = heat.shape[1], heat.shape[2]
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
                    y0, x0 = ny * tile, nx * tile
                    y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                    if y1 - y0 == tile and x1 - x0 == tile and _inner(y0, tile, h2) and _inner(x0, tile, w2):
                        _up2_block(src, 0, 0, y0, x0, tile, rows, m, 0, 0)
                    else:
                        _resize_rect(src, 0, 0, h2, w2, y0, y1, x0, x1, rows, m, 0, 0)
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


# -- optimal assignment ------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _lsap_wide(cost):
    """Shortest augmenting path (Crouse 2016) for nr <= nc; col4row. Tie-breaking as scipy's."""
    nr, nc = cost.shape
    u = np.zeros(nr)
    v = np.zeros(nc)
    spc = np.empty(nc)
    path = np.full(nc, -1, np.int64)
    col4row = np.full(nr, -1, np.int64)
    row4col = np.full(nc, -1, np.int64)
    sr = np.zeros(nr, np.bool_)
    sc = np.zeros(nc, np.bool_)
    remaining = np.empty(nc, np.int64)
    for cur in range(nr):
        for it in range(nc):
            remaining[it] = nc - it - 1
        sr[:] = False
        sc[:] = False
        spc[:] = np.inf
        n_rem = nc
        min_val = 0.0
        i = cur
        sink = -1
        while sink == -1:
            index = -1
            lowest = np.inf
            sr[i] = True
            for it in range(n_rem):
                j = remaining[it]
                r = min_val + cost[i, j] - u[i] - v[j]
                if r < spc[j]:
                    path[j] = i
                    spc[j] = r
                if spc[j] < lowest or (spc[j] == lowest and row4col[j] == -1):
                    lowest = spc[j]
                    index = it
            min_val = lowest
            if index < 0 or min_val == np.inf:
                return np.full(nr, -1, np.int64)  # unreachable for finite costs
            j = remaining[index]
            if row4col[j] == -1:
                sink = j
            else:
                i = row4col[j]
            sc[j] = True
            n_rem -= 1
            remaining[index] = remaining[n_rem]
        u[cur] += min_val
        for i in range(nr):
            if sr[i] and i != cur:
                u[i] += min_val - spc[col4row[i]]
        for j in range(nc):
            if sc[j]:
                v[j] -= min_val - spc[j]
        j = sink
        while True:
            i = path[j]
            row4col[j] = i
            col4row[i], j = j, col4row[i]
            if i == cur:
                break
    return col4row


@njit(cache=True, nogil=True)
def assign(cost):
    """Minimum-cost assignment of a (nr, nc) matrix: the column of each row, -1 for rows left out."""
    nr, nc = cost.shape
    if nr == 0 or nc == 0:
        return np.full(nr, -1, np.int64)
    if nc >= nr:
        return _lsap_wide(cost)
    row4col = _lsap_wide(np.ascontiguousarray(cost.T))
    col4row = np.full(nr, -1, np.int64)
    for c in range(nc):
        col4row[row4col[c]] = c
    return col4row


# -- grouping, adjustment, refinement ----------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _group(heat, tag_lo, full, count, top, order, max_people, tag_thr, use_val, ignore_too_much, cand_tag):
    """Official ``match_by_tag``. -> joints (P, K, 4): x, y (map pixels), heat, tag; P people. Every
    candidate's tag goes to ``cand_tag`` (K, topk) on the way (refinement reads them)."""
    k, _, w = heat.shape
    cap = k * top.shape[1]
    joints = np.zeros((cap, k, 4))
    tag_sum = np.zeros(cap)
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
        tags = np.empty(n)
        for r in range(n):
            vals[r] = heat[j, ys[r], xs[r]]
            tags[r] = cand_tag[j, r] = tag_at(tag_lo, j, ys[r], xs[r], full)
        if p == 0:
            col4row = np.full(n, -1, np.int64)
            dist = np.zeros((n, 1))
        else:
            g = min(p, max_people)
            if ignore_too_much and g == max_people:
                continue
            dist = np.empty((n, g))
            cost = np.empty((n, g))
            for r in range(n):
                for c in range(g):
                    d = abs(tags[r] - tag_sum[c] / tag_n[c])
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
            joints[c, j, 3] = tags[r]
            tag_sum[c] += tags[r]
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
def _tag_range(tag_lo, j, ty, tx):
    """The range of joint j's aggregated tags in tile (ty, tx): the tile blends stride-4 tags [2t - 1, 2t + 2]
    on each axis (at either parse resolution), and blends stay in their sources' range (widened by a few
    float32 roundings)."""
    _, h, w = tag_lo.shape
    a, b = np.inf, -np.inf
    for y in range(max(2 * ty - 1, 0), min(2 * ty + 3, h)):
        for x in range(max(2 * tx - 1, 0), min(2 * tx + 3, w)):
            v = tag_lo[j, y, x]
            a = min(a, v)
            b = max(b, v)
    return a - 1e-6 * (abs(a) + 1.0), b + 1e-6 * (abs(b) + 1.0)


@njit(cache=True, nogil=True)
def _tile_best(m, tg, prev, y0, y1, x0, x1, floor):
    """The best ``heat - rint(|tag - prev|)`` in one rectangle that reaches ``floor``, and its lowest flat
    index (-1 when none does). A pixel whose heat alone cannot reach the best so far is skipped."""
    w = m.shape[1]
    top = floor
    idx = -1
    for y in range(y0, y1):
        for x in range(x0, x1):
            v = m[y, x]
            if v < top or (v == top and idx >= 0):
                continue
            s = v - np.rint(abs(tg[y, x] - prev))
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
                    ranges[ty, tx, 0], ranges[ty, tx, 1] = _tag_range(tag_lo, j, ty, tx)
                    rstamp[ty, tx] = stamp
                lo_d, hi_d = ranges[ty, tx, 0] - prev, ranges[ty, tx, 1] - prev
                penalty = np.rint(max(lo_d, -hi_d, 0.0))
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
                if lo_d > -0.5 and hi_d < 0.5:  # no pixel of the tile pays a penalty
                    top, i = _first_max(m, y0, y1, x0, x1)
                else:
                    if tstamp[ty, tx] != stamp:
                        _tags_into(tag_lo, j, full, tile, ty, tx, tg, rows, s2)
                        tstamp[ty, tx] = stamp
                    top, i = _tile_best(m, tg, prev, y0, y1, x0, x1, floor)
                if i >= 0 and top >= floor and (top > best or (top == best and i < best_idx)):
                    best, best_idx = top, i
                    floor = max(floor, best)
    for n in range(nd):
        ty, tx = defer[n] // tw, defer[n] % tw
        penalty = np.rint(max(ranges[ty, tx, 0] - prev, prev - ranges[ty, tx, 1], 0.0))
        if u[ty, tx] - penalty < floor:
            continue
        if state[j, ty, tx] != EXACT:
            _ensure(lo, hi, heat, state, rows, hw, tile, j, ty, tx)
        if tstamp[ty, tx] != stamp:
            _tags_into(tag_lo, j, full, tile, ty, tx, tg, rows, s2)
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
    ``tags``: one joint's tag map (parse resolution), filled a tile at a time as the searches need it.
    The joint's candidates (``count``, ``top`` of the scan, ``cand_tag`` of the grouping) seed each search
    with their exact scores."""
    lo, hi, heat, ub, state, rows, hw = lz
    p, k = kps.shape[0], kps.shape[1]
    if p == 0:
        return
    w = heat.shape[2]
    th, tw = ub.shape[1], ub.shape[2]
    # each person's mean tag over its grouped joints (refinement of one joint does not change it)
    prev = np.zeros(p)
    for i in range(p):
        s, n = 0.0, 0
        for j in range(k):
            if kps[i, j, 2] > 0:
                s += joints[i, j, 3]
                n += 1
        prev[i] = s / n
    ranges = np.empty((th, tw, 2))
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
        for i in range(p):  # each search starts from the best candidate of this joint (an exact score)
            seed[i] = -np.inf
            for c in range(count[j]):
                v = heat[j, top[j, c] // w, top[j, c] % w]
                seed[i] = max(seed[i], v - np.rint(abs(cand_tag[j, c] - prev[i])))
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


@njit(cache=True, nogil=True)
def _decode_kernel(lo, tag_lo, hi, scratch, heat, ub, state, tags, thr, radius, topk, order, tag_thr, flags):
    """flags: project2image, use_detection_val, ignore_too_much, adjust, refine."""
    full = flags[0]
    tile = 8 if full else 4
    count, top, lz = _parse_maps(lo, hi, full, heat, ub, state, scratch, thr, radius, topk)
    cand_tag = np.zeros(top.shape)
    joints = _group(heat, tag_lo, full, count, top, order, topk, tag_thr, flags[1], flags[2], cand_tag)
    kps, scores = _adjust_score(joints, lz, tile, flags[3])
    if flags[4]:
        _refine(kps, joints, lz, tile, tag_lo, full, tags, count, top, cand_tag, thr)
    return kps, scores


_WORKSPACE = threading.local()


def _buffers(k: int, h: int, w: int, full: bool) -> tuple[np.ndarray, ...]:
    """This thread's maps for stride-4 outputs of (h, w): one joint's stride-2 heat (scratch), the parse
    map's heat, its tile bounds and states, and one joint's tags (refinement works joint by joint), reused
    across frames (no page faults; only the tiles a frame touches are written)."""
    key = (k, h, w, full)
    cache = _WORKSPACE.__dict__.setdefault("buffers", {})
    if key not in cache:
        if len(cache) >= 4:
            cache.clear()
        f, tile = (4, 8) if full else (2, 4)
        heat = np.empty((k, f * h, f * w), np.float32)
        scratch = np.empty((2 * h, 2 * w), np.float32)
        tiles = (k, -(-f * h // tile), -(-f * w // tile))
        cache[key] = (
            scratch,
            heat,
            np.empty(tiles, np.float32),
            np.empty(tiles, np.uint8),
            np.empty(heat.shape[1:], np.float32),
        )
    return cache[key]


def keep_confident(kps: np.ndarray, scores: np.ndarray, params: SahrParams) -> tuple[np.ndarray, ...]:
    """The people scoring at least ``min_score``, in their order."""
    if params.min_score <= 0.0:
        return kps, scores
    keep = scores >= params.min_score
    return kps[keep], scores[keep]


def to_poses(
    kps: np.ndarray, scores: np.ndarray, scale: float, meta: LetterboxMeta, params: SahrParams, k: int
) -> Poses:
    """Keypoints in parse-map pixels -> ``Poses`` in original pixels (boxes over positive-score joints)."""
    if len(scores) == 0:
        return Poses.empty(k)
    n = len(scores)
    xy = meta.to_original((kps[..., :2] * scale).reshape(n, 2 * k), clip=params.clip).reshape(n, k, 2)
    found = kps[..., 2] > 0
    lo = np.where(found[..., None], xy, np.inf).min(axis=1)
    hi = np.where(found[..., None], xy, -np.inf).max(axis=1)
    boxes = np.concatenate([lo, hi], axis=1)
    keypoints = np.concatenate([xy, kps[..., 2:3]], axis=2)
    return Poses(keypoints, scores, boxes, np.zeros(kps.shape[:2], bool))


@njit(cache=True, nogil=True)
def _to_original(kps, scale, gain, pad_x, pad_y, width, height, clip):
    """``to_poses``'s arithmetic in one pass: keypoints (P, K, 3) in parse-map pixels -> (keypoints (P, K, 3)
    float32 in original pixels, boxes (P, 4) float32 over the joints with a positive score). float32 as
    ``LetterboxMeta.to_original`` (the products in float64, then the letterbox in float32)."""
    p, k = kps.shape[0], kps.shape[1]
    out = np.empty((p, k, 3), np.float32)
    boxes = np.empty((p, 4), np.float32)
    g, px, py = np.float32(gain), np.float32(pad_x), np.float32(pad_y)
    zero, w, h = np.float32(0.0), np.float32(width), np.float32(height)
    for i in range(p):
        x0 = y0 = np.float32(np.inf)
        x1 = y1 = np.float32(-np.inf)
        for j in range(k):
            x = (np.float32(kps[i, j, 0] * scale) - px) / g
            y = (np.float32(kps[i, j, 1] * scale) - py) / g
            if clip:
                x = min(max(x, zero), w)
                y = min(max(y, zero), h)
            out[i, j, 0], out[i, j, 1], out[i, j, 2] = x, y, kps[i, j, 2]
            if kps[i, j, 2] > 0:
                x0, y0, x1, y1 = min(x0, x), min(y0, y), max(x1, x), max(y1, y)
        boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3] = x0, y0, x1, y1
    return out, boxes


def parse_scale(params: SahrParams, head: SahrHead) -> int:
    """Input pixels per pixel of the maps the parse runs on."""
    return 1 if params.project2image else head.strides[1]


def _geometry(meta: LetterboxMeta, params: SahrParams, head: SahrHead) -> tuple:
    """``_to_original``'s arguments after the keypoints: parse scale, letterbox gain and pad, original size,
    clip (as Python scalars, so one compiled version serves every frame)."""
    (w, h), (px, py) = meta.original_size, meta.pad
    return parse_scale(params, head), float(meta.gain), float(px), float(py), int(w), int(h), params.clip


def decode(outputs: Outputs, meta: LetterboxMeta, params: SahrParams, head: SahrHead) -> Poses:
    """Raw SAHR outputs of one image -> ``Poses`` in original-image pixels, in the official group order."""
    lo, tag, hi = read_outputs(outputs, head)
    scratch, heat, ub, state, tags = _buffers(
        head.num_keypoints, lo.shape[1], lo.shape[2], params.project2image
    )
    p = params
    flags = (p.project2image, p.use_detection_val, p.ignore_too_much, p.adjust, p.refine)
    kps, scores = _decode_kernel(
        lo,
        tag,
        hi,
        scratch,
        heat,
        ub,
        state,
        tags,
        params.threshold(head),
        params.nms_kernel // 2,
        params.max_people,
        np.asarray(head.joint_order, np.int64),
        params.tag_threshold,
        np.array(flags),
    )
    kps, scores = keep_confident(kps, scores, params)
    if len(scores) == 0:
        return Poses.empty(head.num_keypoints)
    keypoints, boxes = _to_original(kps, *_geometry(meta, params, head))
    return Poses(keypoints, scores, boxes, np.zeros(kps.shape[:2], bool))


def warmup(head: SahrHead) -> None:
    """Compile (or load from numba's cache) the kernels for both presets."""
    k = head.num_keypoints
    rng = np.random.default_rng(0)
    lo = rng.uniform(0.0, 0.05, (k, 8, 8)).astype(np.float32)
    lo[:, 2, 2], lo[:, 5, 6] = 0.9, 0.8
    hi = upsample2(lo)
    tag = np.zeros((k, 8, 8), np.float32)
    tag[:, 4:] = 2.0
    side = 8 * head.strides[0]
    meta = LetterboxMeta(1.0, (0.0, 0.0), (side, side), (side, side))
    names = head.output_names
    for params in PRESETS.values():
        decode({names[0]: lo, names[1]: tag, names[2]: hi}, meta, params, head)
    assign(np.zeros((2, 3)))
    assign(np.zeros((3, 2)))


# -- the decoder-module protocol (see edgepose/families.py) ----------------------------------------------
Head = SahrHead
Params = SahrParams


def describe_outputs(head: SahrHead) -> dict[str, str]:
    """What each raw output holds, for the bundle manifest."""
    k, (s_lo, s_hi) = head.num_keypoints, head.strides
    lo, tags, hi = head.output_names
    return {
        lo: f"raw heatmaps at stride {s_lo}: (1, {k}, H/{s_lo}, W/{s_lo}), one per keypoint (no sigmoid)",
        tags: f"associative-embedding tags at stride {s_lo}: (1, {k}, H/{s_lo}, W/{s_lo}), one value per "
        "keypoint and pixel; a person's joints share a tag",
        hi: f"raw heatmaps at stride {s_hi}: (1, {k}, H/{s_hi}, W/{s_hi}); the decoder averages them with "
        f"the stride-{s_lo} ones resized (bilinear); the training-only scale maps are not in the graph",
    }


def peak_positions(heat: np.ndarray, ys: np.ndarray, xs: np.ndarray, js: np.ndarray, radius: int):
    """Around each (j, y, x): the window argmax and its quarter-adjusted position, and the decision
    margins (best minus second best in the window; |neighbour differences| of the adjustment)."""
    k, h, w = heat.shape
    heat = heat.astype(np.float64)
    pos = np.empty((len(ys), 2))
    margin = np.empty(len(ys))
    for n, (j, y, x) in enumerate(zip(js, ys, xs)):
        y0, y1 = max(y - radius, 0), min(y + radius + 1, h)
        x0, x1 = max(x - radius, 0), min(x + radius + 1, w)
        win = heat[j, y0:y1, x0:x1]
        flat = np.sort(win.ravel())
        by, bx = np.unravel_index(int(np.argmax(win)), win.shape)
        by, bx = by + y0, bx + x0
        m = heat[j]
        pos[n] = _quarter(m, int(bx), int(by))
        gaps = (
            flat[-1] - flat[-2] if flat.size > 1 else np.inf,
            abs(m[by, min(bx + 1, w - 1)] - m[by, max(bx - 1, 0)]),
            abs(m[min(by + 1, h - 1), bx] - m[max(by - 1, 0), bx]),
        )
        margin[n] = min(gaps)
    return pos, margin


#: at most this many peaks per joint enter the parity comparison
PARITY_PEAKS = 1000


def decoded_difference(
    reference: Outputs, candidate: Outputs, head: SahrHead, params: SahrParams, min_cells: int = 100
) -> dict[str, float | int]:
    """Largest keypoint shift (input pixels) between two raw outputs at the reference's peaks.

    A peak is a local maximum of the reference's aggregated heatmap: those above the detection threshold
    plus, always, the ``min_cells`` highest (a random network may have none above it). At each, both
    outputs give the window argmax with the official quarter-pixel adjustment. Peaks whose decision the
    raw tolerance cannot settle (a margin below 1e-3 of the heatmap range: a near-tie in the window or
    between the neighbours) are counted in ``decoded_ambiguous`` and left out of the maximum.
    ``decoded_tag_max_diff`` is the largest tag difference at the peaks (what grouping reads).
    """
    lo_r, tag_r, hi_r = read_outputs(reference, head)
    lo_c, tag_c, hi_c = read_outputs(candidate, head)
    heat_r, tg_r = aggregate(lo_r, tag_r, hi_r, params.project2image)
    heat_c, tg_c = aggregate(lo_c, tag_c, hi_c, params.project2image)
    radius = params.nms_kernel // 2
    k, h, w = heat_r.shape
    whole = np.full((k, 1, 1), np.inf, np.float32)  # one tile per map
    count, top = _scan(heat_r, whole, -np.inf, radius, PARITY_PEAKS, max(h, w))
    js = np.repeat(np.arange(k), count)
    flat = np.concatenate([top[j, : count[j]] for j in range(k)])
    vals = heat_r.reshape(k, -1)[js, flat]
    keep = (vals > params.threshold(head)) | (np.argsort(np.argsort(-vals, kind="stable")) < min_cells)
    js, flat = js[keep], flat[keep]
    ys, xs = flat // w, flat % w
    pos_r, margin = peak_positions(heat_r, ys, xs, js, radius)
    pos_c, _ = peak_positions(heat_c, ys, xs, js, radius)
    tol = 1e-3 * max(float(np.abs(heat_r).max()), 1e-12)
    clear = margin > tol
    shift = np.abs(pos_r - pos_c)[clear] * parse_scale(params, head)
    tags = np.abs(tg_r.astype(np.float64) - tg_c)[js, ys, xs]
    return {
        "decoded_max_px": float(shift.max()) if shift.size else 0.0,
        "decoded_cells": int(clear.sum()),
        "decoded_ambiguous": int((~clear).sum()),
        "decoded_tag_max_diff": float(tags.max()) if tags.size else 0.0,
    }


#: the parameter ``edgepose predict --conf`` sets for this family
CONF_PARAM = "detection_threshold"
