"""Frame sources: a camera index, /dev/videoN, a video file, an rtsp:// stream or a GStreamer pipeline.

A source is *live* when frames keep arriving whether or not we read them (cameras, streams,
GStreamer): the pipeline then drops stale frames and always works on the newest. A file is not live:
every frame is processed, in order. Any object with ``live``, ``fps``, ``read()`` and ``close()``
is a source, so tests and applications can feed their own frames.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from edgepose.errors import InputError, RuntimeUnavailable

_STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@runtime_checkable
class FrameSource(Protocol):
    """What the pipeline reads: ``read()`` gives the next BGR frame, or None at the end (or on disconnect)."""

    live: bool
    fps: float
    description: str

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class VideoCaptureSource:
    """An OpenCV ``VideoCapture``; the first frame is read when opening so a bad source fails at once."""

    def __init__(self, cap: cv2.VideoCapture, live: bool, description: str, loop: bool = False) -> None:
        self._cap = cap
        self.live = live
        self.description = description
        self.loop = loop and not live
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 1.0 <= fps <= 240.0 else 30.0
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            raise InputError(
                f"{description} opened but gave no frame; check that it is a video or a working camera"
            )
        self._pending: np.ndarray | None = frame
        self.size = (frame.shape[1], frame.shape[0])

    def read(self) -> np.ndarray | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        ok, frame = self._cap.read()
        if not ok and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
        return frame if ok else None

    def close(self) -> None:
        self._cap.release()


def gstreamer_available() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines (JetPack's and Ubuntu's can; pip's cannot)."""
    info = cv2.getBuildInformation()
    match = re.search(r"GStreamer:\s*(\S+)", info)
    return bool(match) and match.group(1).upper() != "NO"


def source_kind(spec: str) -> str:
    """``camera`` | ``stream`` | ``gstreamer`` | ``file`` for a --source string."""
    s = spec.strip()
    if s.isdigit() or re.fullmatch(r"/dev/video\d+", s):
        return "camera"
    if s.lower().startswith(_STREAM_PREFIXES):
        return "stream"
    if "!" in s and ("appsink" in s or " ! " in s):
        return "gstreamer"
    return "file"


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV logs its own errors for a missing camera; our one-sentence error says it better."""
    log = getattr(cv2.utils, "logging", None)
    if log is None:
        yield
        return
    before = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(before)


def open_source(spec: str | int | Path, loop: bool = False) -> FrameSource:
    """Open a --source string; ``loop`` rewinds a file at its end (the soak benchmark uses it)."""
    spec = str(spec)
    kind = source_kind(spec)
    # FFmpeg prints its own lines ("moov atom not found") before our one-sentence error; OpenCV reads
    # this once, when it first uses FFmpeg. A user who wants FFmpeg's messages sets the variable.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if kind == "camera":
        index = int(spec) if spec.strip().isdigit() else spec.strip()
        with _quiet_opencv():
            cap = cv2.VideoCapture(index)
        if not cap.isOpened():
            raise InputError(
                f"camera {spec} cannot be opened; check that it is connected and not in use "
                f"(ls /dev/video*), or give a video file with --source"
            )
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver from queueing old frames
        return VideoCaptureSource(cap, live=True, description=f"camera {spec}")
    if kind == "gstreamer":
        if not gstreamer_available():
            raise RuntimeUnavailable(
                "this OpenCV is built without GStreamer, so a pipeline string cannot be opened; on a Jetson "
                "use JetPack's OpenCV (python3-opencv, not the pip wheel)"
            )
        cap = cv2.VideoCapture(spec, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            raise InputError(f"GStreamer pipeline cannot be opened (does it end in appsink?): {spec}")
        return VideoCaptureSource(cap, live=True, description="GStreamer pipeline")
    if kind == "stream":
        cap = cv2.VideoCapture(spec)
        if not cap.isOpened():
            raise InputError(
                f"stream {spec} cannot be opened; check the URL and that the camera is reachable"
            )
        return VideoCaptureSource(cap, live=True, description=f"stream {spec}")
    path = Path(spec)
    if not path.exists():
        raise InputError(f"source {spec} is neither a camera, a stream, nor an existing file")
    if path.is_dir():
        raise InputError(
            f"source {spec} is a folder; the demo reads a video file (use `edgepose predict` on folders)"
        )
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"{spec} is not a readable video")
    try:
        return VideoCaptureSource(cap, live=False, description=f"video {path.name}", loop=loop)
    except InputError as e:
        raise InputError(f"{spec} is not a readable video (no frame could be decoded)") from e
