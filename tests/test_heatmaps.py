"""Gaussian targets, argmax decoding with the quarter-pixel shift, and heatmap flipping."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from hgkeras import MPII
from hgkeras.codec import HeatmapCodec, flip_heatmaps, render_heatmaps

decode_heatmaps = HeatmapCodec().locate  # the paper's decoder


def test_render_gaussian_peak_sigma_and_zeroed_joints():
    joints = np.array([[[10.0, 20.0], [5.0, 5.0], [70.0, 3.0], [np.nan, 1.0]]])
    visible = np.array([[1, 0, 1, 1]])
    maps = ops.convert_to_numpy(render_heatmaps(joints, visible, 64, sigma=1.0))
    assert maps.shape == (1, 64, 64, 4)
    assert maps[0, 20, 10, 0] == pytest.approx(1.0)
    assert maps[0, 20, 11, 0] == pytest.approx(np.exp(-0.5))
    assert maps[0, 21, 11, 0] == pytest.approx(np.exp(-1.0))
    assert np.all(maps[..., 1:] == 0)  # not annotated, outside the grid, NaN


def test_render_non_square_grid_uses_x_for_columns():
    maps = ops.convert_to_numpy(
        render_heatmaps(np.array([[[30.0, 5.0]]]), np.ones((1, 1)), (16, 32))
    )
    assert maps.shape == (1, 16, 32, 1)
    assert np.unravel_index(maps[0, ..., 0].argmax(), (16, 32)) == (5, 30)


@pytest.mark.parametrize("x,y", [(20.3, 31.0), (20.7, 30.6), (5.0, 5.0), (40.2, 12.9)])
def test_decode_recovers_joint_within_quarter_pixel(x, y):
    maps = render_heatmaps(np.array([[[x, y]]]), np.ones((1, 1)), 64, sigma=1.0)
    coords, scores = decode_heatmaps(maps)
    coords = ops.convert_to_numpy(coords)[0, 0]
    assert abs(coords[0] - x) <= 0.25 + 1e-6 and abs(coords[1] - y) <= 0.25 + 1e-6
    assert float(ops.convert_to_numpy(scores)[0, 0]) == pytest.approx(
        np.exp(-((round(x) - x) ** 2 + (round(y) - y) ** 2) / 2), rel=1e-5
    )


def test_decode_quarter_shift_direction_and_border():
    maps = np.zeros((1, 8, 8, 3), np.float32)
    maps[0, 4, 4, 0] = 1.0
    maps[0, 4, 5, 0] = 0.5  # right neighbour higher -> +0.25 in x
    maps[0, 3, 4, 0] = 0.4  # upper neighbour higher -> -0.25 in y
    maps[0, 0, 7, 1] = 1.0  # on the border: no shift
    maps[0, 0, 3, 2] = 1.0  # on the top border, interior in x: no shift either (Torch rule)
    maps[0, 0, 4, 2] = 0.5
    coords, _ = decode_heatmaps(maps)
    np.testing.assert_allclose(
        ops.convert_to_numpy(coords)[0], [[4.25, 3.75], [7.0, 0.0], [3.0, 0.0]]
    )


def test_flip_heatmaps_and_joints_agree():
    joints = np.array([[[10.0, 20.0]] * 16]) + np.arange(16)[None, :, None]
    visible = np.ones((1, 16))
    maps = render_heatmaps(joints, visible, 64)
    perm = MPII.flip_permutation
    fj = np.stack([63.0 - joints[..., 0], joints[..., 1]], axis=-1)[:, perm]  # mirror, swap sides
    fv = visible[:, perm]
    np.testing.assert_allclose(
        ops.convert_to_numpy(flip_heatmaps(maps, MPII.flip_permutation)),
        ops.convert_to_numpy(render_heatmaps(fj, fv, 64)),
        atol=1e-6,
    )
    # flipping twice is the identity
    twice = flip_heatmaps(flip_heatmaps(maps, MPII.flip_permutation), MPII.flip_permutation)
    np.testing.assert_allclose(ops.convert_to_numpy(twice), ops.convert_to_numpy(maps))
