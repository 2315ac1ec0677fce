"""edgepose: multi-person pose estimation exported, quantized and run on edge hardware.

``edgepose.load(bundle)`` returns a ``PoseEstimator``; calling it on a BGR frame returns ``Poses``.
Imports are lazy so that ``import edgepose`` (and the CLI's ``--help``) stay instant.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from edgepose.version import __version__

# In a source checkout whose root is on sys.path (``python -m pytest`` from the repo), Python finds this
# folder before any installed copy; map the top-level export/, runtimes/ and calibration/ folders into
# the namespace, as pyproject's package-dir does for installs.
_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_checkout, "pyproject.toml")) and os.path.isfile(
    os.path.join(_checkout, "runtimes", "base.py")
):
    __path__.append(_checkout)  # noqa: F821 - __path__ exists in a package's __init__

if TYPE_CHECKING:
    from edgepose.estimator import PoseEstimator
    from edgepose.poses import Poses

__all__ = ["__version__", "load", "PoseEstimator", "Poses"]


def load(
    bundle: Any,
    preset: str = "realtime",
    runtime: str | None = None,
    device: str | None = None,
    runtime_options: dict[str, Any] | None = None,
    **decoder_overrides: Any,
) -> PoseEstimator:
    """Load a bundle and return a ready ``PoseEstimator``. See ``edgepose.estimator.load``."""
    from edgepose.estimator import load as _load

    return _load(
        bundle,
        preset=preset,
        runtime=runtime,
        device=device,
        runtime_options=runtime_options,
        **decoder_overrides,
    )


def __getattr__(name: str) -> Any:
    if name == "PoseEstimator":
        from edgepose.estimator import PoseEstimator

        return PoseEstimator
    if name == "Poses":
        from edgepose.poses import Poses

        return Poses
    raise AttributeError(f"module 'edgepose' has no attribute {name!r}")
