"""Official DEKR checkpoints: the network's state dict and the rescoring net, loaded without DEKR's code.

``pose_dekr_hrnetw{32,48}_{coco,crowdpose}.pth`` are plain state dicts (``torch.save(model.state_dict())``,
keys as ``lib/models/hrnet_dekr.py``), sometimes saved from a ``DataParallel`` (``module.`` prefix) or
wrapped in ``{"state_dict": ...}``. ``DekrModel`` has the official attribute names, so loading is a strict
``load_state_dict``; the architecture (width, depth, keypoint count, head widths) is read off the tensor
shapes, so a CrowdPose file (14 keypoints) builds a 14-keypoint model. Files are read only through
``edgepose.models.checkpoints.read_checkpoint`` (``torch.load(weights_only=True)``).

``final_rescore_{coco,crowd_pose}_kpt.pth`` hold ``PredictOKSNet``'s ``l1/l2/l3`` Linear layers; they
become a numpy ``RescoreNet`` (``edgepose.decoders.dekr_rescore``) that a bundle ships as ``.npz``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from edgepose.decoders.dekr_rescore import LAYERS, RescoreNet, feature_size
from edgepose.errors import CheckpointError, UsageError
from edgepose.models.dekr import DekrConfig, DekrModel
from edgepose.models.state_dicts import (
    count_indices,
    hrnet_trunk_fields,
    load_state_file,
    load_strict,
    official_info,
    unwrap_state_dict,
)
from edgepose.models.zoo import ZOO, get_model_info

#: a key only DEKR state dicts have
MARKER = "offset_feature_layers.0.0.transform_matrix_conv.weight"


def is_dekr_state(state: Mapping[str, Any]) -> bool:
    return MARKER in state


def infer_config(state: Mapping[str, torch.Tensor], name: str, source: str) -> DekrConfig:
    """The ``DekrConfig`` whose state dict has these shapes; CheckpointError when it is not a DEKR."""
    try:
        k = int(state["head_heatmap.1.weight"].shape[0]) - 1
        cfg = DekrConfig(
            name=name,
            num_keypoints=k,
            width=int(state["transition1.0.0.weight"].shape[0]),
            **hrnet_trunk_fields(state),
            heatmap_channels=int(state["transition_heatmap.0.weight"].shape[0]),
            heatmap_blocks=count_indices(state, r"head_heatmap\.0\.(\d+)\.conv1\.weight"),
            offset_channels=int(state[MARKER].shape[1]),
            offset_blocks=count_indices(
                state, r"offset_feature_layers\.0\.(\d+)\.transform_matrix_conv\.weight"
            ),
            final_kernel=int(state["head_heatmap.1.weight"].shape[-1]),
        )
    except (KeyError, IndexError, UsageError) as e:
        raise CheckpointError(f"checkpoint '{source}' is not a DEKR HRNet state dict ({e})") from e
    return cfg


def _zoo_name(cfg: DekrConfig) -> str:
    """The zoo DEKR with this trunk and head (keypoint count aside), else ``dekr-custom``."""
    mine = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "num_keypoints")}
    for info in ZOO.values():
        if info.family != "dekr":
            continue
        theirs = DekrConfig.from_dict({**info.config, "name": info.name}).to_dict()
        if all(theirs[k] == v for k, v in mine.items()):
            return info.name
    return "dekr-custom"


def load_dekr_state(
    state: Mapping[str, torch.Tensor], arch: str | None, source: str
) -> tuple[DekrModel, dict[str, Any]]:
    """Build the DEKR ``state`` describes and load it strictly (float32, eval).

    ``arch``: a zoo name the checkpoint must be (its keypoint count may differ: CrowdPose files have 14).
    """
    cfg = infer_config(state, "dekr-custom", source)
    name = _zoo_name(cfg)
    if arch is not None:
        want = get_model_info(arch)
        if want.family != "dekr" or name != arch:
            raise CheckpointError(
                f"checkpoint '{source}' holds a DEKR with HRNet-W{cfg.width} ({name}), not a {arch}; "
                f"pass --arch {name}" + ("" if name != "dekr-custom" else " or leave --arch out")
            )
    cfg = DekrConfig.from_dict({**cfg.to_dict(), "name": name})
    model = DekrModel(cfg)
    load_strict(model, state, name, source)
    model.float().eval()
    return model, official_info("dekr-official", name, "dekr", cfg.num_keypoints)


def load_dekr_checkpoint(
    path: str | os.PathLike, arch: str | None = None
) -> tuple[DekrModel, dict[str, Any]]:
    """An official (or any plain state-dict) DEKR file -> (model, info)."""
    return load_state_file(path, arch, is_dekr_state, f"a DEKR state dict (no '{MARKER}')", load_dekr_state)


def load_rescore_checkpoint(path: str | os.PathLike, num_keypoints: int | None = None) -> RescoreNet:
    """``final_rescore_*_kpt.pth`` -> numpy ``RescoreNet`` (checked: three chained Linear layers)."""
    from edgepose.models.checkpoints import read_checkpoint

    p = Path(path)
    state = unwrap_state_dict(read_checkpoint(p))
    wanted = {f"{n}.{t}" for n in LAYERS for t in ("weight", "bias")}
    if state is None or set(state) != wanted:
        have = "no tensors" if state is None else ", ".join(sorted(state)[:4])
        raise CheckpointError(
            f"checkpoint '{p}' is not a DEKR rescoring net (expected l1/l2/l3 weight and bias, found {have})"
        )
    try:
        net = RescoreNet({k: v.detach().float().cpu().numpy() for k, v in state.items()})
    except UsageError as e:
        raise CheckpointError(f"checkpoint '{p}' is not a usable rescoring net: {e}") from e
    if num_keypoints is not None and net.num_features != feature_size(num_keypoints):
        raise CheckpointError(
            f"rescoring net '{p}' takes {net.num_features} features; a {num_keypoints}-keypoint model needs "
            f"{feature_size(num_keypoints)}"
        )
    return net
