"""The one crop policy: the OpenCV/numpy and TensorFlow crops compute the same pixels on real images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from hgkeras import crop, geometry

SAMPLES = Path(crop.__file__).parent / "data" / "samples" / "mpii"
#: Box height / crop height: smaller than the crop, about it, 2x, 3x and 8x larger (shrink 1, 1, 2, 3, 8).
BOX_FACTORS = (0.5, 1.0, 2.0, 3.0, 8.0)


def _images(real_data):
    for folder in (real_data / "mpii", SAMPLES):
        for record in json.loads((folder / "samples.json").read_text()):
            path = folder / "images" / record["image"]
            yield path, np.asarray(record["center"], np.float64) - geometry.MATLAB_OFFSET


@pytest.mark.parametrize("size", [(64, 64), (256, 192)])
def test_host_and_graph_crops_are_equal_on_real_images(real_data, size):
    graph_crop = tf.function(lambda image, center, scale: crop.crop_tf(image, center, scale, size))
    for path, person in _images(real_data):
        rgb = cv2.imread(str(path))[..., ::-1].copy()
        decoded = crop.decode_image_tf(tf.constant(path.read_bytes())).numpy()
        np.testing.assert_array_equal(decoded, rgb)  # the same pixels before cropping
        height, width = rgb.shape[:2]
        pixels = tf.constant(rgb)
        # the person, and boxes partly outside the image: its top-left corner, its right edge
        for center in (person, np.array([3.0, 2.5]), np.array([width - 10.25, height / 2.0])):
            center = center.astype(np.float32)  # as tf.data and the SavedModel take it
            for factor in BOX_FACTORS:
                scale = np.float32(factor * size[0] / geometry.PIXELS_PER_SCALE)
                a = crop.crop_numpy(rgb, center, scale, size)
                b = graph_crop(pixels, tf.constant(center), tf.constant(scale)).numpy()
                assert a.dtype == np.uint8 and b.shape == (*size, 3)
                np.testing.assert_array_equal(b, a, err_msg=f"{path.name} {center} box {factor}x")


def _policy(image: np.ndarray, center, scale: float, size: tuple[int, int]) -> np.ndarray:
    """The policy of ``docs/architecture.md`` written out in integers (a reference, slow)."""
    out_h, out_w = size
    f = geometry.PIXELS_PER_SCALE * scale / out_h
    n = max(1, int(np.floor(f)))
    h, w = image.shape[:2]
    rows, cols = -(-h // n), -(-w // n)
    padded = np.zeros((rows * n, cols * n) + image.shape[2:], np.int64)
    padded[:h, :w] = image
    sums = padded.reshape(rows, n, cols, n, -1).sum(axis=(1, 3))  # n x n block sums
    sums = np.pad(sums, ((2, 2), (2, 2), (0, 0)))  # zero outside the image

    def axis(c: float, length: int, blocks: int):
        image_px = c + (np.arange(length) - (length / 2.0 - 0.5)) * f  # crop pixel centres
        k = np.floor((image_px - (n - 1) / 2.0) / n * 32 + 0.5).astype(np.int64)  # 1/32 px
        return np.clip(k // 32, -2, blocks) + 2, k % 32

    iy, ty = axis(center[1], out_h, rows)
    ix, tx = axis(center[0], out_w, cols)
    wy0, wy1 = (32 - ty)[:, None, None], ty[:, None, None]
    wx0, wx1 = (32 - tx)[None, :, None], tx[None, :, None]
    top, bottom = sums[iy], sums[iy + 1]
    total = wy0 * (wx0 * top[:, ix] + wx1 * top[:, ix + 1])
    total += wy1 * (wx0 * bottom[:, ix] + wx1 * bottom[:, ix + 1])
    return ((total + 512 * n * n) // (1024 * n * n)).astype(image.dtype)


@pytest.mark.parametrize("shape", [(300, 400, 3), (123, 97)])
def test_the_crop_is_the_policy_written_out(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape).astype(np.uint8)
    for center, scale, size in [
        ((200.0, 150.0), 1.6, (64, 64)),  # 320 px box -> 64 px: 5 x 5 blocks
        ((200.3, 150.7), 0.6, (64, 64)),  # boxes up to twice the crop: no shrinking
        ((10.0, 290.0), 0.9, (32, 24)),  # partly outside, 2 x 2 blocks, partial blocks at the edge
        ((-500.0, 50.0), 1.0, (32, 32)),  # wholly outside: zeros
    ]:
        want = _policy(image.reshape(shape[:2] + (-1,)), center, scale, size)
        got = crop.crop_numpy(image, center, scale, size)
        assert got.shape == size + shape[2:]
        np.testing.assert_array_equal(got.reshape(want.shape), want, err_msg=str((center, scale)))


def test_the_crop_is_opencvs_warp_of_the_crop_matrix(real_data):
    """No offset against the geometry's own statement (warpAffine of ``geometry.crop_matrix``)."""
    for path, center in list(_images(real_data))[:3]:
        rgb = cv2.imread(str(path))[..., ::-1].astype(np.float64)
        for scale in (0.3, 0.6):  # boxes of 0.9x and 1.9x a 64 px crop: no shrinking
            a = crop.crop_numpy(rgb.astype(np.uint8), center, scale, 64).mean(axis=2)
            matrix = geometry.crop_matrix(center, scale, 64)
            b = cv2.warpAffine(rgb, matrix, (64, 64), flags=cv2.INTER_LINEAR).mean(axis=2)
            assert np.abs(a - b).mean() <= 0.6, path.name  # rounding to uint8 and to 1/32 px
            assert np.all(np.abs(_offset(a, b)) < 0.02), path.name


