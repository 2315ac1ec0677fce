"""Timing a numba decoder against its numpy reference, for the ``benchmarks/decode_*.py`` scripts.

Both decoders are called in turn inside one loop, so machine load (this project's CI and laptops are
noisy) hits them alike and their ratio stays meaningful. The comparison refuses to time decoders that
disagree on the scene: a fast wrong decoder is not a result.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from edgepose.poses import Poses


def same_poses(a: Poses, b: Poses, atol: float = 1e-3) -> bool:
    """Same pose count, keypoints within ``atol`` px and scores equal to float tolerance."""
    return (
        len(a) == len(b)
        and np.allclose(a.keypoints, b.keypoints, atol=atol)
        and np.allclose(a.scores, b.scores)
    )


def numba_vs_numpy(
    numba_fn: Callable[[], Poses], numpy_fn: Callable[[], Poses], iters: int, warmup: int = 3
) -> tuple[dict[str, float | int], Poses]:
    """Median ms of each decoder over ``iters`` interleaved calls, p90 of numba, their ratio and pose
    count; and the numba decoder's poses, for the scripts' own columns.

    SystemExit (the scripts' way of failing) when the two decoders disagree.
    """
    poses = numba_fn()
    if not same_poses(poses, numpy_fn()):
        raise SystemExit("numba and numpy decoders disagree on this scene")
    for _ in range(warmup):
        numba_fn()
        numpy_fn()
    t_nb: list[float] = []
    t_np: list[float] = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        numba_fn()
        t1 = time.perf_counter_ns()
        numpy_fn()
        t2 = time.perf_counter_ns()
        t_nb.append((t1 - t0) / 1e6)
        t_np.append((t2 - t1) / 1e6)
    nb, ref = statistics.median(t_nb), statistics.median(t_np)
    row = {
        "poses": len(poses),
        "numba_ms": nb,
        "numba_p90_ms": float(np.percentile(t_nb, 90)),
        "numpy_ms": ref,
        "speedup": ref / nb,
    }
    return row, poses
