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
import tempfile
from pathlib import Path

from _graph_forms import runners, time_round_robin

FORMS = ("slices", "folded", "channel-major")


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
                forms[form] = runners(path, args.threads)
            ref = forms["slices"]["onnxruntime"](x)
            max_diff = 0.0
            for form in FORMS[1:]:
                got = forms[form]["onnxruntime"](x)
                if form == "channel-major":
                    got = [g.transpose(0, 1, 3, 4, 2) for g in got]
                max_diff = max(max_diff, *(float(np.abs(a - b).max()) for a, b in zip(ref, got)))
            for runtime in ("onnxruntime", "openvino"):
                by_form = {form: forms[form][runtime] for form in FORMS}
                medians = time_round_robin(by_form, x, args.iters, args.block)
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
