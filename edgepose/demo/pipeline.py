"""capture -> pre-process -> inference (N streams) -> post-process in threads joined by bounded queues.

Numba kernels (``nogil=True``), OpenCV and ONNX Runtime release the GIL, so the stages overlap: while
frame *n* is in inference, *n+1* is being letterboxed and *n-1* decoded. The consumer (rendering, the
window, the writers) runs in the caller's thread, because GUI toolkits want the main thread and because
Ctrl-C arrives there.

Inference is the slow stage, so it may run as several *streams* (like OpenVINO's THROUGHPUT streams):
worker threads that each call their own runtime and take whichever frame is next. Two 1-thread inferences
side by side deliver more frames per second than one 2-thread inference, because a model's intra-op
parallelism scales well below 2x. Frames then finish out of order, so the results queue is a reorder
buffer keyed by the order frames entered pre-processing: the consumer always gets them in order. A cap on
the frames in flight keeps that buffer small even when one stream stalls.

The demo runs two 1-thread streams on 2+ cores (``run.default_streams``): on this project's idle 2-core
machine (benchmarks/demo_pipeline.py, kapao-n 640) the pipeline with one 2-thread stream only matched a
sequential loop (0.99x), two 1-thread streams reached 1.26x, at ~14 ms more latency per frame.

Live sources feed a one-slot queue that drops its oldest frame, so inference always takes the newest;
files feed blocking queues (back-pressure), so every frame is processed in order. Shutdown is by a stop
event plus an end sentinel that every stage forwards (the last worker of a stage forwards it); every wait
has a timeout, so ``close()`` always joins.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepose.demo.sources import FrameSource
from edgepose.errors import EdgeposeError, UsageError

STAGES = ("capture", "preprocess", "infer", "postprocess", "render")
_END = object()
_POLL_S = 0.05

#: one inference stream: a letterboxed tensor in, the model's outputs by name out
InferFn = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass
class FrameResult:
    """One frame on its way through the pipeline; ``poses`` is set when it reaches the consumer.

    ``index`` counts captured frames (a live source skips some); ``seq`` counts the frames that entered
    pre-processing, without gaps, which is what the reorder buffer keys on. ``stream`` ran its inference.
    """

    index: int
    time: float
    image: np.ndarray
    tensor: np.ndarray | None = None
    meta: Any = None
    outputs: dict[str, np.ndarray] | None = None
    poses: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    seq: int = -1
    stream: int = -1


class FrameQueue:
    """A bounded hand-off. ``drop_oldest``: a put on a full queue evicts the oldest item (counted)."""

    def __init__(self, maxsize: int, drop_oldest: bool = False) -> None:
        self.maxsize = max(1, maxsize)
        self.drop_oldest = drop_oldest
        self.dropped = 0
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()

    def put(self, item: Any, stop: threading.Event) -> bool:
        """Hand ``item`` on; False when ``stop`` was set while waiting for room."""
        with self._cond:
            if self.drop_oldest:
                while len(self._items) >= self.maxsize:
                    self._items.popleft()
                    self.dropped += 1
            elif not self._wait_for_room(stop):
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def put_end(self) -> None:
        """The end sentinel always goes in (one over the bound), so a stopping stage never blocks."""
        with self._cond:
            self._items.append(_END)
            self._cond.notify_all()

    def get(self, stop: threading.Event) -> Any:
        """The next item, or the end sentinel once ``stop`` is set."""
        with self._cond:
            while not self._items:
                if stop.is_set():
                    return _END
                self._cond.wait(_POLL_S)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def _wait_for_room(self, stop: threading.Event) -> bool:
        """Called holding the lock: wait until below the bound; False once stopped."""
        while len(self._items) >= self.maxsize:
            if stop.is_set():
                return False
            self._cond.wait(_POLL_S)
        return True


class ReorderQueue(FrameQueue):
    """Takes ``FrameResult``s in any order and hands them out by ``seq`` (0, 1, 2, ... without gaps).

    A frame that arrives before its turn is held aside and never waits, so the stage putting it keeps
    going and the frame whose turn it is can still arrive; the bound applies to frames ready to go.
    ``reordered`` counts the frames that arrived early, ``most_held`` the most held back at once.
    """

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.reordered = 0
        self.most_held = 0
        self._early: dict[int, Any] = {}
        self._next = 0

    def put(self, item: Any, stop: threading.Event) -> bool:
        with self._cond:
            if item.seq != self._next:
                self.reordered += 1
            self._early[item.seq] = item
            self.most_held = max(self.most_held, len(self._early) - (item.seq == self._next))
            while self._next in self._early:
                if not self._wait_for_room(stop):
                    return False
                self._items.append(self._early.pop(self._next))
                self._next += 1
                self._cond.notify_all()
            return True


class InFlight:
    """At most ``limit`` frames between pre-processing and the consumer: bounds the reorder buffer."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._count = 0
        self._cond = threading.Condition()

    def acquire(self, stop: threading.Event) -> bool:
        """Wait for a free slot; False once ``stop`` is set."""
        with self._cond:
            while self._count >= self.limit:
                if stop.is_set():
                    return False
                self._cond.wait(_POLL_S)
            self._count += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify_all()


