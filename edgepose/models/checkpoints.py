"""Load official KAPAO checkpoints, edgepose checkpoints and plain state dicts, without running pickled code.

Every file goes through ``torch.load(weights_only=True)``. Official KAPAO ``.pt`` files pickle whole
module objects (``models.yolo.Model``, ``models.common.C3``, ``torch.nn.Conv2d``, numpy arrays …);
for those names we allow-list inert stand-in classes with ``torch.serialization.safe_globals``
(the ``(class, "module.name")`` form), so the weights-only unpickler rebuilds each object as a
record of its pickled state and nothing of the pickle's code runs. Any other global (``os.system``,
``builtins.eval``, ``subprocess.Popen`` …) is refused by torch and reported as a CheckpointError.
A restricted ``pickle.Unpickler`` is not needed: torch refuses ``pickle_module`` together with
``weights_only=True``, and the weights-only loader already handles the stand-ins.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import os
import re
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from edgepose.errors import CheckpointError, UsageError
from edgepose.models.kapao import DETECT_INDEX, STRIDES, KapaoConfig, KapaoModel
from edgepose.models.yolo_blocks import BN_EPS
from edgepose.models.zoo import ZOO, build_from_config, build_model, get_model_info

FORMAT = "edgepose"
FORMAT_VERSION = 1
_RESERVED = frozenset({"format", "format_version", "arch", "family", "config", "model"})


class PickledObject:
    """Inert record of one object from an official pickle: its constructor args and pickled state.

    It has no behaviour, so rebuilding it runs nothing but this ``__init__``/``__setstate__``.
    """

    pickled_name: ClassVar[str] = ""
    args: tuple = ()
    state: Any = None

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.pickled_name}>"

    def get(self, key: str, default: Any = None) -> Any:
        """An attribute of the pickled object (its ``__dict__`` entry)."""
        return self.state.get(key, default) if isinstance(self.state, dict) else default


_ALLOWED_NAMES = (
    "models.yolo.Model",
    "models.yolo.Detect",
    "models.common.Focus",
    "models.common.Conv",
    "models.common.C3",
    "models.common.Bottleneck",
    "models.common.SPP",
    "models.common.Concat",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.upsampling.Upsample",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.linear.Identity",
    # numpy values (e.g. ``best_fitness``), kept as opaque records, never handed to numpy.
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
)
_STANDINS: dict[str, type[PickledObject]] = {
    name: type(name.rsplit(".", 1)[1], (PickledObject,), {"pickled_name": name}) for name in _ALLOWED_NAMES
}
_SAFE_GLOBALS = [(cls, name) for name, cls in _STANDINS.items()]
# torch's allow-list is process-wide; the lock keeps one load's stand-ins from leaking into another's.
_LOAD_LOCK = threading.Lock()


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The unpickled content of a checkpoint (weights-only, stand-ins for official module objects).

    Training uses this to resume (optimizer state and the other extras of ``save_checkpoint``).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint '{p}' does not exist; check the path")
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' is not a file")
    with _LOAD_LOCK, torch.serialization.safe_globals(_SAFE_GLOBALS):
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # any failure inside torch.load means an unreadable or unsafe file
            bad = _unsafe_global(str(e))
            if bad:
                raise CheckpointError(
                    f"checkpoint '{p}' refers to '{bad}', which is not on edgepose's allow-list of "
                    "weight classes, so it was refused without running anything"
                ) from e
            raise CheckpointError(
                f"checkpoint '{p}' is not a readable PyTorch file (corrupt, truncated or another format); "
                "re-download or re-save it"
            ) from e


def _unsafe_global(message: str) -> str | None:
    """The global named by a weights-only refusal, as Python 3's pickle would resolve it.

    Torch strips a 'builtins.' prefix (put back here) and does not apply all of pickle's Python 2
    import fixes (protocol-2 files name ``subprocess.Popen`` as ``commands.Popen``).
    """
    m = re.search(r"GLOBAL (\S+)", message)
    if m is None:
        return None
    full = m.group(1).rstrip(".,")
    module, _, name = full.rpartition(".")
    module = module or "builtins"
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def load_checkpoint(path: str | os.PathLike, arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights (float32, eval mode).

    Reads official KAPAO ``.pt`` files (EMA weights when present), edgepose checkpoints, and plain
    state dicts (which need ``arch``, a zoo name). Returns ``(model, info)``; info has ``format``,
    ``name``, ``family``, ``num_keypoints``, ``epoch`` (None when unknown), ``weights`` ("ema" or
    "model") and ``sha256`` of the file.
    """
    p = Path(path)
    obj = read_checkpoint(p)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        model, info = _from_edgepose(obj, arch, p)
    elif isinstance(obj, dict) and isinstance(obj.get("ema") or obj.get("model"), PickledObject):
        model, info = _from_official(obj, arch, p)
    else:
        model, info = _from_state_dict(obj, arch, p)
    model.float().eval()
    info["sha256"] = _sha256(p)
    return model, info


