"""TensorRT backend: one serialized plan on a CUDA GPU (or a Jetson's DLA core), driven through pycuda.

Per IO tensor: a page-locked host buffer and a device buffer, bound once with ``set_tensor_address``;
each call copies the inputs up, enqueues ``execute_async_v3`` (TensorRT >= 8.5) on one stream, copies
the outputs down and synchronises. Dynamic input dimensions are resolved from the first input of each
new shape (buffers are reallocated only then). ``cuda_graph=True`` captures the enqueue into a CUDA
graph and replays it, which saves per-layer launch overhead on small models and Jetson CPUs.

We use the device's *primary* CUDA context, the one TensorRT's runtime API uses, and push it around
every call, so a runtime works from any thread (the demo's inference thread). TensorRT and pycuda
are imported when a runtime is created, never at module import: this module imports anywhere.

Options: ``dla_core`` (run a DLA plan on that core), ``cuda_graph`` (bool), ``precision`` (the bundle's;
recorded only: a plan's precision is fixed when it is built).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from edgepose.export.plans import PYCUDA_MISSING, TRT_MISSING, plans_in, probe_device, select_plan
from edgepose.runtimes.base import Runtime, TensorSpec

from edgepose.errors import BundleError, RuntimeUnavailable, UsageError

_OPTIONS = ("dla_core", "cuda_graph", "precision")


def import_tensorrt() -> tuple[Any, Any]:
    """``(tensorrt, pycuda.driver)``, or ``RuntimeUnavailable`` saying what to install."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeUnavailable(TRT_MISSING) from e
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise RuntimeUnavailable(PYCUDA_MISSING) from e
    return trt, cuda


def device_index(device: str | int | None) -> int:
    """``None``/``cuda``/``gpu`` -> 0, ``cuda:1``/``1`` -> 1."""
    text = str(device if device is not None else "cuda").strip().lower()
    head, _, tail = text.partition(":")
    if head in ("cuda", "gpu") and (not tail or tail.isdigit()):
        return int(tail or 0)
    if text.isdigit():
        return int(text)
    raise UsageError(f"tensorrt has no device '{device}'; use cuda, cuda:N or N")


class CudaContext:
    """The primary context of one CUDA device, made current only inside ``active()``."""

    def __init__(self, cuda: Any, index: int) -> None:
        self._cuda = cuda
        cuda.init()
        self._ctx = cuda.Device(index).retain_primary_context()

    @contextmanager
    def active(self) -> Iterator[None]:
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def release(self) -> None:
        self._ctx.detach()


def select_bundle_plan(bundle: Any, device: str | int | None = None, **options: Any) -> str:
    """The role of the plan in ``bundle`` that this GPU and TensorRT version can run."""
    if not plans_in(bundle.manifest):  # no TensorRT needed to say so
        raise BundleError(
            f"bundle {bundle.path} (target {bundle.target}) has no TensorRT plan; build one on the device "
            f"with: edgepose build {bundle.path}"
        )
    info = probe_device(device_index(device))
    return select_plan(
        bundle.manifest, info, bundle.path, options.get("dla_core"), options.get("precision") or None
    )


