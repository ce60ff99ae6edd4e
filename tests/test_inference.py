"""Flip test and decoding of crop heatmaps back to original image pixels."""

from __future__ import annotations

import cv2
import numpy as np
from keras import ops

from hgkeras import MPII, StackedHourglass, geometry
from hgkeras.codec import (
    decode_to_image,
    decode_to_input,
    flip_heatmaps,
    heatmaps_with_flip,
    predict_keypoints,
    render_heatmaps,
)


def test_decode_to_image_inverts_the_crop_of_targets():
    rng = np.random.default_rng(0)
    centers = rng.uniform(200, 600, (3, 2))
    scales = rng.uniform(1.0, 3.0, 3)
    joints = centers[:, None, :] + rng.uniform(-80, 80, (3, 16, 2)) * scales[:, None, None]
    hm_joints = geometry.image_to_heatmap(joints, centers, scales, 64)
    maps = render_heatmaps(hm_joints, np.ones((3, 16)), 64)
    keypoints, scores = decode_to_image(maps, centers, scales)
    # decoding error <= 0.25 + rounding in heatmap px; one heatmap px is 200*scale/64 image px
    err = np.abs(ops.convert_to_numpy(keypoints) - joints) / (200 * scales[:, None, None] / 64)
    assert err.max() <= 0.75
    assert ops.convert_to_numpy(scores).min() > 0.5


def test_decode_to_input_scales_heatmap_pixels_to_input_pixels():
    maps = render_heatmaps(np.array([[[10.0, 20.0]]]), np.ones((1, 1)), 64)
    coords, _ = decode_to_input(maps, (256, 256))
    np.testing.assert_allclose(ops.convert_to_numpy(coords)[0, 0], [41.5, 81.5])


class _Identityish:
    """A stand-in 'model' whose heatmaps are a fixed function of the image, to test flip averaging."""

    outputs = [np.zeros((1, 1, 1, 16))]

    def __call__(self, images, training=False):
        images = ops.convert_to_tensor(images)
        small = ops.image.resize(images[..., :1], (8, 8))
        return [ops.tile(small, (1, 1, 1, 16)) * ops.arange(1, 17, dtype="float32")]


def test_flip_test_averages_with_unmirrored_swapped_heatmaps():
    model = _Identityish()
    images = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    plain = ops.convert_to_numpy(heatmaps_with_flip(model, images, None, flip=False))
    mirrored = model(images[:, :, ::-1])[0]
    expected = (plain + ops.convert_to_numpy(flip_heatmaps(mirrored, MPII.flip_permutation))) / 2
    np.testing.assert_allclose(
        ops.convert_to_numpy(heatmaps_with_flip(model, images, MPII.flip_permutation)),
        expected,
        rtol=1e-6,
    )


def test_predict_keypoints_batches_and_maps_to_image():
    model = StackedHourglass(num_stacks=1, num_features=32, image_shape=(64, 64, 3))
    image = np.random.default_rng(1).random((100, 120, 3)).astype("float32")
    centers = np.array([[60.0, 50.0]] * 3)
    scales = np.array([0.4, 0.5, 0.45])
    crops = np.stack(
        [
            cv2.warpAffine(image, geometry.crop_matrix(c, s, 64), (64, 64))
            for c, s in zip(centers, scales, strict=True)
        ]
    )
    out = predict_keypoints(model, crops, centers, scales, MPII.flip_permutation, batch_size=2)
    k, s = out["keypoints"], out["scores"]
    assert k.shape == (3, 16, 2) and s.shape == (3, 16)
    box_lo = centers[:, None, :] - 100 * scales[:, None, None] - 1
    box_hi = centers[:, None, :] + 100 * scales[:, None, None] + 1
    assert np.all((k >= box_lo) & (k <= box_hi))
