"""ONNX Runtime backend: the CPU default, and CUDA/TensorRT execution providers with onnxruntime-gpu.

Devices: ``cpu`` (default), ``cuda`` and ``tensorrt`` (need the ``onnxruntime-gpu`` package instead of
``onnxruntime``). Options: ``threads`` (intra-op threads on the CPU; default ``$EDGEPOSE_THREADS``, else
ORT's choice), ``optimization``
(``disable|basic|extended|all``, default ``all``), ``inter_threads``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnxruntime as ort
from edgepose.runtimes.base import Runtime, TensorSpec, cpu_threads

from edgepose.errors import BundleError, RuntimeUnavailable, UsageError

#: ORT >= 1.21 re-quantizes (per tensor) the weights of a float Conv/Gemm that sits between Q/DQ pairs.
#: That undoes the layers an INT8 export keeps in float on purpose (the float tail, the accuracy gate's
#: exclusions), so it is always off; float models have no Q/DQ pairs and are unaffected.
DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _spec(node: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in node.shape)
    return TensorSpec(node.name, shape, np.dtype(_ORT_TYPES.get(node.type, np.float32)))


class OnnxRuntime(Runtime):
    name: ClassVar[str] = "onnxruntime"
    extra: ClassVar[str] = "edgepose"
    module: ClassVar[str] = "onnxruntime"

    def _load_impl(self) -> None:
        device = (self.device or "cpu").lower()
        if device not in _PROVIDERS:
            raise UsageError(f"onnxruntime has no device '{device}'; use one of {', '.join(_PROVIDERS)}")
        wanted = _PROVIDERS[device]
        have = ort.get_available_providers()
        if wanted[0] not in have:
            raise RuntimeUnavailable(
                f"onnxruntime here has no {wanted[0]} (available: {', '.join(have)}); "
                "for GPUs install onnxruntime-gpu in place of onnxruntime"
            )
        so = ort.SessionOptions()
        opt = str(self.options.get("optimization", "all"))
        if opt not in _OPT_LEVELS:
            raise UsageError(f"unknown graph optimisation level '{opt}'; use one of {', '.join(_OPT_LEVELS)}")
        so.graph_optimization_level = _OPT_LEVELS[opt]
        # $EDGEPOSE_THREADS is for CPU sessions; on a GPU only an explicit option sizes the host pool
        cpu = device == "cpu"
        so.intra_op_num_threads = cpu_threads(self.options) if cpu else int(self.options.get("threads") or 0)
        so.inter_op_num_threads = int(self.options.get("inter_threads", 0) or 0)
        so.log_severity_level = 3
        if not self.model_path.is_file():
            raise BundleError(f"model file {self.model_path} does not exist")
        try:
            self._session = ort.InferenceSession(
                str(self.model_path),
                sess_options=so,
                providers=[p for p in wanted if p in have],
                disabled_optimizers=list(DISABLED_OPTIMIZERS),
            )
        except Exception as e:  # ORT raises its own exception types for invalid graphs
            raise BundleError(f"onnxruntime cannot load {self.model_path.name}: {e}") from e
        self.device = device
        self.inputs = [_spec(n) for n in self._session.get_inputs()]
        self.outputs = [_spec(n) for n in self._session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, values))

    def _close_impl(self) -> None:
        self._session = None

    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    @classmethod
    def version(cls) -> str:
        return ort.__version__

    def describe(self) -> dict:
        d = super().describe()
        d["providers"] = self.providers() if not self._closed else []
        if not self._closed:  # intra-op threads: 0 is ORT's own choice, one per core
            d["threads"] = self._session.get_session_options().intra_op_num_threads
        return d
