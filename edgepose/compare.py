"""``edgepose compare``: pose-level agreement of two bundles on the same images.

AP on a data set says *that* an INT8 bundle or another runtime moved; this says *how*: how many people
each bundle finds, how far matched keypoints moved, which way the scores drifted, and which images
disagree most. Poses are compared in original-image pixels, so bundles of different input sizes compare.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from edgepose.agreement import MatchedPairs, matched_pairs
from edgepose.bundle import Bundle, load_bundle
from edgepose.errors import InputError, UsageError
from edgepose.estimator import PoseEstimator
from edgepose.predict import VIDEO_SUFFIXES, _chain, _frames
from edgepose.preprocess import list_images

Frames = Iterator[tuple[str, np.ndarray]]


def compare_bundles(
    bundle_a: str | Path,
    bundle_b: str | Path,
    images: str | Path | Sequence[np.ndarray],
    preset: str = "accuracy",
    reference: str = "a",
    runtime_a: str | None = None,
    runtime_b: str | None = None,
    max_images: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run both bundles on every image and measure how well their poses agree.

    ``images`` is a folder, an image or a video file (as ``edgepose predict`` reads them) or BGR arrays.
    ``reference`` names the bundle whose poses count as the truth: its boxes set the OKS scale and its
    pose count is the denominator of ``match_rate``. Score drift is always B minus A.
    """
    if reference not in ("a", "b"):
        raise UsageError(f"reference must be 'a' or 'b', not '{reference}'")
    if max_images is not None and max_images < 1:
        raise UsageError(f"max_images must be at least 1, got {max_images}")
    ba, bb = load_bundle(bundle_a), load_bundle(bundle_b)
    check_same_skeleton(ba, bb)
    frames = _image_frames(images, max_images)
    first = next(frames)  # reads (and validates) the images before any runtime is opened
    frames = _chain(first, frames)
    sigmas = (ba if reference == "a" else bb).skeleton.sigmas_array
    with (
        PoseEstimator(ba, preset=preset, runtime=runtime_a) as est_a,
        PoseEstimator(bb, preset=preset, runtime=runtime_b) as est_b,
    ):
        info = {"a": _bundle_info(ba, est_a), "b": _bundle_info(bb, est_b)}
        stats = AgreementStats(reference)
        for name, frame in _track(frames, progress, _count(images, max_images)):
            pa, pb = est_a(frame), est_b(frame)
            m = matched_pairs(pb, pa, sigmas) if reference == "a" else matched_pairs(pa, pb, sigmas)
            stats.add(name, frame.shape, len(pa), len(pb), m)
    return {
        "bundle_a": info["a"],
        "bundle_b": info["b"],
        "preset": preset,
        "reference": reference,
        "skeleton": ba.skeleton.name,
        "summary": stats.summary(),
        "per_image": stats.rows,
    }


def check_same_skeleton(a: Bundle, b: Bundle) -> None:
    """Poses of different skeletons have no keypoint-by-keypoint meaning: refuse before running anything."""
    sa, sb = a.skeleton, b.skeleton
    if sa.keypoints != sb.keypoints:
        raise UsageError(
            f"bundles {a.path} ({sa.name}, {sa.num_keypoints} keypoints) and {b.path} ({sb.name}, "
            f"{sb.num_keypoints} keypoints) have different skeletons; compare bundles of the same skeleton"
        )


def worst_images(result: dict[str, Any], n: int = 5) -> list[dict[str, Any]]:
    """The ``n`` images with the lowest mean OKS; an image whose poses found no partner counts as 0."""
    rows = [r for r in result["per_image"] if r["poses_a"] or r["poses_b"]]
    rows.sort(key=lambda r: r["mean_oks"] if r["mean_oks"] is not None else 0.0)
    return rows[:n]


def check_thresholds(
    summary: dict[str, Any], max_keypoint_px: float | None = None, min_oks: float | None = None
) -> str | None:
    """One line saying which threshold the agreement fails, or None when it passes (or none is given)."""
    if max_keypoint_px is None and min_oks is None:
        return None
    if not summary["matched"]:
        return (
            f"no pose matched on {summary['images']} image(s) ({summary['poses_a']} pose(s) in A, "
            f"{summary['poses_b']} in B), so there is no agreement to check"
        )
    failed = []
    if min_oks is not None and summary["mean_oks"] < min_oks:
        failed.append(f"mean OKS {summary['mean_oks']:.4f} < --min-oks {min_oks:g}")
    if max_keypoint_px is not None and summary["max_keypoint_px"] > max_keypoint_px:
        px = summary["max_keypoint_px"]
        failed.append(f"max keypoint distance {px:.2f} px > --max-keypoint-px {max_keypoint_px:g}")
    return "; ".join(failed) or None


