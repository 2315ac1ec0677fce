"""OpenVINO backend: an ONNX file or an IR (``model.xml`` + ``model.bin``) on CPU, GPU, NPU or AUTO.

Precision is pinned, never left to the device: CPUs with AVX512-BF16 or AMX run *bf16* by default, and on
this project's test machine that moved KAPAO-t's raw outputs by up to 20 (on a range of 90). So an fp32
bundle compiles with ``INFERENCE_PRECISION_HINT`` f32. An fp16 bundle (IR with fp16 weights) computes in
f16 where the device does (GPU; NPU always does); a CPU only decompresses those weights and keeps f32
arithmetic. An INT8 bundle's float layers (the head and whatever the quantizer left in float) run bf16 on
CPUs that compute bf16 natively and f32 elsewhere (``float_precision`` ``auto``; ``f32`` forces f32): the
INT8 accuracy gate measures AP this way on the export machine; on kapao-n at 512x384 it cost at most
0.002 AP and lifted the INT8 speed-up from about 1.6x to 1.7-1.8x. ``effective_precision()`` reports
what the compiled model really uses, for manifests and ``edgepose doctor``.

Options: ``precision`` (``fp32|fp16|int8``: the bundle's, default fp32), ``float_precision`` (INT8 bundles
on a CPU: ``auto`` or ``f32``), ``hint`` (``latency`` default, or
``throughput``), ``streams`` (int or ``auto``), ``threads`` (CPU inference threads; default
``$EDGEPOSE_THREADS``, else OpenVINO's choice), ``cpu_pinning`` (bool;
OpenVINO pins its threads to cores by default, which on a shared or virtual machine made KAPAO-n 1.5x
slower here), ``cache_dir`` (compiled model cache: the second start skips compilation). ``async_queue``
keeps several requests in flight.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import openvino as ov
from edgepose.runtimes.base import OutputsCallback, Runtime, TensorSpec, cpu_threads

from edgepose.errors import BundleError, RuntimeUnavailable, UsageError

_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
_PRECISIONS = ("fp32", "fp16", "int8")
_OPTIONS = ("precision", "float_precision", "hint", "streams", "threads", "cpu_pinning", "cache_dir")
_FLOAT_PRECISIONS = ("auto", "f32")
_HARDWARE = ("CPU", "GPU", "NPU")
_VIRTUAL = ("AUTO", "MULTI", "HETERO")
_TYPE_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}


def compute_hint(
    precision: str, kind: str, native_bf16: bool = False, float_precision: str = "auto"
) -> str | None:
    """``INFERENCE_PRECISION_HINT`` for a bundle precision on a hardware kind; None leaves the device's own.

    CPU: f32 (fp16 weights are decompressed), except an INT8 model's float layers, which run bf16 where the
    CPU computes bf16 natively unless ``float_precision`` is ``f32``.
    GPU: f32 for fp32 bundles, f16 otherwise. NPU computes in f16 whatever it is told.
    """
    if kind == "CPU":
        return "bf16" if precision == "int8" and native_bf16 and float_precision == "auto" else "f32"
    if kind == "GPU":
        return "f32" if precision == "fp32" else "f16"
    return None


def _capabilities(core: ov.Core, device: str) -> list[str]:
    """The device's OPTIMIZATION_CAPABILITIES (``BF16`` on CPUs with AMX or AVX512-BF16)."""
    try:
        return [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]
    except RuntimeError:
        return []


def _kind(device: str) -> str:
    return device.split(":", 1)[0].split(".", 1)[0]


def _spec(port: ov.Output) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()))


