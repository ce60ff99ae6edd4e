"""Crop geometry: the person box around (centre, scale) and its affine maps to and from crops.

Coordinate convention used everywhere in hgkeras:

* Points are (x, y) in **0-based pixel-centre** coordinates: the centre of pixel (row i, column j) is
  (x=j, y=i), and an image of width W spans x in [-0.5, W - 0.5].
* MPII and FLIC annotation files use 1-based MATLAB pixels; readers subtract :data:`MATLAB_OFFSET`
  on the way in and writers of MATLAB-layout files add it back.
* A person box is centred on ``center``; its height is ``200 * scale`` and it has the output grid's
  aspect ratio (a square for 256x256, width = 0.75 x height for 256x192), so pixels stay square.
  It maps onto the whole output grid: the box's edges land on the grid's outer pixel edges, so the same
  formula gives the input crop and the heatmap grid.

``crop_matrix`` (numpy, one box) serves OpenCV warps on the CPU; ``crop_matrices`` and
``transform_points`` (``keras.ops``, batched) run inside models on every backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Pixels per unit of MPII/FLIC ``scale``: the person box side is ``PIXELS_PER_SCALE * scale``.
PIXELS_PER_SCALE = 200.0
#: Added to 0-based coordinates to get MATLAB's 1-based pixels.
MATLAB_OFFSET = 1.0


def _size_hw(output_size: int | Sequence[int]) -> tuple[float, float]:
    if isinstance(output_size, (int, np.integer)):
        return float(output_size), float(output_size)
    h, w = output_size[:2]
    return float(h), float(w)


def crop_matrix(
    center: Sequence[float],
    scale: float,
    output_size: int | Sequence[int],
    rotation: float = 0.0,
    flip: bool = False,
) -> np.ndarray:
    """The 2x3 float64 affine map from image coordinates to the crop of the person box.

    Args:
        center: box centre (x, y) in 0-based image pixels.
        scale: box height / 200 px (the box has the aspect ratio of ``output_size``).
        output_size: crop size in pixels (int for square, or (height, width)).
        rotation: degrees; the crop shows the image content turned counter-clockwise by this angle
            about the box centre (OpenCV's ``getRotationMatrix2D`` convention).
        flip: mirror the crop horizontally (after rotation).

    ``cv2.warpAffine(image, crop_matrix(...), (w, h), flags=cv2.INTER_LINEAR)`` produces the crop.
    """
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    h, w = _size_hw(output_size)
    side = PIXELS_PER_SCALE * float(scale)
    sx = sy = h / side
    theta = math.radians(rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    # q = S R (p - c) + (size/2 - 0.5); R turns image content by -rotation (y axis points down).
    linear = np.array([[sx * cos, sx * sin], [-sy * sin, sy * cos]], dtype=np.float64)
    offset = np.array([w / 2.0 - 0.5, h / 2.0 - 0.5]) - linear @ np.asarray(center, np.float64)
    matrix = np.concatenate([linear, offset[:, None]], axis=1)
    if flip:
        mirror = np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        matrix = (mirror @ np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    return matrix


def invert_matrix(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (numpy), e.g. crop -> image."""
    full = np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to points (..., 2) (numpy)."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def crop_matrices(center, scale, output_size: int | Sequence[int], rotation=None):
    """Batched ``crop_matrix`` in ``keras.ops``: centre (N, 2), scale (N,), rotation (N,) degrees -> (N, 2, 3)."""
    from keras import ops  # here: the numpy helpers (prediction files) need no Keras

    h, w = _size_hw(output_size)
    center = ops.cast(ops.convert_to_tensor(center), "float32")
    scale = ops.cast(ops.convert_to_tensor(scale), "float32")
    side = PIXELS_PER_SCALE * scale
    sx = sy = h / side
    if rotation is None:
        cos, sin = ops.ones_like(scale), ops.zeros_like(scale)
    else:
        theta = ops.cast(ops.convert_to_tensor(rotation), "float32") * (math.pi / 180.0)
        cos, sin = ops.cos(theta), ops.sin(theta)
    a, b = sx * cos, sx * sin
    c, d = -sy * sin, sy * cos
    cx, cy = center[:, 0], center[:, 1]
    tx = (w / 2.0 - 0.5) - (a * cx + b * cy)
    ty = (h / 2.0 - 0.5) - (c * cx + d * cy)
    row0 = ops.stack([a, b, tx], axis=-1)
    row1 = ops.stack([c, d, ty], axis=-1)
    return ops.stack([row0, row1], axis=1)


def invert_matrices(matrices):
    """Batched inverse of (N, 2, 3) affine matrices in ``keras.ops``."""
    from keras import ops  # here: the numpy helpers (prediction files) need no Keras

    matrices = ops.cast(ops.convert_to_tensor(matrices), "float32")
    a, b, tx = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
    c, d, ty = matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2]
    det = a * d - b * c
    ia, ib = d / det, -b / det
    ic, id_ = -c / det, a / det
    itx = -(ia * tx + ib * ty)
    ity = -(ic * tx + id_ * ty)
    row0 = ops.stack([ia, ib, itx], axis=-1)
    row1 = ops.stack([ic, id_, ity], axis=-1)
    return ops.stack([row0, row1], axis=1)


def transform_points(matrices, points):
    """Apply (N, 2, 3) affine matrices to points (N, J, 2) in ``keras.ops``."""
    from keras import ops  # here: the numpy helpers (prediction files) need no Keras

    matrices = ops.cast(ops.convert_to_tensor(matrices), "float32")
    points = ops.cast(ops.convert_to_tensor(points), "float32")
    linear = matrices[:, :, :2]  # (N, 2, 2)
    offset = matrices[:, :, 2]  # (N, 2)
    return ops.einsum("nij,nkj->nki", linear, points) + offset[:, None, :]


def heatmap_to_image(points, center, scale, heatmap_size: int | Sequence[int]):
    """Map heatmap coordinates (N, J, 2) back to original image pixels through the inverse crop."""
    inverse = invert_matrices(crop_matrices(center, scale, heatmap_size))
    return transform_points(inverse, points)


def image_to_heatmap(points, center, scale, heatmap_size: int | Sequence[int]):
    """Map original image pixels (N, J, 2) to heatmap coordinates of the person box."""
    return transform_points(crop_matrices(center, scale, heatmap_size), points)


def box_to_center_scale(
    box: Sequence[float], padding: float = 1.25, aspect_ratio: float = 1.0
) -> tuple[np.ndarray, float]:
    """A person box (x1, y1, x2, y2) -> (centre, scale) of the crop box that holds it, padded.

    The crop box has ``aspect_ratio`` = width / height (that of the model input: 1 for 256x256,
    0.75 for 256x192): the person box is first widened or heightened to that ratio about its centre,
    then both sides are multiplied by ``padding`` (1.25, the Torch code's enlargement of MPII's
    person scale and the usual top-down COCO padding). ``scale`` is the crop box height / 200.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        raise ValueError(
            f"box must be finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {box!r}"
        )
    if not (math.isfinite(aspect_ratio) and aspect_ratio > 0):
        raise ValueError(f"aspect_ratio must be a positive finite number, got {aspect_ratio!r}")
    center = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0])
    height = max(y2 - y1, (x2 - x1) / aspect_ratio) * padding
    return center, height / PIXELS_PER_SCALE
