"""``export_model``: resolve a model and its weights, export, check parity, write the bundle.

This is what ``edgepose export`` runs. Targets plug in through ``TARGETS``: each turns the verified FP32
ONNX into its own artifacts and says which runtime runs them.
"""

from __future__ import annotations

import platform
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from edgepose.export.options import ExportOptions, check_options, check_output_free
from edgepose.export.parity import check_parity, measure_parity
from edgepose.export.random_init import randomize_weights
from edgepose.export.targets import TARGETS, ExportContext
from edgepose.export.torch2onnx import torch_to_onnx
from edgepose.runtimes.base import create_runtime

from edgepose.bundle import Bundle, sha256_file, write_bundle
from edgepose.errors import UsageError
from edgepose.families import decoded_difference_fn, decoder_config, describe_outputs
from edgepose.preprocess import parse_imgsz
from edgepose.samples import sample_images
from edgepose.skeletons import COCO_17, CROWDPOSE_14, Skeleton
from edgepose.version import __version__


@dataclass
class ResolvedModel:
    module: torch.nn.Module
    name: str
    family: str
    weights: dict[str, Any]
    #: the zoo's own weights (what its rescoring net, if any, was fitted to)
    shipped: bool = False


def resolve_model(
    opts: ExportOptions, calib_images: list, input_size: tuple[int, int] | None
) -> ResolvedModel:
    """Build the torch model with the weights the options ask for, refusing silent random weights."""
    from edgepose.models.checkpoints import load_checkpoint
    from edgepose.models.zoo import (
        ZOO,
        build_model,
        get_model_info,
        shipped_weights_path,
        weights_status,
    )

    as_path = Path(opts.model)
    if opts.model not in ZOO and (as_path.suffix in (".pt", ".pth") or as_path.exists()):
        module, info = load_checkpoint(as_path, arch=opts.arch)
        return ResolvedModel(
            module,
            info.get("name") or as_path.stem,
            info.get("family", "kapao"),
            {"source": str(as_path), "sha256": info["sha256"], "format": info.get("format")},
        )
    info = get_model_info(opts.model)
    if opts.weights is not None:
        module, ck = load_checkpoint(opts.weights, arch=info.name)
        return ResolvedModel(
            module,
            info.name,
            info.family,
            {"source": str(opts.weights), "sha256": ck["sha256"], "format": ck.get("format")},
        )
    if opts.random_weights:
        module = build_model(info.name)
        size = input_size or tuple(info.default_imgsz)
        randomize_weights(module, calib_images, size, seed=opts.seed)
        return ResolvedModel(
            module,
            info.name,
            info.family,
            {"source": f"random (seed {opts.seed}, BatchNorm statistics from sample images)", "sha256": None},
        )
    shipped = shipped_weights_path(info.name)
    if shipped is None:
        raise UsageError(
            f"{info.name} has no weights in this package ({weights_status(info.name)}): pass --weights "
            "CKPT, or --random-weights for latency work"
        )
    module, ck = load_checkpoint(shipped, arch=info.name)
    return ResolvedModel(
        module,
        info.name,
        info.family,
        {"source": f"shipped: {shipped.name}", "sha256": ck["sha256"], "format": ck.get("format")},
        shipped=True,
    )


def _skeleton_for(num_keypoints: int, requested: str | None) -> Skeleton:
    from edgepose.skeletons import get_skeleton

    if requested:
        sk = get_skeleton(requested)
        if sk.num_keypoints != num_keypoints:
            raise UsageError(
                f"skeleton {sk.name} has {sk.num_keypoints} keypoints but the model has {num_keypoints}"
            )
        return sk
    for sk in (COCO_17, CROWDPOSE_14):
        if sk.num_keypoints == num_keypoints:
            return sk
    raise UsageError(f"the model has {num_keypoints} keypoints: pass --skeleton FILE.json describing them")


def default_output(opts: ExportOptions, size: tuple[int, int]) -> Path:
    w, h = size
    imgsz = f"{w}" if w == h else f"{w}x{h}"
    return Path("bundles") / f"{Path(opts.model).stem}-{opts.target}-{opts.precision}-{imgsz}"


