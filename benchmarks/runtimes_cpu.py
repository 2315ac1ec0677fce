"""ONNX Runtime vs OpenVINO on this CPU: inference latency of the same bundle models, interleaved.

    python benchmarks/runtimes_cpu.py BUNDLE [BUNDLE...]        # existing bundle folders
    python benchmarks/runtimes_cpu.py --models kapao-t kapao-n  # random-weight bundles exported to a temp dir
        [--imgsz N] [--warmup 20] [--iters 200] [--threads N] [--json F]

Per bundle, ONNX Runtime runs the bundle's ``model.onnx`` and OpenVINO runs the bundle's IR, or, for a CPU
bundle, an fp32 IR converted from that same ONNX (what ``--target openvino`` ships). Both use their
latency defaults (one request; ``--threads`` sets both to N threads). OpenVINO's precision is pinned to
f32 as edgepose always does; it runs twice: as configured by default (threads pinned to cores) and with
``cpu_pinning=False`` (``openvino-nopin``), which matters on shared and virtual machines. The input is a
sample photo, letterboxed. Each timed round runs every runtime once, the order rotating from round to
round, so drift (turbo, other tenants of a shared machine) lands on all of them alike. Reported: median
and p90 per call, and each runtime's median relative to ONNX Runtime's. Only ``Runtime.infer`` is
timed (pre- and post-processing are identical for both).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepose.runtimes import Runtime, create_runtime  # noqa: E402

from edgepose.bundle import Bundle, load_bundle  # noqa: E402
from edgepose.preprocess import preprocess  # noqa: E402
from edgepose.samples import sample_images  # noqa: E402
from edgepose.sysinfo import machine_summary  # noqa: E402


def export_bundles(models: list[str], imgsz: str | None, folder: Path) -> list[Path]:
    from edgepose.export.pipeline import ExportOptions, export_model

    paths = []
    for name in models:
        opts = ExportOptions(model=name, random_weights=True, imgsz=imgsz, output=folder / name)
        paths.append(export_model(opts, log=lambda *a: None).path)
    return paths


def open_runners(bundle: Bundle, folder: Path, threads: int | None) -> list[tuple[str, Runtime]]:
    from edgepose.export.onnx2openvino import onnx_to_openvino

    extra = {"threads": threads} if threads else {}
    runners: list[tuple[str, Runtime]] = []
    if bundle.has_artifact("model"):
        runners.append(("onnxruntime", create_runtime("onnxruntime", bundle.artifact("model"), **extra)))
    if bundle.has_artifact("ir"):
        ir, precision = bundle.artifact("ir"), bundle.precision
    else:
        ir = onnx_to_openvino(bundle.artifact("model"), folder / f"ir-{bundle.path.name}", "fp32")[
            "artifacts"
        ]["ir"]
        precision = "fp32"
    runners.append(("openvino", create_runtime("openvino", ir, precision=precision, **extra)))
    unpinned = create_runtime("openvino", ir, precision=precision, cpu_pinning=False, **extra)
    runners.append(("openvino-nopin", unpinned))
    return runners


def interleaved(runners: list[tuple[str, Runtime]], feeds: dict, warmup: int, iters: int) -> dict[str, list]:
    for _ in range(warmup):
        for _, rt in runners:
            rt.infer(feeds)
    times: dict[str, list[float]] = {label: [] for label, _ in runners}
    for i in range(iters):
        k = i % len(runners)
        for label, rt in runners[k:] + runners[:k]:
            t0 = time.perf_counter()
            rt.infer(feeds)
            times[label].append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="*", type=Path, help="bundle folders")
    ap.add_argument("--models", nargs="+", default=[], help="zoo models to export with random weights")
    ap.add_argument("--imgsz", help="input size for --models (default: each model's own)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=200, help="timed rounds (each runs every runtime once)")
    ap.add_argument("--threads", type=int, help="threads for both runtimes (default: each runtime's own)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if not args.bundles and not args.models:
        ap.error("give bundle folders or --models")

    machine = machine_summary()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgepose-bench-") as tmp:
        folder = Path(tmp)
        paths = list(args.bundles) + export_bundles(args.models, args.imgsz, folder)
        for path in paths:
            bundle = load_bundle(path)
            x, _ = preprocess(sample_images(limit=1)[0], bundle.input_size)
            feeds = {bundle.input_name: x}
            runners = open_runners(bundle, folder, args.threads)
            times = interleaved(runners, feeds, args.warmup, args.iters)
            base = float(np.median(times["onnxruntime"])) if "onnxruntime" in times else None
            for label, rt in runners:
                t = np.asarray(times[label])
                desc = rt.describe()
                row = {
                    "bundle": bundle.model_name,
                    "imgsz": "x".join(map(str, bundle.input_size)),
                    "runtime": label,
                    "version": desc["version"],
                    "compute": desc.get("compute_precision", "fp32"),
                    "median_ms": float(np.median(t)),
                    "p90_ms": float(np.percentile(t, 90)),
                    "min_ms": float(t.min()),
                }
                row["vs_onnxruntime"] = row["median_ms"] / base if base else None
                rows.append(row)
                rt.close()

    cpu = machine["cpu"]
    print(
        f"CPU inference latency, {args.iters} interleaved rounds after {args.warmup} warm-up, "
        f"threads: {args.threads or 'runtime default'}"
    )
    print(f"{cpu['model']} ({cpu['arch']}, {cpu['cores']} cores; {', '.join(cpu['isa'])}) | {machine['os']}")
    print(f"load average before: {load_before[0]:.2f}, after: {os.getloadavg()[0]:.2f}")
    header = (
        f"{'model':<10} {'input':>8}  {'runtime':<15} {'version':<10} {'compute':<8} "
        f"{'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'vs ORT':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r['vs_onnxruntime']:.2f}x" if r["vs_onnxruntime"] else "-"
        print(
            f"{r['bundle']:<10} {r['imgsz']:>8}  {r['runtime']:<15} {r['version']:<10} {r['compute']:<8} "
            f"{r['median_ms']:>10.2f} {r['p90_ms']:>8.2f} {r['min_ms']:>8.2f} {ratio:>7}"
        )
    if args.json:
        result = {
            "machine": machine,
            "load_before": load_before,
            "args": vars(args) | {"json": str(args.json)},
            "rows": rows,
        }
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
