"""Which INT8 recipe is fastest here: ONNX Runtime and OpenVINO variants against FP32, one interleaved run.

ONNX Runtime: Q/DQ vs QOperator, per-channel vs per-tensor weights, reduce_range (7-bit weights, for CPUs
without VNNI), uint8 vs int8 activations, every default op type vs convolutions only, the stem (the
convolution on the image's 3 channels) in float or quantized. OpenVINO: NNCF
``performance`` vs ``mixed`` presets on the IR, and the ORT Q/DQ ONNX converted to an IR. Latency does
not depend on the weights, so the model has random weights; the figures are inference only, the median
of round-robin rounds over one runtime's variants at a time (2 threads).

    python benchmarks/int8_variants.py                       # kapao-s at 640
    python benchmarks/int8_variants.py --model kapao-n --imgsz 512x384 --iters 40 --block 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ORT_VARIANTS = {
    "Q/DQ, per-channel, u8 activations, stem in float (default)": {},
    "Q/DQ, per-channel, u8 activations, stem quantized": {"float_stem": False},
    "Q/DQ, per-tensor": {"per_channel": False},
    "Q/DQ, per-channel, reduce_range": {"reduce_range": True},
    "Q/DQ, int8 activations": {"activations": "s8"},
    "Q/DQ, convolutions only": {"op_types": ("Conv",)},
    "QOperator, per-channel": {"format": "qoperator"},
    "TensorRT recipe (symmetric int8, Conv+Add)": "tensorrt",
}
OV_VARIANTS = ("nncf performance (default)", "nncf mixed", "ORT Q/DQ ONNX -> IR")


def _time_round_robin(
    runners: dict[str, callable], iters: int, warmup: int, block: int = 1
) -> dict[str, float]:
    """Median ms per runner; runners take turns, ``block`` calls each (warm caches, shared noise)."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(0, iters, block):
        for name, run in runners.items():
            for _ in range(block):
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1000 for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="kapao-s")
    ap.add_argument("--imgsz", default="640")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--calib-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block", type=int, default=1, help="calls per variant before the next (1: alternate)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import onnx
    from edgepose.calibration.data import calibration_tensors, load_calibration
    from edgepose.calibration.graph import float_tail
    from edgepose.calibration.openvino_quant import nncf_quantizer
    from edgepose.calibration.ort_quant import TENSORRT_CONFIG, OrtQuantConfig, quantize_onnx
    from edgepose.export.onnx2openvino import onnx_to_openvino
    from edgepose.export.pipeline import ExportOptions, export_model
    from edgepose.runtimes.base import create_runtime

    from edgepose.sysinfo import machine_summary

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = export_model(
            ExportOptions(model=args.model, random_weights=True, imgsz=args.imgsz, output=root / "fp32"),
            log=lambda m: None,
        )
        fp32 = bundle.artifact("model")
        size = bundle.input_size
        calib = load_calibration("synthetic", size=args.calib_size, held_back=0)
        tensors = list(calibration_tensors(calib.images, size))
        x = tensors[0]

        onnx_models = {"FP32": fp32}
        for label, change in ORT_VARIANTS.items():
            config = TENSORRT_CONFIG if change == "tensorrt" else OrtQuantConfig(**change)
            path = root / f"ort-{len(onnx_models)}.onnx"
            quantize_onnx(fp32, path, "images", tensors, config)
            onnx_models[label] = path
        tail = float_tail(onnx.load(str(fp32)))
        irs = {"FP32": onnx_to_openvino(fp32, root / "ir-fp32", "fp32")["artifacts"]["ir"]}
        for i, preset in enumerate(("performance", "mixed")):
            q = nncf_quantizer(tensors, tail, preset)
            irs[OV_VARIANTS[i]] = onnx_to_openvino(fp32, root / f"ir-{preset}", "int8", quantize=q)[
                "artifacts"
            ]["ir"]
        irs[OV_VARIANTS[2]] = onnx_to_openvino(
            onnx_models["Q/DQ, per-channel, u8 activations, stem quantized"], root / "ir-qdq", "int8"
        )["artifacts"]["ir"]

        # Through edgepose's own runtimes, so the sessions are configured exactly as a bundle's would be.
        runners, runtimes = {}, []
        for label, path in onnx_models.items():
            rt = create_runtime("onnxruntime", path, threads=args.threads)
            runtimes.append(rt)
            runners[("onnxruntime", label)] = lambda r=rt: r.infer({"images": x})
        for label, xml in irs.items():
            precision = "fp32" if label == "FP32" else "int8"
            rt = create_runtime("openvino", xml, device="CPU", precision=precision, threads=args.threads)
            runtimes.append(rt)
            runners[("openvino", label)] = lambda r=rt: r.infer({"images": x})
        # One round-robin per runtime: ONNX Runtime's spinning worker threads and OpenVINO's pool would
        # otherwise steal the cores from each other between alternating calls.
        medians = {}
        for runtime in ("onnxruntime", "openvino"):
            mine = {k: v for k, v in runners.items() if k[0] == runtime}
            medians.update(_time_round_robin(mine, args.iters, args.warmup, args.block))
        for rt in runtimes:
            rt.close()

    machine = machine_summary()
    cpu = machine["cpu"]
    print(
        f"{args.model} at {args.imgsz}; {cpu['model']}, {cpu['cores']} cores ({', '.join(cpu['isa'])}); "
        f"{args.threads} threads, {args.iters} interleaved rounds"
    )
    print("| runtime | variant | inference p50 (ms) | speed-up vs FP32 |")
    print("|---|---|---|---|")
    rows = []
    for (runtime, label), ms in medians.items():
        speedup = medians[(runtime, "FP32")] / ms
        rows.append(
            {"runtime": runtime, "variant": label, "inference_p50_ms": ms, "speedup_vs_fp32": speedup}
        )
        print(f"| {runtime} | {label} | {ms:.1f} | {speedup:.2f}× |")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine, "model": args.model, "imgsz": args.imgsz, "rows": rows}, indent=2)
            + "\n"
        )


if __name__ == "__main__":
    main()
