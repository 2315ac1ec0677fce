"""Fit DEKR's rescoring net to a model's own poses, as the official ``tools/train_scorenet.py`` does.

DEKR ranks its poses by centre heat x mean joint heat, which says little about how well each pose is
placed. The rescoring net (``edgepose.decoders.dekr_rescore``) predicts a pose's OKS from its shape and
per-joint scores, and the ``accuracy`` preset multiplies the score by that prediction. The official net
was fitted to the official models' poses on COCO train; any other model (a fine-tune on a user's data,
the reference ``dekr-n``) needs its own, fitted the same way:

1. run the bundle over annotated images with its ``accuracy`` decoder settings, rescoring off;
2. for each pose that pose NMS kept: its features (limb vectors and lengths, per-joint scores), and as
   the target its best OKS with a person of that image (pycocotools' OKS). Crowd regions and people
   without labelled keypoints are not targets: pycocotools would give them an OKS of 1 for any pose in
   their box, which the official code works around by setting every OKS of exactly 1 to 0;
3. fit Linear-ReLU-Linear-ReLU-Linear (hidden 256, Kaiming-uniform init) by mean squared error with
   Adam: the official ``RESCORE`` settings (lr 1e-3, batch 1024, 20 epochs) are the defaults.

The result is a state dict with the official keys (``l1/l2/l3.weight|bias``) saved with ``torch.save``,
like ``final_rescore_coco_kpt.pth``, so ``edgepose export --rescore FILE`` ships it in a bundle.

KAPAO bundles take one too (not in the official KAPAO, whose accuracy setting keeps many weak poses
per image): the same features of each decoded pose, its keypoint confidences as per-joint scores.
Each family's decoder says what it rescores (``rescore_inputs``), and the fit reads exactly that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepose.errors import DataError, UsageError


@dataclass(frozen=True)
class RescoreData:
    """Features (N, F) and target OKS (N,) of the poses a model found on ``images`` annotated images."""

    features: np.ndarray
    targets: np.ndarray
    images: int

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class RescoreFit:
    """A fitted net's official state dict and how well it fits: mean squared error per epoch, and the
    error of predicting every pose's OKS as the mean target (what the net has to beat)."""

    state_dict: dict
    epoch_mse: list[float]
    baseline_mse: float


def best_oks_targets(pred_xy: np.ndarray, annotations: Iterable[dict], sigmas: np.ndarray) -> np.ndarray:
    """(N,) each pose's best OKS with the non-crowd people with labelled keypoints in ``annotations``."""
    from edgepose.evaluation import oks_matrix

    people = [a for a in annotations if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0]
    if len(pred_xy) == 0 or not people:
        return np.zeros(len(pred_xy))
    k = len(np.asarray(sigmas).reshape(-1))
    kps = np.array([a["keypoints"] for a in people], np.float64).reshape(len(people), k, 3)
    boxes = np.array([a["bbox"] for a in people], np.float64)
    areas = np.array([a["area"] for a in people], np.float64)
    return oks_matrix(pred_xy, kps, boxes, areas, sigmas).max(axis=1)


def collect_rescore_data(
    bundle: str | Path,
    annotations: str | Path,
    images_dir: str | Path,
    runtime: str | None = None,
    progress: bool = False,
) -> RescoreData:
    """Run a bundle over annotated images; return each pose's rescoring features and best OKS."""
    from edgepose.bundle import load_bundle
    from edgepose.data.coco import check_images, load_keypoint_annotations
    from edgepose.decoders.dekr_rescore import rescore_features
    from edgepose.estimator import PoseEstimator
    from edgepose.families import decoder_module, rescorable_families
    from edgepose.preprocess import read_image

    b = load_bundle(bundle)
    if b.family not in rescorable_families():
        raise UsageError(
            f"rescoring nets are for {' and '.join(rescorable_families())} models; "
            f"bundle {bundle} holds a {b.family} model"
        )
    family = decoder_module(b.family)
    sigmas = b.skeleton.sigmas_array
    data = load_keypoint_annotations(annotations, num_keypoints=b.skeleton.num_keypoints)
    paths = check_images(data, images_dir)
    by_image: dict = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    items: Iterable = list(zip(data["images"], paths))
    if progress:
        from rich.console import Console
        from rich.progress import track

        # On stderr: stdout carries only the written file's path, for scripts.
        items = track(items, description="collecting poses", total=len(paths), console=Console(stderr=True))
    features, targets = [], []
    with PoseEstimator(b, preset="accuracy", runtime=runtime) as est:  # rescore_inputs: never rescored
        for entry, path in items:
            tensor, meta = est.preprocess(read_image(path))
            xy, joint = family.rescore_inputs(est.infer(tensor), meta, est.decoder.params, est.decoder.head)
            if len(xy) == 0:
                continue
            features.append(rescore_features(xy, joint))
            targets.append(best_oks_targets(xy, by_image.get(entry["id"], []), sigmas))
    if not features:
        raise DataError(
            f"the model found no poses on the {len(paths)} images; nothing to fit a rescoring net to"
        )
    return RescoreData(
        np.concatenate(features).astype(np.float32), np.concatenate(targets).astype(np.float32), len(paths)
    )


def fit_rescore_net(
    data: RescoreData,
    epochs: int = 20,
    lr: float = 1e-3,
    batch: int = 1024,
    hidden: int = 256,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> RescoreFit:
    """Fit the official ``PredictOKSNet`` to ``data`` (see the module docstring); deterministic per seed."""
    import torch
    from torch import nn

    if epochs < 1 or batch < 1 or hidden < 1 or not lr > 0:
        raise UsageError("epochs, batch and hidden must be at least 1 and lr positive")
    if len(data) < 2:
        raise DataError(f"{len(data)} pose(s) are too few to fit a rescoring net; annotate more images")
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(data.features, np.float32))
    y = torch.from_numpy(np.ascontiguousarray(data.targets, np.float32)).reshape(-1, 1)
    layers = {
        "l1": nn.Linear(x.shape[1], hidden),
        "l2": nn.Linear(hidden, hidden),
        "l3": nn.Linear(hidden, 1),
    }
    for layer in layers.values():  # PredictOKSNet.init_weights
        nn.init.kaiming_uniform_(layer.weight, a=1, generator=gen)
        nn.init.zeros_(layer.bias)
    net = nn.Sequential(layers["l1"], nn.ReLU(), layers["l2"], nn.ReLU(), layers["l3"])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.MSELoss()
    # As the official loop: a shuffled pass per epoch in whole batches (a last partial batch is dropped,
    # unless the data is smaller than one batch).
    steps = max(1, len(x) // batch)
    size = min(batch, len(x))
    history = []
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(steps):
            idx = order[i * size : (i + 1) * size]
            opt.zero_grad()
            loss = loss_fn(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach())
        history.append(total / steps)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: mean squared error {history[-1]:.5f}")
    state = {
        f"{name}.{p}": getattr(layer, p).detach().clone()
        for name, layer in layers.items()
        for p in ("weight", "bias")
    }
    baseline = float(((data.targets - data.targets.mean()) ** 2).mean())
    return RescoreFit(state, history, baseline)


def save_rescore_net(fit: RescoreFit, output: str | Path) -> Path:
    """Write the state dict as the official ``.pth``; the file appears whole or not at all."""
    from edgepose.models.checkpoints import atomic_torch_save

    try:
        return atomic_torch_save(output, fit.state_dict)
    except OSError as e:
        raise UsageError(f"cannot write {output}: {e.strerror or e}") from e
