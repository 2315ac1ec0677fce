"""The model zoo: names, sizes and where weights come from. Torch-free so ``edgepose models`` is instant.

Each family registers a builder ``"module:function"`` taking one config mapping (the ``ModelInfo.config``
kwargs plus ``name`` and ``num_keypoints``) and returning the ``nn.Module``; torch is imported only
when a model is built. Other families (``dekr``, ``sahr``) add their entries and builder here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgepose.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

# family -> "module:function" that builds an nn.Module from a config mapping.
FAMILY_BUILDERS: dict[str, str] = {
    "kapao": "edgepose.models.kapao:from_config",
    "dekr": "edgepose.models.dekr:from_config",
    "sahr": "edgepose.models.higherhrnet:from_config",
}

_KAPAO_REPO = "github.com/wmcnally/kapao (data/scripts/download_models.py)"
_DEKR_REPO = "github.com/HRNet/DEKR (README model zoo)"
_SAHR_REPO = "github.com/greatlog/SWAHR-HumanPose (README model zoo)"


@dataclass(frozen=True)
class ModelInfo:
    """One zoo entry. ``params`` and ``gflops`` (2 x multiply-adds at ``default_imgsz``) are measured."""

    name: str
    family: str
    num_keypoints: int
    default_imgsz: tuple[int, int]  # (W, H)
    params: int
    gflops: float
    weights: str
    config: dict[str, Any] = field(default_factory=dict)
    skeleton: str = "coco-17"
    description: str = ""
    #: decoder preset -> parameters tuned for this model (on data its published figures never use)
    decoder: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: INT8 calibration method measured best for these weights (None: the toolkit's default);
    #: ``--calib-method`` overrides it
    calib_method: str | None = None
    #: DEKR, KAPAO: the rescoring net fitted to the shipped weights' poses (``edgepose fit-rescore``), which
    #: ``edgepose export`` ships with those weights unless ``--rescore`` names another
    rescore: str | None = None


def _entry(family: str) -> Callable[..., ModelInfo]:
    """Entry maker for a family: COCO-17, an int size is square, model config as keyword arguments."""

    def make(
        name: str,
        imgsz: int | tuple[int, int],
        params: int,
        gflops: float,
        weights: str,
        description: str,
        decoder: dict[str, dict[str, Any]] | None = None,
        calib_method: str | None = None,
        rescore: str | None = None,
        **config: Any,
    ) -> ModelInfo:
        return ModelInfo(
            name=name,
            family=family,
            num_keypoints=17,
            default_imgsz=imgsz if isinstance(imgsz, tuple) else (imgsz, imgsz),
            params=params,
            gflops=gflops,
            weights=weights,
            config=config,
            description=description,
            decoder=decoder or {},
            calib_method=calib_method,
            rescore=rescore,
        )

    return make


def _kapao(name: str, depth: float, width: float, *fields: Any, **options: Any) -> ModelInfo:
    """A KAPAO entry: ``_entry``'s fields, with YOLOv5's depth and width multiples as its whole config."""
    return _entry("kapao")(name, *fields, depth_multiple=depth, width_multiple=width, **options)


_dekr = _entry("dekr")
_sahr = _entry("sahr")


_DEKR_TINY = {"stem_channels": 16, "stem_blocks": 1, "num_modules": (1, 1, 1), "num_blocks": (1, 1, 1)}
_DEKR_SMALL = {"stem_channels": 32, "stem_blocks": 1, "num_modules": (1, 1, 1), "num_blocks": (2, 2, 2)}


ZOO: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        _kapao(
            "kapao-s",
            0.33,
            0.50,
            1280,
            12_559_980,
            68.323,
            f"official: kapao_s_coco.pt from {_KAPAO_REPO}",
            "KAPAO-S (YOLOv5s6 P3-P6), COCO 63.0 AP",
        ),
        _kapao(
            "kapao-m",
            0.67,
            0.75,
            1280,
            35_755_404,
            207.640,
            f"official: kapao_m_coco.pt from {_KAPAO_REPO}",
            "KAPAO-M (YOLOv5m6 P3-P6), COCO 68.5 AP",
        ),
        _kapao(
            "kapao-l",
            1.0,
            1.0,
            1280,
            77_047_852,
            468.179,
            f"official: kapao_l_coco.pt from {_KAPAO_REPO}",
            "KAPAO-L (YOLOv5l6 P3-P6), COCO 70.6 AP",
        ),
        _kapao(
            "kapao-n",
            0.33,
            0.25,
            (512, 384),  # trained at 384x320 with scale jitter; 512x384 is 640x480 cameras at 0.8
            3_203_212,
            2.193,
            "shipped: edgepose/weights/kapao-n.pt",
            "small reference KAPAO trained by edgepose on synthetic people",
            # val-v1 people are small: a 25 px fusion radius beats the official 50 px (stream 999)
            decoder={"accuracy": {"overwrite_tol": 25}, "realtime": {"overwrite_tol": 25}},
            rescore="shipped: edgepose/weights/kapao-n-rescore.pth",
        ),
        _kapao(
            "kapao-t",
            0.33,
            0.125,
            256,
            832_668,
            0.2067,
            "none (random init only)",
            "test-sized KAPAO for fast checks",
        ),
        _dekr(
            "dekr-w32",
            512,
            29_561_182,
            90.770,
            f"official: pose_dekr_hrnetw32_coco.pth from {_DEKR_REPO}",
            "DEKR HRNet-W32, COCO val 68.0 AP (single scale, flip test, rescoring)",
            width=32,
            heatmap_channels=32,
        ),
        _dekr(
            "dekr-w48",
            640,
            65_684_590,
            283.053,
            f"official: pose_dekr_hrnetw48_coco.pth from {_DEKR_REPO}",
            "DEKR HRNet-W48 (official 640 input), COCO val 71.0 AP (single scale, flip test, rescoring)",
            width=48,
            heatmap_channels=48,
        ),
        _dekr(
            "dekr-n",
            (512, 384),  # trained at 384x320 with scale jitter; chosen on val-v1 stream 999 (card)
            1_521_248,
            5.709,
            "shipped: edgepose/weights/dekr-n.pt",
            "small reference DEKR (HRNet-W16, one module per stage) trained by edgepose",
            rescore="shipped: edgepose/weights/dekr-n-rescore.pth",
            width=16,
            heatmap_channels=16,
            offset_channels=8,
            **_DEKR_SMALL,
        ),
        _dekr(
            "dekr-t",
            256,
            288_480,
            0.6775,
            "none (random init only)",
            "test-sized DEKR for fast checks",
            width=8,
            heatmap_channels=8,
            offset_channels=8,
            **_DEKR_TINY,
        ),
        # SAHR GFLOPs are of the deployed graph (no scale branches); params include them (official files).
        _sahr(
            "sahr-w32",
            512,
            28_649_309,
            92.407,
            f"official: pose_coco/pose_higher_hrnet_w32_512.pth from {_SAHR_REPO}",
            "SWAHR HigherHRNet-W32, COCO val 68.9 AP (single scale, flip test)",
            width=32,
            deconv_channels=32,
            detection_threshold=0.12,
        ),
        _sahr(
            "sahr-w48",
            640,
            63_831_661,
            298.938,
            f"official: pose_coco/pose_higher_hrnet_w48_640.pth from {_SAHR_REPO}",
            "SWAHR HigherHRNet-W48 (official 640 input), COCO val 70.8 AP (single scale, flip test)",
            width=48,
            deconv_channels=48,
            detection_threshold=0.1,
        ),
        _sahr(
            "sahr-n",
            (512, 384),  # trained at 384x320 with scale jitter; 512x384 is 640x480 cameras at 0.8
            1_277_389,
            4.929,
            "shipped: edgepose/weights/sahr-n.pt",
            "small reference SWAHR (HRNet-W16, one module per stage, two deconv blocks) trained by edgepose",
            # a young model's weak peaks are noise: 0.4 beats 0.3 and the official 0.12 (val-v1 stream 999)
            decoder={"accuracy": {"detection_threshold": 0.4}},
            # ONNX Runtime INT8 AP drop on val-v1 stream 999 (250 images), first schedule's file: percentile
            # 0.002, minmax and entropy 0.005, the toolkit's meanminmax 0.020 (docs/reference-models.md)
            calib_method="percentile",
            width=16,
            deconv_channels=16,
            deconv_blocks=2,
            **_DEKR_SMALL,
        ),
        _sahr(
            "sahr-t",
            256,
            195_749,
            0.3163,
            "none (random init only)",
            "test-sized SWAHR for fast checks",
            width=8,
            deconv_channels=8,
            deconv_blocks=1,
            **_DEKR_TINY,
        ),
    )
}


def get_model_info(name: str) -> ModelInfo:
    """The zoo entry for ``name``; a clear UsageError listing the known names otherwise."""
    try:
        return ZOO[name]
    except KeyError:
        raise UsageError(f"unknown model '{name}'; known: {', '.join(sorted(ZOO))}") from None


def _shipped_file(entry: str | None) -> Path | None:
    prefix = "shipped: edgepose/"
    if not entry or not entry.startswith(prefix):
        return None
    path = Path(__file__).resolve().parents[1] / entry[len(prefix) :].strip()
    return path if path.is_file() else None


def shipped_weights_path(name: str) -> Path | None:
    """The weights file shipped inside the package for ``name``; None when it ships none (or not yet)."""
    return _shipped_file(get_model_info(name).weights)


def shipped_rescore_path(name: str) -> Path | None:
    """The rescoring net shipped for ``name``'s shipped weights (DEKR, KAPAO); None when there is none."""
    return _shipped_file(get_model_info(name).rescore)


