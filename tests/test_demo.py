"""The demo: every frame of a file in order, newest-frame semantics for live sources, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgepose.demo.pipeline import FrameQueue, FrameResult, Pipeline, ReorderQueue
from edgepose.demo.run import InferStreams, run_demo
from edgepose.demo.sinks import display_problem
from edgepose.demo.sources import open_source, source_kind
from edgepose.errors import EdgeposeError, InputError
from edgepose.samples import sample_video_path

VIDEO = sample_video_path()


@pytest.fixture(scope="module")
def bundle(kapao_t_bundle) -> Path:
    return kapao_t_bundle


@pytest.fixture(scope="module")
def estimator(bundle):
    from edgepose.demo.run import load_estimator

    est = load_estimator(bundle, threads=1)
    yield est
    est.close()


def _cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "edgepose.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return n


def _no_demo_threads() -> bool:
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if not any(t.name.startswith("edgepose-") for t in threading.enumerate()):
            return True
        time.sleep(0.05)
    return False


def test_demo_cli_writes_every_frame_in_order(bundle, estimator, tmp_path):
    video, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    res = _cli(
        "demo",
        str(bundle),
        "--source",
        str(VIDEO),
        "--no-show",
        "--save",
        str(video),
        "--json-lines",
        str(jsonl),
    )
    assert res.returncode == 0, res.stderr
    n = _frame_count(VIDEO)
    assert n == 120 and _frame_count(video) == n
    lines = [json.loads(s) for s in jsonl.read_text().splitlines()]
    assert [d["frame"] for d in lines] == list(range(n))
    assert lines[30]["time"] == pytest.approx(1.0, abs=1e-3)  # 30 fps source time, not wall time
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl", "out.mp4"]  # no temporaries left
    # The pipelined run found exactly what a plain sequential call finds on the same frames.
    cap = cv2.VideoCapture(str(VIDEO))
    people = 0
    for i in range(n):
        ok, frame = cap.read()
        assert ok
        if i % 10:
            continue
        poses = estimator(frame)
        got = lines[i]["poses"]
        assert len(got) == len(poses)
        for d, kp, s, b in zip(got, poses.keypoints, poses.scores, poses.boxes):
            assert set(d) == {"score", "box", "keypoints"}
            assert d["score"] == pytest.approx(float(s), abs=1e-3)
            np.testing.assert_allclose(d["box"], b, atol=0.02)
            np.testing.assert_allclose(d["keypoints"], kp, atol=0.02)
        people += len(got)
    cap.release()
    assert people > 0


class FastLiveSource:
    """A camera stand-in: frames arrive every ~0.5 ms whether or not anyone reads them; the frame's
    index is written into its pixels so the test can tell which frame came out."""

    live = True
    fps = 2000.0
    description = "synthetic live source"

    def __init__(self, total: int = 3000) -> None:
        self.total = total
        self.produced = 0
        self.closed = False

    def read(self) -> np.ndarray | None:
        if self.produced >= self.total:
            return None
        time.sleep(0.0005)
        frame = np.full((120, 160, 3), 0, np.uint8)
        frame[0, 0, 0], frame[0, 0, 1] = self.produced % 256, self.produced // 256
        self.produced += 1
        return frame

    def close(self) -> None:
        self.closed = True


def test_drop_queue_keeps_the_newest():
    stop = threading.Event()
    q = FrameQueue(1, drop_oldest=True)
    for i in range(10):
        assert q.put(i, stop)
    assert q.get(stop) == 9 and q.dropped == 9
    blocking = FrameQueue(2)
    assert blocking.put(0, stop) and blocking.put(1, stop)
    stop.set()
    assert not blocking.put(2, stop)  # a full blocking queue gives up once stopped, instead of hanging


class SlowEstimator:
    """A real estimator whose inference also takes 20 ms, far slower than the source's 0.5 ms frames."""

    def __init__(self, est) -> None:
        self.est, self.skeleton = est, est.skeleton
        self.taken: list[tuple[int, int]] = []  # (frame index in the pixels, frames produced by then)
        self.source: FastLiveSource | None = None

    def preprocess(self, frame):
        assert self.source is not None
        self.taken.append((int(frame[0, 0, 0]) + 256 * int(frame[0, 0, 1]), self.source.produced))
        return self.est.preprocess(frame)

    def infer(self, tensor):
        time.sleep(0.02)
        return self.est.infer(tensor)

    def postprocess(self, outputs, meta):
        return self.est.postprocess(outputs, meta)


def test_live_source_drops_stale_frames_and_takes_the_newest(estimator):
    source = FastLiveSource()
    slow = SlowEstimator(estimator)
    slow.source = source
    with Pipeline(slow, source, max_frames=15) as pipe:
        results = list(pipe)
    assert len(results) == 15 and _no_demo_threads() and source.closed
    index = [r.index for r in results]
    assert index == sorted(index) and len(set(index)) == 15
    assert all(int(r.image[0, 0, 0]) + 256 * int(r.image[0, 0, 1]) == r.index for r in results)
    assert pipe.dropped > 100 and index[-1] - index[0] > 15 * 5  # most frames were skipped
    # Each frame pre-processing took was (nearly) the newest: only frames that arrived while the
    # stage was handing the previous one on can be newer (each takes 0.5 ms; inference takes 20 ms).
    lags = [produced - 1 - idx for idx, produced in slow.taken[2:]]
    assert np.median(lags) <= 3, lags


