"""The person crop, once per runtime: numpy/OpenCV (prediction, evaluation on image files) and TensorFlow
ops (tf.data, the exported SavedModel graph). Both follow the one policy of ``docs/architecture.md``
and compute the same pixels:

1. The person box (:mod:`hgkeras.geometry`: centre, height ``200 * scale``, the output's aspect ratio)
   maps onto the whole output grid; ``f = 200 * scale / output height`` image pixels per crop pixel.
2. Shrink: with ``n = floor(f) >= 2`` the image is first reduced by averaging each ``n x n`` block of
   pixels (blocks aligned to the image's top-left corner; the image is extended with zeros to a
   whole number of blocks). Block ``(i, j)`` stands at image point ``(n j + (n - 1) / 2, n i + (n - 1) / 2)``.
3. Warp: the crop samples the (shrunk) image bilinearly at the box's pixel centres, with zero outside
   the image. At most 2 (shrunk) image pixels per crop pixel remain, so the warp does not alias.
   Sample positions are rounded to the nearest 1/32 of a (shrunk) pixel, as OpenCV's warps do.

Integer images come back rounded half up to their own dtype, once, after shrink and warp: a crop pixel
is ``floor(sum(w_k * S_k) / (1024 n^2) + 1/2)`` over the 4 neighbouring block sums ``S_k`` with
integer weights ``w_k`` (the products of ``32 - t`` and ``t`` for the 1/32 fractions ``t``; they sum to
1024). Both runtimes evaluate this exactly (integers, or floats where every step is exact), so their
uint8 crops are equal bit for bit on every machine. The sample positions come from
:func:`_positions`, one float64 formula for both. :func:`crop_tf` returns float32 in the image's value
range (for integer images, those rounded values).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from hgkeras import geometry

#: Sample positions are rounded to 1 / SUBPIXEL of a (shrunk) image pixel (OpenCV's INTER_TAB_SIZE).
SUBPIXEL = 32
#: Image values summed at a time while shrinking (bounds the memory and keeps it in cache).
_BAND_VALUES = 1 << 20


def output_hw(output_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of an int (square) or (height, width) output size."""
    if isinstance(output_size, (int, np.integer)):
        return int(output_size), int(output_size)
    return int(output_size[0]), int(output_size[1])


def shrink_factor(scale: float, output_size: int | Sequence[int]) -> int:
    """The block size ``n = max(1, floor(200 * scale / output height))`` of the shrinking step."""
    height, _ = output_hw(output_size)
    return max(1, int(math.floor(_step(float(scale), height))))


def _step(scale, height: int):
    """Image pixels per crop pixel, ``200 * scale / height`` (a float or a float64 tensor)."""
    return geometry.PIXELS_PER_SCALE * scale / height


def _positions(center, offsets, step, n, floor):
    """Sample positions along one axis in 1/32 shrunk pixels (integer-valued float64).

    ``offsets`` are the crop pixels' offsets from the crop centre (``u - (length / 2 - 0.5)``, exact);
    ``center`` (the box centre on this axis), ``step`` and ``n`` are float64 (numpy or TensorFlow) and
    ``floor`` numpy's or TensorFlow's. The one float64 formula of both runtimes, evaluated op by op in
    the same order, so both get the same integers.
    """
    image = center + offsets * step  # image pixels
    shrunk = (image - (n - 1.0) / 2.0) / n
    return floor(shrunk * SUBPIXEL + 0.5)


@functools.lru_cache(maxsize=32)
def _offsets(out_h: int, out_w: int) -> np.ndarray:
    """Crop pixel offsets from the crop centre: the ``out_w`` columns, then the ``out_h`` rows."""
    offsets = np.concatenate(
        [np.arange(out_w) - (out_w / 2.0 - 0.5), np.arange(out_h) - (out_h / 2.0 - 0.5)]
    )
    offsets.flags.writeable = False
    return offsets


