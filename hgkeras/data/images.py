"""Checks of encoded image files (JPEG, PNG): complete or truncated, and their decoded size.

A JPEG is complete when its end-of-image marker follows the image data; bytes after that marker (the
video of a phone "motion photo", padding) are allowed, as OpenCV and TensorFlow decode such files. A
PNG is complete when its chunks run up to ``IEND``. Truncated files are rejected: decoders return them
partly grey without failing.
"""

from __future__ import annotations

import re
import struct

_JPEG_SOI = b"\xff\xd8"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG markers without a length field (RSTn, SOI, EOI, TEM).
_STANDALONE = {*range(0xD0, 0xD8), 0xD8, 0xD9, 0x01}
#: In entropy-coded data, 0xFF followed by anything but a stuffed 0x00, RSTn or fill starts a marker.
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")


def _jpeg_problem(data: bytes, size: list[int] | None = None) -> str | None:
    """Why a JPEG (starting with SOI) is incomplete, or None: walks the marker segments to EOI.

    ``size`` receives (height, width) from the frame header.
    """
    pos, n = 2, len(data)
    while True:
        while pos < n and data[pos] != 0xFF:
            pos += 1  # garbage between segments (tolerated by decoders)
        while pos < n and data[pos] == 0xFF:
            pos += 1  # fill bytes
        if pos >= n:
            return "truncated JPEG (no end-of-image marker after the image data)"
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return None
        if marker in _STANDALONE:
            continue
        if pos + 2 > n:
            return "truncated JPEG (cut inside a marker segment)"
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2:
            return f"corrupt JPEG (marker 0xFF{marker:02X} with length {length})"
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and size is not None:
            size[:] = struct.unpack(">HH", data[pos + 3 : pos + 7])  # start of frame: P, Y, X
        pos += length
        if pos > n:
            return "truncated JPEG (cut inside a marker segment)"
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                return "truncated JPEG (no end-of-image marker after the image data)"
            pos = found.start()


def _png_problem(data: bytes) -> str | None:
    """Why a PNG is incomplete, or None: walks the chunks to IEND."""
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        pos += 12 + length
        if pos > n:
            break
        if kind == b"IEND":
            return None
    return "truncated PNG (no IEND chunk)"


def check_encoded_image(data: bytes) -> str | None:
    """Why encoded image bytes are unusable (empty, not JPEG/PNG, truncated), or None.

    Structure only (no decoding, well under a millisecond); :func:`image_size` also decodes.
    """
    if len(data) == 0:
        return "empty file"
    if data[:2] == _JPEG_SOI:
        return _jpeg_problem(data)
    if data[:8] == _PNG_SIGNATURE:
        return _png_problem(data)
    return "not a JPEG or PNG file"


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) of encoded image bytes checked to be complete and decodable, else ValueError.

    JPEGs are decoded at 1/8 scale (libjpeg reads all of the compressed data but skips most of the
    inverse transform, about twice as fast); the size comes from the frame header.
    """
    import cv2
    import numpy as np

    problem = check_encoded_image(data)
    if problem:
        raise ValueError(problem)
    buffer = np.frombuffer(data, np.uint8)
    if data[:2] == _JPEG_SOI:
        size: list[int] = []
        _jpeg_problem(data, size)
        image = cv2.imdecode(buffer, cv2.IMREAD_REDUCED_GRAYSCALE_8)
        if image is None or len(size) != 2 or min(size) < 1:
            raise ValueError("could not be decoded")
        return size[0], size[1]
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("could not be decoded")
    return int(image.shape[0]), int(image.shape[1])
