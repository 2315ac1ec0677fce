"""INT8 and FP16 against FP32 per target and model, in one interleaved run: README's quantization table.

For each model: FP32 and INT8 bundles for ONNX Runtime (``cpu``) and OpenVINO (FP16, and INT8 both ways:
NNCF on the IR, and the Q/DQ ONNX converted to an IR). Each runtime's bundles are timed round-robin with
``edgepose bench``'s runner so noise hits them alike; the speed-up is the inference-stage p50 of FP32
over INT8 on the same runtime. Bundles alternate in blocks of ``--block`` frames (10): alternating every
frame starts each call with the other bundle's weights in the caches, which costs a small INT8 model
far more than its FP32 twin and which no deployment sees. Models with trained weights (a checkpoint,
or a zoo model that ships weights) are also scored: OKS AP on synthetic ``val-v1`` images from the
evaluation stream, which training never draws from.

    python benchmarks/quantization.py                                   # kapao-s 640, random weights
    python benchmarks/quantization.py --models kapao-s:640 kapao-n:512x384 --ap-images 250 --json q.json
    python benchmarks/quantization.py --models kapao-n --ap-images 250 --calib-methods default minmax

``--calib-methods default`` is what ``edgepose export`` does without ``--calib-method``: each model's
zoo choice (``calib_method``) or meanminmax; the table names the method each bundle's manifest records.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def variants(calib_methods: list[str]) -> list[tuple[str, str, str | None, str | None]]:
    """(target, precision, OpenVINO INT8 source, ONNX Runtime calibration method) per bundle to build.

    ONNX Runtime's Q/DQ gets one INT8 bundle per calibration method (``default``: the export's own
    choice), so their AP can be compared in one run; the Q/DQ ONNX that OpenVINO converts uses the first.
    """
    rows: list[tuple[str, str, str | None, str | None]] = [("cpu", "fp32", None, None)]
    rows += [("cpu", "int8", None, method) for method in calib_methods]
    rows += [
        ("openvino", "fp32", None, None),
        ("openvino", "fp16", None, None),
        ("openvino", "int8", "nncf", None),
        ("openvino", "int8", "qdq", calib_methods[0]),
    ]
    return rows


DEFAULT_MODELS = ("kapao-s:640",)


def _has_weights(name: str) -> bool:
    from edgepose.models.zoo import ZOO, shipped_weights_path

    return name not in ZOO or shipped_weights_path(name) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="zoo name or checkpoint:imgsz")
    ap.add_argument("--iters", type=int, default=40, help="timed rounds (each runs every bundle once)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--calib-size", type=int, default=64, help="synthetic calibration images")
    ap.add_argument("--ap-images", type=int, default=0, help="val-v1 images for AP (trained models only)")
    ap.add_argument(
        "--calib-methods",
        nargs="+",
        default=["default"],
        help="ORT calibration methods, an INT8 cpu bundle each: default (the model's own) meanminmax "
        "minmax entropy percentile",
    )
    ap.add_argument(
        "--block",
        type=int,
        default=10,
        help="frames each bundle runs before the next (edgepose bench --block): warm caches, shared noise",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from edgepose.calibration.validation import EVAL_STREAM
    from edgepose.export.pipeline import ExportOptions, export_model

    from edgepose.bench.runner import BenchOptions, run_bench
    from edgepose.data.synthetic import generate_dataset
    from edgepose.evaluation import run_bundle_eval
    from edgepose.sysinfo import machine_summary

    with tempfile.TemporaryDirectory() as tmp:
        val = None
        if args.ap_images:
            val = generate_dataset(Path(tmp) / "val", args.ap_images, EVAL_STREAM, "val-v1")
        bundles, labels, aps = [], [], []
        for spec in args.models:
            name, _, imgsz = spec.rpartition(":") if spec.count(":") else (spec, "", "")
            trained = _has_weights(name)
            for target, precision, source, method in variants(args.calib_methods):
                tag = "-".join(x for x in (source, method) if x) or "default"
                out = Path(tmp) / f"{Path(name).stem}-{target}-{precision}-{tag}"
                int8 = precision == "int8"
                opts = ExportOptions(
                    model=name,
                    random_weights=not trained,
                    imgsz=imgsz or None,
                    target=target,
                    precision=precision,
                    output=out,
                    calib="synthetic" if int8 else None,
                    calib_size=args.calib_size,
                    calib_method=None if method in (None, "default") else method,
                    int8_source=source or "nncf",
                )
                bundle = export_model(opts, log=lambda m: None)
                if method is not None:  # the method the export used: ``default`` resolved per model
                    method = bundle.manifest["calibration"]["method"]
                bundles.append(out)
                labels.append((Path(name).stem, imgsz, target, precision, source, method))
                ap_value = None
                if val is not None and trained:
                    ap_value = run_bundle_eval(out, val / "annotations.json", val / "images")["AP"]
                aps.append(ap_value)
        # One interleaved bench run per runtime: ONNX Runtime's spinning worker threads and OpenVINO's
        # pool steal the cores from each other when their calls alternate, which no deployment does.
        runs: list = [None] * len(bundles)
        for target in dict.fromkeys(label[2] for label in labels):
            idx = [i for i, label in enumerate(labels) if label[2] == target]
            group = run_bench(
                BenchOptions(
                    bundles=[bundles[i] for i in idx], warmup=args.warmup, iters=args.iters, block=args.block
                )
            )
            for i, run in zip(idx, group):
                runs[i] = run
    machine = machine_summary()
    rows, fp32 = [], {}
    for (name, imgsz, target, precision, source, method), run, ap_value in zip(labels, runs, aps):
        infer = run["stages"]["inference"]["p50"]
        if precision == "fp32":
            fp32[(name, target)] = (infer, ap_value)
        base_ms, base_ap = fp32[(name, target)]
        rows.append(
            {
                "model": name,
                "imgsz": imgsz,
                "target": target,
                "runtime": run["runtime"],
                "precision": precision,
                "int8_source": source,
                "calib_method": method,
                "inference_p50_ms": infer,
                "total_p50_ms": run["stages"]["total"]["p50"],
                "speedup_vs_fp32": base_ms / infer,  # FP16 and INT8 alike: over the same runtime's FP32
                "AP": ap_value,
                "AP_drop": None if ap_value is None or base_ap is None else base_ap - ap_value,
                "busy": run["fingerprint"].get("busy"),
            }
        )
    cpu = machine["cpu"]
    print(
        f"{cpu['model']}, {cpu['cores']} cores ({', '.join(cpu['isa'])}); {args.iters} frames per bundle, "
        f"interleaved in blocks of {args.block}"
    )
    print("| model | input | runtime | precision | inference p50 (ms) | speed-up vs FP32 | AP | AP drop |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        how = ", ".join(x for x in (r["int8_source"], r["calib_method"]) if x)
        precision = r["precision"] + (f" ({how})" if how else "")
        cells = (
            r["model"],
            r["imgsz"],
            r["runtime"],
            precision,
            f"{r['inference_p50_ms']:.1f}",
            f"{r['speedup_vs_fp32']:.2f}×",
            "—" if r["AP"] is None else f"{r['AP']:.3f}",
            "—" if r["AP_drop"] is None else f"{r['AP_drop']:+.3f}",
        )
        print("| " + " | ".join(cells) + " |")
    if any(r["busy"] for r in rows):
        print("note: the machine was busy during this run; figures are noisy")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
