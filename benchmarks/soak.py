"""Soak test: the demo pipeline on the shipped video, looped, for --seconds; does memory grow?

    python benchmarks/soak.py [--bundle DIR] [--seconds 600] [--sample 5] [--warmup 30] [--streams N]

RSS is sampled every --sample seconds (psutil, or /proc/self/status); the report is the growth from
the end of the warm-up to the end (target < 50 MB over 10 minutes) and the least-squares slope in
MB per minute. Frames are drawn with the overlay like the demo does, and not written anywhere. The
pipeline runs the demo's default inference streams (``--streams`` overrides), each with its own runtime.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgepose.demo.overlay import render_frame, status_lines
from edgepose.demo.pipeline import Pipeline
from edgepose.demo.run import InferStreams, default_streams, load_estimator
from edgepose.demo.sources import open_source
from edgepose.samples import sample_video_path


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: export kapao-n to a temp dir)")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the baseline sample")
    parser.add_argument("--streams", type=int, help="inference streams (default: the demo's)")
    args = parser.parse_args()
    n_streams = args.streams or default_streams()
    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from demo_pipeline import export_default

            bundle = export_default(Path(tmp), None)
        else:
            bundle = args.bundle
        est = load_estimator(bundle, streams=n_streams)
        streams = InferStreams(est, n_streams)
        source = open_source(sample_video_path(), loop=True)
        samples: list[tuple[float, float]] = []
        done = threading.Event()

        def sampler() -> None:
            t0 = time.perf_counter()
            while not done.wait(args.sample):
                samples.append((time.perf_counter() - t0, rss_mb()))

        threading.Thread(target=sampler, daemon=True).start()
        start = time.perf_counter()
        frames = 0
        with Pipeline(est, source, streams=streams.calls) as pipe:
            for r in pipe:
                render_frame(
                    r.image, r.poses, est.skeleton, status_lines(pipe.stats.fps(), pipe.stats.medians_ms())
                )
                pipe.record_render(0.0)
                frames += 1
                if time.perf_counter() - start >= args.seconds:
                    break
        done.set()
        elapsed = time.perf_counter() - start
        streams.close()
        est.close()
    after = [(t, m) for t, m in samples if t >= args.warmup] or samples
    if len(after) < 2:
        print("too short to measure growth: raise --seconds or lower --sample/--warmup")
        return
    t, m = np.array(after).T
    slope = float(np.polyfit(t / 60.0, m, 1)[0])
    growth = m[-1] - m[0]
    print(
        f"{frames} frames in {elapsed:.0f} s ({frames / elapsed:.1f} FPS, {n_streams} inference stream(s)); "
        f"{len(samples)} RSS samples"
    )
    print(
        f"RSS after warm-up {m[0]:.1f} MB -> end {m[-1]:.1f} MB (max {m.max():.1f}): growth {growth:+.1f} MB"
    )
    print(f"slope {slope:+.2f} MB/min -> {slope * 10:+.1f} MB per 10 minutes (target < 50 MB)")


if __name__ == "__main__":
    main()
