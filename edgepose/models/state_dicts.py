"""Plain state-dict checkpoints (DEKR, SWAHR/HigherHRNet): what every HRNet family's loader shares.

The official files of both families are ``torch.save``d state dicts, sometimes under ``state_dict`` or with
``module.`` prefixes from DataParallel. Each family's loader (``dekr_checkpoints``, ``sahr_checkpoints``)
only says how to recognise its keys and how to infer its config from the tensor shapes.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from edgepose.errors import CheckpointError

StateLoader = Callable[[dict[str, torch.Tensor], str | None, str], tuple[torch.nn.Module, dict[str, Any]]]


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The tensor state dict inside ``obj`` (plain, ``{"state_dict": ...}``, ``module.`` keys), or None."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        return None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return None
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def count_indices(state: Mapping[str, Any], pattern: str) -> int:
    """How many distinct values the regex group of ``pattern`` takes over the keys (branches, blocks)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.fullmatch(k))})


def hrnet_trunk_fields(state: Mapping[str, Any]) -> dict[str, Any]:
    """The HRNet trunk's stem and stage counts as config fields, read from an official-layout state dict.

    The trunk's width is not here: each family reads it from its own head's input.
    """
    return {
        "stem_channels": int(state["conv1.weight"].shape[0]),
        "stem_blocks": count_indices(state, r"layer1\.(\d+)\.conv1\.weight"),
        "num_modules": tuple(
            count_indices(state, rf"stage{s}\.(\d+)\.branches\.0\.0\.conv1\.weight") for s in (2, 3, 4)
        ),
        "num_blocks": tuple(
            count_indices(state, rf"stage{s}\.0\.branches\.0\.(\d+)\.conv1\.weight") for s in (2, 3, 4)
        ),
    }


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], name: str, source: str) -> None:
    """Strict load with one sentence for the first difference (the loader every family shares)."""
    from edgepose.models.checkpoints import load_state_strict  # lazy: checkpoints imports this module lazily

    load_state_strict(model, state, name, source)


def official_info(fmt: str, name: str, family: str, num_keypoints: int) -> dict[str, Any]:
    """The loader info of an official (plain state-dict) file: no epoch, the weights are the model's."""
    return {
        "format": fmt,
        "name": name,
        "family": family,
        "num_keypoints": num_keypoints,
        "epoch": None,
        "weights": "model",
    }


def load_state_file(
    path: str | os.PathLike,
    arch: str | None,
    is_state: Callable[[Mapping[str, Any]], bool],
    not_state: str,
    load_state: StateLoader,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Read ``path``, check it is the family's state dict (else ``not_state`` completes the error), build
    the model with ``load_state`` and add the file's sha256 to its info."""
    from edgepose.models.checkpoints import read_checkpoint

    p = Path(path)
    state = unwrap_state_dict(read_checkpoint(p))
    if state is None or not is_state(state):
        raise CheckpointError(f"checkpoint '{p}' is not {not_state}")
    model, info = load_state(state, arch, str(p))
    info["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return model, info
