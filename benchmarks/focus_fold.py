"""KAPAO's Focus stem folded into one convolution at export, against the four strided slices it replaces.

Exports the same fused model twice (``KapaoModel.fuse(fold_focus=True|False)``), checks that both ONNX
files give the same raw outputs, and times them in ONNX Runtime and in OpenVINO (f32), the two forms
alternating in blocks of ``--block`` calls so noise hits both alike. Inference only, median per form.

    python benchmarks/focus_fold.py                          # kapao-n 512x384 and kapao-s 640
    python benchmarks/focus_fold.py --models kapao-n:512x384 --iters 100 --json fold.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path


def _sessions(path: Path, threads: int) -> dict:
    """One ONNX Runtime session and one OpenVINO compiled model (f32, as edgepose pins it) per file."""
    import onnxruntime as ort
    import openvino as ov

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    compiled = ov.Core().compile_model(
        str(path),
        "CPU",
        {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"},
    )
    request = compiled.create_infer_request()
    name = session.get_inputs()[0].name
    return {
        "onnxruntime": lambda x: session.run(None, {name: x}),
        "openvino": lambda x: [t.copy() for t in request.infer({0: x}).values()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["kapao-n:512x384", "kapao-s:640x640"])
    ap.add_argument("--iters", type=int, default=60, help="timed calls per form and runtime")
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import numpy as np
    import torch
    from edgepose.export.torch2onnx import torch_to_onnx

    from edgepose.models.zoo import build_model
    from edgepose.preprocess import parse_imgsz
    from edgepose.sysinfo import machine_summary

    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            name, _, size = spec.partition(":")
            w, h = parse_imgsz(size)
            base = build_model(name).eval()
            x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
            forms = {}
            for fold in (False, True):
                model = copy.deepcopy(base).fuse(fold_focus=fold)
                onnx_path = Path(tmp) / f"{name}-{fold}.onnx"
                path = torch_to_onnx(model, (w, h), onnx_path, ["p3", "p4", "p5", "p6"])
                forms["folded" if fold else "slices"] = _sessions(path, args.threads)
            ref = forms["slices"]["onnxruntime"](x)
            got = forms["folded"]["onnxruntime"](x)
            max_diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
            for runtime in ("onnxruntime", "openvino"):
                times: dict[str, list[float]] = {"slices": [], "folded": []}
                for form in times:  # warm-up
                    for _ in range(5):
                        forms[form][runtime](x)
                while len(times["folded"]) < args.iters:
                    for form, samples in times.items():
                        for _ in range(args.block):
                            t0 = time.perf_counter()
                            forms[form][runtime](x)
                            samples.append((time.perf_counter() - t0) * 1e3)
                before, after = (statistics.median(times[f]) for f in ("slices", "folded"))
                rows.append(
                    {
                        "model": name,
                        "imgsz": f"{w}x{h}",
                        "runtime": runtime,
                        "slices_ms": before,
                        "folded_ms": after,
                        "speedup": before / after,
                        "max_output_diff": max_diff,
                    }
                )
    machine = machine_summary()
    print(f"{machine['cpu']['model']}, {machine['cpu']['cores']} cores; {args.threads} threads")
    print("| model | input | runtime | Focus slices p50 | folded conv p50 | speed-up | max output diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['imgsz']} | {r['runtime']} | {r['slices_ms']:.1f} ms "
            f"| {r['folded_ms']:.1f} ms | {r['speedup']:.2f}× | {r['max_output_diff']:.1e} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