class TensorRtRuntime(Runtime):
    name: ClassVar[str] = "tensorrt"
    extra: ClassVar[str] = "edgepose[jetson]"
    module: ClassVar[str] = "tensorrt"

    def _load_impl(self) -> None:
        unknown = sorted(set(self.options) - set(_OPTIONS))
        if unknown:
            raise UsageError(f"tensorrt runtime has no option {unknown[0]!r}; options: {', '.join(_OPTIONS)}")
        dla = self.options.get("dla_core")
        self.dla_core = None if dla is None else int(dla)
        self.cuda_graph = bool(self.options.get("cuda_graph", False))
        self.precision = self.options.get("precision")
        index = device_index(self.device)
        trt, cuda = import_tensorrt()
        self._trt, self._cuda = trt, cuda
        if not self.model_path.is_file():
            raise BundleError(f"TensorRT plan {self.model_path} does not exist")
        plan = self.model_path.read_bytes()
        self._gpu = CudaContext(cuda, index)
        self._buffers: dict[str, tuple[np.ndarray, Any]] = {}
        self._input_shapes: dict[str, tuple[int, ...]] | None = None
        self._graph: Any = None
        self._lock = threading.Lock()
        try:
            with self._gpu.active():
                self._logger = trt.Logger(trt.Logger.WARNING)
                self._trt_runtime = trt.Runtime(self._logger)
                if self.dla_core is not None:
                    self._trt_runtime.DLA_core = self.dla_core
                self._engine = self._trt_runtime.deserialize_cuda_engine(plan)
                if self._engine is None:
                    raise BundleError(
                        f"TensorRT {trt.__version__} cannot load plan {self.model_path.name}: it was built "
                        "with another TensorRT version or for another GPU, or it is damaged; rebuild it on "
                        "this device with: edgepose build BUNDLE"
                    )
                self._context = self._engine.create_execution_context()
                if self._context is None:
                    raise RuntimeUnavailable(
                        f"TensorRT could not create a context for {self.model_path.name}"
                    )
                self._stream = cuda.Stream()
                self._read_io()
                static = {s.name: s.shape for s in self.inputs if None not in s.shape}
                if len(static) == len(self.inputs):
                    self._allocate(static)  # type: ignore[arg-type]
        except BaseException:
            with self._gpu.active():
                self._free()
            self._gpu.release()
            raise
        self.device = f"cuda:{index}" + (f" dla:{self.dla_core}" if self.dla_core is not None else "")

    def _read_io(self) -> None:
        trt, engine = self._trt, self._engine
        self.inputs, self.outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(None if d < 0 else int(d) for d in engine.get_tensor_shape(name))
            spec = TensorSpec(name, shape, np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(spec)

    def _allocate(self, input_shapes: dict[str, tuple[int, ...]]) -> None:
        """(Re)bind host and device buffers for these input shapes; output shapes follow from them."""
        cuda, ctx = self._cuda, self._context
        dynamic = {s.name for s in self.inputs if None in s.shape}
        for name, shape in input_shapes.items():
            if name in dynamic and not ctx.set_input_shape(name, tuple(shape)):
                raise UsageError(
                    f"Input tensor: {name} | received shape {tuple(shape)} | outside the plan's "
                    "optimization profile"
                )
        shapes = dict(input_shapes)
        for spec in self.outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise RuntimeUnavailable(
                    f"output {spec.name} has a data-dependent shape, which edgepose cannot run"
                )
            shapes[spec.name] = shape
        self._free()
        dtypes = {s.name: s.dtype for s in self.inputs + self.outputs}
        for name, shape in shapes.items():
            host = cuda.pagelocked_empty(shape, dtypes[name])
            dev = cuda.mem_alloc(max(host.nbytes, 1))
            self._buffers[name] = (host, dev)
            if not ctx.set_tensor_address(name, int(dev)):
                raise RuntimeUnavailable(f"TensorRT refused the buffer address for tensor {name}")
        self._input_shapes = {n: tuple(s) for n, s in input_shapes.items()}
        self._graph = None  # a captured graph holds the old addresses

    def _free(self) -> None:
        for _, dev in self._buffers.values():
            dev.free()
        self._buffers = {}

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self._cuda
        with self._lock, self._gpu.active():
            shapes = {n: tuple(a.shape) for n, a in feeds.items()}
            if shapes != self._input_shapes:
                self._allocate(shapes)
            for name, arr in feeds.items():
                host, dev = self._buffers[name]
                np.copyto(host, arr)
                cuda.memcpy_htod_async(dev, host, self._stream)
            self._enqueue()
            for spec in self.outputs:
                host, dev = self._buffers[spec.name]
                cuda.memcpy_dtoh_async(host, dev, self._stream)
            self._stream.synchronize()
            return {s.name: self._buffers[s.name][0].copy() for s in self.outputs}

    def _enqueue(self) -> None:
        if not self.cuda_graph:
            if not self._context.execute_async_v3(self._stream.handle):
                raise RuntimeUnavailable(f"TensorRT failed to run {self.model_path.name} (see its log above)")
            return
        if self._graph is None:
            self._graph = self._capture()
        self._graph.launch(self._stream)

    def _capture(self) -> Any:
        """Run once (TensorRT finishes deferred set-up there), then capture the enqueue into a graph."""
        if not self._context.execute_async_v3(self._stream.handle):
            raise RuntimeUnavailable(f"TensorRT failed to run {self.model_path.name} (see its log above)")
        self._stream.synchronize()
        try:
            self._stream.begin_capture()
            ok = self._context.execute_async_v3(self._stream.handle)
            graph = self._stream.end_capture()
            if not ok:
                raise RuntimeError("execute_async_v3 failed during capture")
            return graph.instantiate()
        except Exception as e:
            raise RuntimeUnavailable(
                f"plan {self.model_path.name} cannot be captured into a CUDA graph ({e}); run it without "
                "cuda_graph"
            ) from e

    def _close_impl(self) -> None:
        with self._gpu.active():
            self._free()
            self._graph = None
            self._context = None
            self._engine = None
            self._trt_runtime = None
            self._stream = None
        self._gpu.release()

    @classmethod
    def version(cls) -> str:
        try:
            import tensorrt as trt
        except ImportError:
            return "not installed"
        return str(trt.__version__)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(plan=Path(self.model_path).name, dla_core=self.dla_core, cuda_graph=self.cuda_graph)
        return d
