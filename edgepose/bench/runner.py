"""``edgepose bench`` end to end: load bundles, measure, fingerprint, and build the run records.

A run record is what ``--json`` writes and the history stores: bundle, runtime, precision, mode,
fingerprint, per-stage statistics (ms), FPS, first-frame latency and the timer's own overhead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepose.bench import fingerprint as fpr
from edgepose.bench.timing import (
    FrameCycle,
    Progress,
    check_budget,
    measure_latency,
    measure_throughput,
    timer_overhead_ns,
)
from edgepose.errors import InputError, UsageError


@dataclass
class BenchOptions:
    bundles: list[Path]
    warmup: int = 10
    iters: int | None = 100
    seconds: float | None = None
    batch: int = 1
    throughput: bool = False
    requests: int = 0
    runtime: str | None = None
    device: str | None = None
    images: Path | None = None
    preset: str = "realtime"
    block: int = 1  # latency mode: frames per bundle before the next takes over


def load_frames(folder: Path | None, limit: int = 16) -> list[np.ndarray]:
    """The shipped sample images, or up to ``limit`` images of ``folder``."""
    from edgepose.preprocess import list_images, read_image
    from edgepose.samples import sample_image_paths

    if folder is None:
        paths = sample_image_paths()
        if not paths:
            raise InputError("the package ships no sample images; give --images DIR")
    else:
        if not Path(folder).is_dir():
            raise InputError(f"--images {folder} is not a folder of images")
        paths = list_images(folder)
        if not paths:
            raise InputError(f"--images {folder} has no images in it")
    return [read_image(p) for p in paths[:limit]]


def _check_options(opts: BenchOptions) -> None:
    if not opts.bundles:
        raise UsageError("give at least one BUNDLE folder to benchmark")
    check_budget(opts.iters, opts.seconds, opts.warmup)
    if opts.batch < 1:
        raise UsageError(f"--batch must be 1 or more, not {opts.batch}")
    if opts.block < 1:
        raise UsageError(f"--block must be 1 or more frames, not {opts.block}")
    if opts.throughput and opts.batch != 1:
        raise UsageError("--throughput keeps single frames in flight; leave out --batch")
    if opts.throughput:
        from edgepose.bundle import load_bundle
        from edgepose.runtimes.base import get_runtime

        for path in opts.bundles:
            name = opts.runtime or load_bundle(path, verify_hashes=False).runtime
            if not hasattr(get_runtime(name), "async_queue"):
                raise UsageError(
                    f"runtime {name} has no async queue, so --throughput cannot run on {path}; "
                    "leave out --throughput (latency mode) or benchmark an OpenVINO bundle"
                )


def _check_batch(est: Any, path: Path, batch: int) -> None:
    spec = next(s for s in est.runtime.inputs if s.name == est.bundle.input_name)
    if spec.shape and spec.shape[0] is not None and spec.shape[0] != batch:
        raise UsageError(
            f"bundle {path} takes a fixed batch of {spec.shape[0]}, so --batch {batch} cannot run on it"
        )


def run_bench(
    opts: BenchOptions, progress: Progress | None = None, log: Callable[[str], None] = lambda m: None
) -> list[dict[str, Any]]:
    """Measure every bundle (interleaved) and return one run record per bundle."""
    import edgepose

    _check_options(opts)
    frames = FrameCycle(load_frames(opts.images))
    load_start = fpr.load_now()
    runtime_options = {"hint": "throughput"} if opts.throughput else None
    estimators = []
    try:
        for path in opts.bundles:
            est = edgepose.load(
                path,
                preset=opts.preset,
                runtime=opts.runtime,
                device=opts.device,
                runtime_options=runtime_options,
            )
            estimators.append(est)
            _check_batch(est, path, opts.batch)
        cores = fpr.sysinfo.cpu_info()["cores"]
        if fpr.is_busy(load_start, cores):
            log(
                f"warning: the machine is busy (load average {load_start} on {cores} cores): "
                "figures will be slower and noisier than on an idle machine"
            )
        overhead_ms = timer_overhead_ns() / 1e6
        budget = (estimators, frames, opts.warmup, opts.iters, opts.seconds)
        if opts.throughput:
            results = measure_throughput(*budget, requests=opts.requests, progress=progress)
        else:
            results = measure_latency(*budget, batch=opts.batch, progress=progress, block=opts.block)
        load_end = fpr.load_now()
        if fpr.is_busy(load_end, cores) and not fpr.is_busy(load_start, cores):
            log(f"warning: the machine became busy during the run (load average {load_end} on {cores} cores)")
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        runs = []
        for path, est, res in zip(opts.bundles, estimators, results):
            runs.append(
                {
                    "bundle": str(path),
                    "runtime": est.runtime.name,
                    "precision": est.bundle.precision,
                    "mode": "throughput" if opts.throughput else "latency",
                    "created": created,
                    "fingerprint": fpr.fingerprint(est, load_start, load_end),
                    "stages": res.stages,
                    "fps": res.fps,
                    "first_frame_ms": res.first_frame_ms,
                    "timer_overhead_ms": overhead_ms,
                    "iterations": res.iterations,
                    "warmup": opts.warmup,
                    "block": None if opts.throughput else opts.block,
                    "batch": opts.batch,
                    "requests": res.requests,
                    "preset": opts.preset,
                }
            )
    finally:
        for est in estimators:
            est.close()
    return runs
