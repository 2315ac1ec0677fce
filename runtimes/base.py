"""The runtime interface every inference engine implements, and the registry that finds them.

Modelled on Polygraphy's runners: the public methods (``infer``, ``close``, context manager) live here
and do the checking once; a backend implements ``_load_impl``/``_infer_impl``/``_close_impl``. Nothing
in this package knows about pose models: a runtime maps named arrays to named arrays.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from edgepose.errors import RuntimeUnavailable, UsageError


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a dynamic axis) and numpy dtype of one model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} [{dims}] {np.dtype(self.dtype).name}"


class Runtime(ABC):
    """Runs one model file. Create through ``create_runtime`` or a subclass; use as a context manager."""

    name: ClassVar[str]
    #: pip extra that installs this backend (shown when it is missing).
    extra: ClassVar[str]
    #: top-level module whose presence means the backend can be imported.
    module: ClassVar[str]

    def __init__(self, model_path: str | Path, device: str | None = None, **options: Any) -> None:
        self.model_path = Path(model_path)
        self.device = device
        self.options = options
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self._closed = False
        self._load_impl()

    # -- public API -------------------------------------------------------------------------------
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model once. Feeds are checked against ``inputs``; outputs come back by name."""
        if self._closed:
            raise UsageError(f"{self.name} runtime for {self.model_path.name} was closed")
        self._check_feeds(feeds)
        return self._infer_impl(feeds)

    def close(self) -> None:
        if not self._closed:
            self._close_impl()
            self._closed = True

    def describe(self) -> dict[str, Any]:
        """What ran, for manifests and benchmark fingerprints."""
        return {"runtime": self.name, "version": self.version(), "device": self.device}

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- backend hooks ----------------------------------------------------------------------------
    @abstractmethod
    def _load_impl(self) -> None:
        """Load ``self.model_path``; fill ``self.inputs`` and ``self.outputs``."""

    @abstractmethod
    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _close_impl(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources (default: nothing to do)."""

    @classmethod
    @abstractmethod
    def version(cls) -> str: ...

    # -- helpers ----------------------------------------------------------------------------------
    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        expected = {s.name: s for s in self.inputs}
        missing = set(expected) - set(feeds)
        extra = set(feeds) - set(expected)
        if missing or extra:
            raise UsageError(f"Input tensors: received {sorted(feeds)} | expected {sorted(expected)}")
        for name, arr in feeds.items():
            spec = expected[name]
            if np.dtype(arr.dtype) != np.dtype(spec.dtype):
                raise UsageError(f"Input tensor: {name} | received dtype {arr.dtype} | expected {spec.dtype}")
            if len(arr.shape) != len(spec.shape) or any(
                d is not None and d != a for d, a in zip(spec.shape, arr.shape)
            ):
                raise UsageError(
                    f"Input tensor: {name} | received shape {tuple(arr.shape)} | expected {spec.shape}"
                )


#: called as ``callback(outputs_by_name, userdata)`` on an engine thread, in completion order
OutputsCallback = Callable[[dict[str, np.ndarray], Any], None]


class AsyncQueue(Protocol):
    """Several inferences in flight; results arrive through the queue's callback, not in order."""

    requests: int

    def submit(self, feeds: dict[str, np.ndarray], userdata: Any = None) -> None: ...

    def wait_all(self) -> None: ...


@runtime_checkable
class AsyncRuntime(Protocol):
    """Optional ability (OpenVINO): ``rt.async_queue(callback)`` keeps ``requests`` jobs in flight.

    Kept apart from ``Runtime`` so that backends without it need no stubs; test with
    ``isinstance(rt, AsyncRuntime)``.
    """

    def async_queue(self, callback: OutputsCallback, requests: int = 0) -> AsyncQueue: ...


# name -> (module path, class name, how to install it, importable top-level module)
RUNTIMES: dict[str, tuple[str, str, str, str]] = {
    "onnxruntime": ("edgepose.runtimes.onnxruntime", "OnnxRuntime", "edgepose", "onnxruntime"),
    "openvino": ("edgepose.runtimes.openvino", "OpenVinoRuntime", "edgepose[openvino]", "openvino"),
    "tensorrt": (
        "edgepose.runtimes.tensorrt",
        "TensorRtRuntime",
        "TensorRT from JetPack or NVIDIA's packages, then pip install 'edgepose[jetson]' for pycuda",
        "tensorrt",
    ),
}


def get_runtime(name: str) -> type[Runtime]:
    """The runtime class registered as ``name``; a clear error when unknown or not installed."""
    if name not in RUNTIMES:
        raise UsageError(f"unknown runtime '{name}'; known runtimes: {', '.join(RUNTIMES)}")
    module_path, cls_name, extra, top = RUNTIMES[name]
    if importlib.util.find_spec(top) is None:
        how = extra if " " in extra else f"pip install '{extra}'"
        raise RuntimeUnavailable(f"runtime '{name}' is not installed on this machine: {how}")
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as e:
        raise RuntimeUnavailable(
            f"runtime '{name}' is not available here ({e}); pip install '{extra}'"
        ) from e
    return getattr(module, cls_name)


#: environment variable with the default CPU inference threads of every runtime created in this process
THREADS_ENV = "EDGEPOSE_THREADS"


def cpu_threads(options: dict[str, Any]) -> int:
    """CPU inference threads: the ``threads`` option, else ``$EDGEPOSE_THREADS``, else 0 (the runtime's
    choice, one per core).

    The variable is for several processes sharing a machine (test workers, one process per camera): each
    runtime's own pool then spans every core, and on this 2-core machine two processes of dekr-n at one
    thread each ran 1.5x the images per second of two at the default.
    """
    value = options.get("threads")
    source = "the threads option"
    if value is None or value == 0:
        value, source = os.environ.get(THREADS_ENV) or 0, THREADS_ENV
    try:
        threads = int(value)
    except (TypeError, ValueError):
        threads = -1
    if threads < 0:
        raise UsageError(f"{source} must be a whole number of threads (0: one per core), not {value!r}")
    return threads


def create_runtime(name: str, model_path: str | Path, device: str | None = None, **options: Any) -> Runtime:
    return get_runtime(name)(model_path, device=device, **options)


def available_runtimes() -> list[str]:
    """Runtimes whose engine can be imported here (cheap: no engine is loaded)."""
    return [n for n, (_, _, _, top) in RUNTIMES.items() if importlib.util.find_spec(top) is not None]
