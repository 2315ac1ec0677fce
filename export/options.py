"""What ``edgepose export`` is asked to do, and the checks that need no model.

Kept free of torch and the runtimes so that a mistyped flag is refused in a fraction of a second, before
the export pipeline's imports (torch alone takes seconds) and before anything is built or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgepose.errors import UsageError

#: ONNX opset the exports are written in
DEFAULT_OPSET = 17

PRECISIONS = ("fp32", "fp16", "int8")

#: targets and the precisions each produces today
SUPPORTED: dict[str, tuple[str, ...]] = {
    "cpu": ("fp32", "int8"),
    "openvino": ("fp32", "fp16", "int8"),
    "jetson": ("fp32", "fp16", "int8"),
}


@dataclass
class ExportOptions:
    model: str
    target: str = "cpu"
    weights: Path | None = None
    arch: str | None = None
    random_weights: bool = False
    seed: int = 0
    precision: str = "fp32"
    imgsz: str | None = None
    output: Path | None = None
    simplify: bool = True
    opset: int = DEFAULT_OPSET
    skeleton: str | None = None
    overwrite: bool = False
    dynamic: bool = False
    #: DEKR, KAPAO: a rescoring net (official ``final_rescore_*_kpt.pth`` or ``fit-rescore``), shipped as
    #: ``rescore.npz``
    rescore: Path | None = None
    # INT8 (see edgepose.calibration): calibration source, sample size and seed, method, gate
    calib: str | None = None
    calib_size: int = 300
    calib_seed: int = 0
    #: None: the zoo entry's method or meanminmax, and the accuracy gate may try the others; a name pins it
    calib_method: str | None = None
    int8_source: str = "nncf"
    val: str | None = None
    val_size: int = 100
    max_ap_drop: float | None = None


def check_options(opts: ExportOptions) -> None:
    """Refuse an unknown model name, contradictory or unknown flags, and an explicit ``--output`` that
    would be overwritten."""
    from edgepose.models.zoo import ZOO, get_model_info

    as_path = Path(opts.model)
    if opts.model not in ZOO and as_path.suffix not in (".pt", ".pth") and not as_path.exists():
        get_model_info(opts.model)  # the one-sentence 'unknown model' error, with the known names
    if opts.target not in SUPPORTED:
        raise UsageError(f"unknown target '{opts.target}'; use one of {', '.join(SUPPORTED)}")
    if opts.precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{opts.precision}'; use one of {', '.join(PRECISIONS)}")
    if opts.precision not in SUPPORTED[opts.target]:
        raise UsageError(
            f"--target {opts.target} --precision {opts.precision} is not supported by this edgepose "
            f"(supported: {', '.join(f'{t}/{p}' for t, ps in SUPPORTED.items() for p in ps)})"
        )
    if opts.weights is not None and opts.random_weights:
        raise UsageError("--weights and --random-weights exclude each other; choose one")
    if opts.dynamic and opts.target != "openvino":
        raise UsageError("--dynamic input sizes are supported for --target openvino only")
    if opts.precision == "int8" and opts.calib is None:
        raise UsageError(
            "--precision int8 needs calibration images: pass --calib with a folder of your camera's images, "
            "a video, a COCO annotation file, or synthetic"
        )
    int8_only = {
        "--calib": opts.calib,
        "--calib-method": opts.calib_method,
        "--val": opts.val,
        "--max-ap-drop": opts.max_ap_drop,
    }
    given = [flag for flag, value in int8_only.items() if value is not None]
    if opts.precision != "int8" and given:
        raise UsageError(f"{', '.join(given)} only apply to --precision int8")
    if opts.max_ap_drop is not None and (opts.val is None or opts.max_ap_drop < 0):
        raise UsageError("--max-ap-drop needs --val data to measure AP on, and must not be negative")
    if opts.calib_method is not None:
        from edgepose.calibration.ort_quant import METHODS

        if opts.calib_method not in METHODS:
            known = ", ".join(METHODS)
            raise UsageError(f"unknown calibration method '{opts.calib_method}'; use one of {known}")
    if opts.output is not None:
        check_output_free(Path(opts.output), opts.overwrite)


def check_output_free(output: Path, overwrite: bool) -> None:
    """An existing, non-empty bundle folder is replaced only with ``--overwrite``."""
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise UsageError(f"output {output} already exists; choose another --output or pass --overwrite")