def _offset(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The (dx, dy) in pixels by which ``b`` is displaced from ``a`` (least squares, first order)."""
    gy, gx = np.gradient((a + b) / 2.0)
    gradients = np.stack([gx.ravel(), gy.ravel()], axis=1)
    return np.linalg.lstsq(gradients, (a - b).ravel(), rcond=None)[0]


def test_border_is_zero_and_gray_and_alpha_keep_their_channels():
    ones = np.full((100, 100), 200, np.uint8)
    edge = crop.crop_numpy(ones, (0.0, 50.0), 2.0, 32)  # box 400 px, centre on the left edge
    # the image spans crop columns 15.5..23.5 and rows 11.5..19.5; zeros elsewhere
    assert edge.shape == (32, 32) and edge[:, :15].max() == 0 and edge[:11].max() == 0
    assert edge[13:19, 17:22].min() == 200
    tf_edge = crop.crop_tf(tf.constant(ones[..., None]), (0.0, 50.0), 2.0, 32).numpy()[..., 0]
    np.testing.assert_array_equal(tf_edge, edge)
    rgba = np.zeros((50, 60, 4), np.uint16)
    assert crop.crop_numpy(rgba, (30.0, 25.0), 0.3, (32, 24)).shape == (32, 24, 4)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.bool_])
def test_other_dtypes_agree_between_runtimes(dtype):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 65536 if dtype == np.uint16 else 2, (90, 70, 2))
    image = rng.random((90, 70, 2)).astype(dtype) if dtype == np.float32 else image.astype(dtype)
    for scale in (0.25, 0.9):  # shrink 1 and 2 for a 32 px crop
        a = crop.crop_numpy(image, (30.5, 40.0), scale, 32)
        b = crop.crop_tf(tf.constant(image), (30.5, 40.0), scale, 32).numpy()
        assert a.dtype == (np.uint8 if dtype == np.bool_ else dtype)
        if dtype == np.float32:
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
        else:  # integer images: the same rounded values
            np.testing.assert_array_equal(b, a)


def test_offset_measure_sees_a_quarter_pixel():
    rgb = cv2.imread(str(SAMPLES / "images" / "052475643.jpg"))[..., ::-1].astype(np.float64)
    a = crop.crop_numpy(rgb, (400.0, 250.0), 1.0, 64).mean(axis=2)
    b = crop.crop_numpy(rgb, (400.25, 250.0), 1.0, 64).mean(axis=2)  # content 0.08 crop px left
    assert _offset(a, b)[0] == pytest.approx(-0.25 * 64 / 200, abs=0.03)
