"""The DEKR decode in plain, vectorised numpy: the oracle for ``edgepose.decoders.dekr`` and its baseline.

Written the way the official torch code is (``hierarchical_pool`` + ``topk``, ``offset_to_pose``,
``up_interpolate`` + ``get_heat_value``, ``nms_core``), whole arrays at a time, so it shares nothing but
the input checks and the rescoring net with the numba kernels.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edgepose.decoders.dekr import DekrHead, DekrParams, Outputs, read_outputs
from edgepose.decoders.dekr_rescore import RescoreNet
from edgepose.poses import Poses
from edgepose.preprocess import LetterboxMeta


def centre_candidates(center: np.ndarray, params: DekrParams) -> tuple[np.ndarray, np.ndarray]:
    """Official ``get_maximum_from_heatmap``: max-pool NMS, top-k, threshold. Ties: lower index first."""
    h, w = center.shape
    r = params.pool_radius(h, w)
    padded = np.pad(center, r, constant_values=-np.inf)
    pooled = sliding_window_view(padded, (2 * r + 1, 2 * r + 1)).max(axis=(-2, -1))
    masked = np.where(pooled == center, center, 0.0).ravel()
    order = np.lexsort((np.arange(masked.size), -masked))[: params.max_people]
    order = order[masked[order] > params.center_threshold]
    return order, masked[order].astype(np.float64)


def upsampled_heat(maps: np.ndarray, px: np.ndarray, py: np.ndarray, stride: int) -> np.ndarray:
    """maps (K, H, W); px, py (N, K). The official upsampled map of joint k read at floor(p), (N, K)."""
    k, h, w = maps.shape
    yc = np.minimum(np.clip(np.floor(np.nan_to_num(py)), 0, stride * h - 1), stride * (h - 1)).astype(
        np.int64
    )
    xc = np.minimum(np.clip(np.floor(np.nan_to_num(px)), 0, stride * w - 1), stride * (w - 1)).astype(
        np.int64
    )
    y0, x0 = yc // stride, xc // stride
    ly, lx = (yc - y0 * stride) / stride, (xc - x0 * stride) / stride
    y1, x1 = np.where(y0 < h - 1, y0 + 1, y0), np.where(x0 < w - 1, x0 + 1, x0)
    j = np.broadcast_to(np.arange(k), px.shape)
    m = maps.astype(np.float64)
    top = (1 - lx) * m[j, y0, x0] + lx * m[j, y0, x1]
    bottom = (1 - lx) * m[j, y1, x0] + lx * m[j, y1, x1]
    return (1 - ly) * top + ly * bottom


def pose_nms(xy: np.ndarray, heat_score: np.ndarray, params: DekrParams) -> list[int]:
    """Official ``nms_core`` (a pose always belongs to its own group)."""
    n = len(xy)
    if n == 0:
        return []
    extent = xy.max(axis=1) - xy.min(axis=1)
    limit = params.nms_threshold * np.sqrt((extent**2).sum(-1))
    dist = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))  # (N, N, K)
    dup = (dist < limit[:, None, None]).sum(-1) > params.nms_num_threshold
    np.fill_diagonal(dup, True)
    ignored: set[int] = set()
    keep: list[int] = []
    for i in range(n):
        if i in ignored:
            continue
        group = np.flatnonzero(dup[i])
        best = int(group[np.argmax(heat_score[group])])
        if best in ignored:
            continue
        keep.append(best)
        ignored |= set(group.tolist())
    return keep


def decode_reference(outputs: Outputs, meta: LetterboxMeta, params: DekrParams, head: DekrHead) -> Poses:
    heat, off = read_outputs(outputs, head)
    k, w = head.num_keypoints, heat.shape[2]
    idx, ctr = centre_candidates(heat[k], params)
    if len(idx) == 0:
        return Poses.empty(k)
    ys, xs = np.divmod(idx, w)
    loc = np.stack([xs, ys], -1).astype(np.float32)[:, None, :]  # (N, 1, 2)
    offsets = off[:, ys, xs].reshape(k, 2, -1).transpose(2, 0, 1)  # (N, K, 2)
    xy = ((loc - offsets) * np.float32(head.stride)).astype(np.float64)
    joint = upsampled_heat(heat[:k], xy[..., 0], xy[..., 1], head.stride)
    mean = joint.sum(1) / k
    keep = pose_nms(xy, mean, params)
    xy, joint, ctr, mean = xy[keep], joint[keep], ctr[keep], mean[keep]

    orig = (xy - np.array(meta.pad)) / meta.gain
    scores = ctr * mean
    if params.rescore and head.rescore_file:
        scores = RescoreNet.load(head.rescore_file).rescore(orig, ctr[:, None] * joint, scores)
    if params.clip:
        orig = np.clip(orig, 0.0, np.array(meta.original_size, np.float64))
    kps = np.concatenate([orig, joint[..., None]], -1)
    boxes = np.concatenate([orig.min(1), orig.max(1)], 1)
    return Poses(kps, scores, boxes, np.zeros(joint.shape, bool))