def save_checkpoint(path: str | os.PathLike, model: nn.Module, arch: str, **extra: Any) -> Path:
    """Write an edgepose checkpoint atomically (temp file + ``os.replace``); returns the path.

    ``model`` needs a ``cfg`` with ``to_dict()`` and a ``family`` (every zoo architecture has both).
    ``extra`` (epoch, optimizer state, ...) must be weights-only-safe: tensors, numbers, strings,
    None, and lists/tuples/dicts of those. ``ema`` may be an nn.Module or a state dict.
    """
    clash = _RESERVED & set(extra)
    if clash:
        raise ValueError(f"save_checkpoint: {', '.join(sorted(clash))} is set by edgepose itself")
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise TypeError(f"save_checkpoint needs a zoo architecture with a .cfg, got {type(model).__name__}")
    ema = extra.pop("ema", None)
    if isinstance(ema, nn.Module):
        ema = ema.state_dict()
    for key, value in extra.items():
        _check_safe(value, key)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "family": getattr(model, "family", None) or (ZOO[arch].family if arch in ZOO else None),
        "config": cfg.to_dict(),
        "model": _cpu_state(model.state_dict()),
        "ema": None if ema is None else _cpu_state(ema),
        **extra,
    }
    return atomic_torch_save(path, payload)


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` through a uniquely named temporary file that is synced and renamed into place:
    the file at ``path`` is whole or absent, even when the process dies mid-write."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


# --- the three formats -------------------------------------------------------------------------


def _from_edgepose(obj: dict, arch: str | None, p: Path) -> tuple[nn.Module, dict[str, Any]]:
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint '{p}' has edgepose format_version {version!r}, this edgepose reads "
            f"{FORMAT_VERSION}; use a matching edgepose version"
        )
    name, config = obj.get("arch"), obj.get("config")
    if not isinstance(name, str) or not isinstance(config, dict):
        raise CheckpointError(f"checkpoint '{p}' is an edgepose checkpoint without 'arch' or 'config'")
    if arch is not None and arch != name:
        raise CheckpointError(f"checkpoint '{p}' holds a {name}, not a {arch}; drop the arch or pick {name}")
    family = obj.get("family") or (ZOO[name].family if name in ZOO else "kapao")
    try:
        model = build_from_config(family, config)
    except UsageError as e:
        raise CheckpointError(f"checkpoint '{p}' has an invalid {family} config: {e}") from e
    source = "ema" if isinstance(obj.get("ema"), Mapping) and obj["ema"] else "model"
    state = obj.get(source)
    if not _is_state_dict(state):
        raise CheckpointError(f"checkpoint '{p}' has no state dict under '{source}'")
    load_state_strict(model, state, name, p)
    epoch = obj.get("epoch")
    info = {
        "format": "edgepose",
        "name": name,
        "family": family,
        "num_keypoints": int(config.get("num_keypoints", 0)) or None,
        "epoch": epoch if isinstance(epoch, int) and epoch >= 0 else None,
        "weights": source,
        "extra_keys": sorted(k for k in obj if k not in _RESERVED and k != "ema"),
    }
    return model, info


def _from_official(ckpt: dict, arch: str | None, p: Path) -> tuple[nn.Module, dict[str, Any]]:
    source = "ema" if isinstance(ckpt.get("ema"), PickledObject) else "model"
    root = ckpt[source]
    layers = _official_layers(root, p)
    det = layers[-1]
    nc, num_coords, no = det.get("nc"), det.get("num_coords") or root.get("num_coords"), det.get("no")
    if not all(isinstance(v, int) for v in (nc, num_coords, no)) or num_coords <= 0:
        raise CheckpointError(f"checkpoint '{p}' is a YOLOv5 detector without keypoint outputs, not KAPAO")
    k = num_coords // 2
    if num_coords % 2 or nc != 1 + k or no != 5 + nc + num_coords:
        raise CheckpointError(
            f"checkpoint '{p}' has an unexpected KAPAO head (nc={nc}, num_coords={num_coords}, no={no})"
        )
    stride = det.get("stride")
    if isinstance(stride, torch.Tensor) and [int(s) for s in stride.tolist()] != list(STRIDES):
        raise CheckpointError(
            f"checkpoint '{p}' has strides {stride.tolist()}; only P3-P6 KAPAO models {list(STRIDES)} load"
        )
    yaml = root.get("yaml")
    if not isinstance(yaml, dict) or "depth_multiple" not in yaml or "width_multiple" not in yaml:
        raise CheckpointError(f"checkpoint '{p}' does not record depth_multiple/width_multiple in its yaml")
    depth, width = float(yaml["depth_multiple"]), float(yaml["width_multiple"])
    name = _zoo_name(depth, width)
    if arch is not None:
        want = get_model_info(arch)
        if want.family != "kapao" or name != arch:
            raise CheckpointError(
                f"checkpoint '{p}' is a KAPAO with depth {depth} and width {width} ({name}), not a {arch}"
            )
    cfg = KapaoConfig(name, depth, width, k, _official_anchors(det, p).tolist())
    model = KapaoModel(cfg)
    state = _collect_state(root, "", {}, p)
    state.pop("loss_coeffs", None)  # Model(autobalance=True) training-only parameter, not part of the network
    load_state_strict(model, state, name, p)
    epoch = ckpt.get("epoch")
    names = root.get("names")
    info = {
        "format": "kapao-official",
        "name": name,
        "family": "kapao",
        "num_keypoints": k,
        "epoch": epoch if isinstance(epoch, int) and epoch >= 0 else None,
        "weights": source,
        "class_names": list(names)
        if isinstance(names, list) and all(isinstance(n, str) for n in names)
        else None,
    }
    return model, info


def _from_state_dict(obj: Any, arch: str | None, p: Path) -> tuple[nn.Module, dict[str, Any]]:
    state, source = None, "model"
    if isinstance(obj, dict):
        if _is_state_dict(obj.get("state_dict")):
            state = obj["state_dict"]
        elif _is_state_dict(obj.get("model")):
            source = "ema" if _is_state_dict(obj.get("ema")) else "model"
            state = obj[source]
        elif _is_state_dict(obj):
            state = obj
    if state is None:
        raise CheckpointError(
            f"checkpoint '{p}' is in an unknown format (not an official KAPAO, edgepose or state-dict file)"
        )
    from edgepose.models import dekr_checkpoints  # lazy: it imports this module

    dekr_state = {_strip_module(k): v for k, v in state.items()}
    if dekr_checkpoints.is_dekr_state(dekr_state) or (arch in ZOO and ZOO[arch].family == "dekr"):
        # DEKR state dicts describe their architecture (width, depth, keypoints) in their shapes
        return dekr_checkpoints.load_dekr_state(dekr_state, arch, str(p))
    from edgepose.models import sahr_checkpoints  # lazy, as above

    if sahr_checkpoints.is_sahr_state(dekr_state) or (arch in ZOO and ZOO[arch].family == "sahr"):
        # SWAHR/HigherHRNet state dicts describe their architecture in their shapes too
        return sahr_checkpoints.load_sahr_state(dekr_state, arch, str(p))
    if arch is None:
        raise CheckpointError(
            f"checkpoint '{p}' is a plain state dict; name its architecture (e.g. --arch kapao-s)"
        )
    info_z = get_model_info(arch)
    model = build_model(info_z)
    load_state_strict(model, {_strip_module(k): v for k, v in state.items()}, arch, p)
    epoch = obj.get("epoch") if isinstance(obj, dict) else None
    info = {
        "format": "state_dict",
        "name": arch,
        "family": info_z.family,
        "num_keypoints": info_z.num_keypoints,
        "epoch": epoch if isinstance(epoch, int) and epoch >= 0 else None,
        "weights": source,
    }
    return model, info


# --- helpers ------------------------------------------------------------------------------------


def _official_layers(root: Any, p: Path) -> list[PickledObject]:
    if not isinstance(root, PickledObject) or root.pickled_name != "models.yolo.Model":
        raise CheckpointError(f"checkpoint '{p}' does not hold a models.yolo.Model under 'ema' or 'model'")
    seq = (root.get("_modules") or {}).get("model")
    children = seq.get("_modules") if isinstance(seq, PickledObject) else None
    layers = list(children.values()) if isinstance(children, Mapping) else []
    if len(layers) != DETECT_INDEX + 1 or not all(isinstance(m, PickledObject) for m in layers):
        raise CheckpointError(
            f"checkpoint '{p}' has {len(layers)} layers; KAPAO P3-P6 models have {DETECT_INDEX + 1}"
        )
    if layers[-1].pickled_name != "models.yolo.Detect":
        raise CheckpointError(f"checkpoint '{p}' does not end in a Detect layer")
    return layers


def _official_anchors(det: PickledObject, p: Path) -> torch.Tensor:
    """Pixel anchors (nl, na, 2) from the pickled Detect: autoanchor may have changed the yaml ones."""
    buffers = det.get("_buffers") or {}
    grid, anchors = buffers.get("anchor_grid"), buffers.get("anchors")
    if isinstance(grid, torch.Tensor):
        px = grid.float().reshape(len(STRIDES), -1, 2)
    elif isinstance(anchors, torch.Tensor):
        px = anchors.float().reshape(len(STRIDES), -1, 2) * torch.tensor(STRIDES, dtype=torch.float32).view(
            -1, 1, 1
        )
    else:
        raise CheckpointError(f"checkpoint '{p}' has no anchors in its Detect layer")
    return px


def _collect_state(obj: PickledObject, prefix: str, out: dict[str, torch.Tensor], p: Path) -> dict:
    """The state dict of a pickled module tree, keyed as ``nn.Module.state_dict`` would key it."""
    if obj.pickled_name == "torch.nn.modules.batchnorm.BatchNorm2d":
        eps = obj.get("eps")
        if isinstance(eps, float) and abs(eps - BN_EPS) > 1e-9:
            raise CheckpointError(
                f"checkpoint '{p}' uses BatchNorm eps {eps} at '{prefix}'; KAPAO uses {BN_EPS}"
            )
    skip = obj.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, t in (obj.get(group) or {}).items():
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"checkpoint '{p}' has a non-tensor {group[1:-1]} '{prefix}{name}'")
            out[prefix + name] = t.detach()
    for name, child in (obj.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PickledObject):
            raise CheckpointError(f"checkpoint '{p}' has an unreadable sub-module '{prefix}{name}'")
        _collect_state(child, f"{prefix}{name}.", out, p)
    return out


def load_state_strict(model: nn.Module, state: Mapping[str, Any], name: str, p: Path | str) -> None:
    """Strict load with one clear sentence for the first difference (keys, then shapes).

    Every family's loader uses this, so a wrong checkpoint reads the same whatever the architecture.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} key(s) missing (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
        raise CheckpointError(f"checkpoint '{p}' does not match {name}: {' and '.join(parts)}")
    merged = {}
    for key, ref in expected.items():
        t = state.get(key, ref)
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"checkpoint '{p}' has a non-tensor value for '{key}'")
        if t.shape != ref.shape:
            raise CheckpointError(
                f"checkpoint '{p}' does not match {name}: '{key}' has shape {tuple(t.shape)} in the "
                f"checkpoint but {tuple(ref.shape)} in the model{_shape_hint(model, key, t)}"
            )
        merged[key] = t.to(ref.dtype) if t.is_floating_point() else t
    model.load_state_dict(merged, strict=True)


def _shape_hint(model: nn.Module, key: str, t: torch.Tensor) -> str:
    """For a KAPAO head conv, say how many keypoints the checkpoint was trained for."""
    if not isinstance(model, KapaoModel) or not key.startswith(f"model.{DETECT_INDEX}.m."):
        return ""
    no, rem = divmod(int(t.shape[0]), model.detect.na)
    k, rem2 = divmod(no - 6, 3)
    if rem or rem2 or k < 1:
        return ""
    return f" (the checkpoint's head is for {k} keypoints, the model's for {model.cfg.num_keypoints})"


def _zoo_name(depth: float, width: float) -> str:
    for info in ZOO.values():
        c = info.config
        if (
            info.family == "kapao"
            and abs(c["depth_multiple"] - depth) < 1e-6
            and abs(c["width_multiple"] - width) < 1e-6
        ):
            return info.name
    return "kapao-custom"


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip_module(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


def _cpu_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


_SAFE_LEAVES = (torch.Tensor, int, float, bool, str, bytes, complex, type(None), torch.dtype, torch.device)


def _check_safe(value: Any, where: str) -> None:
    """Refuse extras that ``weights_only`` loading would reject later (the checkpoint would be unreadable)."""
    if isinstance(value, _SAFE_LEAVES):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise ValueError(f"save_checkpoint: '{where}' has a {type(k).__name__} key")
            _check_safe(v, f"{where}.{k}")
        return
    if isinstance(value, (list, tuple, set)):
        for i, v in enumerate(value):
            _check_safe(v, f"{where}[{i}]")
        return
    raise ValueError(
        f"save_checkpoint: '{where}' is a {type(value).__name__}, which weights-only loading refuses; "
        "store tensors, numbers, strings or containers of them"
    )


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def release_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    half: bool = True,
    command: str | None = None,
    wall_time_s: float | None = None,
) -> Path:
    """A checkpoint fit to ship: the model's weights (fp16 by default) and its provenance, nothing else.

    Optimizer state, EMA copies and RNG state are training-only (YOLOv5's ``strip_optimizer`` does the
    same); the training command, wall time, metrics and config stay so the file says how it was made.
    ``command`` and ``wall_time_s`` replace the stored ones when the file is the last stage of a longer
    chain (a ``--resume``, or a fine-tune of an earlier run): they then describe the whole chain.
    """
    model, info = load_checkpoint(src)
    raw = read_checkpoint(src)
    keep = ("command", "wall_time_s", "train", "metrics", "epoch")
    extra = {k: raw[k] for k in keep if isinstance(raw, dict) and k in raw}
    if command is not None:
        extra["command"] = command
    if wall_time_s is not None:
        extra["wall_time_s"] = float(wall_time_s)
    if half:
        model = model.half()
    return save_checkpoint(dst, model, info["name"], released_from=str(info["sha256"]), **extra)
