"""The person crop, once per runtime: numpy/OpenCV (prediction, evaluation on image files) and TensorFlow
ops (tf.data, the exported SavedModel graph). Both follow the one policy of ``docs/architecture.md``:

1. The person box (:mod:`hgkeras.geometry`: centre, height ``200 * scale``, the output's aspect ratio)
   maps onto the whole output grid; ``f = 200 * scale / output height`` image pixels per crop pixel.
2. Shrink: with ``n = floor(f) >= 2`` the image is first reduced by averaging each ``n x n`` block of
   pixels (blocks aligned to the image's top-left corner; the image is extended with zeros to a
   whole number of blocks). Block ``(i, j)`` stands at image point ``(n j + (n - 1) / 2, n i + (n - 1) / 2)``.
3. Warp: the crop samples the (shrunk) image bilinearly at the box's pixel centres, with zero outside
   the image. At most 2 (shrunk) image pixels per crop pixel remain, so the warp does not alias.

Integer images come back rounded to their own dtype; :func:`crop_tf` returns float32 in the image's
value range (the caller casts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hgkeras import geometry

#: Margin in shrunk pixels kept around the box when only the box's part of an image is shrunk.
_MARGIN_BLOCKS = 2
#: Image values converted to float32 at a time while shrinking (bounds the memory used).
_BAND_VALUES = 1 << 22


def output_hw(output_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of an int (square) or (height, width) output size."""
    if isinstance(output_size, (int, np.integer)):
        return int(output_size), int(output_size)
    return int(output_size[0]), int(output_size[1])


def shrink_factor(scale: float, output_size: int | Sequence[int]) -> int:
    """The block size ``n = max(1, floor(200 * scale / output height))`` of the shrinking step."""
    height, _ = output_hw(output_size)
    return max(1, int(math.floor(geometry.PIXELS_PER_SCALE * float(scale) / height)))


def shrunk_matrix(center: Sequence[float], scale: float, output_size, factor: int) -> np.ndarray:
    """The 2x3 map from pixels of the image shrunk by ``factor`` to the crop (numpy)."""
    to_image = np.array(
        [[factor, 0.0, (factor - 1) / 2.0], [0.0, factor, (factor - 1) / 2.0], [0.0, 0.0, 1.0]]
    )
    matrix = geometry.crop_matrix(center, scale, output_hw(output_size))
    return (np.vstack([matrix, [0.0, 0.0, 1.0]]) @ to_image)[:2]