class FailingEstimator(SlowEstimator):
    def __init__(self, est, fail_at: int) -> None:
        super().__init__(est)
        self.calls, self.fail_at = 0, fail_at

    def preprocess(self, frame):
        return self.est.preprocess(frame)

    def infer(self, tensor):
        return self.est.infer(tensor)

    def postprocess(self, outputs, meta):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ValueError("injected failure")
        return self.est.postprocess(outputs, meta)


def test_failing_stage_joins_threads_and_writes_nothing(estimator, tmp_path):
    video, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    with pytest.raises(EdgeposeError) as info:
        run_demo(
            "unused",
            str(VIDEO),
            save=video,
            json_lines=jsonl,
            show=False,
            estimator=FailingEstimator(estimator, fail_at=6),
        )
    msg = str(info.value)
    assert msg == "the postprocess stage failed: ValueError: injected failure" and "\n" not in msg
    assert _no_demo_threads()
    assert os.listdir(tmp_path) == []  # neither the outputs nor their temporaries


class InterruptingSource:
    """Frames of the sample video; after ``after`` frames it sends this process SIGINT, like Ctrl-C."""

    live = False
    description = "interrupting source"

    def __init__(self, after: int) -> None:
        self.cap = cv2.VideoCapture(str(VIDEO))
        self.fps = 30.0
        self.after, self.n = after, 0

    def read(self):
        if self.n == self.after:
            os.kill(os.getpid(), signal.SIGINT)
        self.n += 1
        ok, frame = self.cap.read()
        return frame if ok else None

    def close(self) -> None:
        self.cap.release()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to oneself is POSIX")
def test_ctrl_c_finishes_the_outputs(estimator, tmp_path):
    video, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    summary = run_demo(
        "unused", InterruptingSource(20), save=video, json_lines=jsonl, show=False, estimator=estimator
    )
    assert summary["interrupted"] and 0 < summary["frames"] < 120
    assert _no_demo_threads()
    assert _frame_count(video) == summary["frames"]
    assert len(jsonl.read_text().splitlines()) == summary["frames"]
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl", "out.mp4"]


def _poses_by_frame(path: Path) -> list[dict]:
    return [json.loads(s) for s in path.read_text().splitlines()]


def _assert_same_poses(a: list[dict], b: list[dict]) -> None:
    assert [d["frame"] for d in a] == [d["frame"] for d in b]
    for da, db in zip(a, b):
        assert da["time"] == db["time"] and len(da["poses"]) == len(db["poses"]), da["frame"]
        for pa, pb in zip(da["poses"], db["poses"]):
            assert pa["score"] == pytest.approx(pb["score"], abs=1e-3)
            np.testing.assert_allclose(pa["keypoints"], pb["keypoints"], atol=0.02)


