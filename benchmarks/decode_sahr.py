"""Benchmark the SAHR/HigherHRNet decoder: numba ``decode`` against numpy ``decode_reference``, interleaved.

    python benchmarks/decode_sahr.py [--people 20] [--imgsz 512] [--iters 100] [--seed 0] [--json out.json]
                                     [--assign] [--in-graph] [--stages]

Inputs are synthetic raw outputs for a square ``imgsz`` input (K = 17), shaped like a trained network's on
a scene of N people (60-400 px tall, a standing COCO pose with 3% jitter):

- heatmaps at stride 4 and stride 2: a Gaussian of sigma 2 map pixels (the training target's sigma at
  both resolutions) at each keypoint, peak ~U(0.3, 0.9); one keypoint in ten is weak (peak ~U(0.02, 0.1),
  under every threshold, so grouping misses it and refinement has to find it); background
  |N(0, 0.004)| everywhere;
- tags at stride 4: person p's tag is ``1.5 p`` (+ N(0, 0.05) per pixel) within 3 sigma of its keypoints
  where its Gaussian is the highest; elsewhere a smooth random field (N(0, 3) on a 16-pixel grid,
  interpolated).

Both decoders run on the same scene in alternation (numba, numpy, numba, ...) after a warm-up and must
give the same poses; the numpy call in between evicts the caches, so each numba call starts cold (a
conservative figure: after a network's inference its outputs are usually still in cache). The median of
these calls is the figure issue #5 sets: accuracy preset, 512 input, 20 people, <= 5 ms and >= 3x numpy.
The numba decode is also timed back to back (warm caches). ``--stages`` times each step of the numba
decode one by one, back to back and with the caches evicted (a 512 MiB write) before each frame: the
dense step with the candidates (resize + average, tile bounds, max-pool NMS, top-k), grouping, the
quarter-pixel step with the person scores, refinement, and the mapping to original pixels.
``--assign`` times the numba assignment against scipy's ``linear_sum_assignment`` on the matrices this
scene's grouping solves. ``--in-graph`` answers whether the dense steps (resize and average, max-pool NMS,
top-k) should move into the graph: it times ONNX Runtime on a graph holding just those ops at stride 2
(Resize, Add, Mul, MaxPool, Equal, Where, TopK) against the numba aggregation and scan that do the same on
the CPU.

Measured while working on issue #5 (``--iters 30 --assign --in-graph --stages``, Intel Xeon VM, 2 cores
shared with a training job, load average ~2; numba 0.68.1, numpy 2.4.6, onnxruntime 1.31.1, scipy 1.17.1),
medians in ms:

    preset     poses  numba  numpy  speed-up  numba warm
    accuracy   25     4.51   863.5  191.6x    2.66
    realtime   22     2.89   155.3   53.7x    1.85
    assignment, 16 matrices per frame: numba 0.028, scipy 0.036
    dense steps at stride 2: ORT graph 6.59, numba 1.47

    step (warm / caches evicted)   accuracy      realtime
    maps + candidates              1.54 / 2.52   1.11 / 1.76
    grouping                       0.09 / 0.17   0.07 / 0.15
    adjust + scores                0.03 / 0.07   0.03 / 0.05
    refinement                     0.93 / 1.44   0.59 / 0.85
    to original pixels             0.01 / 0.02   0.01 / 0.02

The build before (a dense input-resolution map, refinement by 16-px tiles without a starting score) took
11.4 ms interleaved for the accuracy preset in the same conditions (warm: aggregation 2.7, NMS + top-k
1.5, refinement 4.4). The load moves absolute times; the speed-up holds. The assignment stays in numba
(scipy is slower and not a dependency) and the dense steps stay on the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepose.bench.decoder_timing import numba_vs_numpy  # noqa: E402
from edgepose.decoders.assignment import assign  # noqa: E402
from edgepose.decoders.sahr import PRESETS, SahrHead, decode, warmup  # noqa: E402
from edgepose.decoders.sahr_reference import decode_reference  # noqa: E402
from edgepose.decoders.sahr_resize import _heat_into, aggregate, upsample2  # noqa: E402
from edgepose.decoders.sahr_tiles import _scan, tile_size  # noqa: E402
from edgepose.preprocess import LetterboxMeta  # noqa: E402

# A standing person in a unit box (x, y), COCO keypoint order.
POSE = np.array(
    [[0.5, 0.08], [0.54, 0.06], [0.46, 0.06], [0.58, 0.08], [0.42, 0.08], [0.66, 0.22], [0.34, 0.22],
     [0.74, 0.38], [0.26, 0.38], [0.78, 0.52], [0.22, 0.52], [0.6, 0.55], [0.4, 0.55], [0.6, 0.76],
     [0.4, 0.76], [0.6, 0.96], [0.4, 0.96]]
)  # fmt: skip


def _blob(maps: np.ndarray, j: int, cx: float, cy: float, peak: float, sigma: float = 2.0) -> np.ndarray:
    """Max a Gaussian into maps[j] (in place); returns where it is the maximum, within 3 sigma."""
    h, w = maps.shape[1:]
    ys, xs = np.ogrid[0:h, 0:w]
    d2 = (xs - cx) ** 2 + (ys - cy) ** 2
    g = peak * np.exp(-d2 / (2 * sigma**2))
    owner = (d2 <= (3 * sigma) ** 2) & (g >= maps[j])
    np.maximum(maps[j], g, out=maps[j])
    return owner


def make_scene(people: int, imgsz: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    k, side = len(POSE), imgsz // 4
    lo = np.abs(rng.normal(0.0, 0.004, (k, side, side)))
    hi = np.abs(rng.normal(0.0, 0.004, (k, 2 * side, 2 * side)))
    coarse = rng.normal(0.0, 3.0, (k, side // 16 + 1, side // 16 + 1))  # smooth background tags
    cy, cx = np.linspace(0, coarse.shape[1] - 1, side), np.linspace(0, coarse.shape[2] - 1, side)
    tags = np.stack([[np.interp(cx, np.arange(c.shape[1]), row) for row in c] for c in coarse])
    tags = np.stack([[np.interp(cy, np.arange(t.shape[0]), col) for col in t.T] for t in tags])
    tags = tags.transpose(0, 2, 1).copy()
    for p in range(people):
        hgt = rng.uniform(60, min(400, imgsz * 0.9))
        wid = 0.45 * hgt
        x0, y0 = rng.uniform(0, imgsz - wid), rng.uniform(0, imgsz - hgt)
        kps = (POSE + rng.normal(0, 0.03, POSE.shape)) * [wid, hgt] + [x0, y0]  # input px
        for j, (x, y) in enumerate(kps):
            peak = rng.uniform(0.02, 0.1) if rng.uniform() < 0.1 else rng.uniform(0.3, 0.9)
            owner = _blob(lo, j, x / 4 - 0.5, y / 4 - 0.5, peak)
            _blob(hi, j, x / 2 - 0.5, y / 2 - 0.5, peak)
            tags[j][owner] = 1.5 * p + rng.normal(0, 0.05, int(owner.sum()))
    maps = {"heatmaps_lo": lo, "tags": tags, "heatmaps_hi": hi}
    return {name: m[None].astype(np.float32) for name, m in maps.items()}


def time_decoders(outputs, meta, params, head, iters: int) -> dict[str, float | int]:
    row, poses = numba_vs_numpy(
        lambda: decode(outputs, meta, params, head),
        lambda: decode_reference(outputs, meta, params, head),
        iters,
    )
    row["poses_over_0.2"] = int((poses.scores > 0.2).sum())
    return row


def time_warm(outputs, meta, params, head, iters: int) -> float:
    """Median ms of back-to-back numba decodes (caches warm)."""
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        decode(outputs, meta, params, head)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


STAGES = ("maps+candidates", "grouping", "adjust+scores", "refinement", "min_score + to original px")


def time_stages(outputs, meta, params, head, iters: int, evict_mib: int = 512) -> dict[str, dict[str, float]]:
    """Median ms of each step of the numba decode, called one by one as ``decode`` runs them, back to back
    ("warm") and with the caches evicted before each frame ("cold")."""
    from edgepose.decoders import sahr, sahr_group, sahr_tiles

    lo, tag, hi = sahr.read_outputs(outputs, head)
    full, k = params.project2image, head.num_keypoints
    scratch, heat, ub, state, tags = sahr._buffers(k, lo.shape[1], lo.shape[2], full)
    thr, radius, topk = params.threshold(head), params.nms_kernel // 2, params.max_people
    order, tile = np.asarray(head.joint_order, np.int64), sahr_tiles.tile_size(full)
    geometry = sahr._geometry(meta, params, head)
    junk = np.zeros(evict_mib * 2**20 // 8)

    def frame() -> tuple[list[float], np.ndarray]:
        t = [time.perf_counter()]
        count, top, lz = sahr_tiles._parse_maps(lo, hi, full, heat, ub, state, scratch, thr, radius, topk)
        t.append(time.perf_counter())
        cand_tag = np.zeros(top.shape)
        joints = sahr_group._group(
            heat, tag, full, count, top, order, topk, params.tag_threshold, params.use_detection_val,
            params.ignore_too_much, cand_tag,
        )  # fmt: skip
        t.append(time.perf_counter())
        kps, scores = sahr_group._adjust_score(joints, lz, tile, params.adjust)
        t.append(time.perf_counter())
        if params.refine:
            sahr_group._refine(kps, joints, lz, tile, tag, full, tags, count, top, cand_tag, thr)
        t.append(time.perf_counter())
        kps, _ = sahr.keep_confident(kps, scores, params)  # the realtime preset's min_score
        keypoints, _ = sahr._to_original(kps, *geometry)
        t.append(time.perf_counter())
        return [(b - a) * 1e3 for a, b in zip(t, t[1:])], keypoints

    _, keypoints = frame()
    if not np.array_equal(keypoints, decode(outputs, meta, params, head).keypoints):
        raise SystemExit("the stages, run one by one, do not give decode's poses")
    result = {}
    for mode in ("warm", "cold"):
        runs = []
        for _ in range(iters):
            if mode == "cold":
                junk += 1.0
            runs.append(frame()[0])
        result[mode] = {name: statistics.median(r[i] for r in runs) for i, name in enumerate(STAGES)}
        result[mode]["total"] = statistics.median(sum(r) for r in runs)
    return result


def grouping_matrices(outputs, params, head) -> list[np.ndarray]:
    """The cost matrices the scene's grouping solves (rebuilt with the reference's own steps)."""
    from edgepose.decoders import sahr_reference as ref

    lo, tag, hi = (outputs[n][0] for n in head.output_names)
    heat, tg = ref.aggregate(lo, tag, hi, params.project2image)
    cands = ref.candidates(heat, params.threshold(head), params.nms_kernel, params.max_people)
    w = heat.shape[2]
    means: list[list[float]] = []
    mats = []
    for j in head.joint_order:
        ys, xs = np.divmod(cands[j], w)
        tags = tg[j, ys, xs].astype(np.float64)
        if means and len(tags):
            m = np.array([np.mean(t) for t in means[: params.max_people]])
            mats.append(np.rint(np.abs(tags[:, None] - m)) * 100.0 - heat[j, ys, xs][:, None])
        for t in tags:  # a rough stand-in for the grouping: close tags join, others start a person
            near = [i for i, mt in enumerate(means) if abs(np.mean(mt) - t) < 1.0]
            (means[near[0]].append(t) if near else means.append([t]))
    return mats


def time_assign(mats: list[np.ndarray], iters: int) -> dict[str, float]:
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        return {"matrices": len(mats), "numba_ms": float("nan"), "scipy_ms": float("nan")}
    for m in mats:
        assign(m)
        rows, cols = linear_sum_assignment(m)
        mine = assign(m)
        if not np.array_equal(mine[rows], cols) or (mine >= 0).sum() != len(rows):
            raise SystemExit("numba and scipy assignments differ")
    t_nb, t_sp = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        for m in mats:
            assign(m)
        t_nb.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        for m in mats:
            linear_sum_assignment(m)
        t_sp.append((time.perf_counter() - t0) * 1e3)
    return {"matrices": len(mats), "numba_ms": statistics.median(t_nb), "scipy_ms": statistics.median(t_sp)}


def time_in_graph(outputs, params, head, iters: int) -> dict[str, float]:
    """ORT Resize + average + MaxPool NMS + TopK at stride 2 vs the numba aggregation + scan."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    lo, tag, hi = (outputs[n] for n in head.output_names)
    _, k, h, w = hi.shape
    r, topk = params.nms_kernel // 2, params.max_people
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Resize", ["lo", "", "scales"], ["up"], mode="linear"),
        helper.make_node("Resize", ["tag", "", "scales"], ["tag_up"], mode="linear"),
        helper.make_node("Add", ["up", "hi"], ["sum"]),
        helper.make_node("Mul", ["sum", "half"], ["heat"]),
        helper.make_node("MaxPool", ["heat"], ["pool"], kernel_shape=[2 * r + 1] * 2, pads=[r] * 4),
        helper.make_node("Equal", ["pool", "heat"], ["eq"]),
        helper.make_node("Where", ["eq", "heat", "zero"], ["nms"]),
        helper.make_node("Reshape", ["nms", "flat"], ["rows"]),
        helper.make_node("TopK", ["rows", "k"], ["values", "indices"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sahr_dense",
        [
            helper.make_tensor_value_info("lo", f, list(lo.shape)),
            helper.make_tensor_value_info("tag", f, list(tag.shape)),
            helper.make_tensor_value_info("hi", f, list(hi.shape)),
        ],
        [
            helper.make_tensor_value_info("values", f, [1, k, topk]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, [1, k, topk]),
            helper.make_tensor_value_info("heat", f, [1, k, h, w]),
            helper.make_tensor_value_info("tag_up", f, [1, k, h, w]),
        ],
        [
            helper.make_tensor("scales", f, [4], [1.0, 1.0, 2.0, 2.0]),
            helper.make_tensor("half", f, [], [0.5]),
            helper.make_tensor("zero", f, [], [0.0]),
            helper.make_tensor("flat", TensorProto.INT64, [3], [1, k, h * w]),
            helper.make_tensor("k", TensorProto.INT64, [1], [topk]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {"lo": lo, "tag": tag, "hi": hi}
    ort_heat = sess.run(None, feeds)[2][0]
    lo0, tag0, hi0 = lo[0], tag[0], hi[0]
    thr = params.threshold(head)
    nb_heat, _ = aggregate(lo0, tag0, hi0, False)
    tile = tile_size(False)
    heat = np.empty_like(hi0)
    tilemax = np.empty((k, -(-h // tile), -(-w // tile)), np.float32)
    t_ort, t_nb = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        t_ort.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        _heat_into(lo0, hi0, False, tile, heat, tilemax)
        _scan(heat, tilemax, thr, r, topk, tile)
        upsample2(tag0)  # the tags too: the graph above resizes them
        t_nb.append((time.perf_counter() - t0) * 1e3)
    return {
        "ort_dense_ms": statistics.median(t_ort),
        "numba_dense_ms": statistics.median(t_nb),
        "ort_vs_numba_heat_max_diff": float(np.abs(ort_heat - nb_heat).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--people", type=int, default=20)
    ap.add_argument("--imgsz", type=int, default=512)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--assign", action="store_true", help="also time the assignment against scipy")
    ap.add_argument("--in-graph", action="store_true", help="also time in-graph dense steps on ORT")
    ap.add_argument("--stages", action="store_true", help="also time each step of the numba decode")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    head = SahrHead(17, detection_threshold=0.12)
    warmup(head)
    outputs = make_scene(args.people, args.imgsz, args.seed)
    # a 640x480 camera frame letterboxed into the square input
    meta = LetterboxMeta(args.imgsz / 640, (0.0, args.imgsz / 8), (args.imgsz, args.imgsz), (640, 480))
    rows = {name: time_decoders(outputs, meta, p, head, args.iters) for name, p in PRESETS.items()}
    for name, p in PRESETS.items():
        rows[name]["numba_warm_ms"] = time_warm(outputs, meta, p, head, args.iters)
    print(
        f"SAHR decode, {args.imgsz}x{args.imgsz} input, {args.people} people, median of {args.iters} "
        f"interleaved calls; {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    head_row = f"{'preset':<10}{'poses':>7}{'>0.2':>6}{'numba ms':>11}{'numpy ms':>11}{'speed-up':>10}"
    print(head_row + f"{'warm ms':>10}")
    for name, r in rows.items():
        print(
            f"{name:<10}{r['poses']:>7}{r['poses_over_0.2']:>6}{r['numba_ms']:>11.3f}{r['numpy_ms']:>11.3f}"
            f"{r['speedup']:>9.1f}x{r['numba_warm_ms']:>10.3f}"
        )
    acc = rows["accuracy"]
    met = acc["numba_ms"] <= 5.0 and acc["numpy_ms"] >= 3.0 * acc["numba_ms"]
    print(
        f"issue #5 target (accuracy, interleaved: <= 5 ms and >= 3x numpy): {'met' if met else 'NOT met'}"
        + (
            ""
            if args.imgsz == 512 and args.people == 20
            else " (the target is set for --imgsz 512 --people 20)"
        )
    )
    result = {"imgsz": args.imgsz, "people": args.people, "presets": rows}
    if args.assign:
        a = time_assign(grouping_matrices(outputs, PRESETS["realtime"], head), args.iters)
        print(
            f"assignment, {a['matrices']} matrices per frame: numba {a['numba_ms']:.3f} ms, "
            f"scipy {a['scipy_ms']:.3f} ms"
        )
        result["assign"] = a
    if args.in_graph:
        g = time_in_graph(outputs, PRESETS["realtime"], head, args.iters)
        print(
            f"dense steps at stride 2 (resize+average, NMS, top-k): ORT graph {g['ort_dense_ms']:.3f} ms, "
            f"numba {g['numba_dense_ms']:.3f} ms (heat max diff {g['ort_vs_numba_heat_max_diff']:.1e})"
        )
        result["in_graph"] = g
    if args.stages:
        result["stages"] = {}
        for name, p in PRESETS.items():
            st = time_stages(outputs, meta, p, head, args.iters)
            result["stages"][name] = st
            for mode, times in st.items():
                steps = ", ".join(f"{k} {v:.3f}" for k, v in times.items() if k != "total")
                print(f"stages, {name}, {mode} (median ms): {steps}; total {times['total']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
