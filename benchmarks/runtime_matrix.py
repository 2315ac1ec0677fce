"""Latency of runtimes x precisions x models on this machine, in one interleaved run: README's table.

Exports random-weight bundles (latency does not depend on the weights) for each model and target,
then times them all with ``edgepose bench``'s runner, round-robin, so machine noise hits every bundle
alike. Reported per bundle: p50 of inference and of the whole frame (pre + inference + post), FPS,
and the inference ratio to the model's ONNX Runtime fp32 bundle.

Bundles alternate in blocks of ``--block`` frames (10), so each is timed with warm caches and ONNX
Runtime's spinning threads and OpenVINO's pool do not trade the cores every call.

    python benchmarks/runtime_matrix.py            # kapao-n 512x384, kapao-s 640, dekr-n 512, sahr-n 512
    python benchmarks/runtime_matrix.py --models kapao-s:640 --iters 100 --json matrix.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

VARIANTS = (("cpu", "fp32"), ("openvino", "fp32"), ("openvino", "fp16"))
DEFAULT_MODELS = ("kapao-n:512x384", "kapao-s:640", "dekr-n:512", "sahr-n:512")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="zoo name:imgsz")
    ap.add_argument("--iters", type=int, default=60, help="timed frames per bundle")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--block", type=int, default=10, help="frames each bundle runs before the next")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from edgepose.export.pipeline import ExportOptions, export_model

    from edgepose.bench.runner import BenchOptions, run_bench
    from edgepose.sysinfo import machine_summary

    with tempfile.TemporaryDirectory() as tmp:
        bundles, labels = [], []
        for spec in args.models:
            name, _, imgsz = spec.partition(":")
            for target, precision in VARIANTS:
                out = Path(tmp) / f"{name}-{target}-{precision}"
                opts = ExportOptions(
                    model=name,
                    random_weights=True,
                    imgsz=imgsz or None,
                    target=target,
                    precision=precision,
                    output=out,
                )
                export_model(opts, log=lambda m: None)
                bundles.append(out)
                labels.append((name, imgsz, target, precision))
        runs = run_bench(
            BenchOptions(bundles=bundles, warmup=args.warmup, iters=args.iters, block=args.block)
        )
    machine = machine_summary()
    rows, base = [], {}
    for (name, imgsz, target, precision), run in zip(labels, runs):
        infer, total = run["stages"]["inference"]["p50"], run["stages"]["total"]["p50"]
        if target == "cpu":
            base[name] = infer
        rows.append(
            {
                "model": name,
                "imgsz": imgsz,
                "runtime": run["runtime"],
                "precision": precision,
                "inference_p50_ms": infer,
                "total_p50_ms": total,
                "fps": 1000.0 / total,
                "inference_vs_ort_fp32": infer / base[name],
                "busy": run["fingerprint"].get("busy"),
            }
        )
    cpu = machine["cpu"]
    isa = ", ".join(cpu["isa"])
    print(f"{cpu['model']}, {cpu['cores']} cores ({isa}); {args.iters} frames each, blocks of {args.block}")
    header = (
        "model",
        "input",
        "runtime",
        "precision",
        "inference p50 (ms)",
        "frame p50 (ms)",
        "FPS",
        "inference vs ORT fp32",
    )
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = (
            r["model"],
            r["imgsz"],
            r["runtime"],
            r["precision"],
            f"{r['inference_p50_ms']:.1f}",
            f"{r['total_p50_ms']:.1f}",
            f"{r['fps']:.1f}",
            f"{r['inference_vs_ort_fp32']:.2f}×",
        )
        print("| " + " | ".join(cells) + " |")
    if any(r["busy"] for r in rows):
        print("note: the machine was busy during this run; figures are noisy")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
