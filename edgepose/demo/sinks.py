"""Where the demo's frames go: an mp4 file, a JSON-lines file, a window.

Files are written under a hidden temporary name beside the target and renamed by ``finish()``;
``abort()`` deletes the temporary, so a failed run never leaves a half-written file under the name
the user asked for. Paths are checked before the run starts, so a bad one fails at once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from edgepose.errors import InputError, UsageError
from edgepose.poses import Poses


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def check_writable(path: Path, what: str) -> Path:
    """Fail before any work when ``path`` cannot be written (missing folder, no permission, a folder)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"cannot write {what} {path}: no write permission")
    return path


class VideoSink:
    """An mp4 (``mp4v``) at the source's frame rate; opened on the first frame, when the size is known."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = check_writable(Path(path), "video")
        if self.path.suffix.lower() not in (".mp4", ".m4v", ".mov"):
            raise UsageError(f"--save {path}: the demo writes mp4 video; use a .mp4 name")
        self.fps = fps
        self._tmp = _temp_beside(self.path)
        self._writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            h, w = frame.shape[:2]
            self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                self._writer = None
                raise InputError(f"cannot open a video writer for {self.path} (mp4v codec unavailable?)")
        self._writer.write(frame)
        self.frames += 1

    def finish(self) -> Path | None:
        if self._writer is None:
            return None
        self._writer.release()
        self._writer = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._tmp.unlink(missing_ok=True)


class JsonLinesSink:
    """One JSON object per frame: ``{"frame", "time", "poses": [{"score", "box", "keypoints"}]}``."""

    def __init__(self, path: Path) -> None:
        self.path = check_writable(Path(path), "JSON-lines file")
        self._tmp = _temp_beside(self.path)
        self._fh: IO[str] | None = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in finish/abort
        self.frames = 0

    def write(self, index: int, seconds: float, poses: Poses) -> None:
        assert self._fh is not None
        people = [
            {
                "score": round(float(s), 4),
                "box": [round(float(v), 2) for v in b],
                "keypoints": [[round(float(x), 2), round(float(y), 2), round(float(c), 4)] for x, y, c in kp],
            }
            for kp, s, b in zip(poses.keypoints, poses.scores, poses.boxes)
        ]
        self._fh.write(json.dumps({"frame": index, "time": round(seconds, 4), "poses": people}) + "\n")
        self.frames += 1

    def finish(self) -> Path | None:
        if self._fh is None:
            return None
        self._fh.close()
        self._fh = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._tmp.unlink(missing_ok=True)


def display_problem() -> str | None:
    """Why a window cannot be shown here (one sentence), or None when it can."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return "no display here ($DISPLAY and $WAYLAND_DISPLAY are unset), so the demo runs without a window"
    import re

    gui = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    if gui and gui.group(1).upper() == "NONE":
        return "this OpenCV has no GUI (a headless build), so the demo runs without a window"
    return None


class WindowSink:
    """A cv2 window; ``show`` returns False when the user pressed q or Esc or closed the window."""

    def __init__(self, title: str = "edgepose demo") -> None:
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)

    def show(self, frame: np.ndarray) -> bool:
        cv2.imshow(self.title, frame)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            return False
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            return False

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass
