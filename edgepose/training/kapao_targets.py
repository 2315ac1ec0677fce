"""People -> KAPAO objects -> per-level training targets.

KAPAO detects two kinds of objects with one YOLO-style head: a *pose object* (class 0: the person's
box plus K keypoint offsets) and, for every visible keypoint, a *keypoint object* (class k + 1: a
small square box centred on the keypoint). Following the official labels, a keypoint object's side is
``kp_bbox * max(W, H)`` of the *training input*, whatever the person's size (the official pipeline
writes it from the original image and resets it after every affine augmentation to the output size).
Unlike the official code we do not clip keypoint boxes at the image border: clipping would move the
box centre, and the centre *is* the keypoint at inference.

Assignment follows YOLOv5: an object goes to every anchor whose width/height ratio to it is below
``anchor_t`` at every level, in its own grid cell and in up to two neighbouring cells (the nearest
horizontal and vertical neighbour, when the centre lies in that half of its cell). Box, keypoint and
anchor targets are in grid units of the level; keypoint offsets are relative to the assigned cell's
top-left corner, which is what the decode ``kp = (4 sigmoid - 2) * anchor + grid * stride`` expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Column layout of a batch of people from the data loader: image index, x1, y1, x2, y2, then K x (x, y, v).
PEOPLE_HEAD = 5
# Column layout of an object row: image index, class, cx, cy, w, h, then K x (x, y, v)
# (all zero for keypoint objects).
OBJECT_HEAD = 6


def build_objects(
    people: np.ndarray, num_keypoints: int, input_size: tuple[int, int], kp_bbox: float = 0.05
) -> np.ndarray:
    """Turn people rows ``(N, 5 + 3K)`` into KAPAO object rows ``(M, 6 + 3K)`` in input pixels.

    A person gives one pose object; each of its keypoints with ``v > 0`` inside the input gives one
    keypoint object of class ``k + 1``. People with an empty box are dropped.
    """
    k = num_keypoints
    people = np.asarray(people, dtype=np.float32).reshape(-1, PEOPLE_HEAD + 3 * k)
    w_in, h_in = input_size
    side = float(kp_bbox) * max(w_in, h_in)

    x1, y1, x2, y2 = people[:, 1], people[:, 2], people[:, 3], people[:, 4]
    ok = (x2 > x1) & (y2 > y1)
    people = people[ok]
    n = len(people)
    kps = people[:, PEOPLE_HEAD:].reshape(n, k, 3).copy()
    kps[..., 2] = np.where(kps[..., 2] > 0, kps[..., 2], 0.0)

    pose = np.zeros((n, OBJECT_HEAD + 3 * k), np.float32)
    pose[:, 0] = people[:, 0]
    pose[:, 2] = 0.5 * (people[:, 1] + people[:, 3])
    pose[:, 3] = 0.5 * (people[:, 2] + people[:, 4])
    pose[:, 4] = people[:, 3] - people[:, 1]
    pose[:, 5] = people[:, 4] - people[:, 2]
    pose[:, OBJECT_HEAD:] = kps.reshape(n, 3 * k)

    x, y, v = kps[..., 0], kps[..., 1], kps[..., 2]
    vis = (v > 0) & (x >= 0) & (x < w_in) & (y >= 0) & (y < h_in)
    pi, ki = np.nonzero(vis)
    kpo = np.zeros((len(pi), OBJECT_HEAD + 3 * k), np.float32)
    kpo[:, 0] = people[pi, 0]
    kpo[:, 1] = ki + 1
    kpo[:, 2] = x[pi, ki]
    kpo[:, 3] = y[pi, ki]
    kpo[:, 4] = side
    kpo[:, 5] = side
    return np.concatenate([pose, kpo], axis=0)


@dataclass
class LevelTargets:
    """Targets of one output level; row i of every field describes one (object, anchor, cell) match."""

    image: torch.Tensor  # (n,) long
    anchor: torch.Tensor  # (n,) long
    gy: torch.Tensor  # (n,) long
    gx: torch.Tensor  # (n,) long
    cls: torch.Tensor  # (n,) long
    box: torch.Tensor  # (n, 4): centre offset from the cell corner, w, h (grid units)
    kps: torch.Tensor  # (n, K, 3): x, y offset from the cell corner (grid units), v
    anchor_wh: torch.Tensor  # (n, 2) anchor size in grid units

    def __len__(self) -> int:
        return int(self.image.shape[0])


# Candidate cells: own cell, then left, up, right, down neighbours (dx, dy).
_NEIGHBOURS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))


def build_targets(
    objects: torch.Tensor,
    grids: Sequence[tuple[int, int]],
    strides: Sequence[float],
    anchors: torch.Tensor,
    anchor_t: float = 4.0,
) -> list[LevelTargets]:
    """Assign object rows ``(M, 6 + 3K)`` (input pixels) to anchors and cells of every level.

    grids:   (H_l, W_l) of each level's output.
    anchors: (nl, na, 2) anchor sizes in input pixels.
    """
    device = objects.device
    k = (objects.shape[1] - OBJECT_HEAD) // 3
    anchors = torch.as_tensor(anchors, dtype=torch.float32, device=device)
    out = []
    for lvl, ((gh, gw), stride) in enumerate(zip(grids, strides, strict=True)):
        anc = anchors[lvl] / float(stride)  # (na, 2) grid units
        gxy = objects[:, 2:4] / stride
        gwh = objects[:, 4:6] / stride
        # Anchor match: both sides within a factor anchor_t of the anchor's.
        ratio = gwh[None, :, :] / anc[:, None, :]  # (na, M, 2)
        worst = torch.maximum(ratio, 1.0 / ratio).amax(dim=2)
        a_idx, o_idx = torch.nonzero(worst < anchor_t, as_tuple=True)
        g = gxy[o_idx]
        frac = g - g.floor()
        lim = torch.tensor([gw, gh], dtype=g.dtype, device=device)
        # Which neighbours each match also takes (YOLOv5: centre in the near half, not on the outer row).
        use = [
            torch.ones_like(o_idx, dtype=torch.bool),
            (frac[:, 0] < 0.5) & (g[:, 0] > 1.0),
            (frac[:, 1] < 0.5) & (g[:, 1] > 1.0),
            (frac[:, 0] > 0.5) & (g[:, 0] < lim[0] - 1.0),
            (frac[:, 1] > 0.5) & (g[:, 1] < lim[1] - 1.0),
        ]
        sel_a, sel_o, cells = [], [], []
        for (dx, dy), mask in zip(_NEIGHBOURS, use, strict=True):
            sel_a.append(a_idx[mask])
            sel_o.append(o_idx[mask])
            base = g[mask].floor()
            cells.append(base + torch.tensor([dx, dy], dtype=g.dtype, device=device))
        a_sel = torch.cat(sel_a)
        o_sel = torch.cat(sel_o)
        cell = torch.cat(cells)
        cell = torch.minimum(torch.clamp(cell, min=0.0), lim - 1.0)
        obj = objects[o_sel]
        kps = obj[:, OBJECT_HEAD:].reshape(-1, k, 3).clone()
        kps[..., :2] = kps[..., :2] / stride - cell[:, None, :]
        out.append(
            LevelTargets(
                image=obj[:, 0].long(),
                anchor=a_sel,
                gy=cell[:, 1].long(),
                gx=cell[:, 0].long(),
                cls=obj[:, 1].long(),
                box=torch.cat([obj[:, 2:4] / stride - cell, obj[:, 4:6] / stride], dim=1),
                kps=kps,
                anchor_wh=anc[a_sel],
            )
        )
    return out
