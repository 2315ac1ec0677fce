"""Model zoo and torch architectures.

Importing this package stays torch-free (the CLI's ``edgepose models`` imports it); the torch-backed
names (``KapaoModel``, ``KapaoConfig``, ``load_checkpoint``, ``save_checkpoint``) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgepose.models.zoo import ZOO, ModelInfo, build_model, get_model_info

_LAZY = {
    "KapaoModel": "edgepose.models.kapao",
    "KapaoConfig": "edgepose.models.kapao",
    "load_checkpoint": "edgepose.models.checkpoints",
    "save_checkpoint": "edgepose.models.checkpoints",
    "read_checkpoint": "edgepose.models.checkpoints",
}

__all__ = ["ZOO", "ModelInfo", "build_model", "get_model_info", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgepose.models' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
