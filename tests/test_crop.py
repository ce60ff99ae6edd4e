"""The one crop policy: the OpenCV/numpy and TensorFlow crops agree on real images at every box size."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from hgkeras import crop, geometry

SAMPLES = Path(crop.__file__).parent / "data" / "samples" / "mpii"
#: Box height / crop height: smaller than the crop, about the crop, 3x and 8x larger.
BOX_FACTORS = (0.5, 1.0, 3.0, 8.0)


def _images(real_data):
    for folder in (real_data / "mpii", SAMPLES):
        for record in json.loads((folder / "samples.json").read_text()):
            path = folder / "images" / record["image"]
            yield path, np.asarray(record["center"], np.float64) - geometry.MATLAB_OFFSET


@pytest.mark.parametrize("size", [(64, 64), (256, 192)])
def test_opencv_and_tensorflow_crops_agree_on_real_images(real_data, size):
    for path, center in _images(real_data):
        rgb = cv2.imread(str(path))[..., ::-1].copy()
        decoded = crop.decode_image_tf(tf.constant(path.read_bytes())).numpy()
        np.testing.assert_array_equal(decoded, rgb)  # the same pixels before cropping
        for factor in BOX_FACTORS:
            scale = factor * size[0] / geometry.PIXELS_PER_SCALE
            a = crop.crop_numpy(rgb, center, scale, size).astype(np.float64)
            b = crop.crop_tf(tf.constant(rgb), center, scale, size).numpy().astype(np.float64)
            assert a.shape == b.shape == (*size, 3)
            where = f"{path.name} box {factor}x {size}"
            assert np.abs(a - b).mean() <= 1.0, where
            assert abs((a - b).mean()) <= 0.25, where  # no bias
            # no structural offset: the shift that best explains the difference is ~0
            shift = _offset(a.mean(axis=2), b.mean(axis=2))
            assert np.all(np.abs(shift) < 0.1), (where, shift)


def _offset(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The (dx, dy) in pixels by which ``b`` is displaced from ``a`` (least squares, first order)."""
    gy, gx = np.gradient((a + b) / 2.0)
    gradients = np.stack([gx.ravel(), gy.ravel()], axis=1)
    return np.linalg.lstsq(gradients, (a - b).ravel(), rcond=None)[0]


def test_large_boxes_are_block_averaged_then_warped():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3)).astype(np.uint8)
    center, scale, size = (200.0, 150.0), 1.6, 64  # 320 px box -> 64 px: 5 x 5 blocks
    assert crop.shrink_factor(scale, size) == 5
    blocks = image[:300, :400].reshape(60, 5, 80, 5, 3).mean(axis=(1, 3), dtype=np.float32)
    matrix = crop.shrunk_matrix(center, scale, size, 5)
    want = cv2.warpAffine(blocks, matrix, (size, size), flags=cv2.INTER_LINEAR)
    got = crop.crop_numpy(image, center, scale, size).astype(np.float32)
    assert np.abs(got - want).max() <= 0.5 + 1e-3  # rounding to uint8 only
    # boxes up to twice the crop are warped directly
    assert crop.shrink_factor(0.6, size) == 1
    direct = cv2.warpAffine(image, geometry.crop_matrix(center, 0.6, size), (size, size))
    np.testing.assert_array_equal(crop.crop_numpy(image, center, 0.6, size), direct)


def test_border_is_zero_and_gray_and_alpha_keep_their_channels():
    ones = np.full((100, 100), 200, np.uint8)
    edge = crop.crop_numpy(ones, (0.0, 50.0), 2.0, 32)  # box 400 px, centre on the left edge
    # the image spans crop columns 15.5..23.5 and rows 11.5..19.5; zeros elsewhere
    assert edge.shape == (32, 32) and edge[:, :15].max() == 0 and edge[:11].max() == 0
    assert edge[13:19, 17:22].min() == 200
    tf_edge = crop.crop_tf(tf.constant(ones[..., None]), (0.0, 50.0), 2.0, 32).numpy()[..., 0]
    assert np.abs(np.rint(tf_edge) - edge).mean() <= 1.0
    rgba = np.zeros((50, 60, 4), np.uint16)
    assert crop.crop_numpy(rgba, (30.0, 25.0), 0.3, (32, 24)).shape == (32, 24, 4)


def test_offset_measure_sees_a_quarter_pixel():
    rgb = cv2.imread(str(SAMPLES / "images" / "052475643.jpg"))[..., ::-1].astype(np.float64)
    a = crop.crop_numpy(rgb, (400.0, 250.0), 1.0, 64).mean(axis=2)
    b = crop.crop_numpy(rgb, (400.25, 250.0), 1.0, 64).mean(axis=2)  # content 0.08 crop px left
    assert _offset(a, b)[0] == pytest.approx(-0.25 * 64 / 200, abs=0.03)
