"""Start-up costs a user feels: `edgepose --help`, `edgepose.load`, and the first frame after it.

Each figure is taken in a fresh Python process (what a user gets), repeated, median reported.
numba's on-disk cache is warmed by one untimed run first, as it is after the first use on a machine.

    python benchmarks/startup.py                       # exports kapao-n (or --model) into a temp dir
    python benchmarks/startup.py --bundle bundles/x     # an existing bundle
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import edgepose
from edgepose.preprocess import read_image
img = read_image(sys.argv[2])
t1 = time.perf_counter()
est = edgepose.load(sys.argv[1])
t2 = time.perf_counter()
est(img)
t3 = time.perf_counter()
steady = []
for _ in range(10):
    s = time.perf_counter(); est(img); steady.append(time.perf_counter() - s)
steady.sort()
print(json.dumps({"import_ms": 1e3 * (t1 - t0), "load_ms": 1e3 * (t2 - t1),
                  "first_frame_ms": 1e3 * (t3 - t2), "steady_frame_ms": 1e3 * steady[len(steady) // 2],
                  "torch_imported": "torch" in sys.modules}))
"""


def _help_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgepose.cli", "--help"], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="bundle to load (default: export --model into a temp dir)")
    ap.add_argument("--model", default="kapao-n", help="zoo model to export when no --bundle is given")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    from edgepose.samples import sample_image_paths

    image = str(sample_image_paths()[0])
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            from edgepose.export.pipeline import ExportOptions, export_model

            from edgepose.models.zoo import shipped_weights_path

            bundle = Path(tmp) / "bundle"
            random = shipped_weights_path(args.model) is None
            opts = ExportOptions(model=args.model, random_weights=random, output=bundle)
            export_model(opts, log=lambda m: None)
        _help_seconds()
        helps = [_help_seconds() for _ in range(args.repeats)]
        cmd = [sys.executable, "-c", PROBE, str(bundle), image]
        subprocess.run(cmd, check=True, capture_output=True)  # warms numba's cache and the file cache
        runs = [
            json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            for _ in range(args.repeats)
        ]
    result = {"help_s": statistics.median(helps)}
    for key in ("import_ms", "load_ms", "first_frame_ms", "steady_frame_ms"):
        result[key] = statistics.median(r[key] for r in runs)
    result["torch_imported"] = any(r["torch_imported"] for r in runs)
    result["bundle"] = str(args.bundle or args.model)
    print(f"edgepose --help          {result['help_s'] * 1e3:8.1f} ms")
    print(f"import edgepose + image  {result['import_ms']:8.1f} ms")
    print(f"edgepose.load(bundle)    {result['load_ms']:8.1f} ms  (runtime session + numba kernels warmed)")
    print(f"first frame after load   {result['first_frame_ms']:8.1f} ms")
    print(f"steady-state frame       {result['steady_frame_ms']:8.1f} ms")
    print(f"torch imported           {result['torch_imported']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
