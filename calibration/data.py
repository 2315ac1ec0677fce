"""Calibration data: a user's SOURCE -> the BGR images INT8 calibration sees, plus a held-back subset.

Quantizers feed these images through ``calibration_tensors``, i.e. the runtime's own letterbox
pre-processing, so the activation ranges they measure are the ranges the deployed model meets. The
held-back images are never calibrated on; the accuracy gate compares INT8 with FP32 on them.

Sources: a folder of images (not recursive), a video file, a COCO annotation JSON (the images it
lists), or ``"synthetic[:PROFILE]"``. The string ``synthetic`` always means synthetic data; give a
folder of that name by its absolute path.

Selection is a pure function of (source, size, seed, held_back): one ``numpy.random.Generator(seed)``
draws ``held_back + size`` distinct items, the first ``held_back`` are held back and the rest
calibrate. Video frames are drawn one per equal stretch of the video (at a seeded position in it), so
a long clip is covered end to end rather than in a few bursts of near-identical frames.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgepose.errors import DataError, InputError, UsageError
from edgepose.predict import VIDEO_SUFFIXES
from edgepose.preprocess import IMAGE_SUFFIXES, list_images, preprocess

#: synthetic calibration images come from this stream: training uses streams 0.., validation 999 + seed,
#: published evaluation 1000 and the shipped samples 7, so calibration never sees an image it is scored on
CALIBRATION_STREAM = 555
DEFAULT_PROFILE = "val-v1"
KINDS = ("folder", "video", "coco", "synthetic")
_HASH_SCHEME = "edgepose-calibration-v1"
_ACCEPTED = (
    f"a folder of images, a video ({', '.join(VIDEO_SUFFIXES)}), a COCO annotation .json "
    "or 'synthetic[:PROFILE]'"
)
_NEEDS = "calibration needs 8-bit 3-channel colour images like the camera's"

Reporter = Callable[[str, int, "int | None"], None]


@dataclass(frozen=True)
class CalibrationSet:
    """What calibration sees, what the accuracy gate checks on, and a digest of exactly that selection."""

    images: list[np.ndarray]  # BGR uint8 H x W x 3, contiguous
    held_back: list[np.ndarray]  # BGR uint8 H x W x 3, disjoint from ``images``
    names: list[str]  # one per calibration image: file name, "frame 123", "synthetic 7"
    held_back_names: list[str]
    source: str  # human description, e.g. "folder /x/y (412 images)"
    kind: str  # "folder" | "video" | "coco" | "synthetic"
    sha256: str  # same selected bytes (or frames, or synthetic seeds) -> same digest
    seed: int = 0

    def summary(self) -> dict:
        """JSON-able description for a bundle manifest."""
        return {
            "kind": self.kind,
            "source": self.source,
            "count": len(self.images),
            "held_back": len(self.held_back),
            "seed": int(self.seed),
            "sha256": self.sha256,
        }


def calibration_tensors(images: Sequence[np.ndarray], input_size: tuple[int, int]) -> Iterator[np.ndarray]:
    """The (1, 3, H, W) float32 tensors the runtime would feed the model for ``images`` (W, H input)."""
    for img in images:
        yield preprocess(img, input_size)[0]


def load_calibration(
    source: str | Path, size: int = 300, seed: int = 0, held_back: int = 8, progress: bool = False
) -> CalibrationSet:
    """Read ``size`` calibration images and ``held_back`` others from ``source`` (see the module docstring).

    A source with fewer than ``size + held_back`` items calibrates on all it can and holds back at most a
    quarter of them (``source`` says so); it never leaves calibration with nothing.
    """
    for name, value, low in (("size", size, 1), ("held_back", held_back, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UsageError(f"calibration {name} must be an integer >= {low}, got {value!r}")
    size, held_back, seed = int(size), int(held_back), int(seed)
    text = str(source)
    with _progress_bar(progress) as report:
        if text == "synthetic" or text.startswith("synthetic:"):
            profile = text.partition(":")[2] or DEFAULT_PROFILE
            return _load_synthetic(profile, size, seed, held_back, report)
        path = Path(source)
        if not path.exists():
            raise InputError(f"calibration source {path} does not exist; give {_ACCEPTED}")
        if path.is_dir():
            return _load_folder(path, size, seed, held_back, report)
        suffix = path.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            return _load_video(path, size, seed, held_back, report)
        if suffix == ".json":
            return _load_coco(path, size, seed, held_back, report)
        raise UsageError(f"cannot calibrate with {path}: give {_ACCEPTED}")


# ------------------------------------------------------------------------------------------------ selection
def _split(n: int, size: int, held_back: int) -> tuple[int, int]:
    """(calibration count, held-back count) for a source of ``n`` items."""
    if n >= size + held_back:
        return size, held_back
    hb = min(held_back, n // 4)
    return min(size, n - hb), hb


def _choose(n: int, n_cal: int, n_hb: int, seed: int, spread: bool = False) -> tuple[list[int], list[int]]:
    """Seeded, disjoint (calibration, held-back) indices into ``range(n)``, each sorted."""
    rng = np.random.Generator(np.random.PCG64(seed))
    k = n_cal + n_hb
    if spread and k < n:
        edges = (np.arange(k + 1, dtype=np.int64) * n) // k  # k stretches, each at least one item long
        picks = edges[:-1] + rng.integers(0, edges[1:] - edges[:-1])
        chosen = picks[rng.permutation(k)]
    else:
        chosen = rng.choice(n, size=k, replace=False)
    return sorted(int(i) for i in chosen[n_hb:]), sorted(int(i) for i in chosen[:n_hb])


def _describe(what: str, n: int, unit: str, size: int, held_back: int, n_cal: int, n_hb: int) -> str:
    if n_hb < held_back:
        return (
            f"{what} ({n} {unit}; too few for {size} + {held_back} held back: "
            f"calibrating on {n_cal}, holding back {n_hb})"
        )
    return f"{what} ({n} {unit})"


# --------------------------------------------------------------------------------------------- readers
def _load_folder(folder: Path, size: int, seed: int, held_back: int, report: Reporter) -> CalibrationSet:
    try:
        paths = list_images(folder)
    except OSError as e:
        raise InputError(f"cannot list calibration folder {folder} ({e.strerror or e})") from e
    if not paths:
        raise DataError(f"no images in folder {folder} to calibrate with ({', '.join(IMAGE_SUFFIXES)})")
    return _from_files(
        "folder", f"folder {folder}", [(p.name, p) for p in paths], size, seed, held_back, report
    )


def coco_image_folders(annotation_file: Path) -> tuple[Path, Path]:
    """Where a COCO file's images are looked for: ``images/`` beside it, then its own folder."""
    return annotation_file.parent / "images", annotation_file.parent


