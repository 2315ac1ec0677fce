"""KAPAO post-processing in numba: raw Detect-head logits -> poses fused with keypoint objects.

The exported graph stops at the head's raw per-level outputs, ``(1, na, H, W, 5 + nc + 2K)`` logits with
``nc = 1 + K`` (class 0: person pose object, class k: keypoint object of type k - 1). Everything that
depends on the data runs here, and only on cells whose objectness passes the threshold (tested on the
logit, so the rest never pay for a sigmoid): grid decode, class-aware NMS, and the fusion of keypoint
objects into the poses (KAPAO's Algorithm 1). The semantics follow the official ``val.py`` (``run_nms``,
``post_process_batch``) and ``utils/general.py`` (``non_max_suppression_kp``, ``scale_coords``);
``kapao_reference.decode_reference`` is the same thing in plain numpy and serves as the tests' oracle.

Deliberate differences from the official code:
- arithmetic is float64 throughout (the official code mixes float16/float32 torch and float64 numpy), so
  results differ from it by rounding only;
- the best class is the argmax of the class logits (the sigmoid is monotonic; equal logits: first class),
  and score ties are broken by cell order (stable sorts), which torch does not promise;
- person boxes are not rounded to whole pixels (``val.py`` rounds them for its JSON);
- ``clip_keypoints="all"`` (default) clips every keypoint to the image. The official ``scale_coords``
  reuses the box clipper on the flattened keypoints, which clips only columns 0-3, i.e. keypoints 0 and 1;
  ``clip_keypoints="official"`` reproduces that, to match the official evaluation.

Flip test (``flip``, off in both presets: it doubles the inference per frame) is the official augmented
inference (``forward_augment``) with flips ``[None, 3]`` at scale 1: a second pass on the mirrored input,
whose detections are mirrored back (``x -> W - x``; keypoint-object classes and pose keypoints swapped
left for right) and joined to the plain pass's before NMS and fusion. ``merge_flip`` hands both passes to
``decode`` (which reads the second pass's levels after the first, as the official code concatenates them);
the kernels mirror candidates as they decode them.

Not in the official KAPAO: a head may carry a rescoring net (``rescore_file``, fitted to the model's own
poses by ``edgepose fit-rescore``). With ``rescore`` on (the ``accuracy`` preset) each pose's score is
multiplied by the net's predicted OKS from the decoded pose (DEKR's ``dekr_rescore`` features, per-joint
scores the keypoint confidences); the poses themselves and their order do not change.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from edgepose.decoders.dekr_rescore import RescoreNet
from edgepose.decoders.nms import batched_nms
from edgepose.errors import BundleError, UsageError
from edgepose.poses import Poses
from edgepose.preprocess import LetterboxMeta

CLIP_MODES = ("all", "official", "none")

LevelOutputs = Sequence[np.ndarray] | Mapping[str, np.ndarray]
#: raw output axis orders the decoder reads (see ``KapaoHead.layout``)
LAYOUTS = ("B,A,H,W,C", "B,A,C,H,W")


@dataclass(frozen=True, eq=False)
class KapaoHead:
    """The Detect head's constants, as the bundle manifest stores them.

    anchors: (nl, na, 2) anchor (w, h) in input pixels. output_names: the ONNX outputs, P3 first.
    layout: the raw outputs' axis order, ``B,A,H,W,C`` (training, the official Detect) or ``B,A,C,H,W``
    (edgepose exports: the convolution's own order, no Transpose in the graph).
    """

    strides: tuple[int, ...]
    anchors: np.ndarray
    num_keypoints: int
    output_names: tuple[str, ...] = ()
    layout: str = "B,A,H,W,C"
    #: optional ``.npz`` of a rescoring net (``dekr_rescore.RescoreNet.save``)
    rescore_file: str | None = None
    _strides_f64: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            anchors = np.array(self.anchors, dtype=np.float64)
            strides = tuple(int(s) for s in self.strides)
            k = int(self.num_keypoints)
        except (TypeError, ValueError) as e:
            raise UsageError("KAPAO head needs numeric strides, anchors and num_keypoints") from e
        if anchors.ndim != 3 or anchors.shape[2] != 2 or anchors.shape[0] != len(strides) or not anchors.size:
            raise UsageError(
                f"KAPAO anchors must be (levels={len(strides)}, anchors, 2), got {anchors.shape}"
            )
        if any(s <= 0 or s != float(v) for s, v in zip(strides, self.strides)) or k < 1:
            raise UsageError("KAPAO strides must be positive integers and num_keypoints at least 1")
        if self.layout not in LAYOUTS:
            raise UsageError(f"KAPAO output layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        names = tuple(str(n) for n in self.output_names)
        if names and len(names) != len(strides):
            raise UsageError(f"KAPAO head lists {len(names)} output names for {len(strides)} levels")
        anchors.setflags(write=False)
        strides_f64 = np.array(strides, np.float64)
        strides_f64.setflags(write=False)
        for name, value in (
            ("strides", strides),
            ("anchors", anchors),
            ("num_keypoints", k),
            ("output_names", names),
            ("rescore_file", None if self.rescore_file is None else str(self.rescore_file)),
            ("_strides_f64", strides_f64),
        ):
            object.__setattr__(self, name, value)

    @property
    def channel_major(self) -> bool:
        return self.layout == "B,A,C,H,W"

    @property
    def nl(self) -> int:
        return len(self.strides)

    @property
    def na(self) -> int:
        return self.anchors.shape[1]

    @property
    def nc(self) -> int:
        return 1 + self.num_keypoints

    @property
    def no(self) -> int:
        """Channels per anchor: x, y, w, h, obj, classes, keypoint x/y offsets."""
        return 5 + self.nc + 2 * self.num_keypoints

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KapaoHead:
        missing = {"strides", "anchors", "num_keypoints"} - set(d)
        if missing:
            raise BundleError(f"KAPAO head description lacks {', '.join(sorted(missing))}")
        return cls(
            tuple(d["strides"]),
            np.asarray(d["anchors"]),
            d["num_keypoints"],
            tuple(d.get("output_names") or ()),
            str(d.get("layout") or "B,A,H,W,C"),  # bundles from before the layout was recorded
            d.get("rescore_file"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "strides": list(self.strides),
            "anchors": self.anchors.tolist(),
            "num_keypoints": self.num_keypoints,
            "output_names": list(self.output_names),
            "layout": self.layout,
            **({"rescore_file": self.rescore_file} if self.rescore_file is not None else {}),
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KapaoHead) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(
            (self.strides, self.anchors.tobytes(), self.num_keypoints, self.output_names, self.layout)
        )


@dataclass(frozen=True)
class KapaoParams:
    """Decoder thresholds, named after the official ``val.py`` arguments (``conf`` = ``conf_thres`` ...).

    conf/iou: person (pose object) candidates and NMS; conf_kp/iou_kp: keypoint objects; conf_kp_person:
    only persons above it receive fused keypoints; overwrite_tol: fusion radius in original pixels.
    rescore: apply the head's rescoring net, when it has one (not official; see the module docstring).
    flip: flip test, the official test-time augmentation at one scale (see the module docstring).
    """

    conf: float
    iou: float
    conf_kp: float
    iou_kp: float
    conf_kp_person: float
    overwrite_tol: float
    max_det: int = 300
    max_nms: int = 30000
    max_wh: float = 4096.0
    use_kp_dets: bool = True
    clip_keypoints: str = "all"
    rescore: bool = True
    flip: bool = False

    def __post_init__(self) -> None:
        for name in ("conf", "iou", "conf_kp", "iou_kp", "conf_kp_person"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"decoder parameter {name}={value} must be between 0 and 1")
            object.__setattr__(self, name, value)
        if not float(self.overwrite_tol) >= 0.0:
            raise UsageError(f"overwrite_tol={self.overwrite_tol} must be a distance >= 0 pixels")
        for name in ("max_det", "max_nms"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"decoder parameter {name} must be at least 1")
        if not float(self.max_wh) > 0.0:
            raise UsageError("decoder parameter max_wh must be positive")
        if self.clip_keypoints not in CLIP_MODES:
            raise UsageError(
                f"clip_keypoints must be one of {', '.join(CLIP_MODES)}, got {self.clip_keypoints!r}"
            )
        object.__setattr__(self, "overwrite_tol", float(self.overwrite_tol))
        object.__setattr__(self, "max_det", int(self.max_det))
        object.__setattr__(self, "max_nms", int(self.max_nms))
        object.__setattr__(self, "max_wh", float(self.max_wh))
        object.__setattr__(self, "use_kp_dets", bool(self.use_kp_dets))
        object.__setattr__(self, "rescore", bool(self.rescore))
        object.__setattr__(self, "flip", bool(self.flip))

    @property
    def combined_nms(self) -> bool:
        """The official shortcut: one NMS over every class when the two passes would agree."""
        return self.iou == self.iou_kp and self.conf_kp >= self.conf

    def clip_count(self, num_keypoints: int) -> int:
        """How many leading keypoints are clipped to the image."""
        return {"all": num_keypoints, "official": min(2, num_keypoints), "none": 0}[self.clip_keypoints]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KapaoParams:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UsageError(f"unknown KAPAO decoder parameter(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def replace(self, **overrides: Any) -> KapaoParams:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UsageError(f"unknown KAPAO decoder parameter(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides)


PRESETS: dict[str, KapaoParams] = {
    # The official val.py defaults (what COCO AP is reported with).
    "accuracy": KapaoParams(0.001, 0.65, 0.2, 0.25, 0.3, 50),
    # Close to the official demos: few candidates, one combined NMS; no rescoring (it reorders, it does
    # not move points).
    "realtime": KapaoParams(0.5, 0.45, 0.5, 0.45, 0.2, 50, rescore=False),
}


def ordered_levels(outputs: LevelOutputs, head: KapaoHead) -> tuple[np.ndarray, ...]:
    """The head outputs as a tuple of float32 ``(1, na, H, W, no)`` arrays, P3 first.

    A mapping is read in ``head.output_names`` order when it has those names, else finest grid first.
    Channel-major outputs (``B,A,C,H,W``) come back as transposed views, not copies: the kernels index
    them in place, and the objectness channel they scan is then contiguous.
    """
    grid_axes = slice(3, 5) if head.channel_major else slice(2, 4)
    if isinstance(outputs, Mapping):
        if head.output_names and all(n in outputs for n in head.output_names):
            arrays = [outputs[n] for n in head.output_names]
        else:
            items = sorted(outputs.items(), key=lambda kv: (-int(np.prod(np.shape(kv[1])[grid_axes])), kv[0]))
            arrays = [v for _, v in items]
    else:
        arrays = list(outputs)
    if len(arrays) != head.nl:
        raise BundleError(
            f"KAPAO decoder got {len(arrays)} model outputs, expected {head.nl} (one per level)"
        )
    levels = []
    for i, a in enumerate(arrays):
        a = np.ascontiguousarray(a, dtype=np.float32)
        if a.ndim == 4:
            a = a[None]
        channels = a.shape[2] if head.channel_major else a.shape[-1]
        if a.ndim != 5 or a.shape[0] != 1 or a.shape[1] != head.na or channels != head.no:
            expected = "{no}, H, W" if head.channel_major else "H, W, {no}"
            raise BundleError(
                f"KAPAO output {i} has shape {a.shape}, expected (1, {head.na}, "
                f"{expected.format(no=head.no)}) for a head with {head.num_keypoints} keypoints; the "
                "bundle's model and manifest do not match"
            )
        levels.append(a.transpose(0, 1, 3, 4, 2) if head.channel_major else a)
    if head.channel_major and len({lv.flags.c_contiguous for lv in levels}) > 1:
        # a 1x1 grid's view counts as contiguous; numba needs one array type for the whole tuple
        levels = [np.ascontiguousarray(lv) for lv in levels]
    return tuple(levels)


def decode_grid(levels: LevelOutputs, head: KapaoHead) -> np.ndarray:
    """Every cell decoded as the official Detect head does, ``(sum na*H*W, no)`` float64, input pixels.

    Columns: x, y, w, h (centre and size), obj, class scores, keypoint x/y. Cells in the official order
    (level, anchor, y, x). Dense and plain numpy: for parity checks, not for the per-frame path. float64
    because keypoints reach thousands of pixels, where a float32 ulp alone is 2.4e-4 px.
    """
    out = []
    k = head.num_keypoints
    for lvl, arr in enumerate(ordered_levels(levels, head)):
        _, na, h, w, no = arr.shape
        with np.errstate(over="ignore"):
            y = 1.0 / (1.0 + np.exp(-arr[0].astype(np.float64)))
        s = float(head.strides[lvl])
        gx = np.arange(w, dtype=np.float64)[None, None, :]
        gy = np.arange(h, dtype=np.float64)[None, :, None]
        aw = head.anchors[lvl, :, 0][:, None, None]
        ah = head.anchors[lvl, :, 1][:, None, None]
        y[..., 0] = (2.0 * y[..., 0] - 0.5 + gx) * s
        y[..., 1] = (2.0 * y[..., 1] - 0.5 + gy) * s
        y[..., 2] = (2.0 * y[..., 2]) ** 2 * aw
        y[..., 3] = (2.0 * y[..., 3]) ** 2 * ah
        kp = y[..., no - 2 * k :]
        kp[..., 0::2] = (4.0 * kp[..., 0::2] - 2.0) * aw[..., None] + (gx * s)[..., None]
        kp[..., 1::2] = (4.0 * kp[..., 1::2] - 2.0) * ah[..., None] + (gy * s)[..., None]
        out.append(y.reshape(-1, no))
    return np.concatenate(out)


def logit_floor(p: float) -> float:
    """A logit below which sigmoid(t) > p is impossible, with a margin for rounding (p in [0, 1])."""
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p / (1.0 - p)) - (1e-6 + 1e-12 / (p * (1.0 - p)))


@njit(cache=True, nogil=True)
def _sigmoid(t):
    return 1.0 / (1.0 + math.exp(-t))


@njit(cache=True, nogil=True)
def _to_original(v, pad, gain, limit, clip):
    out = (v - pad) / gain
    if clip:
        out = min(max(out, 0.0), limit)
    return out


@njit(cache=True, nogil=True)
def _scan(levels, strides, anchors, nk, pre_logit, thr_person, thr_kp, mirror, cls_map):
    """Candidate cells: obj > thr and obj * best-class score > thr (thr per best class). Returns compact
    arrays: level, anchor, gy, gx (int64 (n, 4)), class, score and xyxy box in input pixels.

    A level with ``mirror[lvl] > 0`` is a pass on the mirrored input of that width: its boxes are mirrored
    back (``x -> mirror - x``) and its classes mapped through ``cls_map`` (left and right swapped)."""
    cap = 0
    for lvl in range(len(levels)):
        cap += levels[lvl].shape[1] * levels[lvl].shape[2] * levels[lvl].shape[3]
    where = np.empty((cap, 4), np.int64)
    cls = np.empty(cap, np.int64)
    score = np.empty(cap, np.float64)
    box = np.empty((cap, 4), np.float64)
    nc = nk + 1
    n = 0
    for lvl in range(len(levels)):
        lv = levels[lvl]
        na, hh, ww = lv.shape[1], lv.shape[2], lv.shape[3]
        s = strides[lvl]
        # (a, gy, gx) indexing works on C arrays and on the transposed views of channel-major outputs
        for r in range(na * hh * ww):
            a = r // (hh * ww)
            gy = (r // ww) % hh
            gx = r % ww
            cell = lv[0, a, gy, gx]
            t = cell[4]
            if not t > pre_logit:
                continue
            best = 0
            best_logit = cell[5]
            for c in range(1, nc):
                if cell[5 + c] > best_logit:
                    best = c
                    best_logit = cell[5 + c]
            thr = thr_person if best == 0 else thr_kp
            obj = _sigmoid(np.float64(t))
            if not obj > thr:
                continue
            conf = obj * _sigmoid(np.float64(best_logit))
            if not conf > thr:
                continue
            cx = (2.0 * _sigmoid(np.float64(cell[0])) - 0.5 + gx) * s
            cy = (2.0 * _sigmoid(np.float64(cell[1])) - 0.5 + gy) * s
            if mirror[lvl] > 0.0:
                cx = mirror[lvl] - cx
                best = cls_map[best]
            bw = (2.0 * _sigmoid(np.float64(cell[2]))) ** 2 * anchors[lvl, a, 0]
            bh = (2.0 * _sigmoid(np.float64(cell[3]))) ** 2 * anchors[lvl, a, 1]
            where[n, 0] = lvl
            where[n, 1] = a
            where[n, 2] = gy
            where[n, 3] = gx
            cls[n] = best
            score[n] = conf
            box[n, 0] = cx - bw / 2.0
            box[n, 1] = cy - bh / 2.0
            box[n, 2] = cx + bw / 2.0
            box[n, 3] = cy + bh / 2.0
            n += 1
    return where[:n], cls[:n], score[:n], box[:n]


@njit(cache=True, nogil=True)
def _nms_groups(
    cls, score, box, combined, iou_person, iou_kp, conf_kp_keep, max_nms, max_det, max_wh, want_kp
):
    """Person and keypoint-object indices after NMS, in NMS order (the official ``run_nms``)."""
    if combined:
        keep = batched_nms(box, score, cls, iou_person, max_wh, max_nms, max_det)
        persons = keep[cls[keep] == 0]
        sel = keep[cls[keep] > 0]
        return persons, sel[score[sel] >= conf_kp_keep]
    idx = np.nonzero(cls == 0)[0]
    persons = idx[batched_nms(box[idx], score[idx], cls[idx], iou_person, max_wh, max_nms, max_det)]
    if not want_kp:
        return persons, np.empty(0, np.int64)
    idx = np.nonzero(cls > 0)[0]
    kps = idx[batched_nms(box[idx], score[idx], cls[idx], iou_kp, max_wh, max_nms, max_det)]
    return persons, kps


@njit(cache=True, nogil=True)
def _decode_kernel(
    levels,
    strides,
    anchors,
    nk,
    pre_logit,
    thr_person,
    thr_kp,
    combined,
    iou_person,
    iou_kp,
    conf_kp_keep,
    max_nms,
    max_det,
    max_wh,
    use_kp_dets,
    conf_kp_person,
    overwrite_tol,
    pad_x,
    pad_y,
    gain,
    width,
    height,
    n_clip,
    mirror,
    cls_map,
    kp_map,
):
    where, cls, score, box = _scan(
        levels, strides, anchors, nk, pre_logit, thr_person, thr_kp, mirror, cls_map
    )
    persons, kpdets = _nms_groups(
        cls, score, box, combined, iou_person, iou_kp, conf_kp_keep, max_nms, max_det, max_wh, use_kp_dets
    )
    n = persons.shape[0]
    kps = np.zeros((n, nk, 3), np.float64)
    boxes = np.empty((n, 4), np.float64)
    scores = np.empty(n, np.float64)
    fused = np.zeros((n, nk), np.bool_)
    first = 5 + nk + 1
    for p in range(n):
        i = persons[p]
        lvl, a, gy, gx = where[i, 0], where[i, 1], where[i, 2], where[i, 3]
        lv = levels[lvl]
        s = strides[lvl]
        aw, ah = anchors[lvl, a, 0], anchors[lvl, a, 1]
        flip = mirror[lvl] > 0.0
        for k in range(nk):
            r = kp_map[k] if flip else k  # a mirrored pass's joint k is the mirror image of kp_map[k]
            x = (4.0 * _sigmoid(np.float64(lv[0, a, gy, gx, first + 2 * r])) - 2.0) * aw + gx * s
            y = (4.0 * _sigmoid(np.float64(lv[0, a, gy, gx, first + 2 * r + 1])) - 2.0) * ah + gy * s
            if flip:
                x = mirror[lvl] - x
            kps[p, k, 0] = _to_original(x, pad_x, gain, width, k < n_clip)
            kps[p, k, 1] = _to_original(y, pad_y, gain, height, k < n_clip)
        boxes[p, 0] = _to_original(box[i, 0], pad_x, gain, width, True)
        boxes[p, 1] = _to_original(box[i, 1], pad_y, gain, height, True)
        boxes[p, 2] = _to_original(box[i, 2], pad_x, gain, width, True)
        boxes[p, 3] = _to_original(box[i, 3], pad_y, gain, height, True)
        scores[p] = score[i]

    # Fusion (KAPAO Algorithm 1, as post_process_batch): each keypoint object, in NMS order, moves the
    # nearest same-type keypoint of a confident person onto its box centre when it beats that keypoint's
    # score and lies within overwrite_tol. Later objects see the moved keypoints and raised scores.
    eligible = np.nonzero(scores > conf_kp_person)[0]
    if use_kp_dets and eligible.shape[0] > 0:
        for d in range(kpdets.shape[0]):
            j = kpdets[d]
            k = cls[j] - 1
            cx = (
                _to_original(box[j, 0], pad_x, gain, width, True)
                + _to_original(box[j, 2], pad_x, gain, width, True)
            ) / 2.0
            cy = (
                _to_original(box[j, 1], pad_y, gain, height, True)
                + _to_original(box[j, 3], pad_y, gain, height, True)
            ) / 2.0
            best = -1
            best_d = np.inf
            for e in range(eligible.shape[0]):
                p = eligible[e]
                dx = kps[p, k, 0] - cx
                dy = kps[p, k, 1] - cy
                dist = math.sqrt(dx * dx + dy * dy)
                if best < 0 or dist < best_d:
                    best = p
                    best_d = dist
            if score[j] > kps[best, k, 2] and best_d < overwrite_tol:
                kps[best, k, 0] = cx
                kps[best, k, 1] = cy
                kps[best, k, 2] = score[j]
                fused[best, k] = True
    return kps.astype(np.float32), scores.astype(np.float32), boxes.astype(np.float32), fused


@functools.lru_cache(maxsize=8)
def _single_pass(head: KapaoHead) -> tuple[np.ndarray, ...]:
    """strides, anchors, mirror widths, class and keypoint maps of a plain pass: made once per head,
    not per frame."""
    nk = head.num_keypoints
    out = (
        head._strides_f64,
        head.anchors,
        np.zeros(head.nl),
        np.arange(nk + 1, dtype=np.int64),
        np.arange(nk, dtype=np.int64),
    )
    for a in out:
        a.setflags(write=False)
    return out


def _decode_inputs(
    outputs: LevelOutputs, meta: LetterboxMeta, head: KapaoHead
) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The levels to decode (the mirrored pass's after the plain ones, as the official augmented
    inference concatenates them), with per level its stride, anchors and mirror width (0: not
    mirrored), and the class and keypoint maps of mirrored levels."""
    if not (isinstance(outputs, Mapping) and FLIP_INDEX in outputs):
        return (ordered_levels(outputs, head), *_single_pass(head))
    plain = {n: v for n, v in outputs.items() if n != FLIP_INDEX and not n.startswith(FLIPPED)}
    mirrored = {n[len(FLIPPED) :]: v for n, v in outputs.items() if n.startswith(FLIPPED)}
    kp_map = np.asarray(outputs[FLIP_INDEX], np.int64)
    levels = ordered_levels(plain, head) + ordered_levels(mirrored, head)
    if len({lv.flags.c_contiguous for lv in levels}) > 1:  # one array type for numba's tuple
        levels = tuple(np.ascontiguousarray(lv) for lv in levels)
    mirror = np.repeat([0.0, float(meta.input_size[0])], head.nl)
    cls_map = np.concatenate([[0], 1 + kp_map]).astype(np.int64)
    strides = np.tile(head._strides_f64, 2)
    return levels, strides, np.concatenate([head.anchors] * 2), mirror, cls_map, kp_map


def decode(outputs: LevelOutputs, meta: LetterboxMeta, params: KapaoParams, head: KapaoHead) -> Poses:
    """Raw KAPAO head outputs of one image -> ``Poses`` in original-image pixels, in NMS order."""
    levels, strides, anchors, mirror, cls_map, kp_map = _decode_inputs(outputs, meta, head)
    combined = params.combined_nms
    thr_kp = params.conf if combined else params.conf_kp
    kps, scores, boxes, fused = _decode_kernel(
        levels,
        strides,
        anchors,
        head.num_keypoints,
        logit_floor(min(params.conf, thr_kp)),
        params.conf,
        thr_kp,
        combined,
        params.iou,
        params.iou_kp,
        params.conf_kp,
        params.max_nms,
        params.max_det,
        params.max_wh,
        params.use_kp_dets,
        params.conf_kp_person,
        params.overwrite_tol,
        float(meta.pad[0]),
        float(meta.pad[1]),
        float(meta.gain),
        float(meta.original_size[0]),
        float(meta.original_size[1]),
        params.clip_count(head.num_keypoints),
        mirror,
        cls_map,
        kp_map,
    )
    if params.rescore and head.rescore_file and len(scores):
        rescored = RescoreNet.load(head.rescore_file).rescore(kps[..., :2], kps[..., 2], scores)
        scores = rescored.astype(np.float32)
    return Poses(kps, scores, boxes, fused)


def rescore_inputs(
    outputs: LevelOutputs, meta: LetterboxMeta, params: KapaoParams, head: KapaoHead
) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, 2) keypoints and (N, K) per-joint scores the rescoring net reads, for ``fit-rescore``."""
    poses = decode(outputs, meta, params.replace(rescore=False), head)
    return poses.keypoints[..., :2], poses.keypoints[..., 2]


#: keys ``merge_flip`` adds to the outputs: the mirrored pass's levels (prefixed) and the flip index
FLIPPED = "flipped:"
FLIP_INDEX = "flip_index"


def _named(outputs: LevelOutputs, head: KapaoHead) -> dict[str, np.ndarray]:
    if not isinstance(outputs, Mapping):
        return {f"level{i}": a for i, a in enumerate(outputs)}
    if head.output_names and all(n in outputs for n in head.output_names):
        return {n: outputs[n] for n in head.output_names}
    return dict(outputs)


def flip_input(tensor: np.ndarray, head: KapaoHead) -> np.ndarray:
    """The flip test's second input: ``tensor`` (N, 3, H, W) mirrored (the official ``x.flip(3)``)."""
    return np.ascontiguousarray(tensor[..., ::-1])


