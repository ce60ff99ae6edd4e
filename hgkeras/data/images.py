"""Encoded image files without decoding them: format, size, EXIF orientation and completeness.

One rule for every reader (prepare, predict, evaluate, the serving client): a JPEG is complete when
its marker structure reaches the end-of-image marker, a PNG when its chunks reach ``IEND``; bytes
after that end (a phone's "motion photo" video, padding) are accepted and ignored. A file that stops
before its end is truncated: OpenCV would decode it partly, grey below the cut, without failing.
The size comes from the header, so a decoded-size limit is checked before any pixel is decoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Default decoded-size limit (pixels) of every image reader: 100 megapixels.
DEFAULT_MAX_PIXELS = 100_000_000

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_EXIF_ORIENTATION_TAG = 0x0112
#: In entropy-coded data, 0xFF followed by anything but a stuffed 0x00, RSTn or fill starts a marker.
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")


@dataclass(frozen=True)
class EncodedImage:
    """What the header of an encoded image says.

    Attributes:
        format: "jpeg", "png", "gif", "bmp" or "other" (a format OpenCV may still decode).
        height, width: pixels from the header, or None when the format is not parsed here.
        orientation: the EXIF orientation (1..8; 1 = stored upright; JPEG APP1 and PNG eXIf).
        complete: True when the structure reaches its end marker, False when it is cut short,
            None when the format has no such check here.
        end: byte offset just after the end marker (trailing data starts there), or None.
    """

    format: str
    height: int | None
    width: int | None
    orientation: int = 1
    complete: bool | None = None
    end: int | None = None

    @property
    def transposed(self) -> bool:
        """True when the upright image is the stored one turned by 90 degrees (orientation 5-8)."""
        return self.orientation >= 5


def _tiff_orientation(tiff: bytes) -> int:
    """The orientation tag of the first IFD of a TIFF/EXIF block, 1 when absent or malformed."""
    if tiff[:2] == b"II":
        order = "little"
    elif tiff[:2] == b"MM":
        order = "big"
    else:
        return 1
    if len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    for k in range(int.from_bytes(tiff[ifd : ifd + 2], order)):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            break
        if int.from_bytes(tiff[entry : entry + 2], order) == _EXIF_ORIENTATION_TAG:
            value = int.from_bytes(tiff[entry + 8 : entry + 10], order)  # SHORT, left-justified
            return value if 1 <= value <= 8 else 1
    return 1


def _inspect_jpeg(data: bytes) -> EncodedImage:
    n, pos = len(data), 2
    height = width = None
    orientation = 1
    while True:
        if pos >= n:
            return EncodedImage("jpeg", height, width, orientation, False)
        if data[pos] != 0xFF:
            raise ValueError(f"corrupt JPEG: no marker at byte {pos}")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            return EncodedImage("jpeg", height, width, orientation, False)
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # end of image
            return EncodedImage("jpeg", height, width, orientation, True, pos)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            continue
        if pos + 2 > n:
            return EncodedImage("jpeg", height, width, orientation, False)
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            raise ValueError(f"corrupt JPEG: segment length {length} at byte {pos}")
        end = pos + length
        if end > n:
            return EncodedImage("jpeg", height, width, orientation, False)
        if marker in _SOF_MARKERS and length >= 7 and height is None:
            height = int.from_bytes(data[pos + 3 : pos + 5], "big")
            width = int.from_bytes(data[pos + 5 : pos + 7], "big")
        elif marker == 0xE1 and data[pos + 2 : pos + 8] == b"Exif\x00\x00" and orientation == 1:
            orientation = _tiff_orientation(data[pos + 8 : end])
        pos = end
        if marker == 0xDA:  # entropy-coded scan data up to the next real marker
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                return EncodedImage("jpeg", height, width, orientation, False)
            pos = found.start()


def _inspect_png(data: bytes) -> EncodedImage:
    n, pos = len(data), len(PNG_SIGNATURE)
    height = width = None
    orientation = 1
    while True:
        if pos + 8 > n:
            return EncodedImage("png", height, width, orientation, False)
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length  # length, type, data, CRC
        if end > n:
            return EncodedImage("png", height, width, orientation, False)
        if kind == b"IHDR" and length >= 8:
            width = int.from_bytes(data[pos + 8 : pos + 12], "big")
            height = int.from_bytes(data[pos + 12 : pos + 16], "big")
        elif kind == b"eXIf":
            orientation = _tiff_orientation(data[pos + 8 : pos + 8 + length])
        elif kind == b"IEND":
            return EncodedImage("png", height, width, orientation, True, end)
        pos = end


def inspect_encoded_image(data: bytes) -> EncodedImage:
    """Format, header size, EXIF orientation and completeness of encoded image bytes (no decoding).

    Raises ValueError for an empty input or a JPEG whose marker structure is corrupt.
    """
    data = bytes(data)
    if not data:
        raise ValueError("empty file")
    if data[:2] == b"\xff\xd8":
        return _inspect_jpeg(data)
    if data[:8] == PNG_SIGNATURE:
        return _inspect_png(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width = int.from_bytes(data[6:8], "little")
        height = int.from_bytes(data[8:10], "little")
        return EncodedImage("gif", height, width)
    if data[:2] == b"BM" and len(data) >= 26:
        header = int.from_bytes(data[14:18], "little")
        if header == 12:  # BITMAPCOREHEADER: 16-bit sizes
            width = int.from_bytes(data[18:20], "little")
            height = int.from_bytes(data[20:22], "little")
        else:
            width = abs(int.from_bytes(data[18:22], "little", signed=True))
            height = abs(int.from_bytes(data[22:26], "little", signed=True))
        size = int.from_bytes(data[2:6], "little")
        return EncodedImage("bmp", height, width, complete=len(data) >= size)
    return EncodedImage("other", None, None)


def check_encoded_image(data: bytes) -> str | None:
    """Why encoded bytes are not a usable JPEG/PNG (empty, other format, truncated), or None.

    Structure only, no decoding (the check ``hgkeras prepare`` applies to every image);
    :func:`validate_encoded_image` is the raising form for all formats with a size limit.
    """
    try:
        info = inspect_encoded_image(data)
    except ValueError as error:
        return str(error)
    if info.format not in ("jpeg", "png"):
        return "not a JPEG or PNG file"
    if not info.complete:
        return _truncated(info)
    return None


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) of JPEG/PNG bytes checked to be complete and decodable, else ValueError.

    JPEGs are decoded at 1/8 scale (libjpeg reads all of the compressed data but skips most of the
    inverse transform, about twice as fast); the size comes from the frame header.
    """
    import cv2
    import numpy as np

    problem = check_encoded_image(data)
    if problem:
        raise ValueError(problem)
    info = inspect_encoded_image(data)
    flags = cv2.IMREAD_REDUCED_GRAYSCALE_8 if info.format == "jpeg" else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None or not info.height or not info.width:
        raise ValueError("could not be decoded")
    return info.height, info.width


