"""Draw poses on BGR images: every keypoint is shown; fused (keypoint-object) ones are ringed.

Keypoints the model regressed but did not confirm (score 0 in KAPAO) are drawn small and hollow, so a
user sees the whole pose and can tell confirmed joints apart.
"""

from __future__ import annotations

import cv2
import numpy as np

from edgepose.poses import Poses
from edgepose.skeletons import Skeleton

_PALETTE = np.array(
    [
        (255, 128, 0),
        (255, 153, 51),
        (255, 178, 102),
        (230, 230, 0),
        (255, 153, 255),
        (153, 204, 255),
        (255, 102, 255),
        (255, 51, 255),
        (102, 178, 255),
        (51, 153, 255),
        (255, 153, 153),
        (255, 102, 102),
        (255, 51, 51),
        (153, 255, 153),
        (102, 255, 102),
        (51, 255, 51),
        (0, 255, 0),
        (0, 0, 255),
    ],
    dtype=np.uint8,
)


def _colour(i: int) -> tuple[int, int, int]:
    b, g, r = (int(v) for v in _PALETTE[i % len(_PALETTE)])
    return b, g, r


def draw_poses(
    image_bgr: np.ndarray,
    poses: Poses,
    skeleton: Skeleton,
    draw_boxes: bool = False,
    confirmed: float = 0.0,
    copy: bool = True,
) -> np.ndarray:
    """Return ``image_bgr`` with skeletons drawn; keypoints with score > ``confirmed`` are drawn solid."""
    img = image_bgr.copy() if copy else image_bgr
    scale = max(1.0, max(img.shape[:2]) / 640.0)
    thick = max(1, int(round(2 * scale)))
    radius = max(2, int(round(3 * scale)))
    for n in range(len(poses)):
        kp = poses.keypoints[n]
        if draw_boxes:
            x1, y1, x2, y2 = (int(round(v)) for v in poses.boxes[n])
            cv2.rectangle(img, (x1, y1), (x2, y2), (0, 200, 255), thick)
            cv2.putText(
                img,
                f"{poses.scores[n]:.2f}",
                (x1, max(0, y1 - 4)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4 * scale,
                (0, 200, 255),
                max(1, thick - 1),
                cv2.LINE_AA,
            )
        for li, (a, b) in enumerate(skeleton.limbs):
            pa = (int(round(kp[a, 0])), int(round(kp[a, 1])))
            pb = (int(round(kp[b, 0])), int(round(kp[b, 1])))
            solid = kp[a, 2] > confirmed and kp[b, 2] > confirmed
            cv2.line(img, pa, pb, _colour(li), thick if solid else max(1, thick // 2), cv2.LINE_AA)
        for k in range(len(kp)):
            p = (int(round(kp[k, 0])), int(round(kp[k, 1])))
            if kp[k, 2] > confirmed:
                cv2.circle(img, p, radius, _colour(k), -1, cv2.LINE_AA)
            else:
                cv2.circle(img, p, max(1, radius - 1), _colour(k), 1, cv2.LINE_AA)
            if poses.fused[n, k]:
                cv2.circle(img, p, radius + 2, (255, 255, 255), 1, cv2.LINE_AA)
    return img
