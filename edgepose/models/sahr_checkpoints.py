"""Official SWAHR and HigherHRNet checkpoints, loaded without their code.

``pose_higher_hrnet_w{32,48}_{512,640}.pth`` of both repositories are plain state dicts
(``torch.save(model.state_dict())``, keys as ``lib/models/pose_higher_hrnet.py``), sometimes saved from a
``DataParallel`` (``module.`` prefix) or wrapped in ``{"state_dict": ...}``. SWAHR files have the extra
``conv_scale_layers``; HigherHRNet files do not, and build a model with ``scale_aware=False``. ``SahrModel``
has the official attribute names, so loading is a strict ``load_state_dict``; the architecture (width,
depth, keypoint count, deconvolution stage) is read off the tensor shapes. Files are read only through
``edgepose.models.checkpoints.read_checkpoint`` (``torch.load(weights_only=True)``).

Only the released configuration is accepted: per-joint tags at stride 4 and none at stride 2
(``TAG_PER_JOINT: True``, ``WITH_AE_LOSS: [True, False]``) and one deconvolution stage.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from edgepose.errors import CheckpointError, UsageError
from edgepose.models.higherhrnet import SahrConfig, SahrModel
from edgepose.models.state_dicts import (
    count_indices,
    hrnet_trunk_fields,
    load_state_file,
    load_strict,
    official_info,
)
from edgepose.models.zoo import ZOO, get_model_info

#: keys every HigherHRNet-family state dict has; SWAHR's also has ``SCALE_MARKER``
MARKERS = ("final_layers.0.weight", "final_layers.1.weight", "deconv_layers.0.0.0.weight")
SCALE_MARKER = "conv_scale_layers.0.0.weight"
#: TEST.DETECTION_THRESHOLD of the HigherHRNet experiments (and SWAHR W48) for files outside the zoo
DEFAULT_DETECTION_THRESHOLD = 0.1


def is_sahr_state(state: Mapping[str, Any]) -> bool:
    return all(k in state for k in MARKERS) and not any(k.startswith("deconv_layers.1.") for k in state)


def infer_config(state: Mapping[str, torch.Tensor], name: str, source: str) -> SahrConfig:
    """The ``SahrConfig`` whose state dict has these shapes; CheckpointError when it is not one."""
    try:
        k = int(state["final_layers.1.weight"].shape[0])
        lo_out = int(state["final_layers.0.weight"].shape[0])
        if lo_out != 2 * k:
            raise CheckpointError(
                f"checkpoint '{source}' has {lo_out} stride-4 output channels for {k} keypoints; only the "
                "released layout (K heatmaps + K per-joint tags at stride 4, heatmaps only at stride 2) loads"
            )
        deconv = state["deconv_layers.0.0.0.weight"]
        cfg = SahrConfig(
            name=name,
            num_keypoints=k,
            width=int(state["final_layers.0.weight"].shape[1]),
            **hrnet_trunk_fields(state),
            deconv_channels=int(deconv.shape[1]),
            deconv_blocks=count_indices(state, r"deconv_layers\.0\.(\d+)\.0\.conv1\.weight"),
            deconv_kernel=int(deconv.shape[-1]),
            final_kernel=int(state["final_layers.0.weight"].shape[-1]),
            scale_aware=SCALE_MARKER in state,
            detection_threshold=DEFAULT_DETECTION_THRESHOLD,
        )
    except (KeyError, IndexError, UsageError) as e:
        raise CheckpointError(f"checkpoint '{source}' is not a HigherHRNet/SWAHR state dict ({e})") from e
    return cfg


_SHAPE_FIELDS = (
    "width",
    "stem_channels",
    "stem_blocks",
    "num_modules",
    "num_blocks",
    "deconv_channels",
    "deconv_blocks",
    "deconv_kernel",
    "final_kernel",
)


def _zoo_match(cfg: SahrConfig) -> SahrConfig | None:
    """The zoo entry's config with this trunk and head (keypoints and scale branches aside), or None."""
    mine = cfg.to_dict()
    for info in ZOO.values():
        if info.family != "sahr":
            continue
        theirs = SahrConfig.from_dict({**info.config, "name": info.name})
        if all(theirs.to_dict()[f] == mine[f] for f in _SHAPE_FIELDS):
            return theirs
    return None


def _name(cfg: SahrConfig, zoo: SahrConfig | None) -> str:
    """``sahr-w32`` for a SWAHR W32 file, ``higherhrnet-w32`` for a HigherHRNet one, else ``*-custom``."""
    if zoo is None:
        return "sahr-custom" if cfg.scale_aware else "higherhrnet-custom"
    return zoo.name if cfg.scale_aware else "higherhrnet-" + zoo.name.split("-", 1)[1]


def load_sahr_state(
    state: Mapping[str, torch.Tensor], arch: str | None, source: str
) -> tuple[SahrModel, dict[str, Any]]:
    """Build the SWAHR/HigherHRNet ``state`` describes and load it strictly (float32, eval).

    ``arch``: a zoo name whose trunk and head the checkpoint must have (a HigherHRNet file of the same
    width passes for the SWAHR entry; its keypoint count may differ, CrowdPose files have 14).
    """
    cfg = infer_config(state, "sahr-custom", source)
    zoo = _zoo_match(cfg)
    name = _name(cfg, zoo)
    if arch is not None:
        want = get_model_info(arch)
        if want.family != "sahr" or zoo is None or zoo.name != arch:
            raise CheckpointError(
                f"checkpoint '{source}' holds a {name} (HRNet-W{cfg.width}), which is not a {arch}; "
                + (f"pass --arch {zoo.name}" if zoo is not None else "leave --arch out")
            )
    threshold = zoo.detection_threshold if zoo is not None and cfg.scale_aware else cfg.detection_threshold
    cfg = SahrConfig.from_dict({**cfg.to_dict(), "name": name, "detection_threshold": threshold})
    model = SahrModel(cfg)
    load_strict(model, state, name, source)
    model.float().eval()
    fmt = "swahr-official" if cfg.scale_aware else "higherhrnet-official"
    return model, official_info(fmt, name, "sahr", cfg.num_keypoints)


def load_sahr_checkpoint(
    path: str | os.PathLike, arch: str | None = None
) -> tuple[SahrModel, dict[str, Any]]:
    """An official (or any plain state-dict) SWAHR/HigherHRNet file -> (model, info)."""
    what = f"a HigherHRNet/SWAHR state dict (no {', '.join(MARKERS)})"
    return load_state_file(path, arch, is_sahr_state, what, load_sahr_state)
