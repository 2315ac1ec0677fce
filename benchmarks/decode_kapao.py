"""Benchmark the KAPAO decoder: numba ``decode`` against the numpy ``decode_reference``, interleaved.

    python benchmarks/decode_kapao.py [--iters 200] [--seed 0] [--json out.json]

Inputs are synthetic raw head outputs for a 640x640 image (K=17, the official *6 anchors), made to look
like a trained model's on a scene of N people:

- every cell starts hopeless: objectness logit ~ N(-9, 1.5), class logits ~ N(-5, 1.5), box and keypoint
  logits ~ N(0, 1);
- each person (80-400 px tall, 0.45 as wide, a standing COCO pose with 2% jitter) claims, on every level,
  the 5x5 cells around its centre, for each anchor within 4x of its box (YOLOv5's matching rule): the cell
  holding the centre gets obj ~ N(3, 1) on the best-matching anchor (2.5 lower on the others), its two
  nearest neighbours (YOLOv5's extra positives) 1.5 lower, the rest of the block 6 lower; its class-0 logit
  ~ N(4, 1); box and keypoint logits are the exact inverse of the Detect decode (sigma clipped to
  [0.02, 0.98]), so every claimed cell regresses the true box and pose; a cell claimed by several objects
  predicts the most confident one;
- each visible keypoint (85%) does the same on P3 with a 32 x 32 keypoint object (``kp_bbox`` 0.05 x 640)
  of class k + 1, centre obj ~ N(1.5, 1).

With the realtime preset (conf 0.5) that is ~40 candidate cells per person, a few hundred for 5-20 people,
and about one pose per person after NMS. For the accuracy preset (conf 0.001) the scene is made with a
livelier background (obj ~ N(-6.5, 1.5), class ~ N(-3, 1.5)) so that over 2,000 cells pass, like a trained
model's low-confidence tail. The table shows the candidate counts measured on the scenes used.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepose.bench.decoder_timing import numba_vs_numpy  # noqa: E402
from edgepose.decoders.kapao import PRESETS, KapaoHead, KapaoParams, decode, warmup  # noqa: E402
from edgepose.decoders.kapao_reference import decode_reference  # noqa: E402
from edgepose.preprocess import LetterboxMeta  # noqa: E402

ANCHORS = [
    [[19, 27], [44, 40], [38, 94]],
    [[96, 68], [86, 152], [180, 137]],
    [[140, 301], [303, 264], [238, 542]],
    [[436, 615], [739, 380], [925, 792]],
]
# A standing person in a unit box (x, y), COCO keypoint order.
POSE = np.array(
    [[0.5, 0.08], [0.54, 0.06], [0.46, 0.06], [0.58, 0.08], [0.42, 0.08], [0.66, 0.22], [0.34, 0.22],
     [0.74, 0.38], [0.26, 0.38], [0.78, 0.52], [0.22, 0.52], [0.6, 0.55], [0.4, 0.55], [0.6, 0.76],
     [0.4, 0.76], [0.6, 0.96], [0.4, 0.96]]
)  # fmt: skip


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(p, 0.02, 0.98)
    return np.log(p / (1.0 - p))


def _light(lv, s, anchors, gx, gy, cx, cy, w, h, obj_mean, cls, kps, rng) -> None:
    """Make cell (gy, gx) predict this box (and keypoints): the best-matching anchor at ``obj_mean``,
    other anchors within 4x of (w, h) (YOLOv5's matching rule) 2.5 logits lower. A cell another object
    already claims more confidently is left alone."""
    _, na, hh, ww, no = lv.shape
    if not (0 <= gx < ww and 0 <= gy < hh):
        return
    nc = (no - 5) // 3 + 1
    ratios = [max(w / aw, aw / w, h / ah, ah / h) for aw, ah in anchors]
    best = int(np.argmin(ratios))
    for a, (aw, ah) in enumerate(anchors):
        obj = rng.normal(obj_mean - (0.0 if a == best else 2.5), 1.0)
        cell = lv[0, a, gy, gx]
        if ratios[a] >= 4.0 or obj <= cell[4]:
            continue  # each cell predicts one object: the most confident one that claims it
        cell[4] = obj
        cell[5 : 5 + nc] = np.minimum(cell[5 : 5 + nc], -4.0)
        cell[5 + cls] = rng.normal(4.0, 1.0)
        cell[0] = _logit((cx / s - gx + 0.5) / 2.0)
        cell[1] = _logit((cy / s - gy + 0.5) / 2.0)
        cell[2] = _logit(np.sqrt(w / aw) / 2.0)
        cell[3] = _logit(np.sqrt(h / ah) / 2.0)
        if kps is not None:
            cell[5 + nc :: 2] = _logit(((kps[:, 0] - gx * s) / aw + 2.0) / 4.0)
            cell[6 + nc :: 2] = _logit(((kps[:, 1] - gy * s) / ah + 2.0) / 4.0)


def _object(levels, strides, cx, cy, w, h, cls, kps, rng, obj_mean, only_p3=False) -> None:
    """The cell holding the centre at ``obj_mean``, its 2 nearest neighbours (YOLOv5's assignment) 1.5
    lower, and the rest of the 5x5 block around it 6 lower."""
    for lvl, (lv, s) in enumerate(zip(levels, strides)):
        if only_p3 and lvl:
            break
        gx, gy = int(cx // s), int(cy // s)
        nx = gx + (1 if cx / s - gx > 0.5 else -1)
        ny = gy + (1 if cy / s - gy > 0.5 else -1)
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                x, y = gx + dx, gy + dy
                if (dx, dy) == (0, 0):
                    mean = obj_mean
                elif (x, y) in ((nx, gy), (gx, ny)):
                    mean = obj_mean - 1.5
                else:
                    mean = obj_mean - 6.0
                _light(lv, s, ANCHORS[lvl], x, y, cx, cy, w, h, mean, cls, kps, rng)


def make_scene(people: int, seed: int, background: bool, k: int = 17, size: int = 640):
    rng = np.random.default_rng(seed)
    strides = (8, 16, 32, 64)
    no = 5 + (1 + k) + 2 * k
    levels = []
    bg_obj, bg_cls = (-6.5, -3.0) if background else (-9.0, -5.0)
    for s in strides:
        shape = (1, 3, size // s, size // s)
        lv = np.empty(shape + (no,), np.float32)
        lv[..., :4] = rng.normal(0.0, 1.0, shape + (4,))
        lv[..., 4] = rng.normal(bg_obj, 1.5, shape)
        lv[..., 5 : 6 + k] = rng.normal(bg_cls, 1.5, shape + (1 + k,))
        lv[..., 6 + k :] = rng.normal(0.0, 1.0, shape + (2 * k,))
        levels.append(lv)
    for _ in range(people):
        h = rng.uniform(80, 400)
        w = 0.45 * h
        cx, cy = rng.uniform(w / 2, size - w / 2), rng.uniform(h / 2, size - h / 2)
        kps = (POSE - 0.5) * [w, h] + [cx, cy] + rng.normal(0, 0.02 * h, POSE.shape)
        _object(levels, strides, cx, cy, w, h, 0, kps, rng, obj_mean=3.0)
        for j, (x, y) in enumerate(kps):
            if rng.random() < 0.85 and 0 <= x < size and 0 <= y < size:
                _object(levels, strides, x, y, 32.0, 32.0, 1 + j, None, rng, obj_mean=1.5, only_p3=True)
    return levels


def count_candidates(levels, params: KapaoParams) -> int:
    """Cells entering NMS: obj > thr and obj * best class > thr, thr = conf for persons, conf_kp (two
    NMS passes) or conf (combined NMS) for keypoint objects."""
    thr_kp = params.conf if params.combined_nms else params.conf_kp
    n = 0
    for lv in levels:
        x = lv.reshape(-1, lv.shape[-1]).astype(np.float64)
        nc = (lv.shape[-1] - 5 + 2) // 3
        obj = 1.0 / (1.0 + np.exp(-x[:, 4]))
        best = x[:, 5 : 5 + nc].argmax(axis=1)
        cls = 1.0 / (1.0 + np.exp(-x[:, 5 : 5 + nc].max(axis=1)))
        thr = np.where(best == 0, params.conf, thr_kp)
        n += int(((obj > thr) & (obj * cls > thr)).sum())
    return n


def bench(levels, meta, params: KapaoParams, head: KapaoHead, iters: int) -> dict:
    row, poses = numba_vs_numpy(
        lambda: decode(levels, meta, params, head),
        lambda: decode_reference(levels, meta, params, head),
        iters,
    )
    row["fused"] = int(poses.fused.sum())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=200, help="timed calls per case (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--people", type=int, nargs="+", default=[5, 12, 20], help="people per realtime scene")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    head = KapaoHead((8, 16, 32, 64), np.array(ANCHORS, np.float64), 17)
    t0 = time.perf_counter()
    warmup(head)
    warm_s = time.perf_counter() - t0
    meta = LetterboxMeta(1.0, (0.0, 0.0), (640, 640), (640, 640))
    cases = [("realtime", n, False, 1.0) for n in args.people]
    cases.append(("accuracy", 12, True, 5.0))
    rows = []
    for preset, people, background, target_ms in cases:
        levels = make_scene(people, args.seed, background)
        row = {"preset": preset, "people": people, "candidates": count_candidates(levels, PRESETS[preset])}
        row.update(bench(levels, meta, PRESETS[preset], head, args.iters))
        row["target_ms"] = target_ms
        rows.append(row)

    print(f"KAPAO decode, 640x640, K=17, {args.iters} interleaved iterations, warmup {warm_s:.2f} s")
    print(f"{platform.platform()} | {platform.processor() or platform.machine()} | numpy {np.__version__}")
    header = "preset     people  cands  poses  fused  numba ms  p90 ms  numpy ms  speedup  target"
    print(header)
    print("-" * len(header))
    for r in rows:
        ok = "ok" if r["numba_ms"] <= r["target_ms"] and r["speedup"] >= 3 else "MISSED"
        print(
            f"{r['preset']:<10} {r['people']:>6} {r['candidates']:>6} {r['poses']:>6} {r['fused']:>6} "
            f"{r['numba_ms']:>9.3f} {r['numba_p90_ms']:>7.3f} {r['numpy_ms']:>9.3f} {r['speedup']:>7.1f}x "
            f"<= {r['target_ms']:g} ms, >= 3x: {ok}"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