def _block_sums(image: np.ndarray, y0: int, x0: int, rows: int, cols: int, n: int) -> np.ndarray:
    """Exact sums of ``rows x cols`` blocks of ``n x n`` pixels from image pixel (y0, x0) >= 0: int32
    for uint8 images, else float64.

    Pixels beyond the image's bottom/right edge count as zero. The sums are differences of OpenCV's
    integral image at the block corners, taken in bands of rows so that memory stays bounded
    whatever the image size.
    """
    import cv2

    region = image[y0 : y0 + rows * n, x0 : x0 + cols * n]
    if region.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        region = region.astype(np.float64)
    uint8 = region.dtype == np.uint8
    depth = cv2.CV_32S if uint8 else cv2.CV_64F
    channels = region.shape[2:]
    out = np.empty((rows, cols) + channels, np.int32 if uint8 else np.float64)
    corner_x = np.minimum(np.arange(cols + 1) * n, region.shape[1])
    band = max(1, _BAND_VALUES // (n * n * cols * max(1, int(np.prod(channels)))))
    for r0 in range(0, rows, band):
        r1 = min(rows, r0 + band)
        part = region[r0 * n : r1 * n]
        integral = cv2.integral(part, sdepth=depth)
        integral = integral.reshape(integral.shape[:2] + channels)  # OpenCV drops a lone channel
        # the integral at the block corners; a partial last block ends at the region's edge
        corner_y = np.minimum(np.arange(r1 - r0 + 1) * n, part.shape[0])
        grid = np.take(np.take(integral, corner_y, axis=0), corner_x, axis=1)
        sums = out[r0:r1]  # in place: no band-sized temporaries
        np.subtract(grid[1:, 1:], grid[:-1, 1:], out=sums)
        sums -= grid[1:, :-1]
        sums += grid[:-1, :-1]
    return out


def _span(first: int, last: int, blocks: int) -> tuple[int, int]:
    """The blocks [lo, hi) that samples at indices first .. last (and + 1) read in 0 .. blocks - 1."""
    lo = min(max(first, 0), blocks)
    return lo, max(lo, min(last + 2, blocks))


def crop_numpy(
    image: np.ndarray, center: Sequence[float], scale: float, output_size: int | Sequence[int]
) -> np.ndarray:
    """The person crop of ``image`` (H, W) or (H, W, C), in the image's dtype (bool as uint8 0/255).

    OpenCV's ``remap`` interpolates at the positions of :func:`_positions`; only the box's part of the
    image is read, so time and memory depend on the box, not on the image size.
    """
    import cv2

    out_h, out_w = output_hw(output_size)
    source = image.astype(np.uint8) * 255 if image.dtype == np.bool_ else image
    step = _step(float(scale), out_h)
    n = max(1, int(math.floor(step)))
    centers = np.repeat(np.array([center[0], center[1]], np.float64), (out_w, out_h))
    k = _positions(centers, _offsets(out_h, out_w), step, float(n), np.floor).astype(np.int64)
    index, fraction = k // SUBPIXEL, k % SUBPIXEL  # increasing along each axis
    ix, iy = index[:out_w], index[out_w:]
    height, width = source.shape[:2]
    x0, x1 = _span(int(ix[0]), int(ix[-1]), -(-width // n))
    y0, y1 = _span(int(iy[0]), int(iy[-1]), -(-height // n))
    if x1 == x0 or y1 == y0:  # the box lies outside the image
        return np.zeros((out_h, out_w) + source.shape[2:], source.dtype)
    exact_uint8 = n == 1 and source.dtype == np.uint8  # OpenCV's fixed-point uint8 warp is exact
    if exact_uint8:
        region = source[y0:y1, x0:x1]
    else:
        # float32 holds uint8 block sums (< 2^14 for n <= 8) times the 1/1024 weights exactly, and
        # its rounding of the final quotient stays below the quotient's distance from an integer
        small = source.dtype == np.uint8 and n <= 8
        sums = _block_sums(source, y0 * n, x0 * n, y1 - y0, x1 - x0, n)
        region = sums.astype(np.float32 if small else np.float64)
    # (x, y) int16 pairs relative to the region, built as one little-endian uint32 per pixel;
    # indices are clipped where both neighbours lie outside anyway
    xs = np.minimum(np.maximum(ix - x0, -2), x1 - x0).astype("<u4") & 0xFFFF
    ys = np.minimum(np.maximum(iy - y0, -2), y1 - y0).astype("<u4") << 16
    maps = (ys[:, None] | xs[None, :]).view("<i2").reshape(out_h, out_w, 2)
    fractions = fraction.astype(np.uint16)
    table = (fractions[out_w:] * SUBPIXEL)[:, None] + fractions[None, :out_w]
    crop = cv2.remap(
        region, maps, table, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    if crop.ndim < source.ndim:
        crop = crop[..., None]
    if exact_uint8:
        return crop
    if np.issubdtype(source.dtype, np.integer):
        # floor((V + n^2 / 2) / n^2): round half up, as OpenCV's fixed-point uint8 warp does. The
        # sum is exact; the floor of the rounded quotient is that of the exact one (as in crop_tf)
        crop += n * n / 2.0
        np.floor(np.divide(crop, n * n, out=crop), out=crop)
    else:
        crop /= n * n
    return crop.astype(source.dtype)


def crop_tf(image, center, scale, output_size: int | Sequence[int]):
    """The person crop of ``image`` (H, W, C) as float32 (h, w, C) in the image's value range (TF ops).

    Integer images give :func:`crop_numpy`'s values exactly (rounded); float images its values up to
    float rounding. ``center`` (2,) and ``scale`` () are tensors; works in tf.data and in exported graphs.
    """
    import tensorflow as tf

    out_h, out_w = output_hw(output_size)
    image = tf.convert_to_tensor(image)
    integer = image.dtype.is_integer or image.dtype == tf.bool
    if image.dtype == tf.bool:
        image = tf.cast(image, tf.uint8) * 255
    center = tf.reshape(tf.cast(center, tf.float64), [2])
    scale = tf.reshape(tf.cast(scale, tf.float64), [])
    step = _step(scale, out_h)
    n = tf.maximum(tf.floor(step), 1.0)
    ni = tf.cast(n, tf.int32)

    def axis(coordinate, length):
        offsets = tf.range(length, dtype=tf.float64) - (length / 2.0 - 0.5)
        k = tf.cast(_positions(coordinate, offsets, step, n, tf.floor), tf.int32)
        return k // SUBPIXEL, k % SUBPIXEL  # increasing along the axis

    ix, fx = axis(center[0], out_w)
    iy, fy = axis(center[1], out_h)
    shape = tf.shape(image)

    def span(index, size):
        blocks = -(-size // ni)
        lo = tf.clip_by_value(index[0], 0, blocks)
        return lo, tf.clip_by_value(index[-1] + 2, lo, blocks)

    x0, x1 = span(ix, shape[1])
    y0, y1 = span(iy, shape[0])
    # block sums of the region the samples read (zeros beyond the image); float64 holds them exactly
    region = image[y0 * ni : y1 * ni, x0 * ni : x1 * ni]
    region = tf.cast(region, tf.int32 if integer else tf.float32)
    rows, cols = y1 - y0, x1 - x0
    size = tf.shape(region)
    region = tf.pad(region, [[0, rows * ni - size[0]], [0, cols * ni - size[1]], [0, 0]])
    sums = tf.reduce_sum(tf.reshape(region, [rows, ni, cols, ni, shape[2]]), axis=[1, 3])
    # two zero blocks on each side stand for everything outside the region
    sums = tf.pad(tf.cast(sums, tf.float64), [[2, 2], [2, 2], [0, 0]])
    ry = tf.clip_by_value(iy - y0, -2, rows) + 2
    rx = tf.clip_by_value(ix - x0, -2, cols) + 2
    wx = tf.cast(fx, tf.float64)[None, :, None]
    wy = tf.cast(fy, tf.float64)[:, None, None]

    def across(band):
        return (SUBPIXEL - wx) * tf.gather(band, rx, axis=1) + wx * tf.gather(band, rx + 1, axis=1)

    top, bottom = tf.gather(sums, ry, axis=0), tf.gather(sums, ry + 1, axis=0)
    total = (SUBPIXEL - wy) * across(top) + wy * across(bottom)  # 1024 n^2 x the crop value
    divisor = SUBPIXEL * SUBPIXEL * n * n
    # integers below 2^53 (exact), then crop_numpy's quotient: the same correctly rounded number
    crop = tf.floor((total + divisor / 2.0) / divisor) if integer else total / divisor
    return tf.ensure_shape(tf.cast(crop, tf.float32), [out_h, out_w, None])


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