def _one_line(e: Exception, limit: int = 240) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OpenVinoRuntime(Runtime):
    name: ClassVar[str] = "openvino"
    extra: ClassVar[str] = "edgepose[openvino]"
    module: ClassVar[str] = "openvino"

    # -- loading ------------------------------------------------------------------------------------
    def _load_impl(self) -> None:
        unknown = sorted(set(self.options) - set(_OPTIONS))
        if unknown:
            raise UsageError(f"openvino runtime has no option {unknown[0]!r}; options: {', '.join(_OPTIONS)}")
        self.precision = str(self.options.get("precision") or "fp32")
        if self.precision not in _PRECISIONS:
            raise UsageError(f"unknown precision '{self.precision}'; use one of {', '.join(_PRECISIONS)}")
        hint = str(self.options.get("hint") or "latency").lower()
        if hint not in _HINTS:
            raise UsageError(f"unknown performance hint '{hint}'; use latency or throughput")
        self.hint = hint
        self.float_precision = str(self.options.get("float_precision") or "auto").lower()
        if self.float_precision not in _FLOAT_PRECISIONS:
            raise UsageError(
                f"unknown float_precision '{self.float_precision}'; use {' or '.join(_FLOAT_PRECISIONS)}"
            )
        core = ov.Core()
        self.device = self._resolve_device(core, self.device)
        if not self.model_path.is_file():
            raise BundleError(f"model file {self.model_path} does not exist")
        if self.model_path.suffix.lower() not in (".onnx", ".xml"):
            raise BundleError(f"openvino runs .onnx or .xml (IR) files, not {self.model_path.name}")
        if self.model_path.suffix.lower() == ".xml" and not self.model_path.with_suffix(".bin").is_file():
            raise BundleError(f"IR {self.model_path.name} has no {self.model_path.with_suffix('.bin').name}")
        config, self._hints = self._config(core)
        try:
            self._compiled = core.compile_model(str(self.model_path), self.device, config)
        except Exception as e:  # OpenVINO raises RuntimeError and its own failure types
            raise BundleError(f"OpenVINO cannot load {self.model_path.name}: {_one_line(e)}") from e
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()
        self.inputs = [_spec(p) for p in self._compiled.inputs]
        self.outputs = [_spec(p) for p in self._compiled.outputs]
        self._output_names = [s.name for s in self.outputs]
        self._effective = self._read_effective_precision()

    @staticmethod
    def _resolve_device(core: ov.Core, device: str | None) -> str:
        """Upper-cased device name, refused in one sentence when this machine does not have it."""
        dev = (device or "CPU").strip().upper()
        available = list(core.available_devices)
        listing = ", ".join(available) or "none"
        kind = _kind(dev)
        if kind not in _HARDWARE + _VIRTUAL:
            raise UsageError(
                f"OpenVINO has no device '{device}'; use CPU, GPU, NPU or AUTO (here: {listing})"
            )
        # a hardware device must exist; a virtual one (AUTO:GPU,CPU) needs one of its candidates
        wanted = [dev] if kind in _HARDWARE else [t for t in dev.partition(":")[2].split(",") if t]
        present = [n for n in wanted if n in available or any(a.split(".")[0] == n for a in available)]
        if (wanted and not present) or not available:
            raise RuntimeUnavailable(
                f"OpenVINO device '{dev}' is not available on this machine; available devices: "
                f"{listing} (or AUTO to let OpenVINO choose)"
            )
        if kind in _VIRTUAL and wanted:  # OpenVINO fails on an absent candidate: keep those present
            return f"{kind}:{','.join(present)}"
        return dev

    def _targets(self, core: ov.Core) -> list[str]:
        """The hardware devices the compiled model may run on."""
        if _kind(self.device) in _HARDWARE:
            return [self.device]
        named = [t for t in self.device.partition(":")[2].split(",") if t]
        return [a for a in core.available_devices if not named or a in named or a.split(".")[0] in named]

    def _config(self, core: ov.Core) -> tuple[dict[str, Any], dict[str, str | None]]:
        """Compile properties, and the precision hint given to each hardware device."""
        config: dict[str, Any] = {"PERFORMANCE_HINT": _HINTS[self.hint]}
        if self.options.get("cache_dir"):
            cache = Path(self.options["cache_dir"])
            cache.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache)
        wanted: dict[str, Any] = {}
        streams = self.options.get("streams")
        if streams is not None:
            if str(streams).lower() == "auto":
                wanted["NUM_STREAMS"] = "AUTO"
            elif isinstance(streams, int) or str(streams).isdigit():
                wanted["NUM_STREAMS"] = int(streams)
            else:
                raise UsageError(f"streams must be a whole number or 'auto', not {streams!r}")
        threads = cpu_threads(self.options) if _kind(self.device) == "CPU" else self.options.get("threads")
        if threads:
            wanted["INFERENCE_NUM_THREADS"] = int(threads)
        if self.options.get("cpu_pinning") is not None:
            wanted["ENABLE_CPU_PINNING"] = bool(self.options["cpu_pinning"])
        hints: dict[str, str | None] = {}
        per_device: dict[str, dict[str, Any]] = {}
        for dev in self._targets(core):
            supported = set(core.get_property(dev, "SUPPORTED_PROPERTIES"))
            props = {k: v for k, v in wanted.items() if k in supported}
            if _kind(self.device) in _HARDWARE and len(props) < len(wanted):
                missing = sorted(set(wanted) - set(props))
                raise UsageError(f"OpenVINO device {dev} does not take {missing[0]}; leave that option out")
            bf16 = _kind(dev) == "CPU" and "BF16" in _capabilities(core, dev)
            hint = compute_hint(self.precision, _kind(dev), bf16, self.float_precision)
            hints[dev] = hint if "INFERENCE_PRECISION_HINT" in supported else None
            if hints[dev]:
                props["INFERENCE_PRECISION_HINT"] = hints[dev]
            per_device[dev] = props
        if _kind(self.device) in _HARDWARE:
            config.update(per_device[self.device])
        else:
            config["DEVICE_PROPERTIES"] = per_device
        return config, hints

    def _read_effective_precision(self) -> str:
        if _kind(self.device) in _HARDWARE:
            try:
                name = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
                return _TYPE_NAMES.get(name, name)
            except RuntimeError:  # NPU has no such property: it computes in f16
                return "fp16" if _kind(self.device) == "NPU" else "device default"
        try:  # AUTO cannot be asked directly: report the hint given to each device it uses
            used = [str(d) for d in self._compiled.get_property("EXECUTION_DEVICES")]
        except RuntimeError:
            used = list(self._hints)
        names = [
            _TYPE_NAMES.get(self._hints.get(d) or "", "fp16" if _kind(d) == "NPU" else "device default")
            for d in used
        ]
        return "/".join(dict.fromkeys(names)) or "device default"

    # -- running ------------------------------------------------------------------------------------
    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            req = self._request
            req.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()}, share_inputs=True)
            # the request's tensors are reused by the next call: hand out copies
            return {n: req.get_output_tensor(i).data.copy() for i, n in enumerate(self._output_names)}

    def async_queue(self, callback: OutputsCallback, requests: int = 0) -> OpenVinoQueue:
        """A queue of ``requests`` infer requests (0: the device's optimal number) calling ``callback``."""
        if self._closed:
            raise UsageError(f"{self.name} runtime for {self.model_path.name} was closed")
        return OpenVinoQueue(self, callback, requests)

    def effective_precision(self) -> str:
        """What the arithmetic runs in: ``fp32``, ``fp16``, ``bf16`` (``a/b`` when AUTO spans devices)."""
        return self._effective

    def _close_impl(self) -> None:
        self._request = None
        self._compiled = None

    @classmethod
    def version(cls) -> str:
        return ov.__version__.split("-")[0]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            hint=self.hint,
            weights_precision=self.precision,
            compute_precision=self._effective,
        )
        if not self._closed:
            try:
                d["execution_devices"] = [str(x) for x in self._compiled.get_property("EXECUTION_DEVICES")]
                if _kind(self.device) == "CPU":
                    d["threads"] = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
            except RuntimeError:
                pass
        return d


