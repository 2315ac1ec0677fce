"""KAPAO's exported graph, form by form: what each export-time rewrite buys on each runtime.

Three forms of the same fused model: the v5.0 Focus stem as four strided slices with the training
output layout (``slices``: edgepose's export before these rewrites), the stem folded into one 6x6
stride-2 convolution (``folded``), and folded with channel-major outputs, so the graph ends at the head
convolutions without a Transpose per level (``channel-major``: what edgepose exports now). Checks that
all three give the same raw outputs, then times them in ONNX Runtime and OpenVINO (f32), the forms
alternating in blocks of ``--block`` calls so noise hits all alike. Inference only, median per form.

    python benchmarks/kapao_graph_forms.py                   # kapao-n 512x384 and kapao-s 640
    python benchmarks/kapao_graph_forms.py --models kapao-n:512x384 --iters 100 --json forms.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

FORMS = ("slices", "folded", "channel-major")


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
            for form in FORMS:
                model = copy.deepcopy(base).fuse(fold_focus=form != "slices")
                if form == "channel-major":
                    model.use_export_layout()
                onnx_path = Path(tmp) / f"{name}-{form}.onnx"
                path = torch_to_onnx(model, (w, h), onnx_path, ["p3", "p4", "p5", "p6"])
                forms[form] = _sessions(path, args.threads)
            ref = forms["slices"]["onnxruntime"](x)
            max_diff = 0.0
            for form in FORMS[1:]:
                got = forms[form]["onnxruntime"](x)
                if form == "channel-major":
                    got = [g.transpose(0, 1, 3, 4, 2) for g in got]
                max_diff = max(max_diff, *(float(np.abs(a - b).max()) for a, b in zip(ref, got)))
            for runtime in ("onnxruntime", "openvino"):
                times: dict[str, list[float]] = {form: [] for form in FORMS}
                for form in times:  # warm-up
                    for _ in range(5):
                        forms[form][runtime](x)
                while len(times["slices"]) < args.iters:
                    for form, samples in times.items():
                        for _ in range(args.block):
                            t0 = time.perf_counter()
                            forms[form][runtime](x)
                            samples.append((time.perf_counter() - t0) * 1e3)
                medians = {form: statistics.median(t) for form, t in times.items()}
                rows.append(
                    {
                        "model": name,
                        "imgsz": f"{w}x{h}",
                        "runtime": runtime,
                        **{f"{form}_ms": ms for form, ms in medians.items()},
                        "speedup": medians["slices"] / medians["channel-major"],
                        "max_output_diff": max_diff,
                    }
                )
    machine = machine_summary()
    print(f"{machine['cpu']['model']}, {machine['cpu']['cores']} cores; {args.threads} threads")
    print("| model | input | runtime | slices p50 | folded p50 | channel-major p50 | speed-up | max diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[f'{form}_ms']:.1f} ms" for form in FORMS]
        print(
            f"| {r['model']} | {r['imgsz']} | {r['runtime']} | {' | '.join(cells)} "
            f"| {r['speedup']:.2f}× | {r['max_output_diff']:.1e} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
