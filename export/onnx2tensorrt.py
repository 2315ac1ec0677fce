"""ONNX -> TensorRT plan, built on the device that will run it (``edgepose build BUNDLE``).

A plan is tied to the GPU model and the exact TensorRT version that built it, so plans are built on the
Jetson (or at export time when the exporting machine has TensorRT) and added to the bundle next to the
ONNX they came from; ``export.plans`` names, records and selects them.

Precision: ``fp32``; ``fp16`` (the Jetson default); ``int8`` from a Q/DQ ONNX (explicit quantization,
what ``edgepose export --precision int8`` writes) or, on TensorRT < 10.1, from a calibrator
(``entropy_calibrator``: implicit quantization, deprecated by NVIDIA since TensorRT 10.1). INT8 plans
also enable fp16 for the layers left in float. ``dla_core`` builds for a Jetson's DLA with GPU fallback
for the layers DLA cannot run. A timing cache file makes rebuilds (new TensorRT, new model) much faster.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from edgepose.export.plans import (
    DeviceInfo,
    plan_file_name,
    plan_record,
    plan_role,
    probe_device,
    slug,
    trt_version,
)
from edgepose.runtimes.tensorrt import CudaContext, import_tensorrt

from edgepose.bundle import Bundle, load_bundle, update_bundle
from edgepose.errors import BundleError, ExportError, RuntimeUnavailable, UsageError
from edgepose.version import __version__

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_MIB = 1024


def has_qdq(onnx_path: str | Path) -> bool:
    """Whether the ONNX is explicitly quantized (QuantizeLinear/DequantizeLinear nodes)."""
    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # unreadable: TensorRT's parser says why, in its own words
        return False
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)


def _network_flags(trt: Any) -> int:
    # explicit batch is required before TensorRT 10 and the only mode (flag deprecated, ignored) from 10 on
    if int(trt_version(trt.__version__).split(".")[0]) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def build_plan(
    onnx_path: str | Path,
    out_path: str | Path,
    precision: str = "fp16",
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    dla_core: int | None = None,
    timing_cache: str | Path | None = None,
    calibrator: Any = None,
    device_index: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build a plan for this device into ``out_path``; returns its manifest record (``export.plans``)."""
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}' for TensorRT; use one of {', '.join(PRECISIONS)}")
    if workspace_mib < 16:
        raise UsageError(f"a TensorRT workspace of {workspace_mib} MiB is too small; give 16 MiB or more")
    if not onnx_path.is_file():
        raise ExportError(f"ONNX file {onnx_path} does not exist")
    quantized = has_qdq(onnx_path)
    if quantized and precision != "int8":
        raise UsageError(f"{onnx_path.name} is INT8 (Q/DQ nodes): build it with precision int8")
    if precision == "int8" and not quantized and calibrator is None:
        raise ExportError(
            f"{onnx_path.name} has no Q/DQ nodes and no calibration data was given: export it with "
            "--precision int8 --calib DIR (explicit quantization), or pass a calibrator"
        )
    if dla_core is not None and precision == "fp32":
        raise UsageError("DLA cores run fp16 or int8 only; build with precision fp16 or int8")
    trt, cuda = import_tensorrt()
    device = probe_device(device_index)
    gpu = CudaContext(cuda, device_index)
    started = time.perf_counter()
    try:
        with gpu.active():
            logger = trt.Logger(trt.Logger.WARNING)
            builder = trt.Builder(logger)
            network = builder.create_network(_network_flags(trt))
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(onnx_path)):
                errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
                raise ExportError(
                    f"TensorRT's ONNX parser refused {onnx_path.name}: {errors[0] if errors else 'no detail'}"
                )
            _refuse_dynamic_inputs(network, onnx_path.name)
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
            if precision in ("fp16", "int8"):
                config.set_flag(trt.BuilderFlag.FP16)
            if precision == "int8":
                config.set_flag(trt.BuilderFlag.INT8)
                if calibrator is not None and not quantized:
                    if _version_tuple(trt.__version__) >= (10, 1):
                        log(
                            f"note: TensorRT {trt.__version__} deprecates implicit INT8 calibration; "
                            "prefer a Q/DQ ONNX from 'edgepose export --precision int8'"
                        )
                    config.int8_calibrator = calibrator
            if dla_core is not None:
                cores = int(builder.num_DLA_cores)
                if not 0 <= dla_core < cores:
                    raise UsageError(
                        f"this device has {cores} DLA core(s): DLA core {dla_core} does not exist"
                    )
                config.default_device_type = trt.DeviceType.DLA
                config.DLA_core = int(dla_core)
                config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
            cache_used = _load_timing_cache(config, timing_cache, log)
            log(f"building a TensorRT {precision} plan for {device.describe()} (this takes minutes)")
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise ExportError(
                    f"TensorRT could not build a plan from {onnx_path.name} (see its log above)"
                )
            if timing_cache is not None:
                _save(Path(timing_cache), config.get_timing_cache().serialize())
        _save(out_path, serialized)
    finally:
        gpu.release()
    seconds = time.perf_counter() - started
    log(f"plan written to {out_path} in {seconds:.0f} s")
    return {
        **plan_record(device, precision, dla_core),
        "workspace_mib": int(workspace_mib),
        "quantization": ("explicit (Q/DQ)" if quantized else "implicit (calibrator)")
        if precision == "int8"
        else None,
        "timing_cache": cache_used,
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 1),
        "edgepose_version": __version__,
    }


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in trt_version(version).split("."))


