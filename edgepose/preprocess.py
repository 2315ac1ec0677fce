"""Letterbox pre-processing and its inverse, shared by export, runtime, calibration and training.

The model sees a fixed ``W x H`` input: the image is resized with its aspect ratio kept, padded
symmetrically with grey (114), converted BGR -> RGB and scaled to [0, 1] (YOLOv5/KAPAO convention).
``LetterboxMeta`` remembers the gain and the padding so decoders can map points back to the original
image exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgepose.errors import InputError, UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class LetterboxMeta:
    """How an original image was placed in the model input.

    gain:   input pixels per original pixel.
    pad:    (left, top) padding in input pixels.
    input_size:    (W, H) of the model input.
    original_size: (W, H) of the original image.
    """

    gain: float
    pad: tuple[float, float]
    input_size: tuple[int, int]
    original_size: tuple[int, int]

    def to_original(self, xy: np.ndarray, clip: bool = True) -> np.ndarray:
        """Map (..., 2k) input-pixel coordinates (x, y interleaved) to original pixels, in place-safe."""
        out = np.array(xy, dtype=np.float32, copy=True)
        out[..., 0::2] = (out[..., 0::2] - self.pad[0]) / self.gain
        out[..., 1::2] = (out[..., 1::2] - self.pad[1]) / self.gain
        if clip:
            w, h = self.original_size
            np.clip(out[..., 0::2], 0, w, out=out[..., 0::2])
            np.clip(out[..., 1::2], 0, h, out=out[..., 1::2])
        return out

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        """The inverse of ``to_original`` (without clipping): original pixels -> input pixels."""
        out = np.array(xy, dtype=np.float32, copy=True)
        out[..., 0::2] = out[..., 0::2] * self.gain + self.pad[0]
        out[..., 1::2] = out[..., 1::2] * self.gain + self.pad[1]
        return out


def parse_imgsz(value: str | int | tuple[int, int], stride: int = 64) -> tuple[int, int]:
    """``"640"`` -> (640, 640); ``"640x384"`` -> (640, 384) as (W, H); each a multiple of ``stride``."""
    if isinstance(value, tuple):
        w, h = value
    else:
        text = str(value).lower().strip()
        try:
            if "x" in text:
                w, h = (int(p) for p in text.split("x", 1))
            else:
                w = h = int(text)
        except ValueError as e:
            raise UsageError(f"input size '{value}' is not N or WxH (e.g. 640 or 640x384)") from e
    if w <= 0 or h <= 0:
        raise UsageError(f"input size '{value}' must be positive")
    if w % stride or h % stride:
        raise UsageError(
            f"input size {w}x{h} is not a multiple of the model stride {stride}; "
            f"try {_round_up(w, stride)}x{_round_up(h, stride)}"
        )
    return int(w), int(h)


def _round_up(v: int, m: int) -> int:
    return ((v + m - 1) // m) * m


def to_bgr8(img: np.ndarray, source: str = "image") -> np.ndarray:
    """Any image OpenCV can give us (gray, BGRA, 16-bit, float) -> contiguous uint8 BGR."""
    if img is None or not isinstance(img, np.ndarray) or img.size == 0:
        raise InputError(f"{source} is empty or not an image")
    if img.dtype == np.uint16:
        img = (img / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise InputError(f"{source} has unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif not (img.ndim == 3 and img.shape[2] == 3):
        raise InputError(f"{source} has shape {img.shape}, expected an H x W (x 1|3|4) image")
    return np.ascontiguousarray(img)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 BGR, converting grayscale, alpha and 16-bit images."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise InputError(f"{path} is not a readable image")
    return to_bgr8(img, source=str(path))


def list_images(folder: str | Path) -> list[Path]:
    """Image files in ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def letterbox(
    img_bgr: np.ndarray, input_size: tuple[int, int], pad_value: int = 114
) -> tuple[np.ndarray, LetterboxMeta]:
    """Resize keeping aspect ratio and pad to ``input_size`` (W, H). Returns the padded BGR image."""
    h0, w0 = img_bgr.shape[:2]
    w, h = input_size
    gain = min(w / w0, h / h0)
    nw, nh = int(round(w0 * gain)), int(round(h0 * gain))
    nw, nh = min(max(nw, 1), w), min(max(nh, 1), h)
    if (nw, nh) != (w0, h0):
        img_bgr = cv2.resize(img_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    left, top = (w - nw) // 2, (h - nh) // 2
    out = np.full((h, w, 3), pad_value, dtype=np.uint8)
    out[top : top + nh, left : left + nw] = img_bgr
    # The exact gain per axis differs from ``gain`` by rounding; use the mean of the two so the inverse
    # mapping is exact to well under a pixel on both axes.
    eff_gain = 0.5 * (nw / w0 + nh / h0)
    return out, LetterboxMeta(float(eff_gain), (float(left), float(top)), (w, h), (w0, h0))


def to_tensor(img_bgr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """BGR uint8 HWC -> RGB float32 NCHW in [0, 1] (batch of one)."""
    h, w = img_bgr.shape[:2]
    if out is None:
        out = np.empty((1, 3, h, w), np.float32)
    # One pass per channel, reversing channel order: cheaper than cvtColor + transpose + divide.
    scale = np.float32(1.0 / 255.0)
    for c in range(3):
        np.multiply(img_bgr[:, :, 2 - c], scale, out=out[0, c], casting="unsafe")
    return out


def preprocess(
    img_bgr: np.ndarray, input_size: tuple[int, int], pad_value: int = 114
) -> tuple[np.ndarray, LetterboxMeta]:
    """Letterbox + tensor conversion: what every runtime feeds the model."""
    boxed, meta = letterbox(img_bgr, input_size, pad_value)
    return to_tensor(boxed), meta
