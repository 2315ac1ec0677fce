"""Skeletons as data and the Poses container."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgepose.errors import DataError, UsageError
from edgepose.poses import Poses
from edgepose.skeletons import COCO_17, CROWDPOSE_14, get_skeleton


def test_builtin_skeletons_are_consistent():
    assert COCO_17.num_keypoints == 17 and CROWDPOSE_14.num_keypoints == 14
    for sk in (COCO_17, CROWDPOSE_14):
        flip = sk.flip_index()
        assert (flip[flip] == np.arange(sk.num_keypoints)).all()  # an involution
        for a, b in sk.flip_pairs:
            assert sk.keypoints[a].replace("left", "right") == sk.keypoints[b]


def test_user_skeleton_json_round_trip(tmp_path):
    path = tmp_path / "hand.json"
    path.write_text(
        json.dumps(
            {
                "name": "hand-3",
                "keypoints": ["a", "b", "c"],
                "limbs": [[0, 1], [1, 2]],
                "flip_pairs": [],
                "sigmas": [0.05, 0.05, 0.05],
            }
        )
    )
    sk = get_skeleton(str(path))
    assert sk.num_keypoints == 3 and sk.limbs == ((0, 1), (1, 2))


def test_bad_skeletons_are_refused(tmp_path):
    with pytest.raises(UsageError):
        get_skeleton("no-such-skeleton")
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"name": "x", "keypoints": ["a", "b"], "limbs": [[0, 5]], "sigmas": [0.1, 0.1]})
    )
    with pytest.raises(DataError, match="index 5"):
        get_skeleton(str(path))
    path.write_text(json.dumps({"name": "x", "keypoints": ["a", "b"], "sigmas": [0.1]}))
    with pytest.raises(DataError, match="sigmas"):
        get_skeleton(str(path))


def test_poses_coco_results_and_selection():
    kp = np.zeros((2, 17, 3), np.float32)
    kp[0, :, 0], kp[0, :, 1], kp[0, :, 2] = 10, 20, 0.5
    poses = Poses(
        kp, np.array([0.3, 0.9]), np.array([[0, 0, 10, 20], [5, 5, 15, 25]]), np.zeros((2, 17), bool)
    )
    res = poses.to_coco_results(image_id=7)
    assert len(res) == 2 and res[0]["image_id"] == 7 and len(res[0]["keypoints"]) == 51
    assert res[1]["bbox"] == [5.0, 5.0, 10.0, 20.0]
    assert poses.sorted().scores.tolist() == pytest.approx([0.9, 0.3])
    assert len(Poses.empty(14)) == 0 and Poses.empty(14).keypoints.shape == (0, 14, 3)
    with pytest.raises(ValueError):
        Poses(kp, np.array([0.3]), np.zeros((1, 4)), np.zeros((1, 17), bool))
