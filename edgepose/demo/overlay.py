"""The demo's picture: skeletons (``draw_poses``: every keypoint, fused ones ringed) plus FPS and latency."""

from __future__ import annotations

import cv2
import numpy as np

from edgepose.draw import draw_poses
from edgepose.poses import Poses
from edgepose.skeletons import Skeleton

_SHORT = {"capture": "cap", "preprocess": "pre", "infer": "infer", "postprocess": "post", "render": "draw"}


def status_lines(fps: float, medians_ms: dict[str, float], dropped: int | None = None) -> list[str]:
    """Text for the overlay (and the console summary): FPS, then each stage's median latency."""
    first = f"{fps:5.1f} FPS"
    if dropped is not None:
        first += f"   dropped {dropped}"
    stages = "  ".join(f"{_SHORT.get(k, k)} {v:.1f}" for k, v in medians_ms.items())
    return [first, f"ms: {stages}"] if stages else [first]


def put_text_block(img: np.ndarray, lines: list[str], origin: tuple[int, int] = (8, 8)) -> None:
    """White text on a dark box, top-left, scaled with the image so it stays readable on 4K frames."""
    scale = max(0.45, img.shape[1] / 1400.0)
    thick = max(1, int(round(scale * 1.5)))
    sizes = [cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0] for s in lines]
    line_h = max(h for _, h in sizes) + int(8 * scale) + 2
    x, y = origin
    w = max(wd for wd, _ in sizes) + 12
    cv2.rectangle(img, (x, y), (x + w, y + line_h * len(lines) + 6), (0, 0, 0), -1)
    for i, s in enumerate(lines):
        base = y + (i + 1) * line_h
        cv2.putText(
            img, s, (x + 6, base), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA
        )


def render_frame(
    image_bgr: np.ndarray,
    poses: Poses,
    skeleton: Skeleton,
    lines: list[str],
    draw_boxes: bool = False,
) -> np.ndarray:
    """Draw in place (the frame is ours by now) and return it."""
    img = draw_poses(image_bgr, poses, skeleton, draw_boxes=draw_boxes, copy=False)
    if lines:
        put_text_block(img, lines)
    return img
