"""Runtimes: one small interface, one module per inference engine, a registry by name.

``get_runtime("onnxruntime")`` imports the backend lazily, so importing ``edgepose.runtimes`` costs nothing
and a missing engine is reported only when it is asked for, with the pip extra that installs it.
"""

from edgepose.runtimes.base import (
    RUNTIMES,
    Runtime,
    TensorSpec,
    available_runtimes,
    create_runtime,
    get_runtime,
)

__all__ = ["RUNTIMES", "Runtime", "TensorSpec", "available_runtimes", "create_runtime", "get_runtime"]
