"""Calibration data readers: real image files, a real mp4, a COCO file and synthetic people."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from edgepose.calibration.data import (
    CALIBRATION_STREAM,
    CalibrationSet,
    calibration_tensors,
    load_calibration,
)

from edgepose.data.synthetic import render_sample, sample_seed
from edgepose.errors import DataError, InputError, UsageError
from edgepose.preprocess import preprocess


def _image(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    for i in range(12):
        cv2.imwrite(str(d / f"img_{i:02d}.png"), _image(i, 40 + i, 64))
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """40 flat frames, frame i of brightness 5 * i, so a frame read back tells which one it was."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    assert writer.isOpened()
    for i in range(40):
        writer.write(np.full((48, 64, 3), 5 * i, np.uint8))
    writer.release()
    return path


def test_folder_loads_size_and_held_back_disjoint(folder):
    cs = load_calibration(folder, size=5, seed=0, held_back=3)
    assert (cs.kind, len(cs.images), len(cs.held_back)) == ("folder", 5, 3)
    assert len(cs.names) == 5 and len(cs.held_back_names) == 3
    assert not set(cs.names) & set(cs.held_back_names)
    assert set(cs.names) <= {p.name for p in folder.glob("*.png")}
    for name, img in zip(cs.names, cs.images, strict=True):
        assert img.dtype == np.uint8 and img.flags.c_contiguous
        np.testing.assert_array_equal(img, cv2.imread(str(folder / name)))
    assert str(folder) in cs.source and "12 images" in cs.source
    summary = cs.summary()
    assert json.loads(json.dumps(summary)) == {
        "kind": "folder",
        "source": cs.source,
        "count": 5,
        "held_back": 3,
        "seed": 0,
        "sha256": cs.sha256,
    }


def test_selection_is_deterministic_and_follows_the_seed(folder):
    a = load_calibration(folder, size=5, seed=3, held_back=3)
    b = load_calibration(folder, size=5, seed=3, held_back=3)
    assert (a.names, a.held_back_names, a.sha256) == (b.names, b.held_back_names, b.sha256)
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))
    c = load_calibration(folder, size=5, seed=4, held_back=3)
    assert (c.names, c.held_back_names) != (a.names, a.held_back_names)
    assert c.sha256 != a.sha256


def test_small_source_uses_everything_and_holds_back_a_quarter(folder):
    cs = load_calibration(folder, size=300, held_back=8)
    assert (len(cs.images), len(cs.held_back)) == (9, 3)  # 12 // 4 held back, the rest calibrates
    assert sorted(cs.names + cs.held_back_names) == sorted(p.name for p in folder.glob("*.png"))
    assert "holding back 3" in cs.source
    assert len(load_calibration(folder, size=300, held_back=0).images) == 12


def test_a_single_image_still_calibrates(tmp_path):
    cv2.imwrite(str(tmp_path / "only.jpg"), _image(0))
    cs = load_calibration(tmp_path, size=10, held_back=8)
    assert (cs.names, cs.held_back_names) == (["only.jpg"], [])


def test_hash_follows_the_selected_bytes_only(folder, tmp_path):
    cs = load_calibration(folder, size=5, seed=1, held_back=3)
    unused = sorted({p.name for p in folder.glob("*.png")} - set(cs.names) - set(cs.held_back_names))
    cv2.imwrite(str(folder / unused[0]), _image(99, 30, 30))
    assert load_calibration(folder, size=5, seed=1, held_back=3).sha256 == cs.sha256
    moved = shutil.copytree(folder, tmp_path / "elsewhere")
    assert load_calibration(moved, size=5, seed=1, held_back=3).sha256 == cs.sha256
    img = cv2.imread(str(folder / cs.names[2]))
    img[0, 0, 0] ^= 1
    cv2.imwrite(str(folder / cs.names[2]), img)
    changed = load_calibration(folder, size=5, seed=1, held_back=3)
    assert changed.names == cs.names and changed.sha256 != cs.sha256


def test_calibration_tensors_are_the_runtime_preprocessing(folder):
    cs = load_calibration(folder, size=4, held_back=0)
    tensors = list(calibration_tensors(cs.images, (64, 96)))
    assert len(tensors) == 4
    for img, t in zip(cs.images, tensors, strict=True):
        assert t.shape == (1, 3, 96, 64) and t.dtype == np.float32
        np.testing.assert_array_equal(t, preprocess(img, (64, 96))[0])


