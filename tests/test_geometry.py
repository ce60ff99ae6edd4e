"""Crop geometry: box-to-grid mapping, numpy/keras.ops agreement, inverses, OpenCV warps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from keras import ops

from hgkeras import geometry


def test_box_edges_map_to_grid_edges():
    # box of side 200*1.0 centred at (300, 200); edges at x = 200 and 400 (pixel-edge coordinates)
    m = geometry.crop_matrix((300.0, 200.0), 1.0, 64)
    left_edge, right_edge = geometry.apply_matrix(m, np.array([[200.0, 200.0], [400.0, 200.0]]))
    assert left_edge[0] == pytest.approx(-0.5) and right_edge[0] == pytest.approx(63.5)
    centre = geometry.apply_matrix(m, np.array([300.0, 200.0]))
    np.testing.assert_allclose(centre, [31.5, 31.5])


def test_input_crop_and_heatmap_grid_agree():
    # input pixel centre x maps to heatmap (x + 0.5) / 4 - 0.5 (4 input pixels per heatmap pixel)
    p = np.array([[123.0, 77.0]])
    a = geometry.apply_matrix(geometry.crop_matrix((150.0, 90.0), 0.8, 256), p)
    b = geometry.apply_matrix(geometry.crop_matrix((150.0, 90.0), 0.8, 64), p)
    np.testing.assert_allclose((a + 0.5) / 4 - 0.5, b, atol=1e-9)


def test_rotation_turns_content_counter_clockwise_like_opencv():
    m = geometry.crop_matrix((50.0, 50.0), 0.5, 100, rotation=90.0)
    # point to the right of the centre ends up above it in the crop
    np.testing.assert_allclose(
        geometry.apply_matrix(m, np.array([60.0, 50.0])), [49.5, 39.5], atol=1e-9
    )
    ref = cv2.getRotationMatrix2D((50.0, 50.0), 90.0, 1.0)
    np.testing.assert_allclose(m[:, :2], ref[:, :2], atol=1e-9)


def test_flip_mirrors_the_crop():
    m = geometry.crop_matrix((50.0, 50.0), 0.5, 100, flip=True)
    np.testing.assert_allclose(
        geometry.apply_matrix(m, np.array([50.0 - 49.5, 50.0])), [99.0, 49.5], atol=1e-9
    )


def test_batched_ops_match_numpy_and_invert():
    rng = np.random.default_rng(0)
    centers = rng.uniform(0, 500, (5, 2))
    scales = rng.uniform(0.5, 3, 5)
    rots = rng.uniform(-30, 30, 5)
    mats = ops.convert_to_numpy(geometry.crop_matrices(centers, scales, (64, 48), rots))
    for i in range(5):
        np.testing.assert_allclose(
            mats[i],
            geometry.crop_matrix(centers[i], scales[i], (64, 48), rots[i]),
            rtol=1e-5,
            atol=1e-3,
        )
    pts = rng.uniform(0, 500, (5, 7, 2))
    there = geometry.transform_points(mats, pts)
    back = ops.convert_to_numpy(geometry.transform_points(geometry.invert_matrices(mats), there))
    np.testing.assert_allclose(back, pts, atol=2e-3)
    hm = geometry.image_to_heatmap(pts, centers, scales, 64)
    np.testing.assert_allclose(
        ops.convert_to_numpy(geometry.heatmap_to_image(hm, centers, scales, 64)), pts, atol=2e-3
    )


def test_opencv_warp_puts_a_marker_where_the_matrix_says():
    image = np.zeros((300, 400), np.float32)
    image[120, 250] = 1.0
    m = geometry.crop_matrix((220.0, 140.0), 0.9, 64, rotation=20.0)
    crop = cv2.warpAffine(image, m, (64, 64), flags=cv2.INTER_LINEAR)
    expected = geometry.apply_matrix(m, np.array([250.0, 120.0]))
    ys, xs = np.nonzero(crop)
    weights = crop[ys, xs]
    centroid = np.array([np.sum(xs * weights), np.sum(ys * weights)]) / weights.sum()
    np.testing.assert_allclose(centroid, expected, atol=0.5)


def test_box_to_center_scale():
    center, scale = geometry.box_to_center_scale((10, 20, 110, 420))
    np.testing.assert_allclose(center, [60, 220])
    assert scale == pytest.approx(400 * 1.25 / 200)
    with pytest.raises(ValueError, match="box"):
        geometry.box_to_center_scale((10, 20, 5, 30))


def test_bad_scale_is_rejected():
    with pytest.raises(ValueError, match="scale"):
        geometry.crop_matrix((0, 0), 0.0, 64)
