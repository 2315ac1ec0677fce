"""SAHR/HigherHRNet post-processing in numba: raw heatmaps + tags -> grouped poses, as the official test.

The graph ends at three raw outputs: ``heatmaps_lo`` (1, K, H/4, W/4), ``tags`` (1, K, H/4, W/4: one
associative-embedding value per joint) and ``heatmaps_hi`` (1, K, H/2, W/2). The decode follows
``lib/core/inference.py`` (``get_multi_stage_outputs``, ``aggregate_results``) and ``lib/core/group.py``
(``HeatmapParser``) of github.com/HRNet/HigherHRNet-Human-Pose-Estimation and SWAHR-HumanPose, single
scale (the flip test, ``flip``, is described under ``merge_flip``):

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

The kernels live beside this module, one step each: ``sahr_resize`` (the 2x resizes and aggregation),
``sahr_tiles`` (the tiled parse map and its candidates), ``sahr_group`` (grouping, adjustment, scores,
refinement) and ``assignment`` (the optimal assignment). This module holds the head and parameters and
strings the steps together.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from edgepose.decoders.assignment import assign
from edgepose.decoders.sahr_group import _adjust_score, _group, _quarter, _refine
from edgepose.decoders.sahr_resize import aggregate, upsample2
from edgepose.decoders.sahr_tiles import _parse_maps, _scan
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
    AP wants them; on a camera the low scorers are fragments of two or three joints). flip: TEST.FLIP_TEST,
    a second pass on the mirrored input (``merge_flip``); off in both presets (it doubles the inference).
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
    flip: bool = False

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
        for f in (
            "use_detection_val",
            "ignore_too_much",
            "adjust",
            "refine",
            "project2image",
            "clip",
            "flip",
        ):
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
    """(heatmaps_lo (K, h, w), tags (D, K, h, w), heatmaps_hi (K, 2h, 2w)) as C-contiguous float32.

    Tags come as (1, K, h, w), one value per joint (D = 1), or, from ``merge_flip``, as the official flip
    test stacks them, (1, K, h, w, D); the batch axis is optional."""
    names = head.output_names
    if isinstance(outputs, Mapping):
        if not all(n in outputs for n in names):
            raise BundleError(f"SAHR decoder needs outputs {', '.join(names)}, got {', '.join(outputs)}")
        arrays = [outputs[n] for n in names]
    else:
        arrays = list(outputs)
        if len(arrays) != 3:
            raise BundleError(f"SAHR decoder needs three outputs ({', '.join(names)}), got {len(arrays)}")
    batched = np.ndim(arrays[0]) == 4
    lo, tag, hi = (np.asarray(a[0] if batched else a, dtype=np.float32) for a in arrays)
    if tag.ndim == lo.ndim:
        tag = tag[None]
    elif tag.ndim == lo.ndim + 1:
        tag = np.moveaxis(tag, -1, 0)
    lo, tag, hi = (np.ascontiguousarray(a) for a in (lo, tag, hi))
    k = head.num_keypoints
    ok = lo.ndim == 3 and lo.shape[0] == k and tag.shape[1:] == lo.shape and tag.shape[0] >= 1
    if not ok or hi.shape != (k, 2 * lo.shape[1], 2 * lo.shape[2]):
        raise BundleError(
            f"SAHR outputs have shapes {lo.shape}, {tag.shape} and {hi.shape}, expected ({k}, h, w), "
            f"(tag dims, {k}, h, w) and ({k}, 2h, 2w) for a head with {k} keypoints; the bundle's model "
            "and manifest do not match"
        )
    return lo, tag, hi


@njit(cache=True, nogil=True)
def _decode_kernel(lo, tag_lo, hi, scratch, heat, ub, state, tags, thr, radius, topk, order, tag_thr, flags):
    """flags: project2image, use_detection_val, ignore_too_much, adjust, refine."""
    full = flags[0]
    tile = 8 if full else 4
    count, top, lz = _parse_maps(lo, hi, full, heat, ub, state, scratch, thr, radius, topk)
    cand_tag = np.zeros((top.shape[0], top.shape[1], tag_lo.shape[0]))
    joints = _group(heat, tag_lo, full, count, top, order, topk, tag_thr, flags[1], flags[2], cand_tag)
    kps, scores = _adjust_score(joints, lz, tile, flags[3])
    if flags[4]:
        _refine(kps, joints, lz, tile, tag_lo, full, tags, count, top, cand_tag, thr)
    return kps, scores


_WORKSPACE = threading.local()


def _buffers(k: int, h: int, w: int, full: bool, dims: int = 1) -> tuple[np.ndarray, ...]:
    """This thread's maps for stride-4 outputs of (h, w): one joint's stride-2 heat (scratch), the parse
    map's heat, its tile bounds and states, and one joint's ``dims`` tag maps (refinement works joint by
    joint), reused across frames (no page faults; only the tiles a frame touches are written)."""
    key = (k, h, w, full, dims)
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
            np.empty((dims, *heat.shape[1:]), np.float32),
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
        head.num_keypoints, lo.shape[1], lo.shape[2], params.project2image, tag.shape[0]
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


def flip_input(tensor: np.ndarray, head: SahrHead) -> np.ndarray:
    """The flip test's second input: ``tensor`` (N, 3, H, W) mirrored (the official
    ``torch.flip(image, [3])``, no shift)."""
    return np.ascontiguousarray(tensor[..., ::-1])


def merge_flip(
    outputs: Outputs, flipped: Outputs, head: SahrHead, flip_index: np.ndarray
) -> dict[str, np.ndarray]:
    """Raw outputs of the input and of ``flip_input(input)`` -> one set for ``decode``, as the official flip
    test (``get_multi_stage_outputs(with_flip=True)``, ``aggregate_results``) combines them.

    The mirrored pass's maps are mirrored back and its joints swapped (``flip_index``); heatmaps are
    averaged over the two passes, at both resolutions; tags are stacked along a new last axis, the plain
    pass's first: (N, K, h, w, 2), each joint's two tags a vector that grouping and refinement compare by
    Euclidean distance. The official code averages each pass's aggregated map and then the passes; every
    step is linear, so averaging the raw maps first gives the same map to float32 rounding. Works batched.
    """
    names = head.output_names
    k = head.num_keypoints
    index = np.asarray(flip_index, np.int64)
    if index.shape != (k,):
        raise BundleError(f"flip test needs a flip index of {k} keypoints, got shape {index.shape}")
    lo, tag, hi = (np.asarray(outputs[n], np.float32) for n in names)
    lo_f, tag_f, hi_f = (np.asarray(flipped[n], np.float32)[..., ::-1].take(index, axis=-3) for n in names)
    half = np.float32(0.5)
    return {
        names[0]: (lo + lo_f) * half,
        names[1]: np.stack([tag, tag_f], axis=-1),
        names[2]: (hi + hi_f) * half,
    }


def warmup(head: SahrHead, flip: bool = False) -> None:
    """Compile (or load from numba's cache) the kernels for both presets (with the flip test's 2-D tags:
    the same compiled kernels, one more pass through them)."""
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
    for tags in (tag, np.stack([tag, tag], axis=-1)) if flip else (tag,):
        for params in PRESETS.values():
            decode({names[0]: lo, names[1]: tags, names[2]: hi}, meta, params, head)
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
    heat_r, tg_r = aggregate(lo_r, tag_r[0], hi_r, params.project2image)
    heat_c, tg_c = aggregate(lo_c, tag_c[0], hi_c, params.project2image)
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
