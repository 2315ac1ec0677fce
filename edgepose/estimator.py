"""``PoseEstimator``: a bundle's runtime + pre-processing + decoder behind one call.

``preprocess -> infer -> postprocess`` are public so the demo and the benchmark can time (and run in
separate threads) each stage; ``__call__`` runs all three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgepose.bundle import Bundle, load_bundle
from edgepose.errors import BundleError
from edgepose.families import make_decoder
from edgepose.poses import Poses
from edgepose.preprocess import LetterboxMeta, letterbox, read_image, to_bgr8, to_tensor
from edgepose.runtimes.base import Runtime, create_runtime

#: which artifact each runtime executes, in order of preference
_ARTIFACT_FOR_RUNTIME = {
    "onnxruntime": ("model",),
    "openvino": ("ir", "model"),
    "tensorrt": (),  # a plan: the one built for this GPU and TensorRT version (select_bundle_plan)
}


def open_runtime(
    bundle: Bundle, runtime: str | None = None, device: str | None = None, **options: Any
) -> Runtime:
    """Open the runtime that runs ``bundle`` (the manifest's unless ``runtime`` overrides it)."""
    name = runtime or bundle.runtime
    roles = _ARTIFACT_FOR_RUNTIME.get(name)
    if roles is None:
        raise BundleError(f"runtime '{name}' cannot run bundle {bundle.path} (target {bundle.target})")
    if name == "tensorrt":
        from edgepose.runtimes.tensorrt import select_bundle_plan

        roles = (select_bundle_plan(bundle, device, **options),)
    role = next((r for r in roles if bundle.has_artifact(r)), None)
    if role is None:
        raise BundleError(
            f"bundle {bundle.path} (target {bundle.target}) has no artifact that {name} runs; "
            f"re-export it with the right --target"
        )
    if name in ("openvino", "tensorrt"):
        # Precision is explicit, never implied: these runtimes pin it from the bundle's.
        options.setdefault("precision", bundle.precision)
    return create_runtime(name, bundle.artifact(role), device=device, **options)


class PoseEstimator:
    """Run a bundle on BGR frames: ``poses = PoseEstimator(bundle)(frame)``."""

    def __init__(
        self,
        bundle: Bundle | str | Path,
        preset: str | None = "realtime",
        runtime: str | None = None,
        device: str | None = None,
        runtime_options: dict[str, Any] | None = None,
        warmup: bool = True,
        **decoder_overrides: Any,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.runtime = open_runtime(self.bundle, runtime, device, **(runtime_options or {}))
        self.decoder = make_decoder(self.bundle.decoder_config, preset, decoder_overrides)
        self.decoder.warmup()
        self.skeleton = self.bundle.skeleton
        self.input_size = self.bundle.input_size
        self._input_name = self.bundle.input_name
        self._pad_value = self.bundle.pad_value
        self._flip_index = self.skeleton.flip_index()
        w, h = self.input_size
        self._tensor = np.empty((1, 3, h, w), np.float32)
        if warmup:
            # One grey frame through all three stages: OpenCV's first resize, the runtime's first run
            # (memory arenas, lazy kernels) and numba's kernels are paid here, not on the first camera frame.
            self(np.full((h // 2 + 7, w // 2 + 9, 3), 114, np.uint8))  # odd size: exercises the resize

    @property
    def preset(self) -> str:
        return self.decoder.preset

    def preprocess(
        self, frame_bgr: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, LetterboxMeta]:
        """Letterbox + normalise into ``out`` (a fresh array when None; pipelines pass their own)."""
        boxed, meta = letterbox(to_bgr8(frame_bgr, "frame"), self.input_size, self._pad_value)
        w, h = self.input_size
        tensor = to_tensor(boxed, out if out is not None else np.empty((1, 3, h, w), np.float32))
        return tensor, meta

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        return self.infer_on(self.runtime, tensor)

    def infer_on(self, runtime: Runtime, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """The raw outputs for ``tensor`` from ``runtime`` (the demo's extra streams pass their own).

        With the decoder's flip test on this is two forward passes, merged into one set of outputs.
        """
        outputs = runtime.infer({self._input_name: tensor})
        if not self.decoder.flip:
            return outputs
        # Copied first: a runtime may hand out the same output buffers on its next call.
        outputs = {name: np.array(value, copy=True) for name, value in outputs.items()}
        flipped = runtime.infer({self._input_name: self.decoder.flip_input(tensor)})
        return self.decoder.merge_flip(outputs, flipped, self._flip_index)

    def postprocess(self, outputs: dict[str, np.ndarray], meta: LetterboxMeta) -> Poses:
        return self.decoder(outputs, meta)

    def __call__(self, frame_bgr: np.ndarray) -> Poses:
        tensor, meta = self.preprocess(frame_bgr, self._tensor)
        return self.postprocess(self.infer(tensor), meta)

    def predict_file(self, path: str | Path) -> Poses:
        return self(read_image(path))

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> PoseEstimator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(
    bundle: str | Path,
    preset: str = "realtime",
    runtime: str | None = None,
    device: str | None = None,
    runtime_options: dict[str, Any] | None = None,
    **decoder_overrides: Any,
) -> PoseEstimator:
    """Load a bundle folder and return a ready ``PoseEstimator`` (kernels warmed, runtime open)."""
    return PoseEstimator(
        bundle,
        preset=preset,
        runtime=runtime,
        device=device,
        runtime_options=runtime_options,
        **decoder_overrides,
    )