def _block_mean(image: np.ndarray, y0: int, x0: int, rows: int, cols: int, n: int) -> np.ndarray:
    """float32 means of ``rows x cols`` blocks of ``n x n`` pixels from image pixel (y0, x0) >= 0.

    Pixels beyond the image's bottom/right edge count as zero (partial blocks are divided by n^2
    too). Whole blocks are averaged by OpenCV's area resize (exact for an integer factor) in bands
    of rows converted to float32, so memory stays bounded whatever the image size.
    """
    import cv2

    region = image[y0 : y0 + rows * n, x0 : x0 + cols * n]
    height, width = region.shape[:2]
    full_rows, full_cols = height // n, width // n
    channels = image.shape[2:]
    out = np.zeros((rows, cols) + channels, np.float32)
    if full_rows and full_cols:
        step = max(1, _BAND_VALUES // (n * n * full_cols * max(1, int(np.prod(channels)))))
        for r0 in range(0, full_rows, step):
            r1 = min(full_rows, r0 + step)
            band = region[r0 * n : r1 * n, : full_cols * n].astype(np.float32)
            small = cv2.resize(band, (full_cols, r1 - r0), interpolation=cv2.INTER_AREA)
            out[r0:r1, :full_cols] = small.reshape((r1 - r0, full_cols) + channels)
    area = float(n * n)
    if width % n:  # partial blocks on the right edge
        strip = region[: full_rows * n, full_cols * n :].astype(np.float32)
        shape = (full_rows, n, width % n) + channels
        out[:full_rows, full_cols] = strip.reshape(shape).sum(axis=(1, 2)) / area
    if height % n:  # partial blocks on the bottom edge
        sums = region[full_rows * n :].astype(np.float32).sum(axis=0)
        whole = sums[: full_cols * n].reshape((full_cols, n) + channels).sum(axis=1)
        out[full_rows, :full_cols] = whole / area
        if width % n:
            out[full_rows, full_cols] = sums[full_cols * n :].sum(axis=0) / area
    return out


def crop_numpy(
    image: np.ndarray, center: Sequence[float], scale: float, output_size: int | Sequence[int]
) -> np.ndarray:
    """The person crop of ``image`` (H, W) or (H, W, C), in the image's dtype (bool as uint8 0/255).

    OpenCV's ``warpAffine`` does the bilinear warp; only the box's part of the image is shrunk, so
    time and memory depend on the box, not on the image size.
    """
    import cv2

    out_h, out_w = output_hw(output_size)
    source = image.astype(np.uint8) * 255 if image.dtype == np.bool_ else image
    n = shrink_factor(scale, (out_h, out_w))
    if n == 1:
        matrix = geometry.crop_matrix(center, scale, (out_h, out_w))
        dtype = None
    else:
        half_h = geometry.PIXELS_PER_SCALE * float(scale) / 2.0
        half_w = half_h * out_w / out_h
        cx, cy = float(center[0]), float(center[1])
        # Blocks around the box that hold image pixels (the warp's zero border stands for the rest).
        height, width = source.shape[:2]
        bx0 = max(0, int(math.floor((cx - half_w) / n)) - _MARGIN_BLOCKS)
        by0 = max(0, int(math.floor((cy - half_h) / n)) - _MARGIN_BLOCKS)
        bx1 = min(-(-width // n), int(math.ceil((cx + half_w) / n)) + _MARGIN_BLOCKS)
        by1 = min(-(-height // n), int(math.ceil((cy + half_h) / n)) + _MARGIN_BLOCKS)
        if bx1 <= bx0 or by1 <= by0:  # the box lies outside the image
            return np.zeros((out_h, out_w) + source.shape[2:], source.dtype)
        dtype = source.dtype
        source = _block_mean(source, by0 * n, bx0 * n, by1 - by0, bx1 - bx0, n)
        shift = np.array([[1.0, 0.0, bx0], [0.0, 1.0, by0], [0.0, 0.0, 1.0]])  # region -> shrunk
        matrix = shrunk_matrix(center, scale, (out_h, out_w), n) @ shift
    crop = cv2.warpAffine(
        source,
        matrix,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if crop.ndim < source.ndim:
        crop = crop[..., None]
    if dtype is not None and np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        crop = np.clip(np.rint(crop), info.min, info.max).astype(dtype)
    elif dtype is not None:
        crop = crop.astype(dtype)
    return crop


def crop_tf(image, center, scale, output_size: int | Sequence[int]):
    """The person crop of ``image`` (H, W, C) as float32 (h, w, C) in the image's value range (TF ops).

    ``center`` (2,) and ``scale`` () are tensors; works in tf.data and in exported graphs.
    """
    import tensorflow as tf

    out_h, out_w = output_hw(output_size)
    image = tf.cast(image, tf.float32)
    center = tf.reshape(tf.cast(center, tf.float32), [2])
    scale = tf.reshape(tf.cast(scale, tf.float32), [])
    n = tf.maximum(tf.floor(geometry.PIXELS_PER_SCALE * scale / out_h), 1.0)
    ni = tf.cast(n, tf.int32)
    shape = tf.shape(image)
    rows, cols = -(-shape[0] // ni), -(-shape[1] // ni)
    padded = tf.pad(image, [[0, rows * ni - shape[0]], [0, cols * ni - shape[1]], [0, 0]])
    shrunk = tf.reduce_mean(tf.reshape(padded, [rows, ni, cols, ni, shape[2]]), axis=[1, 3])
    # crop -> image (inverse of the crop matrix), then image -> shrunk: q = (p - (n - 1) / 2) / n
    matrix = geometry.crop_matrices(center[None], scale[None], (out_h, out_w))
    inverse = tf.reshape(geometry.invert_matrices(matrix), [2, 3])
    half = (n - 1.0) / 2.0
    to_shrunk = tf.concat([inverse[:, :2] / n, (inverse[:, 2:] - half) / n], axis=1)
    transform = tf.concat([tf.reshape(to_shrunk, [1, 6]), tf.zeros([1, 2])], axis=1)
    crop = tf.raw_ops.ImageProjectiveTransformV3(
        images=shrunk[None],
        transforms=transform,
        output_shape=tf.constant([out_h, out_w], tf.int32),
        fill_value=tf.constant(0.0),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    return tf.ensure_shape(crop, [out_h, out_w, None])


def decode_image_tf(encoded):
    """Decode an encoded image (JPEG, PNG, BMP, GIF first frame) to RGB uint8 (H, W, 3) in TF.

    JPEGs use the accurate integer DCT, as OpenCV and PIL do, so pixels match ``cv2.imread``.
    """
    import tensorflow as tf

    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.ensure_shape(
            tf.io.decode_image(encoded, channels=3, expand_animations=False), [None, None, 3]
        ),
    )