class AgreementStats:
    """Per-image rows, and the per-pose values the summary's means, minima and percentiles need."""

    def __init__(self, reference: str) -> None:
        self.reference = reference
        self.rows: list[dict[str, Any]] = []
        self.oks: list[np.ndarray] = []
        self.px: list[np.ndarray] = []
        self.drift: list[np.ndarray] = []
        self.max_score_diff = 0.0

    def add(self, name: str, shape: tuple[int, ...], n_a: int, n_b: int, m: MatchedPairs) -> None:
        # matched_pairs measures candidate - reference; drift is reported as B - A whichever is reference.
        drift = m.score_diff if self.reference == "a" else -m.score_diff
        score_diff = max(
            float(np.abs(m.score_diff).max(initial=0.0)),
            float(np.abs(m.keypoint_score_diff).max(initial=0.0)),
        )
        self.max_score_diff = max(self.max_score_diff, score_diff)
        self.oks.append(m.oks)
        self.px.append(m.keypoint_px.reshape(-1))
        self.drift.append(drift)
        matched = len(m)
        self.rows.append(
            {
                "image": name,
                "width": int(shape[1]),
                "height": int(shape[0]),
                "poses_a": n_a,
                "poses_b": n_b,
                "matched": matched,
                "unmatched_a": n_a - matched,
                "unmatched_b": n_b - matched,
                "mean_oks": _stat(np.mean, m.oks),
                "min_oks": _stat(np.min, m.oks),
                "mean_keypoint_px": _stat(np.mean, m.keypoint_px),
                "max_keypoint_px": _stat(np.max, m.keypoint_px),
                "mean_score_drift": _stat(np.mean, drift),
                "max_score_diff": score_diff if matched else None,
            }
        )

    def summary(self) -> dict[str, Any]:
        poses_a = sum(r["poses_a"] for r in self.rows)
        poses_b = sum(r["poses_b"] for r in self.rows)
        matched = sum(r["matched"] for r in self.rows)
        oks, px, drift = (np.concatenate(v) for v in (self.oks, self.px, self.drift))
        ref_poses = poses_a if self.reference == "a" else poses_b
        return {
            "images": len(self.rows),
            "poses_a": poses_a,
            "poses_b": poses_b,
            "matched": matched,
            "unmatched_a": poses_a - matched,
            "unmatched_b": poses_b - matched,
            "match_rate": matched / max(ref_poses, 1),
            "mean_oks": _stat(np.mean, oks),
            "min_oks": _stat(np.min, oks),
            "mean_keypoint_px": _stat(np.mean, px),
            "max_keypoint_px": _stat(np.max, px),
            "p95_keypoint_px": _stat(lambda v: np.percentile(v, 95), px),
            "mean_score_drift": _stat(np.mean, drift),
            "max_score_diff": self.max_score_diff if matched else None,
        }


def _stat(fn, values: np.ndarray) -> float | None:
    """``fn(values)`` as a float, None (JSON null) when there is nothing to measure."""
    return float(fn(values)) if values.size else None


def _bundle_info(bundle: Bundle, est: PoseEstimator) -> dict[str, Any]:
    w, h = bundle.input_size
    return {
        "path": str(bundle.path),
        "name": bundle.model_name,
        "target": bundle.target,
        "precision": bundle.precision,
        "runtime": est.runtime.name,
        "input_size": [w, h],
    }


def _image_frames(images: str | Path | Sequence[np.ndarray], max_images: int | None) -> Frames:
    if isinstance(images, (str, Path)):
        path = Path(images)
        if not path.exists():
            raise InputError(f"images {path} do not exist; give a folder of images, an image or a video")
        frames: Frames = _frames(path)
    else:
        arrays = [images] if isinstance(images, np.ndarray) and images.ndim == 3 else list(images)
        if not arrays:
            raise InputError("no images to compare on; give at least one image")
        frames = ((f"image_{i:06d}", a) for i, a in enumerate(arrays))
    return islice(frames, max_images) if max_images is not None else frames


def _count(images: str | Path | Sequence[np.ndarray], max_images: int | None) -> int | None:
    """How many frames there will be, for the progress bar (None for a video: containers may not say)."""
    if isinstance(images, (str, Path)):
        path = Path(images)
        n = (
            len(list_images(path))
            if path.is_dir()
            else (None if path.suffix.lower() in VIDEO_SUFFIXES else 1)
        )
    else:
        n = 1 if isinstance(images, np.ndarray) and images.ndim == 3 else len(images)
    return n if n is None or max_images is None else min(n, max_images)


def _track(frames: Iterable[tuple[str, np.ndarray]], progress: bool, total: int | None) -> Iterable:
    if not progress:
        return frames
    from rich.console import Console
    from rich.progress import track

    console = Console(stderr=True)
    return track(
        frames,
        description="comparing",
        total=total,
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
