"""Training speed per precision: one optimizer step (targets, forward, loss, backward, AdamW) per batch.

Times the step the trainer runs, on real synthetic batches rendered once up front (so data loading is
not measured), float32 against bf16 autocast, interleaved round by round so machine noise hits both
alike. This is the figure behind ``edgepose train --amp auto``.

    python benchmarks/train_step.py                                  # kapao-n, batch 16, 384x320
    python benchmarks/train_step.py --model dekr-n --imgsz 256 --batch 8 --json step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="kapao-n")
    ap.add_argument("--imgsz", default="384x320")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=6, help="timed rounds (each runs every precision once)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from edgepose.models.zoo import build_model
    from edgepose.preprocess import parse_imgsz
    from edgepose.sysinfo import machine_summary
    from edgepose.training.amp import cpu_has_native_bf16
    from edgepose.training.datasets import SyntheticStream, collate
    from edgepose.training.families import training_family

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = parse_imgsz(args.imgsz, 64)
    net = build_model(args.model).train()
    family = training_family(net, size, {})
    stream = SyntheticStream("train-v1", 0, size, args.batch * 2, augment=True)
    batches = [collate([stream[b * args.batch + i] for i in range(args.batch)]) for b in range(2)]
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    precisions = {"float32": None, "bf16 autocast": torch.bfloat16}

    def step(amp: torch.dtype | None, r: int) -> float:
        imgs, people = batches[r % 2]
        t0 = time.perf_counter()
        loss, _ = family.step(net, imgs.float() / 255, people, amp)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for amp in precisions.values():  # warm-up: oneDNN picks and caches its kernels on first use
        step(amp, 0)
    times: dict[str, list[float]] = {k: [] for k in precisions}
    for r in range(args.rounds):
        for name, amp in precisions.items():
            times[name].append(step(amp, r))
    rows = {k: args.batch / statistics.median(v) for k, v in times.items()}
    cpu = machine_summary()["cpu"]
    print(f"{args.model} {args.imgsz} batch {args.batch}, {args.threads} threads, {cpu['model']}")
    print(f"native bf16 on this CPU: {cpu_has_native_bf16()} (what --amp auto checks)")
    for name, ips in rows.items():
        print(f"{name:14s} {ips:6.1f} images/s  {ips / rows['float32']:.2f}x")
    if args.json:
        result = {
            "machine": machine_summary(),
            "args": {**vars(args), "json": str(args.json)},
            "images_per_s": rows,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
