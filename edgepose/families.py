"""Model families, seen from the deployment side: how a manifest's decoder section becomes a decoder.

Every family has a decoder module ``edgepose.decoders.<family>`` with the same small protocol:

- ``Head``: the head constants (``from_dict``/``to_dict``, ``output_names``), stored in the manifest;
- ``Params`` (``from_dict``/``to_dict``/``replace``) and ``PRESETS`` (``accuracy`` and ``realtime``);
- ``CONF_PARAM``: the name of the main detection threshold (what ``--conf`` sets);
- ``decode(outputs, meta, params, head) -> Poses`` and ``warmup(head)`` (``warmup(head, flip=True)``
  in a family with the flip test);
- ``describe_outputs(head) -> {name: meaning}`` for the manifest;
- ``decoded_difference(reference, candidate, head, params) -> {"decoded_max_px", ...}`` for parity;
- optionally ``rescore_inputs(outputs, meta, params, head) -> (xy, joint_scores)``: a family that has
  it takes a rescoring net (``head.rescore_file``; ``edgepose fit-rescore`` fits one to these inputs);
- optionally flip test: ``Params.flip``, ``flip_input(tensor, head)`` (the second pass's input) and
  ``merge_flip(outputs, flipped_outputs, head, flip_index)`` (both passes -> one set of raw outputs,
  which ``decode`` reads as usual). ``PoseEstimator.infer`` runs the second pass.

Nothing here imports torch or a runtime: a device running a bundle only needs numpy and numba.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from edgepose.errors import BundleError, UsageError
from edgepose.poses import Poses
from edgepose.preprocess import LetterboxMeta

Outputs = Mapping[str, np.ndarray]

#: family name -> decoder module
FAMILIES: dict[str, str] = {
    "kapao": "edgepose.decoders.kapao",
    "dekr": "edgepose.decoders.dekr",
    "sahr": "edgepose.decoders.sahr",
}


def decoder_module(family: str) -> ModuleType:
    if family not in FAMILIES:
        raise BundleError(
            f"model family '{family}' is unknown to this edgepose (known: {', '.join(FAMILIES)})"
        )
    try:
        return importlib.import_module(FAMILIES[family])
    except ModuleNotFoundError as e:
        raise BundleError(f"this edgepose has no decoder for the '{family}' family yet") from e


@dataclass
class Decoder:
    """A family's decode function with its head constants and chosen parameters bound."""

    family: str
    preset: str
    params: Any
    head: Any
    _module: ModuleType

    def __call__(self, outputs: Outputs, meta: LetterboxMeta) -> Poses:
        return self._module.decode(outputs, meta, self.params, self.head)

    @property
    def flip(self) -> bool:
        """Whether each frame needs the flip test's second forward pass."""
        return bool(getattr(self.params, "flip", False))

    def flip_input(self, tensor: np.ndarray) -> np.ndarray:
        return self._module.flip_input(tensor, self.head)

    def merge_flip(self, outputs: Outputs, flipped: Outputs, flip_index: np.ndarray) -> dict[str, np.ndarray]:
        return self._module.merge_flip(outputs, flipped, self.head, flip_index)

    def warmup(self) -> None:
        """Compile (or load from numba's cache) every kernel now, so the first frame is not a JIT compile.
        The flip test's kernels only when it is on: most decoders never need them."""
        if self.flip:
            self._module.warmup(self.head, flip=True)
        else:
            self._module.warmup(self.head)


def decoder_config(
    family: str,
    head_spec: Mapping[str, Any],
    preset_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The manifest's ``decoder`` section: head constants and every preset's parameters.

    ``preset_overrides`` (preset -> parameters) are a model's own tuned values on top of the family's
    presets (the zoo's ``ModelInfo.decoder``); the manifest records the result, so bundles stay
    self-describing.
    """
    mod = decoder_module(family)
    head = mod.Head.from_dict(dict(head_spec))
    overrides = dict(preset_overrides or {})
    unknown = set(overrides) - set(mod.PRESETS)
    if unknown:
        raise UsageError(
            f"unknown decoder preset(s) {', '.join(sorted(unknown))}; use {', '.join(mod.PRESETS)}"
        )
    return {
        "family": family,
        "head": head.to_dict(),
        "presets": {name: p.replace(**overrides.get(name, {})).to_dict() for name, p in mod.PRESETS.items()},
        "default_preset": "realtime",
        "eval_preset": "accuracy",
    }


def describe_outputs(cfg: Mapping[str, Any]) -> dict[str, str]:
    mod = decoder_module(cfg["family"])
    return mod.describe_outputs(mod.Head.from_dict(cfg["head"]))


def make_decoder(
    cfg: Mapping[str, Any], preset: str | None = None, overrides: Mapping[str, Any] | None = None
) -> Decoder:
    """The decoder a manifest describes, with ``preset`` (default: the manifest's) and parameter overrides."""
    family = cfg.get("family")
    mod = decoder_module(str(family))
    preset = preset or cfg.get("default_preset", "realtime")
    presets = cfg.get("presets", {})
    if preset not in presets:
        raise UsageError(f"unknown preset '{preset}'; this bundle has: {', '.join(presets)}")
    params = mod.Params.from_dict(presets[preset])
    if overrides:
        overrides = dict(overrides)
        if overrides.get("flip") and not hasattr(mod, "merge_flip"):
            raise UsageError(f"the {family} family has no flip test; run it without --flip")
        if "conf" in overrides and getattr(mod, "CONF_PARAM", "conf") != "conf":
            # ``conf`` is the CLI's family-neutral name for the main detection threshold.
            overrides[mod.CONF_PARAM] = overrides.pop("conf")
        params = params.replace(**overrides)
    return Decoder(str(family), preset, params, mod.Head.from_dict(cfg["head"]), mod)


def decoded_difference_fn(
    cfg: Mapping[str, Any], preset: str = "realtime"
) -> Callable[[Outputs, Outputs], dict]:
    """``(reference, candidate) -> {"decoded_max_px", ...}`` for the parity check of ``cfg``'s family."""
    dec = make_decoder(cfg, preset)
    return lambda ref, got: dec._module.decoded_difference(ref, got, dec.head, dec.params)


def rescorable_families() -> tuple[str, ...]:
    """Families whose decoders take a rescoring net (their module has ``rescore_inputs``)."""
    return tuple(f for f in FAMILIES if hasattr(decoder_module(f), "rescore_inputs"))