class OpenVinoQueue:
    """``ov.AsyncInferQueue`` behind the ``AsyncQueue`` protocol.

    ``submit`` copies the feeds (callers reuse their buffers) and blocks only while every request is busy.
    The callback runs on an OpenVINO thread and gets copies of the outputs; the first exception it raises
    is re-raised by the next ``submit`` or ``wait_all``.
    """

    def __init__(self, runtime: OpenVinoRuntime, callback: OutputsCallback, requests: int = 0) -> None:
        if requests < 0:
            raise UsageError(f"requests must be 0 (device's choice) or more, not {requests}")
        self._runtime = runtime
        self._callback = callback
        self._names = list(runtime._output_names)
        self._queue = ov.AsyncInferQueue(runtime._compiled, int(requests))
        self._queue.set_callback(self._done)
        self._error: BaseException | None = None
        self.requests = len(self._queue)

    def _done(self, request: ov.InferRequest, userdata: Any) -> None:
        if self._error is not None:
            return
        try:
            outputs = {n: request.get_output_tensor(i).data.copy() for i, n in enumerate(self._names)}
            self._callback(outputs, userdata)
        except BaseException as e:  # handed to the submitting thread, never lost on OpenVINO's
            self._error = e

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, feeds: dict[str, np.ndarray], userdata: Any = None) -> None:
        self._raise_pending()
        if self._runtime._closed:
            raise UsageError(f"openvino runtime for {self._runtime.model_path.name} was closed")
        self._runtime._check_feeds(feeds)
        self._queue.start_async(feeds, userdata)

    def wait_all(self) -> None:
        self._queue.wait_all()
        self._raise_pending()