def test_two_streams_yield_every_frame_in_order_with_the_same_poses(bundle, estimator, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    summary = run_demo("unused", str(VIDEO), json_lines=one, show=False, estimator=estimator, streams=1)
    assert summary["streams"] == 1 and summary["reordered"] == 0
    res = _cli(
        "demo", str(bundle), "--source", str(VIDEO), "--no-show", "--streams", "2", "--json-lines", str(two)
    )
    assert res.returncode == 0, res.stderr
    a, b = _poses_by_frame(one), _poses_by_frame(two)
    assert [d["frame"] for d in b] == list(range(120))
    assert sum(len(d["poses"]) for d in a) > 0
    _assert_same_poses(a, b)


class SlowStream:
    """A second runtime of the bundle whose every inference also sleeps, so the other stream overtakes it."""

    def __init__(self, infer, seconds: float) -> None:
        self.infer, self.seconds, self.calls = infer, seconds, 0

    def __call__(self, tensor):
        self.calls += 1
        time.sleep(self.seconds)
        return self.infer(tensor)


def test_reorder_buffer_puts_overtaken_frames_back_in_order(estimator):
    streams = InferStreams(estimator, 2)
    try:
        assert len(streams.runtimes) == 1  # the second stream has its own session
        slow = SlowStream(streams.calls[1], 0.03)
        with Pipeline(estimator, open_source(VIDEO), max_frames=40, streams=[streams.calls[0], slow]) as pipe:
            results = list(pipe)
    finally:
        streams.close()
    assert [r.index for r in results] == list(range(40)) and _no_demo_threads()
    assert {r.stream for r in results} == {0, 1} and slow.calls > 0
    assert pipe.reordered > 0  # frames really finished out of order
    cap = cv2.VideoCapture(str(VIDEO))
    for r in results[:12]:
        ok, frame = cap.read()
        assert ok and np.array_equal(frame, r.image)
        expected = estimator(frame)
        np.testing.assert_allclose(r.poses.keypoints, expected.keypoints, atol=0.02)
    cap.release()


def test_a_stalled_stream_cannot_grow_the_reorder_buffer(estimator):
    streams = InferStreams(estimator, 2)
    stalls = []

    def stalls_once(tensor):  # one long hiccup while the other stream races ahead
        if not stalls:
            stalls.append(1)
            time.sleep(0.6)
        return streams.calls[1](tensor)

    try:
        with Pipeline(
            estimator, open_source(VIDEO), max_frames=60, streams=[streams.calls[0], stalls_once]
        ) as pipe:
            results = list(pipe)
    finally:
        streams.close()
    assert [r.index for r in results] == list(range(60)) and _no_demo_threads()
    # The free stream ran ahead only as far as the in-flight cap lets it (~100 frames otherwise).
    assert 2 <= pipe.reorder_peak < pipe.in_flight_limit <= 12


def test_reorder_queue_hands_out_by_seq():
    stop = threading.Event()
    q = ReorderQueue(3)
    frames = [FrameResult(i, 0.0, np.zeros((1, 1, 3), np.uint8), seq=i) for i in range(7)]
    assert q.put(frames[2], stop) and q.put(frames[1], stop)  # early: held back, never waiting
    stop.set()
    assert not isinstance(q.get(stop), FrameResult)  # nothing is ready: a stopped get ends
    stop.clear()
    assert q.put(frames[0], stop)
    assert [q.get(stop).seq for _ in range(3)] == [0, 1, 2] and q.reordered == 2
    # Frames whose turn it is respect the bound: a put on a full queue gives up once stopped.
    assert all(q.put(f, stop) for f in frames[3:6])
    stop.set()
    assert not q.put(frames[6], stop)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to oneself is POSIX")
def test_two_streams_stop_mid_stream_and_join(estimator, tmp_path):
    video, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    summary = run_demo(
        "unused",
        InterruptingSource(20),
        save=video,
        json_lines=jsonl,
        show=False,
        estimator=estimator,
        streams=2,
    )
    assert summary["interrupted"] and summary["streams"] == 2 and 0 < summary["frames"] < 120
    assert _no_demo_threads()
    assert _frame_count(video) == summary["frames"]
    assert [d["frame"] for d in _poses_by_frame(jsonl)] == list(range(summary["frames"]))
    # Leaving the loop early (q in the window) with both streams busy joins every thread too.
    streams = InferStreams(estimator, 2)
    try:
        with Pipeline(estimator, open_source(VIDEO), streams=streams.calls) as pipe:
            for r in pipe:
                if r.index == 5:
                    break
        assert pipe.close() == [] and _no_demo_threads()
    finally:
        streams.close()


def test_two_streams_failing_inference_joins_and_names_the_stage(estimator):
    calls = []

    def failing(tensor):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("stream lost")
        return estimator.infer(tensor)

    with pytest.raises(EdgeposeError, match="^the infer stage failed: RuntimeError: stream lost$"):
        with Pipeline(estimator, open_source(VIDEO), streams=[estimator.infer, failing]) as pipe:
            list(pipe)
    assert _no_demo_threads()


def test_live_source_with_two_streams_keeps_order_and_drops_stale_frames(estimator):
    source = FastLiveSource()
    slow = SlowEstimator(estimator)
    slow.source = source
    with Pipeline(slow, source, max_frames=15, streams=[slow.infer, slow.infer]) as pipe:
        results = list(pipe)
    assert len(results) == 15 and _no_demo_threads() and source.closed
    index = [r.index for r in results]
    assert index == sorted(index) and len(set(index)) == 15
    assert {r.stream for r in results} == {0, 1}
    assert pipe.dropped > 100


def test_bad_inputs_are_one_sentence_and_write_nothing(bundle, tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n")
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        (["--source", "9"], "error: camera 9 cannot be opened"),
        (["--source", str(not_video)], f"error: {not_video} is not a readable video"),
        (["--source", str(tmp_path / "missing.mp4")], "error: source"),
        (["--source", str(VIDEO), "--save", str(tmp_path / "nope" / "o.mp4")], "error: cannot write video"),
        (["--source", str(VIDEO), "--json-lines", str(tmp_path / "nope" / "o.jsonl")], "error: cannot write"),
    ]
    for args, start in cases:
        res = _cli("demo", str(bundle), "--no-show", "--json-lines", str(out / "x.jsonl"), *args)
        err = res.stderr.strip()
        assert res.returncode == 1, (args, res.stderr)
        assert err.startswith(start) and len(err.splitlines()) == 1 and "Traceback" not in err, (args, err)
        assert os.listdir(out) == [], args


def test_source_kinds_and_headless_note(monkeypatch):
    assert source_kind("0") == source_kind("/dev/video2") == "camera"
    assert source_kind("rtsp://10.0.0.2/stream") == "stream"
    assert source_kind("v4l2src ! videoconvert ! appsink") == "gstreamer"
    assert source_kind("clip.mp4") == "file"
    with pytest.raises(InputError, match="is a folder"):
        open_source(VIDEO.parent)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if sys.platform.startswith("linux"):
        assert "no display" in display_problem()
