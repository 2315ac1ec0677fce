"""Several cameras (or files, or streams) at once, one thread per source.

    python examples/multi_camera.py BUNDLE 0 1                  # two USB cameras
    python examples/multi_camera.py BUNDLE cam.mp4 rtsp://...   # any --source the demo accepts

By default each source gets its own estimator whose CPU runtime has cores // sources threads: the
sources then run in parallel (ONNX Runtime, OpenCV and the numba decoders release the GIL), at the
cost of one copy of the model per source. ``--shared`` uses one estimator behind a lock instead: one
copy of the model (the choice for a big model on a small board, or one GPU context), but inference
for the sources takes turns. See examples/README.md for what each gives on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from contextlib import nullcontext

import cv2
import numpy as np

import edgepose
from edgepose.demo import open_source
from edgepose.draw import draw_poses


def worker(i, source, est, lock, stop, latest, counts, max_frames) -> None:
    """Read, estimate and draw frames of one source until it ends, ``max_frames`` or ``stop``."""
    try:
        while not stop.is_set() and (max_frames == 0 or counts[i] < max_frames):
            frame = source.read()  # live sources return their newest frame
            if frame is None:
                break
            with lock:  # a no-op context unless the estimator is shared
                poses = est(frame)
            latest[i] = draw_poses(frame, poses, est.skeleton, copy=False)
            counts[i] += 1
    finally:
        source.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle")
    parser.add_argument("sources", nargs="+", help="camera index, /dev/videoN, file, rtsp:// URL, ...")
    parser.add_argument("--shared", action="store_true", help="one estimator behind a lock")
    parser.add_argument("--max-frames", type=int, default=0, help="per source (0: until the sources end)")
    parser.add_argument("--no-show", action="store_true", help="no window")
    args = parser.parse_args()

    sources = [open_source(s) for s in args.sources]
    n = len(sources)
    cores = os.cpu_count() or 1
    if args.shared:
        shared = edgepose.PoseEstimator(args.bundle, runtime_options={"threads": cores})
        ests, locks = [shared] * n, [threading.Lock()] * n
    else:
        threads = max(1, cores // n)
        ests = [edgepose.PoseEstimator(args.bundle, runtime_options={"threads": threads}) for _ in range(n)]
        locks = [nullcontext() for _ in range(n)]
    stop = threading.Event()
    latest: list[np.ndarray | None] = [None] * n
    counts = [0] * n
    workers = [
        threading.Thread(
            target=worker, args=(i, sources[i], ests[i], locks[i], stop, latest, counts, args.max_frames)
        )
        for i in range(n)
    ]
    start = time.perf_counter()
    for w in workers:
        w.start()
    try:
        while any(w.is_alive() for w in workers):
            if args.no_show or any(f is None for f in latest):
                time.sleep(0.02)
                continue
            h = min(f.shape[0] for f in latest)  # side by side at a common height
            tiles = [cv2.resize(f, (f.shape[1] * h // f.shape[0], h)) for f in latest]
            cv2.imshow("edgepose: multi-camera", np.hstack(tiles))
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                break
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for w in workers:
            w.join()
    elapsed = time.perf_counter() - start
    for est in set(map(id, ests)):
        next(e for e in ests if id(e) == est).close()
    mode = "one shared estimator" if args.shared else f"{n} estimators"
    print(f"{mode}: " + ", ".join(f"{s} {c / elapsed:.1f} FPS" for s, c in zip(args.sources, counts)))
    print(f"total {sum(counts) / elapsed:.1f} frames/s over {elapsed:.1f} s")


if __name__ == "__main__":
    main()
