"""Batched data augmentation in ``keras.ops`` (runs on the accelerator under every backend).

The input is a batch of *source crops* from :func:`hgkeras.data.pose_dataset` (training mode): square
crops of side ``source_size`` pixels showing ``source_margin`` person-box sides around the person centre.
Per sample, :func:`sample_params` draws what an :class:`Augmentation` describes; the default is the law
of the Torch code that produced the paper's numbers (docs/method.md "Augmentation";
pose-hg-train ``src/util/pose.lua``), with ``rnd(x) = clamp(x * N(0, 1), -2x, 2x)``:

* rotation ``rnd(30)`` degrees (so up to 60) on 40 % of samples, else 0;
* scale ``2 ** rnd(0.25)`` (box side multiplier from 0.707 to 1.414: > 1 zooms out);
* horizontal flip with probability 0.5 (left/right joint labels swapped);
* colour: each RGB channel multiplied by ``U(0.6, 1.4)``, result clipped to [0, 1].

:func:`augmentation_matrices` turns them into one affine map per sample from source-crop pixels to an
output grid (the 256 input or the 64 heatmap grid: the same box maps edge-to-edge onto both, see
:mod:`hgkeras.geometry`), so the image warp and the joint targets agree exactly.

Importing this module does not load Keras (the training configuration reads :class:`Augmentation`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hgkeras.geometry import PIXELS_PER_SCALE, crop_matrices, invert_matrices, transform_points

#: How a draw ``z`` becomes a scale: "power2" ``2 ** z`` (Torch), "linear" ``1 + z``.
SCALE_LAWS = ("power2", "linear")
#: The draw behind rotation and scale: "normal" ``spread * N(0, 1)``, "uniform" ``spread * U(-1, 1)``.
DISTRIBUTIONS = ("normal", "uniform")


@dataclass(frozen=True)
class Augmentation:
    """A law of random augmentation; the defaults are the Torch code's (pose-hg-train).

    Rotation and scale each draw ``z = clip(spread * Z, -limit, limit)``, ``Z`` from ``distribution``.

    Attributes:
        rotation: rotation spread in degrees.
        rotation_limit: largest rotation in degrees (Torch: twice the spread).
        rotation_probability: share of samples that are rotated (the others keep 0).
        scale: scale spread (of the exponent for "power2").
        scale_limit: largest ``|z|`` of the scale draw.
        scale_law: "power2" (scale ``2 ** z``) or "linear" (scale ``1 + z``).
        distribution: "normal" or "uniform" draw of ``Z``.
        flip_probability: share of samples mirrored (left/right labels swapped).
        color_range: each RGB channel is multiplied by a factor from U(low, high).
    """

    rotation: float = 30.0
    rotation_limit: float = 60.0
    rotation_probability: float = 0.4
    scale: float = 0.25
    scale_limit: float = 0.5
    scale_law: str = "power2"
    distribution: str = "normal"
    flip_probability: float = 0.5
    color_range: tuple[float, float] = (0.6, 1.4)

    def __post_init__(self) -> None:
        given = self.color_range
        try:
            low, high = (float(v) for v in given)
        except (TypeError, ValueError):
            low, high = -1.0, -1.0  # refused below
        object.__setattr__(self, "color_range", (low, high))
        for name in ("rotation", "rotation_limit", "scale", "scale_limit"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"augmentation {name} must be a number >= 0, got {value!r}")
        for name in ("rotation_probability", "flip_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"augmentation {name} must be in [0, 1], got {getattr(self, name)!r}"
                )
        for name, allowed in (("scale_law", SCALE_LAWS), ("distribution", DISTRIBUTIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"augmentation {name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.scale_range[0] <= 0:
            raise ValueError(f"augmentation scale_limit {self.scale_limit} allows scales <= 0")
        if not 0.0 <= low <= high:
            raise ValueError(
                f"augmentation color_range must be (low, high) with 0 <= low <= high, got {given!r}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Augmentation:
        """An :class:`Augmentation` from its fields (unknown names are an error naming them)."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown augmentation settings {unknown}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The fields, JSON-ready."""
        return {**dataclasses.asdict(self), "color_range": list(self.color_range)}

    def _largest(self, spread: float, limit: float) -> float:
        return min(spread, limit) if self.distribution == "uniform" else limit

    @property
    def largest_rotation(self) -> float:
        """The largest rotation in degrees the law draws (0 when nothing is rotated)."""
        if self.rotation_probability == 0:
            return 0.0
        return self._largest(self.rotation, self.rotation_limit)

    @property
    def scale_range(self) -> tuple[float, float]:
        """The smallest and largest scale the law draws."""
        z = self._largest(self.scale, self.scale_limit)
        if self.scale_law == "power2":
            return 2.0**-z, 2.0**z
        return 1.0 - z, 1.0 + z

    def required_margin(self) -> float:
        """Source-crop side, in person-box sides, that holds every sample this law draws: the
        largest scale times the widest extent of the box turned by up to the largest rotation."""
        angle = math.radians(min(self.largest_rotation, 45.0))  # |cos| + |sin| peaks at 45 degrees
        return self.scale_range[1] * (math.cos(angle) + math.sin(angle))


def sample_params(batch_size, seed=None, augmentation: Augmentation | None = None) -> dict:
    """Random augmentation parameters for a batch: rotation (B,) degrees, scale (B,), flip (B,) 0/1,
    color (B, 3), drawn by ``augmentation`` (default: the Torch code's law). ``seed`` is a
    ``keras.random.SeedGenerator`` (or int/None)."""
    import keras
    from keras import ops

    law = augmentation or Augmentation()
    shape = (batch_size,)

    def spread(amount: float, limit: float):
        if law.distribution == "normal":
            z = keras.random.normal(shape, seed=seed)
        else:
            z = keras.random.uniform(shape, minval=-1.0, maxval=1.0, seed=seed)
        return ops.clip(z * amount, -limit, limit)

    rot = spread(law.rotation, law.rotation_limit)
    apply_rot = keras.random.uniform(shape, seed=seed) < law.rotation_probability
    rot = ops.where(apply_rot, rot, ops.zeros_like(rot))
    z = spread(law.scale, law.scale_limit)
    scale = ops.power(2.0, z) if law.scale_law == "power2" else 1.0 + z
    flip = ops.cast(keras.random.uniform(shape, seed=seed) < law.flip_probability, "float32")
    low, high = law.color_range
    color = keras.random.uniform((batch_size, 3), minval=low, maxval=high, seed=seed)
    return {"rotation": rot, "scale": scale, "flip": flip, "color": color}


def identity_params(batch_size) -> dict:
    """Parameters of no augmentation (rotation 0, scale 1, no flip, colour 1)."""
    from keras import ops

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
    from keras import ops

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
    import keras
    from keras import ops

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
    from keras import ops

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
    from keras import ops

    return ops.clip(images * color[:, None, None, :], 0.0, 1.0)