def merge_flip(
    outputs: LevelOutputs, flipped: LevelOutputs, head: KapaoHead, flip_index: np.ndarray
) -> dict[str, np.ndarray]:
    """Both passes' raw outputs for ``decode``, which detects in both, mirrors the second pass's boxes
    and keypoints back (left and right swapped by ``flip_index``) and runs NMS and fusion over all of
    them: the official augmented inference with flips ``[None, 3]`` at scale 1."""
    index = np.asarray(flip_index, np.int64)
    if index.shape != (head.num_keypoints,):
        raise BundleError(
            f"flip test needs a flip index of {head.num_keypoints} keypoints, got {index.shape}"
        )
    merged = _named(outputs, head)
    merged.update({FLIPPED + n: v for n, v in _named(flipped, head).items()})
    merged[FLIP_INDEX] = index
    return merged


def warmup(head: KapaoHead, flip: bool = False) -> None:
    """Compile (or load from numba's cache) every kernel for this head, so the first frame is not a JIT.

    ``flip``: also the flip test's specialisation (twice the levels), which only a decoder with the flip
    test on needs."""
    levels = []
    for _ in range(head.nl):
        lv = np.full((1, head.na, 2, 2, head.no), -8.0, np.float32)
        lv[0, :, 0, 0, 4] = 8.0  # one confident cell per anchor: person, then keypoint objects
        for a in range(head.na):
            lv[0, a, 0, 0, 5 + a % head.nc] = 8.0
        lv[..., :4] = 0.0
        lv[..., 5 + head.nc :] = 0.0
        levels.append(np.ascontiguousarray(lv.transpose(0, 1, 4, 2, 3)) if head.channel_major else lv)
    side = 2 * max(head.strides)
    meta = LetterboxMeta(1.0, (0.0, 0.0), (side, side), (side, side))
    for params in PRESETS.values():
        decode(levels, meta, params, head)
    if flip:
        both = merge_flip(levels, levels, head, np.arange(head.num_keypoints))
        decode(both, meta, PRESETS["accuracy"].replace(flip=True), head)