def test_video_frames_are_the_chosen_ones_and_cover_the_clip(video):
    cs = load_calibration(video, size=6, seed=2, held_back=2, progress=True)
    assert (cs.kind, len(cs.images), len(cs.held_back)) == ("video", 6, 2)
    assert "40 frames" in cs.source
    idx = [int(n.split()[1]) for n in cs.names]
    held = [int(n.split()[1]) for n in cs.held_back_names]
    assert not set(idx) & set(held)
    # one frame from each eighth of the clip
    assert sorted(i // 5 for i in idx + held) == list(range(8))
    for i, frame in zip(idx + held, cs.images + cs.held_back, strict=True):
        assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
        assert abs(float(frame.mean()) - 5 * i) < 4, f"frame {i} is not the frame that was chosen"
    again = load_calibration(video, size=6, seed=2, held_back=2)
    assert (again.names, again.sha256) == (cs.names, cs.sha256)
    other = load_calibration(video, size=6, seed=5, held_back=2)
    assert other.names != cs.names and other.sha256 != cs.sha256


def test_video_shorter_than_size_gives_every_frame(video):
    cs = load_calibration(video, size=100, held_back=8)
    assert (len(cs.images), len(cs.held_back)) == (32, 8)
    assert sorted(cs.names + cs.held_back_names, key=lambda n: int(n.split()[1])) == [
        f"frame {i}" for i in range(40)
    ]


def _coco(path, names):
    images = [{"id": i + 1, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(names)]
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return path


def test_coco_reads_the_images_it_lists(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(8):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), _image(i))
    ann = _coco(tmp_path / "ann.json", [f"{i}.png" for i in range(6)])  # 6.png and 7.png are not listed
    cs = load_calibration(ann, size=4, held_back=2, seed=0)
    assert (cs.kind, len(cs.images), len(cs.held_back)) == ("coco", 4, 2)
    assert sorted(cs.names + cs.held_back_names) == [f"{i}.png" for i in range(6)]
    np.testing.assert_array_equal(cs.images[0], cv2.imread(str(tmp_path / "images" / cs.names[0])))


def test_coco_images_beside_the_file(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), _image(i))
    cs = load_calibration(_coco(tmp_path / "a.json", ["0.jpg", "1.jpg", "2.jpg"]), size=3, held_back=0)
    assert cs.names == ["0.jpg", "1.jpg", "2.jpg"]


def test_coco_missing_image_is_named(tmp_path):
    cv2.imwrite(str(tmp_path / "0.jpg"), _image(0))
    with pytest.raises(DataError, match="lost.jpg"):
        load_calibration(_coco(tmp_path / "a.json", ["0.jpg", "lost.jpg"]))


def test_synthetic_is_deterministic_and_uses_the_profile_size():
    cs = load_calibration("synthetic", size=2, held_back=1, seed=0)
    assert (cs.kind, len(cs.images), len(cs.held_back)) == ("synthetic", 2, 1)
    assert "val-v1" in cs.source
    assert all(img.shape == (480, 640, 3) and img.dtype == np.uint8 for img in cs.images + cs.held_back)
    assert not set(cs.names) & set(cs.held_back_names)
    first = int(cs.names[0].split()[1])
    np.testing.assert_array_equal(cs.images[0], render_sample(sample_seed(CALIBRATION_STREAM, first))[0])
    again = load_calibration("synthetic:val-v1", size=2, held_back=1, seed=0)
    assert again.sha256 == cs.sha256 and again.names == cs.names
    assert np.array_equal(again.held_back[0], cs.held_back[0])
    assert load_calibration("synthetic", size=2, held_back=1, seed=1).sha256 != cs.sha256
    assert load_calibration("synthetic:train-v1", size=2, held_back=1, seed=0).sha256 != cs.sha256


def test_calibration_stream_is_not_one_the_project_uses():
    from edgepose.samples import SAMPLE_SEED
    from edgepose.training.validation import VAL_STREAM

    assert CALIBRATION_STREAM not in (0, SAMPLE_SEED, VAL_STREAM, 1000)


# -------------------------------------------------------------------------------------------------- errors
def test_missing_source(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_calibration(tmp_path / "nope")


def test_unknown_kind_names_what_is_accepted(tmp_path):
    (tmp_path / "list.txt").write_text("a.jpg\n")
    with pytest.raises(UsageError, match="folder of images.*video.*COCO"):
        load_calibration(tmp_path / "list.txt")


def test_unknown_synthetic_profile():
    with pytest.raises(UsageError, match="profile"):
        load_calibration("synthetic:nope-v9", size=1)


def test_empty_folder_and_folder_without_images(tmp_path):
    with pytest.raises(DataError, match="no images"):
        load_calibration(tmp_path)
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(DataError, match="no images"):
        load_calibration(tmp_path)


def test_video_without_frames(tmp_path):
    path = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    writer.release()
    with pytest.raises(DataError, match="no images"):
        load_calibration(path)


def test_corrupt_video(tmp_path):
    path = tmp_path / "junk.mp4"
    path.write_bytes(b"not a video at all" * 20)
    with pytest.raises(InputError, match="junk.mp4"):
        load_calibration(path)


def test_coco_without_images(tmp_path):
    with pytest.raises(DataError, match="no images"):
        load_calibration(_coco(tmp_path / "a.json", []))
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(DataError, match="JSON"):
        load_calibration(tmp_path / "b.json")


def test_corrupt_image_is_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    with pytest.raises(InputError, match="broken.png"):
        load_calibration(tmp_path)


@pytest.mark.parametrize(
    "name,img,word",
    [
        ("gray.png", np.full((20, 30), 128, np.uint8), "grayscale"),
        ("alpha.png", np.full((20, 30, 4), 128, np.uint8), "alpha"),
        ("deep.png", np.full((20, 30, 3), 40000, np.uint16), "16-bit"),
    ],
)
def test_wrong_kind_of_image_is_refused(tmp_path, name, img, word):
    cv2.imwrite(str(tmp_path / name), img)
    with pytest.raises(DataError, match=word) as err:
        load_calibration(tmp_path)
    assert name in str(err.value) and "8-bit 3-channel" in str(err.value)


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"held_back": -1}, {"seed": -1}, {"size": 2.5}])
def test_bad_numbers_are_usage_errors(folder, kwargs):
    with pytest.raises(UsageError, match="integer"):
        load_calibration(folder, **kwargs)


def test_set_is_frozen(folder):
    cs = load_calibration(folder, size=1, held_back=0)
    assert isinstance(cs, CalibrationSet)
    with pytest.raises(AttributeError):
        cs.kind = "video"