def _load_coco(path: Path, size: int, seed: int, held_back: int, report: Reporter) -> CalibrationSet:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"COCO file {path} is not readable JSON ({e})") from e
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DataError(f"{path} is not a COCO annotation file (no 'images' list)")
    if not entries:
        raise DataError(f"no images in COCO file {path} to calibrate with (its 'images' list is empty)")
    folders = coco_image_folders(path)
    files = []
    for entry in entries:
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise DataError(f"{path} has an 'images' entry without a 'file_name'")
        found = next((d / name for d in folders if (d / name).is_file()), None)
        if found is None:
            raise DataError(f"{path} lists image {name}, which is in neither {folders[0]} nor {folders[1]}")
        files.append((name, found))
    return _from_files("coco", f"COCO file {path}", files, size, seed, held_back, report)


def _from_files(
    kind: str,
    what: str,
    files: list[tuple[str, Path]],
    size: int,
    seed: int,
    held_back: int,
    report: Reporter,
) -> CalibrationSet:
    n_cal, n_hb = _split(len(files), size, held_back)
    cal, hb = _choose(len(files), n_cal, n_hb, seed)
    lines, done, out = [], 0, {}
    for role, indices in (("calibrate", cal), ("held-back", hb)):
        images = []
        for i in indices:
            name, p = files[i]
            img, file_sha = _read_colour_image(p)
            lines.append(f"{role} {json.dumps(name)} {file_sha}")
            images.append(img)
            done += 1
            report("reading calibration images", done, n_cal + n_hb)
        out[role] = images
    return CalibrationSet(
        images=out["calibrate"],
        held_back=out["held-back"],
        names=[files[i][0] for i in cal],
        held_back_names=[files[i][0] for i in hb],
        source=_describe(what, len(files), "images", size, held_back, n_cal, n_hb),
        kind=kind,
        sha256=_digest(kind, lines),
        seed=seed,
    )