def _refuse_dynamic_inputs(network: Any, name: str) -> None:
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(int(d) < 0 for d in tensor.shape):
            raise ExportError(
                f"{name} has a dynamic input ({tensor.name} {tuple(tensor.shape)}); TensorRT plans are built "
                "for one size: export the ONNX with a fixed --imgsz"
            )


def _load_timing_cache(config: Any, path: str | Path | None, log: Callable[[str], None]) -> bool:
    """Attach a timing cache (read from ``path`` when it exists); True when an existing cache was used."""
    data = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    if config.set_timing_cache(cache, False):
        return bool(data)
    log(f"timing cache {path} was made on another device or TensorRT version; starting a new one")
    config.set_timing_cache(config.create_timing_cache(b""), False)
    return False


def _save(path: Path, data: Any) -> None:
    """Write bytes (or a TensorRT IHostMemory) through a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(memoryview(data))
    os.replace(tmp, path)


# -- bundles -------------------------------------------------------------------------------------------
def add_plan_to_bundle(bundle: Bundle, plan_path: str | Path, record: Mapping[str, Any]) -> Bundle:
    """Add (or replace) the plan for ``record``'s device, atomically; the other plans stay."""
    device = DeviceInfo(**{k: record.get(k) for k in DeviceInfo.__dataclass_fields__})
    role = plan_role(device, record["precision"], record.get("dla_core"))
    section = dict(bundle.manifest.get("tensorrt") or {})
    plans = dict(section.get("plans") or {})
    plans[role] = dict(record)
    section["plans"] = plans
    with tempfile.TemporaryDirectory(prefix="edgepose-plan-") as tmp:
        named = Path(tmp) / plan_file_name(role)
        shutil.copyfile(plan_path, named)
        return update_bundle(bundle, {role: named}, {"tensorrt": section})


def build_bundle_plan(
    bundle: Bundle | str | Path,
    precision: str | None = None,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    dla_core: int | None = None,
    timing_cache: str | Path | None = None,
    calibrator: Any = None,
    device_index: int = 0,
    log: Callable[[str], None] = print,
) -> Bundle:
    """What ``edgepose build BUNDLE`` runs: build a plan from the bundle's ONNX for this device, add it."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if not bundle.has_artifact("model"):
        raise BundleError(
            f"bundle {bundle.path} (target {bundle.target}) has no ONNX model to build a TensorRT plan from; "
            "export it with --target jetson"
        )
    precision = precision or bundle.precision
    with tempfile.TemporaryDirectory(prefix="edgepose-build-") as tmp:
        out = Path(tmp) / "model.plan"
        record = build_plan(
            bundle.artifact("model"),
            out,
            precision,
            workspace_mib,
            dla_core,
            timing_cache,
            calibrator,
            device_index,
            log,
        )
        return add_plan_to_bundle(bundle, out, record)


def default_timing_cache(device: DeviceInfo) -> Path:
    """Per-device timing cache under ``$XDG_CACHE_HOME/edgepose/tensorrt`` (reused by every rebuild)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgepose" / "tensorrt"
    cc = device.compute_capability.replace(".", "")
    return root / f"{slug(device.board or device.gpu)}-sm{cc}-trt{trt_version(device.tensorrt)}.timing"


# -- implicit INT8 calibration (TensorRT < 10.1) -----------------------------------------------------------
def entropy_calibrator(
    batches: Iterable[np.ndarray | Mapping[str, np.ndarray]],
    cache_file: str | Path,
    input_name: str = "images",
) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` (arrays for ``input_name``, or name -> array).

    Needs a current CUDA context (``build_plan`` provides one). The calibration table is written to
    ``cache_file`` and read back on the next build, which then skips calibration. Deprecated upstream
    since TensorRT 10.1 (implicit quantization): prefer a Q/DQ ONNX.
    """
    trt, cuda = import_tensorrt()
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise RuntimeUnavailable(
            f"TensorRT {trt.__version__} has no implicit INT8 calibration; use a Q/DQ ONNX "
            "(edgepose export --precision int8 --calib DIR)"
        )

    class EntropyCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.cache_file = Path(cache_file)
            self.batches_fed = 0
            self._batches = iter(batches)
            self._device: dict[str, Any] = {}
            self._nbytes: dict[str, int] = {}
            self._batch_size: int | None = None
            self._pending: dict[str, np.ndarray] | None = None

        def _next(self) -> dict[str, np.ndarray] | None:
            item = next(self._batches, None)
            if item is None:
                return None
            feeds = dict(item) if isinstance(item, Mapping) else {input_name: item}
            return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}

        def get_batch_size(self) -> int:
            if self._batch_size is None:  # TensorRT asks before the first batch: peek at it
                first = self._next()
                if first is None:
                    raise ExportError("the INT8 calibrator was given no batches")
                self._pending = first
                self._batch_size = int(next(iter(first.values())).shape[0])
            return self._batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            self.get_batch_size()
            feeds, self._pending = self._pending, None
            feeds = feeds if feeds is not None else self._next()
            if feeds is None:
                return None
            missing = [n for n in names if n not in feeds]
            if missing:
                raise ExportError(f"calibration batch lacks input {missing[0]} (it has {sorted(feeds)})")
            pointers = []
            for name in names:
                arr = feeds[name]
                if name not in self._device:
                    self._device[name] = cuda.mem_alloc(arr.nbytes)
                    self._nbytes[name] = arr.nbytes
                if arr.nbytes != self._nbytes[name]:
                    raise ExportError(f"calibration batches for {name} change shape ({arr.shape})")
                cuda.memcpy_htod(self._device[name], arr)
                pointers.append(int(self._device[name]))
            self.batches_fed += 1
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            return self.cache_file.read_bytes() if self.cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            _save(self.cache_file, cache)

    return EntropyCalibrator()
