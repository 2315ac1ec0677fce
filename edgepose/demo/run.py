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

from edgepose.demo.overlay import render_frame, status_lines
from edgepose.demo.pipeline import Pipeline
from edgepose.demo.sinks import JsonLinesSink, VideoSink, WindowSink, display_problem
from edgepose.demo.sources import FrameSource, open_source


def inference_threads(cores: int | None = None) -> int:
    """Every core: the other stages are light (~5 ms a frame) and mostly wait on queues.

    Measured with benchmarks/demo_pipeline.py on this project's idle 2-core machine (kapao-n 640):
    2 inference threads 38.5 FPS, 1 thread 27.5 FPS. With another job holding a core, 1 thread wins
    (81 vs 155 ms per inference): pass --threads 1 there.
    """
    return cores if cores is not None else (os.cpu_count() or 1)


def load_estimator(
    bundle: Path | str,
    preset: str = "realtime",
    runtime: str | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> Any:
    """A ``PoseEstimator`` whose CPU runtime gets ``threads`` (default: ``inference_threads()``)."""
    from edgepose.bundle import load_bundle
    from edgepose.estimator import PoseEstimator

    b = load_bundle(bundle)
    name = runtime or b.runtime
    options: dict[str, Any] = {}
    if name in ("onnxruntime", "openvino") and (device in (None, "cpu", "CPU")):
        options["threads"] = threads if threads is not None else inference_threads()
    return PoseEstimator(b, preset=preset, runtime=runtime, device=device, runtime_options=options)


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
) -> dict[str, Any]:
    """Run the demo; returns a summary (frames, dropped, fps, stage medians in ms, outputs, interrupted)."""
    src = open_source(source) if isinstance(source, str | Path | int) else source
    video = json_sink = window = None
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
        est = estimator if estimator is not None else load_estimator(bundle, preset, runtime, device, threads)
        if show:
            window = WindowSink()
    except BaseException:
        src.close()
        for sink in (video, json_sink):
            if sink is not None:
                sink.abort()
        raise

    pipe = Pipeline(est, src, max_frames=max_frames)
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
    }