def _read_colour_image(path: Path) -> tuple[np.ndarray, str]:
    """Decode without conversion (``read_image`` would silently turn gray or BGRA into BGR) and check."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read calibration image {path} ({e.strerror or e})") from e
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise InputError(f"calibration image {path} is not a readable image (corrupt or not an image)")
    return _check_colour(img, f"calibration image {path}"), hashlib.sha256(data).hexdigest()


def _check_colour(img: np.ndarray, what: str) -> np.ndarray:
    if img.dtype != np.uint8:
        depth = "16-bit" if img.dtype == np.uint16 else f"{img.dtype}"
        raise DataError(f"{what} is a {depth} image; {_NEEDS}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        raise DataError(f"{what} is grayscale; {_NEEDS}")
    if img.ndim == 3 and img.shape[2] == 4:
        raise DataError(f"{what} has an alpha channel (4 channels); {_NEEDS}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"{what} has shape {img.shape}; {_NEEDS}")
    return np.ascontiguousarray(img)


def _load_video(path: Path, size: int, seed: int, held_back: int, report: Reporter) -> CalibrationSet:
    # Pass 1 counts the frames that really decode (CAP_PROP_FRAME_COUNT is an estimate from the
    # container and can be wrong either way); pass 2 reads sequentially and keeps the chosen ones.
    cap = _open_video(path)
    try:
        estimate = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        n = 0
        while cap.grab():
            n += 1
            if n % 32 == 0:
                report("counting video frames", n, max(estimate, n) if estimate > 0 else None)
    finally:
        cap.release()
    if n == 0:
        raise DataError(f"no images in video {path} to calibrate with (it has no readable frames)")
    n_cal, n_hb = _split(n, size, held_back)
    cal, hb = _choose(n, n_cal, n_hb, seed, spread=True)
    wanted = set(cal) | set(hb)
    last = max(wanted)
    frames: dict[int, np.ndarray] = {}
    cap = _open_video(path)
    try:
        for i in range(last + 1):
            if not cap.grab():
                break
            if i in wanted:
                ok, frame = cap.retrieve()
                if not ok or frame is None:
                    break
                frames[i] = _check_colour(frame, f"frame {i} of {path}")
                report("reading video frames", len(frames), len(wanted))
    finally:
        cap.release()
    if len(frames) != len(wanted):
        raise InputError(f"video {path} gave {n} frames on a first read but fewer on a second; re-encode it")
    lines = [f"file {_file_sha256(path)}", f"calibrate {_join(cal)}", f"held-back {_join(hb)}"]
    return CalibrationSet(
        images=[frames[i] for i in cal],
        held_back=[frames[i] for i in hb],
        names=[f"frame {i}" for i in cal],
        held_back_names=[f"frame {i}" for i in hb],
        source=_describe(f"video {path}", n, "frames", size, held_back, n_cal, n_hb),
        kind="video",
        sha256=_digest("video", lines),
        seed=seed,
    )


def _open_video(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise InputError(f"{path} is not a readable video (corrupt, empty or in a format OpenCV cannot open)")
    return cap


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise InputError(f"cannot read {path} ({e.strerror or e})") from e
    return h.hexdigest()


def _load_synthetic(profile: str, size: int, seed: int, held_back: int, report: Reporter) -> CalibrationSet:
    from edgepose.data.synthetic import (
        GENERATOR_VERSION,
        STREAM_STRIDE,
        get_profile,
        render_sample,
        sample_seed,
    )

    prof = get_profile(profile)
    k = size + held_back
    if k > STREAM_STRIDE:
        raise UsageError(f"synthetic calibration offers at most {STREAM_STRIDE} images, asked for {k}")
    cal, hb = _choose(STREAM_STRIDE, size, held_back, seed)
    lines = [f"profile {prof.name} generator {GENERATOR_VERSION} stream {CALIBRATION_STREAM}"]
    out, done = {}, 0
    for role, indices in (("calibrate", cal), ("held-back", hb)):
        seeds = [sample_seed(CALIBRATION_STREAM, i) for i in indices]
        lines.append(f"{role} {_join(seeds)}")
        images = []
        for s in seeds:
            images.append(np.ascontiguousarray(render_sample(s, prof)[0]))
            done += 1
            report("rendering synthetic calibration images", done, k)
        out[role] = images
    return CalibrationSet(
        images=out["calibrate"],
        held_back=out["held-back"],
        names=[f"synthetic {i}" for i in cal],
        held_back_names=[f"synthetic {i}" for i in hb],
        source=f"synthetic {prof.name} (stream {CALIBRATION_STREAM}, {k} images)",
        kind="synthetic",
        sha256=_digest("synthetic", lines),
        seed=seed,
    )


# ------------------------------------------------------------------------------------------------ helpers
def _digest(kind: str, lines: list[str]) -> str:
    """sha256 of a versioned text record of the selection: file names are kept, folders are not, so the
    same files give the same digest wherever they live."""
    text = "\n".join([f"{_HASH_SCHEME} {kind}", *lines, ""])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _join(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Reporter]:
    """A rich progress bar on stderr (only on a terminal), or a no-op reporter."""
    if not enabled:
        yield lambda description, done, total: None
        return
    from rich.console import Console
    from rich.progress import Progress as Bar

    console = Console(stderr=True)
    with Bar(transient=True, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("reading calibration data", total=None)

        def report(description: str, done: int, total: int | None) -> None:
            bar.update(task, description=description, completed=done, total=total)

        yield report
