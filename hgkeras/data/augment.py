"""Batched data augmentation in ``keras.ops`` (runs on the accelerator under every backend).

The input is a batch of *source crops* from :func:`hgkeras.data.pose_dataset` (training mode): square
crops of side ``source_size`` pixels showing ``source_margin`` person-box sides around the person centre.
Per sample, :func:`sample_params` draws (docs/method.md "Augmentation", following the Torch code):

* rotation: ``clip(30 * N(0, 1), -30, 30)`` degrees on 40 % of samples, else 0;
* scale: ``clip(1 + 0.25 * N(0, 1), 0.75, 1.25)`` (box side multiplier: > 1 zooms out);
* horizontal flip with probability 0.5 (left/right joint labels swapped);
* colour: each RGB channel multiplied by ``U(0.6, 1.4)``, result clipped to [0, 1].

:func:`augmentation_matrices` turns them into one affine map per sample from source-crop pixels to an
output grid (the 256 input or the 64 heatmap grid: the same box maps edge-to-edge onto both, see
:mod:`hgkeras.geometry`), so the image warp and the joint targets agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from hgkeras.geometry import PIXELS_PER_SCALE, crop_matrices, invert_matrices, transform_points

ROTATION_DEGREES = 30.0
ROTATION_PROBABILITY = 0.4
SCALE_SIGMA = 0.25
SCALE_RANGE = (0.75, 1.25)
FLIP_PROBABILITY = 0.5
COLOR_RANGE = (0.6, 1.4)


def sample_params(
    batch_size,
    seed=None,
    *,
    rotation: float = ROTATION_DEGREES,
    rotation_probability: float = ROTATION_PROBABILITY,
    scale_sigma: float = SCALE_SIGMA,
    scale_range: Sequence[float] = SCALE_RANGE,
    flip_probability: float = FLIP_PROBABILITY,
    color_range: Sequence[float] = COLOR_RANGE,
) -> dict:
    """Random augmentation parameters for a batch: rotation (B,) degrees, scale (B,), flip (B,) 0/1,
    color (B, 3). ``seed`` is a ``keras.random.SeedGenerator`` (or int/None)."""
    shape = (batch_size,)
    rot = ops.clip(keras.random.normal(shape, seed=seed) * rotation, -rotation, rotation)
    apply_rot = keras.random.uniform(shape, seed=seed) < rotation_probability
    rot = ops.where(apply_rot, rot, ops.zeros_like(rot))
    scale = ops.clip(
        1.0 + scale_sigma * keras.random.normal(shape, seed=seed), scale_range[0], scale_range[1]
    )
    flip = ops.cast(keras.random.uniform(shape, seed=seed) < flip_probability, "float32")
    color = keras.random.uniform(
        (batch_size, 3), minval=color_range[0], maxval=color_range[1], seed=seed
    )
    return {"rotation": rot, "scale": scale, "flip": flip, "color": color}


def identity_params(batch_size) -> dict:
    """Parameters of no augmentation (rotation 0, scale 1, no flip, colour 1)."""
    ones = ops.ones((batch_size,), "float32")
    return {
        "rotation": ops.zeros((batch_size,), "float32"),
        "scale": ones,
        "flip": ops.zeros((batch_size,), "float32"),
        "color": ops.ones((batch_size, 3), "float32"),
    }


def augmentation_matrices(params: dict, source_size: int, source_margin: float, output_size: int):
    """(B, 2, 3) affine maps from source-crop pixels to an ``output_size`` grid for ``params``.

    The person box (side ``source_size / source_margin`` around the source crop's centre) times the
    sample's scale, turned by its rotation, fills the output grid; flipped samples are mirrored after.
    """
    scale = ops.cast(params["scale"], "float32")
    batch = ops.shape(scale)[0]
    mid = source_size / 2.0 - 0.5
    centers = ops.ones((batch, 2), "float32") * mid
    box_scale = scale * (source_size / source_margin / PIXELS_PER_SCALE)
    m = crop_matrices(centers, box_scale, output_size, rotation=params["rotation"])
    flip = ops.cast(params["flip"], "float32")[:, None]
    # Mirror x' = (w - 1) - x applied after m: row0 -> -row0 + (w - 1) * [0, 0, 1].
    row0 = m[:, 0, :]
    mirrored = ops.stack([-row0[:, 0], -row0[:, 1], (output_size - 1.0) - row0[:, 2]], axis=-1)
    row0 = flip * mirrored + (1.0 - flip) * row0
    return ops.stack([row0, m[:, 1, :]], axis=1)


def warp_images(images, matrices, output_size: int, interpolation: str = "bilinear"):
    """Warp images (B, H, W, C) by (B, 2, 3) maps input -> output pixels to (B, out, out, C) float32.

    Bilinear (or nearest) sampling at pixel centres; samples outside the input are 0, as in the
    Torch code's crop. Values keep the input's range (uint8 input gives floats in [0, 255]).
    Written with four gathers so that it is fast under every backend (Keras' generic
    ``affine_transform`` is slow on PyTorch and computes the full input size).
    """
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
    height, width, channels = (int(d) for d in images.shape[1:])
    inverse = invert_matrices(matrices)  # output -> input
    batch = ops.shape(inverse)[0]
    coords = ops.arange(output_size, dtype="float32")
    ys = ops.repeat(coords, output_size)  # row-major grid
    xs = ops.tile(coords, [output_size])
    sx = inverse[:, 0, 0:1] * xs + inverse[:, 0, 1:2] * ys + inverse[:, 0, 2:3]  # (B, N)
    sy = inverse[:, 1, 0:1] * xs + inverse[:, 1, 1:2] * ys + inverse[:, 1, 2:3]
    # A one-pixel zero border: every sample outside the image reads a border zero, no masks needed.
    # Each sample gathers from its own image only (take_along_axis on the batch axis), so under data
    # parallelism the warp stays local to each device. The gathers read float32 with int64 indices
    # under TensorFlow: its uint8 gathers and int32 arithmetic have no GPU kernels.
    index = "int64" if keras.backend.backend() == "tensorflow" else "int32"
    padded = ops.pad(ops.cast(images, "float32"), ((0, 0), (1, 1), (1, 1), (0, 0)))
    flat = ops.reshape(padded, (batch, (height + 2) * (width + 2), channels))
    row_stride = width + 2

    def columns(x):
        return ops.cast(ops.clip(x, -1.0, float(width)) + 1.0, index)

    def rows(y):
        return ops.cast(ops.clip(y, -1.0, float(height)) + 1.0, index) * row_stride

    def gather(row, col):
        return ops.take_along_axis(flat, (row + col)[:, :, None], axis=1)  # (B, N, C)

    if interpolation == "nearest":
        out = gather(rows(ops.round(sy)), columns(ops.round(sx)))
    else:
        x0, y0 = ops.floor(sx), ops.floor(sy)
        wx, wy = (sx - x0)[:, :, None], (sy - y0)[:, :, None]
        c0, c1 = columns(x0), columns(x0 + 1.0)
        r0, r1 = rows(y0), rows(y0 + 1.0)
        top = gather(r0, c0) * (1.0 - wx) + gather(r0, c1) * wx
        bottom = gather(r1, c0) * (1.0 - wx) + gather(r1, c1) * wx
        out = top * (1.0 - wy) + bottom * wy
    return ops.reshape(out, (batch, output_size, output_size, channels))


def transform_joints(joints, visible, matrices, flip, flip_permutation: Sequence[int]):
    """Joints (B, J, 2) through ``matrices``; for flipped samples swap left/right labels."""
    moved = transform_points(matrices, joints)
    visible = ops.cast(visible, "float32")
    perm = ops.convert_to_tensor(list(flip_permutation), dtype="int32")
    flip = ops.cast(flip, "float32")
    swapped = ops.take(moved, perm, axis=1)
    swapped_visible = ops.take(visible, perm, axis=1)
    moved = flip[:, None, None] * swapped + (1.0 - flip[:, None, None]) * moved
    visible = flip[:, None] * swapped_visible + (1.0 - flip[:, None]) * visible
    return moved, visible


def color_jitter(images, color):
    """Multiply each channel of images (B, H, W, 3) in [0, 1] by ``color`` (B, 3); clip to [0, 1]."""
    return ops.clip(images * color[:, None, None, :], 0.0, 1.0)