def export_model(opts: ExportOptions, log=print) -> Bundle:
    """Run the whole export; returns the written bundle. Nothing is written when any step fails."""
    check_options(opts)
    calibration = None
    if opts.precision == "int8":
        from edgepose.calibration.data import load_calibration

        # Read (and check) the calibration images before anything is exported: a bad folder fails fast.
        calibration = load_calibration(opts.calib, opts.calib_size, opts.calib_seed, progress=True)
    images = sample_images(limit=4)
    requested_size = None
    if opts.imgsz is not None:
        requested_size = parse_imgsz(opts.imgsz, stride=1)  # the model's own multiple is checked below
    resolved = resolve_model(opts, images, requested_size)
    model = resolved.module.float().eval()
    if hasattr(model, "use_export_layout"):  # KAPAO: raw outputs in the convolution's order, no Transpose
        model.use_export_layout()
    head = model.head_spec()
    max_stride = int(head.get("input_multiple") or max(head["strides"]))
    if requested_size is not None:
        size = parse_imgsz(opts.imgsz, stride=max_stride)
    else:
        from edgepose.models.zoo import ZOO

        default = ZOO[resolved.name].default_imgsz if resolved.name in ZOO else (640, 640)
        size = parse_imgsz(tuple(default), stride=max_stride)
    skeleton = _skeleton_for(int(head["num_keypoints"]), opts.skeleton)
    output = Path(opts.output) if opts.output else default_output(opts, size)
    check_output_free(output, opts.overwrite)
    output_names = list(head["output_names"])
    decoder_cfg = decoder_config(resolved.family, head, _zoo_decoder_overrides(resolved.name))
    rescore_path = opts.rescore or _shipped_rescore(resolved)
    rescore = _rescore_net(rescore_path, resolved.family, skeleton.num_keypoints)
    if rescore is not None and opts.rescore is None:
        log(f"shipping the rescoring net fitted to {resolved.name}'s shipped weights ({rescore_path.name})")

    with tempfile.TemporaryDirectory(prefix="edgepose-export-") as tmpdir:
        extra_artifacts: dict[str, Path] = {}
        manifest_decoder = decoder_cfg
        if rescore is not None:
            # The export's own decoding (the INT8 gate) reads the file where it is now; the manifest
            # names it relative to the bundle, which ``Bundle.decoder_config`` resolves on loading.
            extra_artifacts["rescore"] = rescore.save(Path(tmpdir) / RESCORE_FILE)
            decoder_cfg = _with_rescore_file(decoder_cfg, str(extra_artifacts["rescore"]))
            manifest_decoder = _with_rescore_file(manifest_decoder, RESCORE_FILE)
        onnx_path = Path(tmpdir) / "model.onnx"
        log(f"exporting {resolved.name} at {size[0]}x{size[1]} to ONNX (opset {opts.opset})")
        export_model_copy = _fused_copy(model)
        torch_to_onnx(
            export_model_copy,
            size,
            onnx_path,
            output_names,
            opset=opts.opset,
            simplify=opts.simplify,
            metadata={
                "edgepose_version": __version__,
                "model": resolved.name,
                "family": resolved.family,
                "skeleton": skeleton.name,
                "head": head,
            },
        )
        with create_runtime("onnxruntime", onnx_path) as runtime:
            parity = measure_parity(
                model,
                runtime,
                images,
                size,
                "images",
                output_names,
                decoded_diff=decoded_difference_fn(decoder_cfg),
            )
            ort_version = runtime.version()
        check_parity(parity, size)
        log(
            f"ONNX Runtime vs torch: max_rel_diff={parity['max_rel_diff']:.2e}, "
            f"decoded_max_px={parity['decoded_max_px']:.2e} over {parity['decoded_cells']} cells"
        )
        int8 = None
        if calibration is not None:
            int8 = _int8_settings(opts, resolved.name, calibration, skeleton, Path(tmpdir))
        ctx = ExportContext(
            onnx_path=onnx_path,
            workdir=Path(tmpdir),
            precision=opts.precision,
            model=model,
            images=images,
            input_size=size,
            input_name="images",
            output_names=output_names,
            decoder_cfg=decoder_cfg,
            onnx_parity=parity,
            ort_version=ort_version,
            dynamic=opts.dynamic,
            log=log,
            int8=int8,
        )
        packaged = TARGETS[opts.target](ctx)
        manifest = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": {
                "name": resolved.name,
                "family": resolved.family,
                "num_keypoints": skeleton.num_keypoints,
                "skeleton": skeleton.to_dict(),
                "weights": resolved.weights["source"],
                "checkpoint_sha256": resolved.weights["sha256"],
                **(
                    {"rescore": str(opts.rescore) if opts.rescore else f"shipped: {rescore_path.name}"}
                    if rescore is not None
                    else {}
                ),
            },
            "input": {
                "name": "images",
                "shape": [1, 3, size[1], size[0]],
                "dtype": "float32",
                "layout": "NCHW",
                "color": "RGB",
                "scale": 1 / 255,
                "mean": [0.0, 0.0, 0.0],
                "std": [1.0, 1.0, 1.0],
                "resize": "letterbox",
                "pad_value": 114,
            },
            "outputs": [{"name": n, "meaning": m} for n, m in describe_outputs(decoder_cfg).items()],
            "float_outputs": output_names,
            "decoder": manifest_decoder,
            "target": opts.target,
            "precision": opts.precision,
            "export": {
                "opset": opts.opset,
                "simplified": opts.simplify,
                "torch": torch.__version__,
                "host": platform.node() or "unknown",
                "python": platform.python_version(),
            },
            "calibration": None,
            **packaged.manifest,
        }
        artifacts = {**packaged.artifacts, **extra_artifacts}
        bundle = write_bundle(output, manifest, artifacts, overwrite=opts.overwrite)
    log(f"bundle written to {bundle.path} ({sha256_file(bundle.artifact('model'))[:12]})")
    if packaged.build_plan:
        from edgepose.export.onnx2tensorrt import build_bundle_plan

        bundle = build_bundle_plan(bundle, log=log)
    return bundle


