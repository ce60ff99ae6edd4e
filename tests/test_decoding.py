"""Decoding conventions: quarter-pixel shift, confidence, flip test and the inverse crop to MATLAB pixels.

``DECODE`` runs in-process under TensorFlow and, from ``test_callbacks.py``, under jax and torch.
Expected values follow from the definitions in docs/method.md and hgkeras.geometry, worked out in comments.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from keras import ops

DECODE = r"""
import numpy as np
import keras
from keras import ops

from hgkeras import MPII
from hgkeras.evaluation.evaluate import from_matlab, to_matlab
from hgkeras.codec import HeatmapCodec, final_heatmaps

codec = HeatmapCodec()  # the paper's decoder

# 1. argmax + quarter pixel towards the higher neighbour, confidence = peak value (batched N=2, J=2).
maps = np.zeros((2, 8, 8, 2), "float32")
maps[0, 4, 3, 0] = 1.0      # peak at x=3, y=4
maps[0, 4, 4, 0] = 0.5      # right neighbour higher than left (0.2) -> x = 3.25
maps[0, 4, 2, 0] = 0.2
maps[0, 3, 3, 0] = 0.6      # upper neighbour higher than lower (0.1) -> y = 3.75
maps[0, 5, 3, 0] = 0.1
maps[0, 7, 0, 1] = 0.9      # peak on the border (x=0, y=7): no shift
maps[0, 7, 1, 1] = 0.8
maps[0, 6, 0, 1] = 0.7
maps[1, 2, 5, 0] = 0.3      # equal neighbours: no shift
maps[1, 2, 4, 0] = maps[1, 2, 6, 0] = 0.1
maps[1, 1, 1, 1] = 0.4      # left/upper neighbours higher -> (0.75, 0.75)
maps[1, 1, 0, 1] = maps[1, 0, 1, 1] = 0.2
coords, scores = codec.locate(maps)
np.testing.assert_allclose(ops.convert_to_numpy(coords),
                           [[[3.25, 3.75], [0.0, 7.0]], [[5.0, 2.0], [0.75, 0.75]]], atol=1e-6)
np.testing.assert_allclose(ops.convert_to_numpy(scores), [[1.0, 0.9], [0.3, 0.4]], atol=1e-6)

# 2. Inverse crop back to ORIGINAL image pixels, MATLAB 1-based in and out. MPII valid record 0:
#    centre (966, 410.7773184) and scale 5.89810987 (1-based, adjusted). The 64x64 heatmap spans the
#    box of side 200 s edge to edge, so heatmap pixel centre i lies at c0 - 100 s + (i + 0.5) 200 s / 64
#    (0-based); i = 32 gives c0 + 1.5625 s, i.e. c1 + 1.5625 s in 1-based pixels.
center1 = np.array([[966.0, 410.7773184]])
scale = np.array([5.89810987])
peak = np.zeros((1, 64, 64, 1), "float32")
peak[0, 32, 32, 0] = 1.0
image_points, _ = codec.decode_to_image(peak, from_matlab(center1), scale, (256, 256))
expected = center1[0] + 1.5625 * scale[0]
np.testing.assert_allclose(to_matlab(ops.convert_to_numpy(image_points))[0, 0], expected, atol=1e-3)

# 3. Flip test = mean of the plain heatmaps and the mirrored image's heatmaps mirrored back with
#    left/right channels swapped (numpy reference).
inputs = keras.Input((16, 16, 3))
x = keras.layers.Conv2D(16, 3, padding="same", kernel_initializer="glorot_uniform")(inputs)
model = keras.Model(inputs, [keras.layers.AveragePooling2D(4)(x)])
images = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
plain = ops.convert_to_numpy(final_heatmaps(model(images)))
mirrored = ops.convert_to_numpy(final_heatmaps(model(images[:, :, ::-1].copy())))
reference = (plain + mirrored[:, :, ::-1, :][..., MPII.flip_permutation]) / 2
np.testing.assert_allclose(ops.convert_to_numpy(codec.heatmap_function(model, MPII.flip_permutation)(images)),
                           reference,
                           rtol=1e-5, atol=1e-6)

# 4. DARK and UDP recover Gaussians' sub-pixel centres: their blur, log and Taylor step run here too.
from hgkeras.codec import render_heatmaps
centres = np.array([[[20.3, 31.7], [40.8, 12.2]]], "float32")
maps = render_heatmaps(centres, np.ones((1, 2)), 64, 1.5)
for name in ("dark", "udp"):
    coords, _ = HeatmapCodec(name, 1.5).locate(maps)
    np.testing.assert_allclose(ops.convert_to_numpy(coords), centres, atol=0.01)
print("DECODE_OK")
"""


def test_decoding_conventions_tensorflow():
    exec(compile(DECODE, "decode", "exec"), {})


def test_matlab_round_trip_on_real_mpii_annotations(real_data):
    """1-based annot joints -> 0-based -> heatmap -> rendered -> decoded -> 1-based lands within a heatmap px."""
    from hgkeras import geometry
    from hgkeras.codec import HeatmapCodec, render_heatmaps
    from hgkeras.evaluation.evaluate import from_matlab, to_matlab

    with h5py.File(real_data / "mpii" / "valid.h5", "r") as f:
        part, center, scale = f["part"][:8], f["center"][:8], f["scale"][:8]
    visible = (part != 0).any(-1)
    joints0 = from_matlab(part)
    centers0 = from_matlab(center)
    hm = ops.convert_to_numpy(geometry.image_to_heatmap(joints0, centers0, scale, 64))
    maps = render_heatmaps(hm, visible, 64)
    decoded, _ = HeatmapCodec().decode_to_image(maps, centers0, scale, (256, 256))
    decoded1 = to_matlab(ops.convert_to_numpy(decoded))
    inside = visible & (hm >= 0).all(-1) & (hm <= 63).all(-1)
    pixel = 200 * scale[:, None] / 64  # one heatmap pixel in image pixels
    err = np.linalg.norm(decoded1 - part, axis=-1) / pixel
    # rounding to the nearest heatmap pixel (<= 0.5 px per axis) plus a 0.25 px shift: < 0.75 * sqrt 2
    assert inside.sum() > 100
    assert err[inside].max() < 0.75 * np.sqrt(2)


@pytest.mark.parametrize("value", [0.0, 1.0, 640.5])
def test_matlab_helpers_are_inverse(value):
    from hgkeras.evaluation.evaluate import from_matlab, to_matlab

    assert to_matlab(value) == value + 1 and from_matlab(to_matlab(value)) == value
