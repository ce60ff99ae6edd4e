"""Flip test and decoding of crop heatmaps back to original image pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from keras import ops

from hgkeras import MPII, StackedHourglass, geometry
from hgkeras.codec import DECODERS, HeatmapCodec, flip_heatmaps, render_heatmaps


@pytest.mark.parametrize("decoder", DECODERS)
def test_encode_then_decode_to_image_inverts_the_crop(decoder):
    """Joints in image pixels -> input crop pixels -> targets -> decoded back to image pixels."""
    codec = HeatmapCodec(decoder)
    rng = np.random.default_rng(0)
    centers = rng.uniform(200, 600, (3, 2))
    scales = rng.uniform(1.0, 3.0, 3)
    joints = centers[:, None, :] + rng.uniform(-80, 80, (3, 16, 2)) * scales[:, None, None]
    in_crop = geometry.transform_points(geometry.crop_matrices(centers, scales, 256), joints)
    maps = codec.encode(in_crop, np.ones((3, 16)), 256, 64)
    keypoints, scores = codec.decode_to_image(maps, centers, scales, (256, 256))
    # one heatmap px is 200*scale/64 image px; the paper's decoder rounds to the nearest pixel and
    # moves a quarter, DARK and UDP recover the Gaussian's centre
    err = np.abs(ops.convert_to_numpy(keypoints) - joints) / (200 * scales[:, None, None] / 64)
    assert err.max() <= (0.75 if decoder == "paper" else 0.01)
    assert ops.convert_to_numpy(scores).min() > 0.5


@pytest.mark.parametrize(
    "decoder,expected", [("paper", [41.5, 81.5]), ("udp", [10 * 255 / 63, 20 * 255 / 63])]
)
def test_decode_maps_heatmap_pixels_to_input_pixels(decoder, expected):
    """paper: heatmap pixel j covers input pixels [4j, 4j + 4); udp: outer pixel centres align."""
    maps = render_heatmaps(np.array([[[10.0, 20.0]]]), np.ones((1, 1)), 64)
    coords, _ = HeatmapCodec(decoder).decode(maps, (256, 256))
    np.testing.assert_allclose(ops.convert_to_numpy(coords)[0, 0], expected, atol=1e-4)


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
    codec = HeatmapCodec()
    plain = ops.convert_to_numpy(codec.heatmap_function(model, None, flip=False)(images))
    mirrored = model(images[:, :, ::-1])[0]
    expected = (plain + ops.convert_to_numpy(flip_heatmaps(mirrored, MPII.flip_permutation))) / 2
    np.testing.assert_allclose(
        ops.convert_to_numpy(codec.heatmap_function(model, MPII.flip_permutation)(images)),
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
    out = HeatmapCodec().predict_keypoints(
        model, crops, centers, scales, MPII.flip_permutation, batch_size=2
    )
    k, s = out["keypoints"], out["scores"]
    assert k.shape == (3, 16, 2) and s.shape == (3, 16)
    box_lo = centers[:, None, :] - 100 * scales[:, None, None] - 1
    box_hi = centers[:, None, :] + 100 * scales[:, None, None] + 1
    assert np.all((k >= box_lo) & (k <= box_hi))