def _zoo_decoder_overrides(name: str) -> dict[str, dict[str, Any]]:
    from edgepose.models.zoo import ZOO

    return ZOO[name].decoder if name in ZOO else {}


def _zoo_calib_method(name: str) -> str | None:
    from edgepose.models.zoo import ZOO

    return ZOO[name].calib_method if name in ZOO else None


RESCORE_FILE = "rescore.npz"


def _rescore_net(path: Path | None, family: str, num_keypoints: int):
    """The rescoring net of ``--rescore`` (or the zoo's), read and checked before anything is exported."""
    if path is None:
        return None
    from edgepose.families import rescorable_families

    if family not in rescorable_families():
        raise UsageError(
            f"--rescore applies to {' and '.join(rescorable_families())} models; this is a {family} model"
        )
    from edgepose.models.dekr_checkpoints import load_rescore_checkpoint

    return load_rescore_checkpoint(path, num_keypoints)


def _shipped_rescore(resolved: ResolvedModel) -> Path | None:
    """The zoo's rescoring net for a model exported with its shipped weights: it was fitted to those
    weights' poses, so a user's ``--weights`` or random weights never get it."""
    from edgepose.models.zoo import shipped_rescore_path

    return shipped_rescore_path(resolved.name) if resolved.shipped else None


def _with_rescore_file(cfg: dict[str, Any], file: str) -> dict[str, Any]:
    return {**cfg, "head": {**cfg["head"], "rescore_file": file}}


def calibration_methods(pinned: str | None, model_default: str | None = None) -> dict[str, Any]:
    """``Int8Request``'s method and fallbacks: a method the user names is the only one used; otherwise
    the model's measured best (its zoo entry's ``calib_method``) or the toolkit's default comes first,
    and the gate may try the others (``GATE_FALLBACKS`` order, then the default)."""
    from edgepose.calibration.ort_quant import DEFAULT_METHOD, GATE_FALLBACKS

    if pinned is not None:
        return {"method": pinned, "fallback_methods": ()}
    first = model_default or DEFAULT_METHOD
    others = tuple(m for m in (*GATE_FALLBACKS, DEFAULT_METHOD) if m != first)
    return {"method": first, "fallback_methods": others}


def _int8_settings(
    opts: ExportOptions, model_name: str, calibration, skeleton: Skeleton, workdir: Path
) -> dict[str, Any]:
    """The INT8 part of the export context: calibration set, validation data and gate settings."""
    validation = None
    if opts.val is not None:
        from edgepose.calibration.validation import load_validation

        validation = load_validation(opts.val, skeleton.num_keypoints, opts.val_size, workdir)
    return {
        "sigmas": skeleton.sigmas_array,
        "calibration": calibration,
        **calibration_methods(opts.calib_method, _zoo_calib_method(model_name)),
        "openvino_source": opts.int8_source,
        "validation": validation,
        "max_ap_drop": opts.max_ap_drop,
    }


def _fused_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A BatchNorm-folded copy for export; the unfused original stays the parity reference."""
    import copy

    clone = copy.deepcopy(model)
    return clone.fuse() if hasattr(clone, "fuse") else clone
