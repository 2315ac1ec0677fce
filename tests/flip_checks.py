"""The flip test through a real runtime, shared by the families' export tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import edgepose
from edgepose.bundle import load_bundle
from edgepose.poses import Poses
from edgepose.samples import sample_images


@dataclass
class FlipRun:
    plain: dict[str, np.ndarray]  # the estimator's raw outputs without the flip test
    got: dict[str, np.ndarray]  # ... with it (both passes merged)
    want: dict[str, np.ndarray]  # two ONNX Runtime sessions' passes merged by the decoder module
    plain_poses: Poses
    poses: Poses


def run_flip_both_ways(
    bundle_dir, module: Any, head: Any, ort_run: Callable[[Any, np.ndarray], dict[str, np.ndarray]]
) -> FlipRun:
    """The first sample image through ``bundle_dir`` without and with ``flip=True``, and the same two
    passes run by ``ort_run(model_path, tensor)`` and merged by ``module.merge_flip``."""
    image = sample_images(limit=1)[0]
    with edgepose.load(bundle_dir, preset="accuracy") as plain_est:
        tensor, _ = plain_est.preprocess(image)
        plain = plain_est.infer(tensor)
        plain_poses = plain_est(image)
    with edgepose.load(bundle_dir, preset="accuracy", flip=True) as est:
        assert est.decoder.flip
        got = est.infer(tensor)
        poses = est(image)
    bundle = load_bundle(bundle_dir)
    path, flip = bundle.artifact("model"), bundle.skeleton.flip_index()
    mirrored = module.flip_input(tensor, head)
    want = module.merge_flip(ort_run(path, tensor), ort_run(path, mirrored), head, flip)
    assert len(poses) > 0 and not (
        len(poses) == len(plain_poses) and np.allclose(poses.keypoints, plain_poses.keypoints)
    ), "the second pass should change the poses"
    return FlipRun(plain, got, want, plain_poses, poses)
