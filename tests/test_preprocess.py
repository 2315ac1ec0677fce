"""Letterbox pre-processing, its inverse, and image reading/conversion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgepose.errors import InputError, UsageError
from edgepose.preprocess import letterbox, parse_imgsz, preprocess, read_image, to_bgr8, to_tensor


def test_parse_imgsz_square_and_rectangular():
    assert parse_imgsz("640") == (640, 640)
    assert parse_imgsz("640x384") == (640, 384)
    assert parse_imgsz(512, stride=32) == (512, 512)


@pytest.mark.parametrize("bad", ["abc", "0", "640x", "-64"])
def test_parse_imgsz_rejects_garbage(bad):
    with pytest.raises(UsageError):
        parse_imgsz(bad)


def test_parse_imgsz_names_the_nearest_valid_size():
    with pytest.raises(UsageError, match="640x384"):
        parse_imgsz("630x360", stride=64)


@pytest.mark.parametrize(
    "shape,size", [((480, 640), (640, 640)), ((720, 1280), (640, 384)), ((300, 200), (256, 256))]
)
def test_letterbox_round_trip_maps_points_back(shape, size):
    img = np.zeros((*shape, 3), np.uint8)
    boxed, meta = letterbox(img, size)
    assert boxed.shape == (size[1], size[0], 3)
    pts = np.array([[0.0, 0.0, shape[1] - 1.0, shape[0] - 1.0, shape[1] / 3, shape[0] / 2]], np.float32)
    back = meta.to_original(meta.to_input(pts))
    np.testing.assert_allclose(back, pts, atol=1e-3)


def test_letterbox_pads_with_114_and_centres_content():
    img = np.full((100, 200, 3), 7, np.uint8)  # wide image: padding goes top and bottom
    boxed, meta = letterbox(img, (256, 256))
    assert meta.pad[0] == 0 and meta.pad[1] == 64
    assert (boxed[:64] == 114).all() and (boxed[-64:] == 114).all()
    assert (boxed[64:192] == 7).all()


def test_content_lands_where_the_meta_says():
    img = np.zeros((480, 640, 3), np.uint8)
    cv2.circle(img, (500, 100), 6, (255, 255, 255), -1)
    boxed, meta = letterbox(img, (320, 320))
    ys, xs = np.nonzero(boxed[:, :, 0] > 128)
    centre_in_input = np.array([[xs.mean(), ys.mean()]], np.float32)
    np.testing.assert_allclose(meta.to_original(centre_in_input)[0], [500, 100], atol=1.0)


def test_to_tensor_is_rgb_nchw_unit_range():
    img = np.zeros((4, 6, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 255  # B, G, R
    t = to_tensor(img)
    assert t.shape == (1, 3, 4, 6) and t.dtype == np.float32
    np.testing.assert_allclose(t[0, :, 0, 0], [1.0, 20 / 255, 10 / 255], rtol=1e-6)


def test_preprocess_matches_manual_pipeline():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)
    t, meta = preprocess(img, (64, 64))
    boxed, _ = letterbox(img, (64, 64))
    manual = cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32) / 255
    np.testing.assert_allclose(t, manual, atol=1e-7)


def test_gray_rgba_and_16bit_images_are_converted(tmp_path):
    gray = np.full((10, 12), 200, np.uint8)
    rgba = np.dstack([np.full((10, 12, 3), 50, np.uint8), np.full((10, 12), 255, np.uint8)])
    deep = np.full((10, 12, 3), 65535, np.uint16)
    for name, arr in (("g.png", gray), ("a.png", rgba), ("d.png", deep)):
        cv2.imwrite(str(tmp_path / name), arr)
        out = read_image(tmp_path / name)
        assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert read_image(tmp_path / "d.png").max() == 255
    assert to_bgr8(np.ones((5, 5), np.float32)).max() == 255


def test_unreadable_and_missing_images_are_refused(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(InputError, match="not a readable image"):
        read_image(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError):
        read_image(empty)
