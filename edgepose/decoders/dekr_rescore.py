"""DEKR's pose rescoring net in numpy: three linear layers that predict a pose's OKS from its shape.

The official ``lib/utils/rescore.py`` describes each pose by 2L + L + K features (74 for COCO-17 with
L = 19 limbs): the limb vectors ``joint[a] - joint[b]`` (x, y interleaved), the limb lengths, and the K
per-joint scores, the vectors and lengths divided by the mean length of limbs 9 and 11 (the torso sides
for COCO; floored at 1 px). ``PredictOKSNet`` maps them through Linear-ReLU-Linear-ReLU-Linear (hidden
256) to one number that multiplies the pose score. The official code computes the features from the
final poses in original-image pixels, with the per-joint score ``centre heat x joint heat``; so does the
decoder. Weights come from ``final_rescore_coco_kpt.pth`` (keys ``l1/l2/l3.weight|bias``) through
``edgepose.models.dekr_checkpoints.load_rescore_checkpoint`` (torch), and are stored for the decoder as
``.npz`` so a device needs no torch.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from edgepose.errors import BundleError, UsageError

#: limb endpoints of the official rescoring features, by keypoint count
LINKS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    17: (
        (0, 0, 1, 1, 2, 3, 4, 5, 5, 5, 6, 6, 7, 8, 11, 11, 12, 13, 14),
        (1, 2, 2, 3, 4, 5, 6, 6, 7, 11, 8, 12, 9, 10, 12, 13, 14, 15, 16),
    ),
    14: (
        (12, 13, 13, 0, 1, 2, 3, 0, 1, 6, 7, 8, 9, 6, 0),
        (13, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 7, 1),
    ),
}
#: limbs whose mean length normalises the features (the official code uses 9 and 11 for every data set)
NORM_LIMBS = (9, 11)
LAYERS = ("l1", "l2", "l3")


def feature_size(num_keypoints: int) -> int:
    return 3 * len(_links(num_keypoints)[0]) + num_keypoints


def _links(num_keypoints: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if num_keypoints not in LINKS:
        raise UsageError(
            f"DEKR rescoring knows the COCO-17 and CrowdPose-14 skeletons, not {num_keypoints} keypoints"
        )
    return LINKS[num_keypoints]


def rescore_features(xy: np.ndarray, joint_scores: np.ndarray) -> np.ndarray:
    """(N, K, 2) pose coordinates and (N, K) per-joint scores -> (N, 2L + L + K) features, float64."""
    xy = np.asarray(xy, np.float64)
    a, b = (np.asarray(v) for v in _links(xy.shape[1]))
    limbs = xy[:, a] - xy[:, b]  # (N, L, 2)
    length = np.sqrt((limbs**2).sum(-1))  # (N, L)
    norm = (length[:, NORM_LIMBS[0]] + length[:, NORM_LIMBS[1]]) / 2.0
    norm = np.where(norm < 1.0, 1.0, norm)[:, None]
    rel = (limbs / norm[:, :, None]).reshape(len(xy), -1)
    return np.concatenate([rel, length / norm, np.asarray(joint_scores, np.float64)], axis=1)


class RescoreNet:
    """The official ``PredictOKSNet`` forward pass. Weights in torch's Linear layout (out, in)."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        try:
            layers = [
                (np.asarray(weights[f"{n}.weight"], np.float32), np.asarray(weights[f"{n}.bias"], np.float32))
                for n in LAYERS
            ]
        except KeyError as e:
            raise UsageError(f"rescoring weights lack {e.args[0]}; expected l1/l2/l3 weight and bias") from e
        prev = layers[0][0].shape[1] if layers[0][0].ndim == 2 else -1
        for name, (w, b) in zip(LAYERS, layers):
            if w.ndim != 2 or w.shape[1] != prev or b.shape != (w.shape[0],):
                raise UsageError(
                    f"rescoring layer {name} has weight {w.shape} and bias {b.shape}, which do not chain"
                )
            prev = w.shape[0]
        if prev != 1:
            raise UsageError(f"the rescoring net must end in one output, its last layer has {prev}")
        self.layers = layers

    @property
    def num_features(self) -> int:
        return self.layers[0][0].shape[1]

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(N, F) features -> (N,) predicted OKS (NaN mapped to 0, as the official code does)."""
        x = np.asarray(features, np.float32)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise UsageError(f"rescoring net takes {self.num_features} features, got shape {x.shape}")
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            if i < len(self.layers) - 1:
                np.maximum(x, 0.0, out=x)
        out = x[:, 0].astype(np.float64)
        out[np.isnan(out)] = 0.0
        return out

    def rescore(self, xy: np.ndarray, joint_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Pose scores multiplied by the predicted OKS of each pose."""
        if len(scores) == 0:
            return np.asarray(scores, np.float64)
        return self(rescore_features(xy, joint_scores)) * np.asarray(scores, np.float64)

    def to_dict(self) -> dict[str, np.ndarray]:
        out = {}
        for name, (w, b) in zip(LAYERS, self.layers):
            out[f"{name}.weight"], out[f"{name}.bias"] = w, b
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the weights as ``.npz`` (what a bundle ships; readable without torch)."""
        path = Path(path)
        with open(path, "wb") as f:
            np.savez(f, **self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> RescoreNet:
        """The net in ``path``, read once: decoders call this per frame, so the cache is keyed on the
        name as given (a dictionary lookup), not on a resolved path (a filesystem call per frame)."""
        return _load_cached(os.fspath(path))


@functools.lru_cache(maxsize=8)
def _load_cached(path: str) -> RescoreNet:
    path = str(Path(path).resolve())
    try:
        with np.load(path, allow_pickle=False) as data:
            weights = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise BundleError(f"rescoring weights '{path}' are missing or not an .npz file") from e
    try:
        return RescoreNet(weights)
    except UsageError as e:
        raise BundleError(f"rescoring weights '{path}' are unusable: {e}") from e
