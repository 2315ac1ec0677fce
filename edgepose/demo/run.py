"""``edgepose demo``: open the source and the outputs, run the pipeline, always finish cleanly.

Order matters for "nothing half-written": the source is opened and every output path checked before
the model loads; output files live under temporary names until the run ends. The end of a file, a
camera that disconnects, ``--max-frames``, q/Esc in the window and Ctrl-C all *finish* the outputs;
a failing stage *aborts* them (the temporaries are deleted) and is reported as one error line.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgepose.demo.overlay import render_frame, status_lines
from edgepose.demo.pipeline import InferFn, Pipeline
from edgepose.demo.sinks import JsonLinesSink, VideoSink, WindowSink, display_problem
from edgepose.demo.sources import FrameSource, open_source
from edgepose.errors import UsageError


def inference_threads(cores: int | None = None, streams: int = 1) -> int:
    """Every core, shared out among the streams: the other stages are light (~5 ms a frame).

    Measured with benchmarks/demo_pipeline.py on this project's idle 2-core machine (kapao-n 640):
    2 inference threads 38.5 FPS, 1 thread 27.5 FPS. With another job holding a core, 1 thread wins
    (81 vs 155 ms per inference): pass --threads 1 there.
    """
    total = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, total // max(1, streams))


def default_streams(cores: int | None = None) -> int:
    """Inference streams when ``--streams`` is not given: two single-thread streams on 2+ cores.

    Measured with benchmarks/demo_pipeline.py on this project's idle 2-core machine (kapao-n 640, the
    shipped video): 1 stream x 2 threads 0.99x a sequential loop, 2 streams x 1 thread 1.26x. The price
    is latency (a 1-thread inference takes ~36 ms instead of ~22 ms); ``--streams 1`` trades back.
    """
    total = cores if cores is not None else (os.cpu_count() or 1)
    return 2 if total >= 2 else 1


def _cpu(runtime: str, device: str | None) -> bool:
    return runtime in ("onnxruntime", "openvino") and device in (None, "cpu", "CPU")


def load_estimator(
    bundle: Path | str,
    preset: str = "realtime",
    runtime: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    streams: int = 1,
) -> Any:
    """A ``PoseEstimator`` whose CPU runtime gets ``threads`` (default: ``inference_threads()`` for
    ``streams`` streams)."""
    from edgepose.bundle import load_bundle
    from edgepose.estimator import PoseEstimator

    b = load_bundle(bundle)
    options: dict[str, Any] = {}
    if _cpu(runtime or b.runtime, device):
        options["threads"] = threads if threads is not None else inference_threads(streams=streams)
    return PoseEstimator(b, preset=preset, runtime=runtime, device=device, runtime_options=options)


class InferStreams:
    """One inference callable per stream: the estimator's own runtime, then one runtime per extra stream.

    Each extra runtime is opened like the estimator's (same runtime, device and options, so the same
    threads per stream) and run once, so no stream pays its first-inference cost on a frame. Separate
    runtimes rather than one shared: OpenVINO's runtime serialises calls on its one infer request, and
    with ONNX Runtime a shared 1-thread session measured no faster than two sessions. An estimator
    without a bundle (a wrapper around one) is shared by its streams and must be thread-safe.
    """

    def __init__(self, estimator: Any, count: int) -> None:
        from edgepose.estimator import open_runtime
        from edgepose.runtimes.base import Runtime

        if count < 1:
            raise UsageError(f"streams must be 1 or more, not {count}")
        self.calls: list[InferFn] = [estimator.infer]
        self.runtimes: list[Any] = []
        own, bundle = getattr(estimator, "runtime", None), getattr(estimator, "bundle", None)
        try:
            for _ in range(count - 1):
                if not isinstance(own, Runtime) or bundle is None:
                    self.calls.append(estimator.infer)
                    continue
                rt = open_runtime(bundle, own.name, own.device, **own.options)
                self.runtimes.append(rt)
                self.calls.append(self._call(estimator, rt))
                w, h = bundle.input_size
                self.calls[-1](np.zeros((1, 3, h, w), np.float32))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _call(estimator: Any, rt: Any) -> InferFn:
        return lambda tensor: estimator.infer_on(rt, tensor)

    def close(self) -> None:
        for rt in self.runtimes:
            rt.close()
        self.runtimes = []


def _catch_ctrl_c(flag: threading.Event, pipe: Pipeline) -> Callable[[], None]:
    """First Ctrl-C: finish the frame being drawn, then stop; a second one interrupts at once.

    Returns the function that puts the previous handler back. Signals only reach the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_sigint(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        pipe.stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    return lambda: signal.signal(signal.SIGINT, previous)


def run_demo(
    bundle: Path | str,
    source: str | FrameSource = "0",
    save: Path | None = None,
    show: bool = True,
    json_lines: Path | None = None,
    max_frames: int | None = None,
    preset: str = "realtime",
    runtime: str | None = None,
    device: str | None = None,
    draw_boxes: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    estimator: Any = None,
    streams: int | None = None,
) -> dict[str, Any]:
    """Run the demo; returns a summary (frames, dropped, fps, stage medians in ms, outputs, interrupted).

    ``streams`` inference streams (default: ``default_streams()``) of ``threads`` threads each; with an
    ``estimator`` given, the extra streams copy its runtime's options.
    """
    n_streams = streams if streams is not None else default_streams()
    if n_streams < 1:
        raise UsageError(f"streams must be 1 or more, not {n_streams}")
    src = open_source(source) if isinstance(source, str | Path | int) else source
    video = json_sink = window = infer = est = None
    try:
        if save is not None:
            video = VideoSink(save, src.fps)
        if json_lines is not None:
            json_sink = JsonLinesSink(json_lines)
        if show:
            problem = display_problem()
            if problem:
                log(problem)
                show = False
        est = (
            estimator
            if estimator is not None
            else load_estimator(bundle, preset, runtime, device, threads, n_streams)
        )
        infer = InferStreams(est, n_streams)
        if show:
            window = WindowSink()
    except BaseException:
        src.close()
        if infer is not None:
            infer.close()
        if estimator is None and est is not None:
            est.close()
        for sink in (video, json_sink):
            if sink is not None:
                sink.abort()
        raise

    pipe = Pipeline(est, src, max_frames=max_frames, streams=infer.calls)
    ctrl_c = threading.Event()
    restore = _catch_ctrl_c(ctrl_c, pipe)
    rendered = 0
    t_start = time.perf_counter()
    try:
        with pipe:
            for r in pipe:
                t = time.perf_counter()
                dropped = pipe.dropped if pipe.live else None
                lines = status_lines(pipe.stats.fps(), pipe.stats.medians_ms(), dropped)
                img = render_frame(r.image, r.poses, est.skeleton, lines, draw_boxes)
                if video is not None:
                    video.write(img)
                if json_sink is not None:
                    json_sink.write(r.index, r.time, r.poses)
                rendered += 1
                keep = window.show(img) if window is not None else True
                pipe.record_render(time.perf_counter() - t)
                if not keep or ctrl_c.is_set():
                    break
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, still finishing the files
        ctrl_c.set()
        pipe.close()
    except BaseException:
        pipe.close()
        for sink in (video, json_sink):
            if sink is not None:
                sink.abort()
        raise
    finally:
        restore()
        if window is not None:
            window.close()
        infer.close()
        if estimator is None:
            est.close()
    outputs = [
        str(p) for p in (video.finish() if video else None, json_sink.finish() if json_sink else None) if p
    ]
    elapsed = time.perf_counter() - t_start
    return {
        "frames": rendered,
        "captured": pipe.captured,
        "dropped": pipe.dropped,
        "seconds": elapsed,
        "fps": rendered / elapsed if elapsed > 0 else 0.0,
        "stage_ms": pipe.stats.medians_ms(),
        "outputs": outputs,
        "interrupted": ctrl_c.is_set(),
        "live": pipe.live,
        "streams": len(pipe.streams),
        "reordered": pipe.reordered,
    }