# -- the decoder-module protocol (see edgepose/families.py) ----------------------------------------------
Head = KapaoHead
Params = KapaoParams


def describe_outputs(head: KapaoHead) -> dict[str, str]:
    """What each raw output holds, for the bundle manifest."""
    k = head.num_keypoints
    channels = f"5 box/obj + {1 + k} classes + {2 * k} keypoint coords"
    axes = f"{channels}, H, W" if head.channel_major else f"H, W, {channels}"
    return {
        name: f"Detect raw logits at stride {int(s)}: (1, {head.na} anchors, {axes})"
        for name, s in zip(head.output_names, head.strides)
    }


def decoded_difference(
    reference: LevelOutputs,
    candidate: LevelOutputs,
    head: KapaoHead,
    params: KapaoParams,
    min_cells: int = 100,
) -> dict[str, float | int]:
    """Largest box/keypoint difference (input pixels) between two raw outputs, over confident cells.

    Cells are those whose reference score (obj x best class) passes ``params.conf``; a randomly
    initialised network may have none, so the ``min_cells`` highest-scoring cells are always included
    and the manifest says how many were compared.
    """
    ref = decode_grid(reference, head)
    cand = decode_grid(candidate, head)
    nc = head.nc
    score = ref[:, 4] * ref[:, 5 : 5 + nc].max(axis=1)
    passing = np.flatnonzero(score > params.conf)
    cells = np.union1d(passing, np.argsort(-score)[:min_cells])
    cols = np.r_[0:4, 5 + nc : ref.shape[1]]
    diff = np.abs(ref[np.ix_(cells, cols)] - cand[np.ix_(cells, cols)])
    return {
        "decoded_max_px": float(diff.max()) if diff.size else 0.0,
        "decoded_cells": int(len(cells)),
        "decoded_cells_over_threshold": int(len(passing)),
    }


#: the parameter ``edgepose predict --conf`` sets for this family
CONF_PARAM = "conf"