class StageStats:
    """Per-stage durations and the completion rate over a sliding window (medians resist hiccups)."""

    def __init__(self, window: int = 30) -> None:
        self._lock = threading.Lock()
        self._times: dict[str, deque[float]] = {s: deque(maxlen=window) for s in STAGES}
        self._done: deque[float] = deque(maxlen=window + 1)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._times.setdefault(stage, deque(maxlen=self._done.maxlen)).append(seconds)

    def frame_done(self, at: float | None = None) -> None:
        with self._lock:
            self._done.append(time.perf_counter() if at is None else at)

    def medians_ms(self) -> dict[str, float]:
        with self._lock:
            return {s: 1000.0 * statistics.median(v) for s, v in self._times.items() if v}

    def fps(self) -> float:
        with self._lock:
            if len(self._done) < 2 or self._done[-1] <= self._done[0]:
                return 0.0
            return (len(self._done) - 1) / (self._done[-1] - self._done[0])


class Pipeline:
    """``with Pipeline(est, source) as pipe: for r in pipe: ...`` yields finished frames in order.

    ``streams``: one inference callable per stream (default: ``[estimator.infer]``, one stream). Each
    must be safe to call while the others run: give each its own runtime (``run.InferStreams`` does).
    ``max_frames`` bounds the frames yielded. A failing stage stops everything; iteration then raises
    one ``EdgeposeError`` naming the stage, after every thread has been joined.
    """

    def __init__(
        self,
        estimator: Any,
        source: FrameSource,
        queue_size: int = 2,
        max_frames: int | None = None,
        window: int = 30,
        streams: Sequence[InferFn] | None = None,
    ) -> None:
        self.estimator = estimator
        self.source = source
        self.live = bool(source.live)
        self.max_frames = max_frames
        self.streams: list[InferFn] = list(streams) if streams is not None else [estimator.infer]
        if not self.streams:
            raise UsageError("a pipeline needs at least one inference stream")
        self.stats = StageStats(window)
        self._stop = threading.Event()
        self._error: tuple[str, BaseException] | None = None
        size = 1 if self.live else queue_size
        # A live source keeps only its newest frame; downstream of it the hand-offs block, so no stage
        # works on a frame that will be thrown away.
        self._frames = FrameQueue(size, drop_oldest=self.live)
        self._tensors = FrameQueue(size)
        self._outputs = FrameQueue(size)
        self._results = ReorderQueue(size)
        # Room for every frame the queues and workers can hold, so the cap only bites when a stream
        # stalls and the others run ahead (their frames would pile up in the reorder buffer).
        self._in_flight = InFlight(3 * size + 2 * len(self.streams) + 2)
        self._seq = 0
        self._workers_left: dict[str, int] = {}
        self._lock = threading.Lock()
        self.captured = 0
        self.yielded = 0
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0

    @property
    def dropped(self) -> int:
        return self._frames.dropped

    @property
    def reordered(self) -> int:
        """Frames whose inference finished before an earlier frame's (held back to keep the order)."""
        return self._results.reordered

    @property
    def reorder_peak(self) -> int:
        """The most frames the reorder buffer held back at once."""
        return self._results.most_held

    @property
    def in_flight_limit(self) -> int:
        """The most frames between pre-processing and the consumer (what bounds the reorder buffer)."""
        return self._in_flight.limit

    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self._t0 = time.perf_counter()
        specs: list[tuple[str, Callable[[], None]]] = [
            ("capture", self._capture),
            # Pre-processing waits for room in flight *before* it takes a frame, so that a live
            # source's frame does not grow stale while it waits.
            (
                "preprocess",
                lambda: self._stage(
                    "preprocess", self._pre, self._frames, self._tensors, gate=self._in_flight.acquire
                ),
            ),
        ]
        many = len(self.streams) > 1
        for k, infer in enumerate(self.streams):
            specs.append((f"infer-{k}" if many else "infer", self._infer_stream_target(k, infer)))
        specs.append(
            ("postprocess", lambda: self._stage("postprocess", self._post, self._outputs, self._results))
        )
        self._workers_left = {"preprocess": 1, "infer": len(self.streams), "postprocess": 1}
        for name, target in specs:
            t = threading.Thread(target=target, name=f"edgepose-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Ask every stage to stop; frames already finished can still be taken."""
        self._stop.set()

    def close(self, timeout: float = 10.0) -> list[str]:
        """Stop and join every thread; returns the names of threads that did not stop in time."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]

    def __iter__(self) -> Iterator[FrameResult]:
        while self.max_frames is None or self.yielded < self.max_frames:
            item = self._results.get(self._stop)
            if item is _END:
                break
            self._in_flight.release()
            self.yielded += 1
            yield item
        self.close()
        if self._error is not None:
            stage, err = self._error
            if isinstance(err, EdgeposeError):
                raise err
            raise EdgeposeError(f"the {stage} stage failed: {type(err).__name__}: {err}") from err

    def record_render(self, seconds: float) -> None:
        """The consumer reports its drawing/writing time so the overlay can show it."""
        self.stats.add("render", seconds)
        self.stats.frame_done()

    # -- stages ------------------------------------------------------------------------------------

    def _fail(self, stage: str, err: BaseException) -> None:
        if self._error is None:
            self._error = (stage, err)
        self._stop.set()

    def _capture(self) -> None:
        limit = None if self.live else self.max_frames
        try:
            while not self._stop.is_set() and (limit is None or self.captured < limit):
                t = time.perf_counter()
                frame = self.source.read()
                if frame is None:
                    break
                now = time.perf_counter()
                stamp = (now - self._t0) if self.live else self.captured / self.source.fps
                item = FrameResult(self.captured, stamp, frame)
                item.timings["capture"] = now - t
                self.stats.add("capture", now - t)
                self.captured += 1
                if not self._frames.put(item, self._stop):
                    break
        except BaseException as e:  # noqa: BLE001 - any failure ends the run, reported once by __iter__
            self._fail("capture", e)
        finally:
            self._frames.put_end()
            self.source.close()

    def _stage(
        self,
        name: str,
        work: Callable[[FrameResult], None],
        inq: FrameQueue,
        outq: FrameQueue,
        gate: Callable[[threading.Event], bool] | None = None,
    ) -> None:
        """One worker of stage ``name`` (the inference stage has one per stream).

        ``gate`` is waited on before each frame is taken; False (stopped) ends the worker. The end
        sentinel is put back for the stage's other workers, and the last one to leave forwards it.
        """
        try:
            while True:
                if gate is not None and not gate(self._stop):
                    break
                item = inq.get(self._stop)
                if item is _END:
                    inq.put_end()
                    break
                if self._stop.is_set():
                    break
                t = time.perf_counter()
                work(item)
                dt = time.perf_counter() - t
                item.timings[name] = dt
                self.stats.add(name, dt)
                if not outq.put(item, self._stop):
                    break
        except BaseException as e:  # noqa: BLE001
            self._fail(name, e)
        finally:
            with self._lock:
                self._workers_left[name] -= 1
                last = self._workers_left[name] == 0
            if last:
                outq.put_end()

    def _infer_stream_target(self, k: int, infer: InferFn) -> Callable[[], None]:
        def work(item: FrameResult) -> None:
            item.outputs = infer(item.tensor)
            item.tensor = None
            item.stream = k

        return lambda: self._stage("infer", work, self._tensors, self._outputs)

    def _pre(self, item: FrameResult) -> None:
        item.seq = self._seq  # one pre-processing thread: the order frames enter it is the output order
        self._seq += 1
        item.tensor, item.meta = self.estimator.preprocess(item.image)

    def _post(self, item: FrameResult) -> None:
        item.poses = self.estimator.postprocess(item.outputs, item.meta)
        item.outputs = None
