"""Pose estimation on one image with the Python API: print every person, save an annotated copy.

python examples/predict_image.py BUNDLE IMAGE [--output annotated.jpg]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

import edgepose
from edgepose.draw import draw_poses
from edgepose.preprocess import read_image


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", help="bundle folder")
    parser.add_argument("image", type=Path, help="a JPEG/PNG image")
    parser.add_argument("--output", type=Path, help="annotated image (default: IMAGE_poses.jpg beside it)")
    parser.add_argument("--preset", default="realtime", help="realtime | accuracy")
    args = parser.parse_args()

    est = edgepose.load(args.bundle, preset=args.preset)
    image = read_image(args.image)  # BGR, like cv2.imread, with a clear error for a bad file
    poses = est(image)
    names = est.skeleton.keypoints
    print(f"{len(poses)} people in {args.image.name} ({image.shape[1]}x{image.shape[0]})")
    for i, (kps, score, box) in enumerate(zip(poses.keypoints, poses.scores, poses.boxes)):
        x1, y1, x2, y2 = box
        print(f"person {i}: score {score:.2f}, box ({x1:.0f}, {y1:.0f}) - ({x2:.0f}, {y2:.0f})")
        for name, (x, y, conf) in zip(names, kps):
            print(f"    {name:>16s}  x {x:7.1f}  y {y:7.1f}  score {conf:.2f}")

    out = args.output or args.image.with_name(f"{args.image.stem}_poses.jpg")
    cv2.imwrite(str(out), draw_poses(image, poses, est.skeleton, draw_boxes=True))
    print(f"annotated image: {out}")
    est.close()


if __name__ == "__main__":
    main()
