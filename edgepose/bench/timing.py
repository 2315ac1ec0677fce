"""The timing loop: each stage of ``PoseEstimator`` timed on its own with ``time.perf_counter_ns``.

Latency mode runs one request at a time; several bundles are interleaved round-robin, one frame each, so
that noise from the rest of the machine (another job, frequency scaling) hits every bundle alike.
Throughput mode keeps several requests in flight through the runtime's async queue (OpenVINO) and
reports frames per second plus the latency each request saw. All figures are milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepose.errors import UsageError

STAGES = ("preprocess", "inference", "postprocess", "total")
STATS = ("mean", "std", "min", "p50", "p90", "p99", "max")

#: called after every measured iteration with (done, total); total is None in --seconds mode
Progress = Callable[[int, int | None], None]


def summarize(samples_ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """mean, std, min, percentiles and max of nanosecond samples, in milliseconds."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise UsageError("no iterations were measured; give --iters 1 or more (or a longer --seconds)")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "mean": float(ms.mean()),
        "std": float(ms.std()),
        "min": float(ms.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(ms.max()),
    }


@dataclass
class _Target:
    """One loaded bundle and its measurements."""

    estimator: Any  # edgepose.estimator.PoseEstimator
    batch: int = 1
    samples: list[np.ndarray] = field(default_factory=list)
    first_frame_ns: int = 0
    done: int = 0
    wall_ns: int = 0

    def __post_init__(self) -> None:
        w, h = self.estimator.input_size
        self._buf = np.empty((self.batch, 3, h, w), np.float32)
        self._views = [self._buf[i : i + 1] for i in range(self.batch)]

    def _pre(self, frames: Sequence[np.ndarray]) -> list[Any]:
        return [self.estimator.preprocess(f, self._views[i])[1] for i, f in enumerate(frames)]

    def _post(self, outputs: dict[str, np.ndarray], metas: list[Any]) -> None:
        if self.batch == 1:
            self.estimator.postprocess(outputs, metas[0])
            return
        for i, meta in enumerate(metas):
            self.estimator.postprocess({k: v[i : i + 1] for k, v in outputs.items()}, meta)

    def step(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """One request, each stage between two clock reads: [pre, infer, post, total] in ns."""
        clock = time.perf_counter_ns
        t0 = clock()
        metas = self._pre(frames)
        t1 = clock()
        outputs = self.estimator.infer(self._buf)
        t2 = clock()
        self._post(outputs, metas)
        t3 = clock()
        return np.array([t1 - t0, t2 - t1, t3 - t2, t3 - t0], np.int64)


class _EmptyTarget(_Target):
    """A target whose stages do nothing: what ``step`` costs on its own."""

    def __init__(self) -> None:  # no estimator, no buffers
        self.batch = 1
        self._buf = np.empty(0, np.float32)
        self.estimator = self

    def _pre(self, frames: Sequence[np.ndarray]) -> list[Any]:
        return []

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def _post(self, outputs: dict[str, np.ndarray], metas: list[Any]) -> None:
        return None


def timer_overhead_ns(iters: int = 2000) -> float:
    """What the bookkeeping of one measured iteration costs: ``_Target.step`` with empty stages.

    The same clock reads, method calls, sample array and list append as a real iteration; the
    median over five repetitions keeps a scheduler hiccup from inflating it.
    """
    target = _EmptyTarget()
    frames: list[np.ndarray] = []
    per_iter = []
    for _ in range(5):
        samples = []
        start = time.perf_counter_ns()
        for _ in range(iters):
            samples.append(target.step(frames))
        per_iter.append((time.perf_counter_ns() - start) / iters)
    return float(np.median(per_iter))


class FrameCycle:
    """Real images handed out in turn, so post-processing sees real candidate counts."""

    def __init__(self, frames: Sequence[np.ndarray]) -> None:
        if not frames:
            raise UsageError("no images to benchmark with; give --images DIR with at least one image")
        self.frames = list(frames)
        self._i = 0

    def take(self, n: int) -> list[np.ndarray]:
        out = [self.frames[(self._i + k) % len(self.frames)] for k in range(n)]
        self._i += n
        return out


@dataclass
class StageResult:
    """What one bundle measured: per-stage statistics and the figures around them."""

    stages: dict[str, dict[str, float]]
    fps: float
    first_frame_ms: float
    iterations: int
    requests: int = 1


def check_budget(iters: int | None, seconds: float | None, warmup: int) -> None:
    if iters is not None and seconds is not None:
        raise UsageError("give --iters or --seconds, not both")
    if iters is not None and iters < 1:
        raise UsageError(f"--iters must be 1 or more, not {iters}")
    if seconds is not None and seconds <= 0:
        raise UsageError(f"--seconds must be more than 0, not {seconds}")
    if warmup < 0:
        raise UsageError(f"--warmup must be 0 or more, not {warmup}")


def _result(target: _Target, fps: float | None = None, requests: int = 1) -> StageResult:
    data = np.stack(target.samples) if target.samples else np.zeros((0, 4), np.int64)
    stages = {name: summarize(data[:, i]) for i, name in enumerate(STAGES)}
    if fps is None:
        fps = 1000.0 * target.batch / stages["total"]["mean"]
    return StageResult(stages, fps, target.first_frame_ns / 1e6, len(target.samples), requests)


def measure_latency(
    estimators: Sequence[Any],
    frames: FrameCycle,
    warmup: int = 10,
    iters: int | None = 100,
    seconds: float | None = None,
    batch: int = 1,
    progress: Progress | None = None,
    block: int = 1,
) -> list[StageResult]:
    """One request at a time, bundles interleaved round-robin; the first call after load kept apart.

    ``block`` frames run back to back on each bundle before the next takes over (1: alternate every
    frame). Alternating every frame spreads noise most evenly, but each call then starts with caches
    full of the other bundle's weights, which no deployment sees and which costs a small, fast model
    (an INT8 kapao-n) proportionally more; a block of a few frames measures each warm while still
    sharing the noise.
    """
    check_budget(iters, seconds, warmup)
    if block < 1:
        raise UsageError(f"--block must be 1 or more frames, not {block}")
    targets = [_Target(e, batch) for e in estimators]
    for t in targets:  # first frame: lazy initialisation inside the runtime shows here, and only here
        t.first_frame_ns = int(t.step(frames.take(batch))[3])
    for _ in range(warmup):
        for t in targets:
            t.step(frames.take(batch))
    start = time.perf_counter_ns()
    budget_ns = None if seconds is None else int(seconds * 1e9)
    done = 0
    while (iters is not None and done < iters) or (
        budget_ns is not None and time.perf_counter_ns() - start < budget_ns
    ):
        n = block if iters is None else min(block, iters - done)
        for t in targets:
            for _ in range(n):
                t.samples.append(t.step(frames.take(batch)))
        done += n
        if progress is not None:
            progress(done, iters)
    return [_result(t) for t in targets]


def measure_throughput(
    estimators: Sequence[Any],
    frames: FrameCycle,
    warmup: int = 10,
    iters: int | None = 100,
    seconds: float | None = None,
    requests: int = 0,
    block: int = 16,
    progress: Progress | None = None,
) -> list[StageResult]:
    """Several requests in flight through each runtime's async queue, bundles alternating by blocks.

    Pre-processing runs on this thread, post-processing in the completion callback; a request's
    inference time runs from submission to its callback (queueing included) and its total from the
    start of its pre-processing to the end of its post-processing. FPS is frames completed per
    second of wall time.
    """
    check_budget(iters, seconds, warmup)
    from edgepose.runtimes.base import AsyncRuntime

    targets = [_Target(e) for e in estimators]
    queues = []
    for t in targets:
        if not isinstance(t.estimator.runtime, AsyncRuntime):
            raise UsageError(
                f"runtime {t.estimator.runtime.name} has no async queue, so --throughput cannot run on it; "
                "use latency mode (leave out --throughput) or an OpenVINO bundle"
            )
        queues.append(_open_queue(t, requests))
    for t in targets:
        t.first_frame_ns = int(t.step(frames.take(1))[3])
    for t, (queue, _) in zip(targets, queues):
        _run_block(t, queue, frames, warmup, record=False)
    start = time.perf_counter_ns()
    budget_ns = None if seconds is None else int(seconds * 1e9)
    done = 0
    while (iters is not None and done < iters) or (
        budget_ns is not None and time.perf_counter_ns() - start < budget_ns
    ):
        n = block if iters is None else min(block, iters - done)
        for t, (queue, _) in zip(targets, queues):
            _run_block(t, queue, frames, n, record=True)
        done += n
        if progress is not None:
            progress(done, iters)
    return [
        _result(t, fps=1e9 * t.done / max(t.wall_ns, 1), requests=n_req)
        for t, (_, n_req) in zip(targets, queues)
    ]


def _open_queue(target: _Target, requests: int) -> tuple[Any, int]:
    lock = threading.Lock()
    est = target.estimator

    def on_done(outputs: dict[str, np.ndarray], job: dict[str, Any]) -> None:
        t2 = time.perf_counter_ns()
        est.postprocess(outputs, job["meta"])
        t3 = time.perf_counter_ns()
        if job["record"]:
            row = np.array([job["t1"] - job["t0"], t2 - job["t1"], t3 - t2, t3 - job["t0"]], np.int64)
            with lock:
                target.samples.append(row)

    queue = est.runtime.async_queue(on_done, requests)
    return queue, queue.requests


def _run_block(target: _Target, queue: Any, frames: FrameCycle, n: int, record: bool) -> None:
    est = target.estimator
    w, h = est.input_size
    start = time.perf_counter_ns()
    for frame in frames.take(n):
        t0 = time.perf_counter_ns()
        tensor, meta = est.preprocess(frame, np.empty((1, 3, h, w), np.float32))
        t1 = time.perf_counter_ns()
        queue.submit({est.bundle.input_name: tensor}, {"meta": meta, "t0": t0, "t1": t1, "record": record})
    queue.wait_all()
    if record:
        target.wall_ns += time.perf_counter_ns() - start
        target.done += n
