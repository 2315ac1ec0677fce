"""DEKR post-processing in numba: raw heatmaps + offsets -> poses, as the official single-scale test.

The graph ends at ``heatmap`` (1, K + 1, H, W: K keypoints, the person centre last; raw, no sigmoid)
and ``offset`` (1, 2K, H, W: per keypoint the x, y of ``centre - keypoint`` in output pixels), both at
stride 4. The decode follows ``lib/core/inference.py`` and ``lib/core/nms.py`` of github.com/HRNet/DEKR
(``TEST.SCALE_FACTOR [1]``, no flip by default, ``MATCH_HMP`` off):

1. centre candidates: local maxima of the centre heatmap (max-pool window 3, 5 or 7 as the map's mean
   side exceeds ``pool_threshold2``/``pool_threshold1``), the ``max_people`` highest (top-k), those above
   ``center_threshold``;
2. each candidate's pose: ``keypoint = stride * (pixel - offset)`` in input pixels (float32, as official);
3. per-joint heat: the keypoint heatmap read at ``floor`` of the keypoint, as the official code reads it
   from the map upsampled to the input size (bilinear, ``align_corners=True`` to ``stride*(H-1)+1`` rows,
   edge rows replicated). The value at one pixel of that map is computed directly, never the whole map;
4. pose NMS: pose j duplicates pose i when more than ``nms_num_threshold`` of their joints lie closer
   than ``nms_threshold * sqrt(w_i^2 + h_i^2)`` (pose i's keypoint-box diagonal); walking the candidates
   in centre-score order, each group keeps its member with the highest mean joint heat, as
   ``nms_core`` (a candidate always counts as its own duplicate, where the official code would fail);
5. score ``= centre heat x mean joint heat``; optionally multiplied by the rescoring net's predicted
   OKS (``dekr_rescore``; needs the head's ``rescore_file``).

Poses come out in the official keep order, mapped to original pixels through the letterbox, keypoints
clipped to the image (``clip``). Keypoint scores are the per-joint heat (the official results write
``centre heat x joint heat``; COCO AP does not read keypoint scores). Boxes are the keypoint extent;
``fused`` is all False.

Flip test (``flip``, off in both presets: it doubles the inference per frame) is the official
``get_multi_stage_outputs(with_flip=True)``: a second pass on the mirrored input shifted left by
``stride - 1`` pixels (so that output pixels of both passes sit on the same input pixels), mirrored back;
heatmaps averaged with left and right swapped, and the two passes' poses averaged. ``merge_flip`` folds
that into one (heatmap, offset) pair, so the decode above runs unchanged.

``dekr_reference.decode_reference`` is the same decode in vectorised numpy, the tests' oracle.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from edgepose.decoders.dekr_rescore import RescoreNet
from edgepose.errors import BundleError, UsageError
from edgepose.poses import Poses
from edgepose.preprocess import LetterboxMeta

Outputs = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class DekrHead:
    """The head's constants, as the bundle manifest stores them.

    stride: input pixels per output pixel. input_multiple: what the input W and H must be a multiple of.
    rescore_file: optional ``.npz`` of the rescoring net (``dekr_rescore.RescoreNet.save``).
    """

    num_keypoints: int
    output_names: tuple[str, ...] = ("heatmap", "offset")
    stride: int = 4
    input_multiple: int = 32
    rescore_file: str | None = None

    def __post_init__(self) -> None:
        try:
            k, s, m = int(self.num_keypoints), int(self.stride), int(self.input_multiple)
        except (TypeError, ValueError) as e:
            raise UsageError("DEKR head needs integer num_keypoints, stride and input_multiple") from e
        if k < 1 or s < 1 or m < 1:
            raise UsageError("DEKR num_keypoints, stride and input_multiple must be at least 1")
        names = tuple(str(n) for n in self.output_names)
        if len(names) != 2:
            raise UsageError(f"DEKR head has two outputs (heatmap, offset), got names {names}")
        object.__setattr__(self, "num_keypoints", k)
        object.__setattr__(self, "stride", s)
        object.__setattr__(self, "input_multiple", m)
        object.__setattr__(self, "output_names", names)
        if self.rescore_file is not None:
            object.__setattr__(self, "rescore_file", str(self.rescore_file))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DekrHead:
        if "num_keypoints" not in d:
            raise BundleError("DEKR head description lacks num_keypoints")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "output_names" else v) for k, v in d.items() if k in fields})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["output_names"] = list(self.output_names)
        return d


@dataclass(frozen=True)
class DekrParams:
    """Decoder settings, named after the official ``TEST``/``DATASET`` config keys they come from.

    center_threshold: TEST.KEYPOINT_THRESHOLD (on the centre heat). max_people: DATASET.MAX_NUM_PEOPLE.
    nms_threshold/nms_num_threshold: TEST.NMS_THRE/NMS_NUM_THRE. pool_threshold1/2: TEST.POOL_THRESHOLD1/2.
    rescore: apply the rescoring net when the head has one. clip: clip keypoints to the image.
    flip: TEST.FLIP_TEST, a second forward pass on the mirrored input (see the module docstring).
    """

    center_threshold: float = 0.01
    max_people: int = 30
    nms_threshold: float = 0.05
    nms_num_threshold: int = 8
    pool_threshold1: float = 300.0
    pool_threshold2: float = 200.0
    rescore: bool = True
    clip: bool = True
    flip: bool = False

    def __post_init__(self) -> None:
        thr = float(self.center_threshold)
        if not 0.0 <= thr <= 1.0:
            raise UsageError(f"center_threshold={thr} must be between 0 and 1")
        if int(self.max_people) < 1:
            raise UsageError("max_people must be at least 1")
        if not float(self.nms_threshold) >= 0.0 or int(self.nms_num_threshold) < 0:
            raise UsageError("nms_threshold must be >= 0 and nms_num_threshold a count >= 0")
        object.__setattr__(self, "center_threshold", thr)
        object.__setattr__(self, "max_people", int(self.max_people))
        object.__setattr__(self, "nms_threshold", float(self.nms_threshold))
        object.__setattr__(self, "nms_num_threshold", int(self.nms_num_threshold))
        object.__setattr__(self, "pool_threshold1", float(self.pool_threshold1))
        object.__setattr__(self, "pool_threshold2", float(self.pool_threshold2))
        object.__setattr__(self, "rescore", bool(self.rescore))
        object.__setattr__(self, "clip", bool(self.clip))
        object.__setattr__(self, "flip", bool(self.flip))

    def pool_radius(self, height: int, width: int) -> int:
        """Half the centre max-pool window: 3 (7x7), 2 (5x5) or 1 (3x3) by the map's mean side."""
        size = (height + width) / 2.0
        return 3 if size > self.pool_threshold1 else 2 if size > self.pool_threshold2 else 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DekrParams:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UsageError(f"unknown DEKR decoder parameter(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def replace(self, **overrides: Any) -> DekrParams:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UsageError(f"unknown DEKR decoder parameter(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides)


PRESETS: dict[str, DekrParams] = {
    # The official COCO test settings of the W32/W48 experiment files, single scale, but flip test off
    # (theirs is on): it doubles the inference, and the default is without it.
    "accuracy": DekrParams(),
    # A camera: only confident centres (0.1 rather than 0.01), no rescoring (it reorders, it does not move
    # points); same NMS.
    "realtime": DekrParams(center_threshold=0.1, rescore=False),
}


def read_outputs(outputs: Outputs | tuple, head: DekrHead) -> tuple[np.ndarray, np.ndarray]:
    """(heatmap (K+1, H, W), offset (2K, H, W)) as C-contiguous float32, checked against the head."""
    if isinstance(outputs, Mapping):
        names = head.output_names
        if all(n in outputs for n in names):
            heat, off = outputs[names[0]], outputs[names[1]]
        elif len(outputs) == 2:
            heat, off = sorted(outputs.values(), key=lambda a: np.shape(a)[-3] != head.num_keypoints + 1)
        else:
            raise BundleError(f"DEKR decoder needs outputs {', '.join(names)}, got {', '.join(outputs)}")
    else:
        heat, off = outputs
    heat = np.ascontiguousarray(heat, dtype=np.float32)
    off = np.ascontiguousarray(off, dtype=np.float32)
    heat = heat[0] if heat.ndim == 4 and heat.shape[0] == 1 else heat
    off = off[0] if off.ndim == 4 and off.shape[0] == 1 else off
    k = head.num_keypoints
    if heat.ndim != 3 or heat.shape[0] != k + 1 or off.shape != (2 * k, *heat.shape[1:]):
        raise BundleError(
            f"DEKR outputs have shapes {heat.shape} and {off.shape}, expected ({k + 1}, H, W) and "
            f"({2 * k}, H, W) for a head with {k} keypoints; the bundle's model and manifest do not match"
        )
    return heat, off


@njit(cache=True, nogil=True)
def _centres(center, thr, radius, max_people):
    """Flat indices and values of the top ``max_people`` local maxima above ``thr`` (ties: lower index)."""
    h, w = center.shape
    idx = np.empty(h * w, np.int64)
    val = np.empty(h * w, np.float64)
    n = 0
    for y in range(h):
        y0, y1 = max(y - radius, 0), min(y + radius + 1, h)
        for x in range(w):
            v = center[y, x]
            if not v > thr:
                continue
            peak = True
            for yy in range(y0, y1):
                for xx in range(max(x - radius, 0), min(x + radius + 1, w)):
                    if center[yy, xx] > v:
                        peak = False
                        break
                if not peak:
                    break
            if peak:
                idx[n] = y * w + x
                val[n] = v
                n += 1
    order = np.argsort(-val[:n], kind="mergesort")[:max_people]
    return idx[order], val[order]


@njit(cache=True, nogil=True)
def _heat_at(hm, px, py, stride):
    """hm upsampled as the official ``up_interpolate`` (align_corners, edge replicated), read at floor(p)."""
    h, w = hm.shape
    fy = math.floor(py) if py == py else 0.0
    fx = math.floor(px) if px == px else 0.0
    yc = int(min(max(fy, 0.0), stride * h - 1.0))
    xc = int(min(max(fx, 0.0), stride * w - 1.0))
    yc = min(yc, stride * (h - 1))
    xc = min(xc, stride * (w - 1))
    y0, x0 = yc // stride, xc // stride
    ly = (yc - y0 * stride) / stride
    lx = (xc - x0 * stride) / stride
    y1 = y0 + 1 if y0 < h - 1 else y0
    x1 = x0 + 1 if x0 < w - 1 else x0
    top = (1.0 - lx) * hm[y0, x0] + lx * hm[y0, x1]
    bottom = (1.0 - lx) * hm[y1, x0] + lx * hm[y1, x1]
    return (1.0 - ly) * top + ly * bottom


@njit(cache=True, nogil=True)
def _pose_nms(xy, heat_score, thre, num_thre):
    """Indices kept by the official ``nms_core``, in keep order."""
    n, k = xy.shape[0], xy.shape[1]
    limit = np.empty(n, np.float64)
    for i in range(n):
        x_lo, x_hi, y_lo, y_hi = xy[i, 0, 0], xy[i, 0, 0], xy[i, 0, 1], xy[i, 0, 1]
        for j in range(1, k):
            x_lo, x_hi = min(x_lo, xy[i, j, 0]), max(x_hi, xy[i, j, 0])
            y_lo, y_hi = min(y_lo, xy[i, j, 1]), max(y_hi, xy[i, j, 1])
        limit[i] = thre * math.sqrt((x_hi - x_lo) ** 2 + (y_hi - y_lo) ** 2)
    ignored = np.zeros(n, np.bool_)
    group = np.zeros(n, np.bool_)
    keep = np.empty(n, np.int64)
    nk = 0
    for i in range(n):
        if ignored[i]:
            continue
        best = -1
        for j in range(n):
            member = j == i
            if not member:
                close = 0
                for q in range(k):
                    dx = xy[i, q, 0] - xy[j, q, 0]
                    dy = xy[i, q, 1] - xy[j, q, 1]
                    if math.sqrt(dx * dx + dy * dy) < limit[i]:
                        close += 1
                member = close > num_thre
            group[j] = member
            if member and (best < 0 or heat_score[j] > heat_score[best]):
                best = j
        if ignored[best]:
            continue
        keep[nk] = best
        nk += 1
        for j in range(n):
            if group[j]:
                ignored[j] = True
    return keep[:nk]


@njit(cache=True, nogil=True)
def _decode_kernel(heat, off, stride, thr, radius, max_people, nms_thre, nms_num_thre):
    """-> keypoints (N, K, 2) input pixels, joint heat (N, K), centre heat (N,), mean joint heat (N,)."""
    k = heat.shape[0] - 1
    w = heat.shape[2]
    idx, ctr = _centres(heat[k], thr, radius, max_people)
    n = idx.shape[0]
    xy = np.empty((n, k, 2), np.float64)
    joint = np.empty((n, k), np.float64)
    mean = np.empty(n, np.float64)
    s32 = np.float32(stride)
    for i in range(n):
        y, x = idx[i] // w, idx[i] % w
        total = 0.0
        for j in range(k):
            px = (np.float32(x) - off[2 * j, y, x]) * s32  # float32 as the official posemap
            py = (np.float32(y) - off[2 * j + 1, y, x]) * s32
            xy[i, j, 0] = px
            xy[i, j, 1] = py
            joint[i, j] = _heat_at(heat[j], np.float64(px), np.float64(py), stride)
            total += joint[i, j]
        mean[i] = total / k
    keep = _pose_nms(xy, mean, nms_thre, nms_num_thre)
    return xy[keep], joint[keep], ctr[keep], mean[keep]


@dataclass(frozen=True)
class DekrCandidates:
    """The poses pose NMS kept, before scoring: what the decoder and the rescoring net's fitting share.

    xy: (N, K, 2) keypoints in original-image pixels, not clipped. joint: (N, K) per-joint heat.
    centre: (N,) centre heat. mean_joint: (N,) mean joint heat (as the kernel summed it).
    """

    xy: np.ndarray
    joint: np.ndarray
    centre: np.ndarray
    mean_joint: np.ndarray

    def __len__(self) -> int:
        return len(self.centre)

    @property
    def scores(self) -> np.ndarray:
        """The official pose score before rescoring: centre heat x mean joint heat."""
        return self.centre * self.mean_joint

    @property
    def keypoint_scores(self) -> np.ndarray:
        """Per-joint ``centre heat x joint heat``: the score the official results write, and what the
        rescoring net reads."""
        return self.centre[:, None] * self.joint


def candidates(outputs: Outputs, meta: LetterboxMeta, params: DekrParams, head: DekrHead) -> DekrCandidates:
    """Raw DEKR outputs of one image -> the kept poses in original pixels, unscored (steps 1-4 above)."""
    heat, off = read_outputs(outputs, head)
    xy, joint, ctr, mean = _decode_kernel(
        heat,
        off,
        head.stride,
        params.center_threshold,
        params.pool_radius(heat.shape[1], heat.shape[2]),
        params.max_people,
        params.nms_threshold,
        params.nms_num_threshold,
    )
    orig = np.empty_like(xy)
    orig[..., 0] = (xy[..., 0] - meta.pad[0]) / meta.gain
    orig[..., 1] = (xy[..., 1] - meta.pad[1]) / meta.gain
    return DekrCandidates(orig, joint, ctr, mean)


def finish(found: DekrCandidates, meta: LetterboxMeta, params: DekrParams, head: DekrHead) -> Poses:
    """Kept poses -> ``Poses``: scores, rescoring, clipping, boxes (step 5)."""
    k = head.num_keypoints
    if len(found) == 0:
        return Poses.empty(k)
    scores = found.scores
    if params.rescore and head.rescore_file:
        scores = RescoreNet.load(head.rescore_file).rescore(found.xy, found.keypoint_scores, scores)
    orig = found.xy.copy()
    if params.clip:
        np.clip(orig[..., 0], 0.0, meta.original_size[0], out=orig[..., 0])
        np.clip(orig[..., 1], 0.0, meta.original_size[1], out=orig[..., 1])
    keypoints = np.concatenate([orig, found.joint[..., None]], axis=2)
    boxes = np.concatenate([orig.min(axis=1), orig.max(axis=1)], axis=1)
    return Poses(keypoints, scores, boxes, np.zeros((len(scores), k), bool))


def decode(outputs: Outputs, meta: LetterboxMeta, params: DekrParams, head: DekrHead) -> Poses:
    """Raw DEKR outputs of one image -> ``Poses`` in original-image pixels, in the official keep order."""
    return finish(candidates(outputs, meta, params, head), meta, params, head)


def rescore_inputs(
    outputs: Outputs, meta: LetterboxMeta, params: DekrParams, head: DekrHead
) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, 2) keypoints and (N, K) per-joint scores the rescoring net reads, for ``fit-rescore``."""
    found = candidates(outputs, meta, params, head)
    return found.xy, found.keypoint_scores


def flip_input(tensor: np.ndarray, head: DekrHead) -> np.ndarray:
    """The flip test's second input: ``tensor`` (N, 3, H, W) mirrored, then shifted ``stride - 1`` pixels
    left (the last columns keep their values), as the official test prepares it."""
    flipped = np.ascontiguousarray(tensor[..., ::-1])
    shift = head.stride - 1
    if shift:
        flipped[..., :-shift] = flipped[..., shift:].copy()
    return flipped


def merge_flip(
    outputs: Outputs, flipped: Outputs, head: DekrHead, flip_index: np.ndarray
) -> dict[str, np.ndarray]:
    """Raw outputs of the input and of ``flip_input(input)`` -> one raw output pair, as the official
    flip test combines them: heatmaps averaged (keypoints swapped by ``flip_index``, the centre kept),
    poses averaged. With both poses at ``pixel - offset``, the averaged pose is ``pixel`` minus
    ``((dx - dx'), (dy + dy')) / 2`` of the mirrored-back, swapped offsets ``dx', dy'``. Works batched."""
    names = head.output_names
    k = head.num_keypoints
    index = np.asarray(flip_index, np.int64)
    if index.shape != (k,):
        raise BundleError(f"flip test needs a flip index of {k} keypoints, got shape {index.shape}")
    heat, off = (np.asarray(outputs[n], np.float32) for n in names)
    heat_f, off_f = (np.asarray(flipped[n], np.float32)[..., ::-1] for n in names)
    heat_f = heat_f.take(np.append(index, k), axis=-3)
    pairs = np.stack([2 * index, 2 * index + 1], axis=1).reshape(-1)
    off_f = off_f.take(pairs, axis=-3)
    merged_off = np.empty(np.broadcast_shapes(off.shape, off_f.shape), np.float32)
    merged_off[..., 0::2, :, :] = (off[..., 0::2, :, :] - off_f[..., 0::2, :, :]) * np.float32(0.5)
    merged_off[..., 1::2, :, :] = (off[..., 1::2, :, :] + off_f[..., 1::2, :, :]) * np.float32(0.5)
    return {names[0]: (heat + heat_f) * np.float32(0.5), names[1]: merged_off}


def warmup(head: DekrHead, flip: bool = False) -> None:
    """Compile (or load from numba's cache) the kernels and read the rescoring weights, if any.

    ``flip`` changes nothing here: ``merge_flip`` is numpy, and its outputs reach the same kernels."""
    k = head.num_keypoints
    heat = np.zeros((k + 1, 16, 16), np.float32)
    heat[k, 4, 4], heat[k, 11, 10] = 0.9, 0.8
    off = np.zeros((2 * k, 16, 16), np.float32)
    off[0::2] = np.linspace(-2.0, 2.0, k, dtype=np.float32)[:, None, None]
    off[1::2] = np.linspace(-3.0, 3.0, k, dtype=np.float32)[:, None, None]
    side = 16 * head.stride
    meta = LetterboxMeta(1.0, (0.0, 0.0), (side, side), (side, side))
    for params in PRESETS.values():
        decode({head.output_names[0]: heat, head.output_names[1]: off}, meta, params, head)


# -- the decoder-module protocol (see edgepose/families.py) ----------------------------------------------
Head = DekrHead
Params = DekrParams


def describe_outputs(head: DekrHead) -> dict[str, str]:
    """What each raw output holds, for the bundle manifest."""
    k, s = head.num_keypoints, head.stride
    return {
        head.output_names[0]: f"raw heatmaps at stride {s}: (1, {k + 1}, H, W), {k} keypoints then the "
        "person centre (no sigmoid)",
        head.output_names[1]: f"raw offsets at stride {s}: (1, {2 * k}, H, W), per keypoint x, y of "
        f"(pixel - keypoint) in output pixels; keypoint = {s} * (pixel - offset)",
    }


def dense_poses(outputs: Outputs, head: DekrHead) -> tuple[np.ndarray, np.ndarray]:
    """Centre heat (H*W,) and every pixel's pose (H*W, K, 2) in input pixels: for parity checks."""
    heat, off = read_outputs(outputs, head)
    _, h, w = heat.shape
    k = head.num_keypoints
    loc = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).reshape(h * w, 1, 2).astype(np.float64)
    offsets = off.reshape(k, 2, h * w).transpose(2, 0, 1).astype(np.float64)
    return heat[k].reshape(-1).astype(np.float64), head.stride * (loc - offsets)


def decoded_difference(
    reference: Outputs, candidate: Outputs, head: DekrHead, params: DekrParams, min_cells: int = 100
) -> dict[str, float | int]:
    """Largest keypoint difference (input pixels) between two raw outputs at the reference's centres.

    Compared are the pixels whose reference centre heat passes ``params.center_threshold`` plus, always,
    the ``min_cells`` highest (a randomly initialised network may have none above the threshold).
    """
    ref_ctr, ref_xy = dense_poses(reference, head)
    _, cand_xy = dense_poses(candidate, head)
    passing = np.flatnonzero(ref_ctr > params.center_threshold)
    cells = np.union1d(passing, np.argsort(-ref_ctr, kind="stable")[:min_cells])
    diff = np.abs(ref_xy[cells] - cand_xy[cells])
    return {
        "decoded_max_px": float(diff.max()) if diff.size else 0.0,
        "decoded_cells": int(len(cells)),
        "decoded_cells_over_threshold": int(len(passing)),
    }


#: the parameter ``edgepose predict --conf`` sets for this family
CONF_PARAM = "center_threshold"