def weights_status(name: str) -> str:
    """What ``edgepose models`` says of a model's weights: a reference model whose file is not in the
    package yet is named as such, not as shipped."""
    info = get_model_info(name)
    if info.weights.startswith("shipped: ") and shipped_weights_path(name) is None:
        return "not trained yet; will ship as " + info.weights.removeprefix("shipped: ")
    return info.weights


def build_from_config(family: str, config: dict[str, Any]) -> nn.Module:
    """Build a model of ``family`` from its full config mapping (as stored in edgepose checkpoints)."""
    target = FAMILY_BUILDERS.get(family)
    if target is None:
        raise UsageError(f"unknown model family '{family}'; known: {', '.join(sorted(FAMILY_BUILDERS))}")
    module_name, func_name = target.split(":")
    builder = getattr(importlib.import_module(module_name), func_name)
    return builder(config)


def build_model(name_or_info: str | ModelInfo, num_keypoints: int | None = None) -> nn.Module:
    """A randomly initialised zoo model (train mode, float32), optionally for another keypoint count."""
    info = get_model_info(name_or_info) if isinstance(name_or_info, str) else name_or_info
    k = info.num_keypoints if num_keypoints is None else int(num_keypoints)
    return build_from_config(info.family, {**info.config, "name": info.name, "num_keypoints": k})


def measure(name_or_info: str | ModelInfo, imgsz: tuple[int, int] | None = None) -> tuple[int, float]:
    """(params, GFLOPs) of a zoo model, counted on the meta device (no memory, no compute).

    GFLOPs are 2 x the multiply-adds of convolutions and matmuls for one image at ``imgsz`` (W, H),
    the default input when omitted: the convention the YOLOv5 and KAPAO papers report.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    info = get_model_info(name_or_info) if isinstance(name_or_info, str) else name_or_info
    w, h = imgsz or info.default_imgsz
    with torch.device("meta"):
        model = build_model(info).eval()
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, 3, h, w, device="meta"))
    return params, counter.get_total_flops() / 1e9