def _truncated(info: EncodedImage) -> str:
    end = {"jpeg": "end-of-image marker", "png": "IEND chunk"}.get(info.format, "end")
    return f"truncated {info.format.upper()} (the data stops before its {end})"


def validate_encoded_image(
    data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS, allow_truncated: bool = False
) -> EncodedImage:
    """:func:`inspect_encoded_image`, raising ValueError for a truncated file or one too large.

    Truncated JPEG/PNG/BMP files are errors unless ``allow_truncated``; trailing bytes after a
    complete image are accepted. ``max_pixels`` (None = no limit) bounds height x width read from
    the header; formats whose header is not parsed here are checked after decoding
    (:func:`check_pixel_limit`).
    """
    info = inspect_encoded_image(data)
    if info.complete is False and not allow_truncated:
        raise ValueError(_truncated(info))
    if info.height is not None and info.width is not None:
        check_pixel_limit(info.height, info.width, max_pixels)
    return info


def check_pixel_limit(height: int, width: int, max_pixels: int | None) -> None:
    """Raise ValueError when a ``height`` x ``width`` image exceeds ``max_pixels`` (None = no limit)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size {width}x{height} in the header is not a valid size")
    if max_pixels is not None and height * width > max_pixels:
        raise ValueError(
            f"image is {width}x{height} = {height * width / 1e6:.1f} MP, above the decoded-size "
            f"limit of {max_pixels / 1e6:g} MP (max_pixels={max_pixels}; raise it to read it)"
        )


def encoded_image_size_tf(image_bytes):
    """(height, width) int64 of one encoded JPEG/PNG/GIF/BMP from its header, as TensorFlow ops.

    Nothing is decoded (JPEG: ``tf.image.extract_jpeg_shape``; PNG/GIF/BMP: the header fields),
    so limits can be checked before the decoder allocates the image. Other bytes fail with
    InvalidArgumentError.
    """
    import tensorflow as tf

    head = tf.cast(tf.io.decode_raw(tf.strings.substr(image_bytes, 0, 26), tf.uint8), tf.int64)
    head = tf.pad(head, [[0, 26 - tf.shape(head)[0]]])

    def big(i):  # big-endian uint32 at byte i
        return head[i] * 2**24 + head[i + 1] * 2**16 + head[i + 2] * 2**8 + head[i + 3]

    def little(i, n):  # little-endian unsigned integer of n bytes at byte i
        return sum(head[i + k] * 2 ** (8 * k) for k in range(n))

    def bmp():
        core = tf.equal(little(14, 4), 12)  # BITMAPCOREHEADER: 16-bit sizes
        width = tf.where(core, little(18, 2), little(18, 4))
        height = tf.where(core, little(20, 2), little(22, 4))
        height = tf.where(height >= 2**31, 2**32 - height, height)  # negative: top-down rows
        return tf.stack([height, width])

    prefix = tf.strings.substr(image_bytes, 0, 2)
    png = tf.equal(tf.strings.substr(image_bytes, 0, 8), b"\x89PNG\r\n\x1a\n")
    gif = tf.equal(tf.strings.substr(image_bytes, 0, 4), b"GIF8")
    known = tf.io.is_jpeg(image_bytes) | png | gif | tf.equal(prefix, b"BM")
    check = tf.debugging.Assert(
        known, ["image_bytes: not a JPEG, PNG, GIF or BMP image"], name="image_format"
    )
    with tf.control_dependencies([check]):
        return tf.case(
            [
                (tf.io.is_jpeg(image_bytes),
                 lambda: tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2], tf.int64)),
                (png, lambda: tf.stack([big(20), big(16)])),
                (gif, lambda: tf.stack([little(8, 2), little(6, 2)])),
            ],
            default=bmp,
        )  # fmt: skip
