"""A webcam (or video file) pose loop in about twenty lines with the public API; q or Esc quits."""

import argparse

import cv2

import edgepose
from edgepose.draw import draw_poses

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("bundle", help="bundle folder, e.g. from `edgepose export kapao-n`")
parser.add_argument("--source", default="0", help="camera index or video file")
parser.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: never)")
parser.add_argument("--no-show", action="store_true", help="no window (print counts instead)")
args = parser.parse_args()

est = edgepose.load(args.bundle)
cap = cv2.VideoCapture(int(args.source) if args.source.isdigit() else args.source)
frames = 0
while cap.isOpened() and (args.max_frames == 0 or frames < args.max_frames):
    ok, frame = cap.read()
    if not ok:
        break
    poses = est(frame)  # Poses: keypoints (N, K, 3), scores, boxes
    frames += 1
    if args.no_show:
        print(f"frame {frames}: {len(poses)} people")
        continue
    cv2.imshow("edgepose", draw_poses(frame, poses, est.skeleton))
    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
        break
cap.release()
