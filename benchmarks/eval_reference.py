"""Accuracy of a reference model on held-out synthetic data: exported bundle vs torch, one decoder.

Exports the checkpoint to a CPU bundle (ONNX Runtime), evaluates OKS AP on `val-v1` images from a seed
that training never uses, and evaluates the torch model on the same images with the same numba decoder,
so the two figures differ only by the export. This is what the model cards and README report.

    python benchmarks/eval_reference.py --model kapao-n --seed 1000 --images 250
    python benchmarks/eval_reference.py --model kapao-n --weights runs/kapao-n/best.pt --data DIR

A DEKR or KAPAO model's shipped weights bring the rescoring net fitted to them (``edgepose fit-rescore``), as
``edgepose export`` does; ``--rescore FILE`` names another (for ``--weights``), ``--no-rescore`` drops it.
``--flip`` evaluates with the flip test (a second pass on the mirrored image), both ways.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def torch_ap(
    model, data_dir: Path, size: tuple[int, int], decoder_cfg: dict, sigmas: np.ndarray, flip_index=None
) -> dict:
    """AP of the torch model through the bundle's own decoder (accuracy preset; flip test with a
    ``flip_index``, as ``PoseEstimator.infer`` runs it)."""
    import torch

    from edgepose.evaluation import evaluate
    from edgepose.families import make_decoder
    from edgepose.preprocess import preprocess

    flip = flip_index is not None
    decoder = make_decoder(decoder_cfg, "accuracy", {"flip": True} if flip else None)
    names = decoder.head.output_names

    def forward(tensor: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = model(torch.from_numpy(tensor))
        return {n: t.numpy() for n, t in zip(names, out)}

    def predict(img: np.ndarray):
        tensor, meta = preprocess(img, size)
        outputs = forward(tensor)
        if flip:
            outputs = decoder.merge_flip(outputs, forward(decoder.flip_input(tensor)), flip_index)
        return decoder(outputs, meta)

    return evaluate(predict, data_dir / "annotations.json", data_dir / "images", sigmas)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="kapao-n")
    ap.add_argument("--weights", type=Path, help="checkpoint (default: the weights shipped in the package)")
    ap.add_argument("--imgsz", help="input WxH (default: the zoo model's default input)")
    ap.add_argument("--data", type=Path, help="a val-v1 folder from `edgepose synth` (default: generate one)")
    ap.add_argument(
        "--seed", type=int, default=1000, help="val-v1 stream when generating (training never uses it)"
    )
    ap.add_argument("--images", type=int, default=250)
    ap.add_argument("--rescore", type=Path, help="rescoring net to ship (default: the zoo's, if any)")
    ap.add_argument("--no-rescore", action="store_true", help="evaluate without a rescoring net")
    ap.add_argument("--flip", action="store_true", help="flip test: a second, mirrored pass")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the torch evaluation")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch
    from edgepose.export.pipeline import ExportOptions, export_model

    from edgepose.bundle import load_bundle
    from edgepose.data.synthetic import generate_dataset
    from edgepose.evaluation import run_bundle_eval
    from edgepose.models.checkpoints import load_checkpoint
    from edgepose.models.zoo import shipped_rescore_path, shipped_weights_path

    torch.set_num_threads(args.threads)
    weights = args.weights or shipped_weights_path(args.model)
    if weights is None:
        raise SystemExit(f"{args.model} ships no weights: pass --weights")
    rescore = args.rescore or (shipped_rescore_path(args.model) if args.weights is None else None)
    if args.no_rescore:
        rescore = None
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or generate_dataset(Path(tmp) / "val", args.images, args.seed, "val-v1")
        bundle_dir = Path(tmp) / "bundle"
        opts = ExportOptions(
            model=args.model, weights=weights, imgsz=args.imgsz, output=bundle_dir, rescore=rescore
        )
        export_model(opts, log=lambda m: None)
        bundle = load_bundle(bundle_dir)
        t0 = time.perf_counter()
        flip = {"flip": True} if args.flip else None
        onnx_fig = run_bundle_eval(bundle_dir, data / "annotations.json", data / "images", overrides=flip)
        t1 = time.perf_counter()
        model, _ = load_checkpoint(weights, arch=args.model)
        if hasattr(model, "use_export_layout"):  # the raw output layout the bundle's decoder reads
            model.use_export_layout()
        torch_fig = torch_ap(
            model.float().eval(),
            data,
            bundle.input_size,
            bundle.decoder_config,
            bundle.skeleton.sigmas_array,
            bundle.skeleton.flip_index() if args.flip else None,
        )
        info = json.loads((data / "annotations.json").read_text())["info"]
    result = {
        "model": args.model,
        "weights": str(weights),
        "rescore": str(rescore) if rescore else None,
        "flip": args.flip,
        "imgsz": "x".join(map(str, bundle.input_size)),
        "data": {
            "profile": info.get("profile"),
            "seed": args.seed if args.data is None else None,
            "images": onnx_fig["images"],
            "path": str(args.data) if args.data else "generated",
        },
        "onnxruntime": onnx_fig["metrics"],
        "torch": torch_fig,
        "ap_difference": abs(onnx_fig["AP"] - torch_fig["AP"]),
        "eval_seconds_onnxruntime": round(t1 - t0, 1),
    }
    source = f"stream {args.seed}, never used in training" if args.data is None else f"from {args.data}"
    images = f"{result['data']['images']} {info.get('profile')} images"
    flip = ", flip test" if args.flip else ""
    print(f"{args.model} at {result['imgsz']}{flip} on {images} ({source})")
    print(f"{'':12s}" + "".join(f"{k:>8s}" for k in torch_fig))
    print(f"{'onnxruntime':12s}" + "".join(f"{v:8.4f}" for v in onnx_fig["metrics"].values()))
    print(f"{'torch':12s}" + "".join(f"{v:8.4f}" for v in torch_fig.values()))
    print(f"|AP(onnxruntime) - AP(torch)| = {result['ap_difference']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
