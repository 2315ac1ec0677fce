"""SAHR's deconvolution, form by form: the transposed convolution against its exact sub-pixel rewrite.

ONNX Runtime has no INT8 transposed convolution: in a Q/DQ model it dequantizes, runs the
transposed convolution in float and quantizes again, and on sahr-n that one layer is a fifth of the
INT8 frame. The sub-pixel form (a 3x3 convolution with four output phases + DepthToSpace,
``edgepose.calibration.graph_rewrites``) is exact and quantizes like every other convolution, at 2.25x
the multiply-adds of the layer. This script exports the fused model once (random weights: latency does
not depend on them), rewrites a copy, checks the two give the same outputs, quantizes each with
edgepose's default ONNX Runtime recipe, and times ONNX Runtime fp32 and int8 and OpenVINO fp32, the
two forms alternating in blocks of ``--block`` calls. Inference only, median per form. edgepose keeps
the transposed form in every FP32 ONNX and rewrites only what ONNX Runtime's quantizer gets.

    python benchmarks/sahr_graph_forms.py                      # sahr-n 512x384
    python benchmarks/sahr_graph_forms.py --models sahr-n:512x384 sahr-w32:512 --iters 60 --json f.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _graph_forms import runners, time_round_robin

FORMS = ("transposed", "sub-pixel")
NAMES = ["heatmaps_lo", "tags", "heatmaps_hi"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["sahr-n:512x384"])
    ap.add_argument("--iters", type=int, default=60, help="timed calls per form and runtime")
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--calib-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import numpy as np
    import onnx
    import torch
    from edgepose.calibration.data import calibration_tensors, load_calibration
    from edgepose.calibration.graph_rewrites import subpixel_deconvolutions
    from edgepose.calibration.ort_quant import OrtQuantConfig, quantize_onnx
    from edgepose.export.torch2onnx import torch_to_onnx

    from edgepose.models.zoo import build_model
    from edgepose.preprocess import parse_imgsz
    from edgepose.sysinfo import machine_summary

    torch.manual_seed(0)
    calib = load_calibration("synthetic", size=args.calib_size, held_back=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            name, _, size = spec.partition(":")
            w, h = parse_imgsz(size)
            base = build_model(name).eval()
            tensors = list(calibration_tensors(calib.images, (w, h)))
            x = tensors[0]
            files: dict[tuple[str, str], Path] = {}
            exported = torch_to_onnx(base.fuse(), (w, h), Path(tmp) / f"{name}-transposed.onnx", NAMES)
            rewritten, replaced = subpixel_deconvolutions(onnx.load(str(exported)))
            assert replaced, f"{name} has no stride-2 transposed convolution to rewrite"
            onnx.save(rewritten, str(Path(tmp) / f"{name}-sub-pixel.onnx"))
            for form in FORMS:
                fp32 = Path(tmp) / f"{name}-{form}.onnx"
                int8 = Path(tmp) / f"{name}-{form}-int8.onnx"
                quantize_onnx(fp32, int8, "images", tensors, OrtQuantConfig(subpixel_deconv=False))
                files[(form, "fp32")], files[(form, "int8")] = fp32, int8
            ref, got = (
                runners(files[(f, "fp32")], args.threads, ["onnxruntime"])["onnxruntime"](x) for f in FORMS
            )
            max_diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
            medians: dict[tuple[str, str], dict[str, float]] = {}
            for runtime, precision in (
                ("onnxruntime", "fp32"),
                ("onnxruntime", "int8"),
                ("openvino", "fp32"),
            ):
                by_form = {f: runners(files[(f, precision)], args.threads, [runtime])[runtime] for f in FORMS}
                medians[(runtime, precision)] = time_round_robin(by_form, x, args.iters, args.block)
            for (runtime, precision), ms in medians.items():
                fp32_ms = medians[(runtime, "fp32")]
                rows.append(
                    {
                        "model": name,
                        "imgsz": f"{w}x{h}",
                        "runtime": runtime,
                        "precision": precision,
                        **{f"{form}_ms": ms[form] for form in FORMS},
                        "form_speedup": ms["transposed"] / ms["sub-pixel"],
                        **{f"int8_speedup_{form}": fp32_ms[form] / ms[form] for form in FORMS},
                        "max_output_diff": max_diff,
                    }
                )
    machine = machine_summary()
    print(f"{machine['cpu']['model']}, {machine['cpu']['cores']} cores; {args.threads} threads")
    print("| model | input | runtime | precision | transposed | sub-pixel | sub-pixel gain | max diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['imgsz']} | {r['runtime']} | {r['precision']} "
            f"| {r['transposed_ms']:.1f} ms | {r['sub-pixel_ms']:.1f} ms | {r['form_speedup']:.2f}× "
            f"| {r['max_output_diff']:.1e} |"
        )
    for r in rows:
        if r["precision"] == "int8":
            print(
                f"{r['model']} {r['runtime']} INT8 over FP32 of the same form: transposed "
                f"{r['int8_speedup_transposed']:.2f}×, sub-pixel {r['int8_speedup_sub-pixel']:.2f}×"
            )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
