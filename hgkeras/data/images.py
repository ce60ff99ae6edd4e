"""Image files: their encoded structure (format, size, EXIF orientation, completeness) and decoding.

One rule for every reader (prepare, predict, evaluate, the serving client): a JPEG is complete when
its marker structure reaches the end-of-image marker, a PNG when its chunks reach ``IEND``; bytes
after that end (a phone's "motion photo" video, padding) are accepted and ignored. A file that stops
before its end is truncated: OpenCV would decode it partly, grey below the cut, without failing.
The size comes from the header, so a decoded-size limit is checked before any pixel is decoded.

Decoding (:func:`read_image`, :func:`load_image`, used by ``PosePredictor``, ``hgkeras predict`` and
``evaluate``, the overlays and the serving client) reads files as bytes, checks them with
:func:`validate_encoded_image`, decodes with ``cv2.IMREAD_UNCHANGED`` (8/16-bit, gray and alpha
survive) and turns them upright by their EXIF orientation, so keypoints are in the frame a photo
viewer shows. OpenCV is imported on first use.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """The upright view of a stored image with EXIF ``orientation`` (1..8); 1 returns ``image``."""
    import cv2

    if orientation == 1:
        return image
    if orientation == 2:
        out = cv2.flip(image, 1)
    elif orientation == 3:
        out = cv2.rotate(image, cv2.ROTATE_180)
    elif orientation == 4:
        out = cv2.flip(image, 0)
    elif orientation == 5:
        out = cv2.transpose(image)
    elif orientation == 6:
        out = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    elif orientation == 7:
        out = cv2.rotate(cv2.transpose(image), cv2.ROTATE_180)
    elif orientation == 8:
        out = cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    else:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation!r}")
    if out.ndim < image.ndim:  # OpenCV drops a trailing channel axis of 1
        out = out[..., None]
    return out


def decode_image(
    data: bytes,
    name: str = "image",
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_truncated: bool = False,
    orient: bool = True,
) -> np.ndarray:
    """Decode encoded image bytes to an array in its own dtype, BGR(A) or gray, upright.

    ``name`` (a file name) goes into error messages. A truncated JPEG/PNG is a ValueError, or a
    warning with ``allow_truncated``; an image over ``max_pixels`` (None = no limit) is a ValueError
    raised before decoding when the header tells the size (JPEG, PNG, GIF, BMP), after it otherwise.
    A truncated JPEG decodes down to the cut (grey below it); a truncated PNG cannot be decoded.
    ``orient=False`` keeps the stored pixel order (EXIF orientation ignored).
    """
    import cv2

    try:
        info = validate_encoded_image(data, max_pixels=max_pixels, allow_truncated=allow_truncated)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    if info.complete is False:
        warnings.warn(f"{name}: truncated {info.format.upper()}, decoded partly", stacklevel=2)
        if info.format == "jpeg":  # OpenCV decodes a cut JPEG only when it has an end marker
            data = bytes(data) + b"\xff\xd9"
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError(f"cannot read image {name}: not an image OpenCV can decode")
    if info.height is None:
        try:
            check_pixel_limit(array.shape[0], array.shape[1], max_pixels)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    return apply_orientation(array, info.orientation) if orient else array


def read_image(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_truncated: bool = False,
    orient: bool = True,
) -> np.ndarray:
    """Read an image file with :func:`decode_image`; FileNotFoundError when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    return decode_image(
        path.read_bytes(), str(path), max_pixels=max_pixels, allow_truncated=allow_truncated,
        orient=orient,
    )  # fmt: skip


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3), upright by its EXIF orientation; truncated files and
    unreadable ones are clear errors (:func:`read_image`)."""
    return np.ascontiguousarray(to_uint8_bgr(read_image(path), "bgr")[..., ::-1])


def load_image(
    image: str | os.PathLike | np.ndarray,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_truncated: bool = False,
) -> np.ndarray:
    """Read or check an image; returns it in its own dtype, 2-D (gray) or HxWxC with C in {1, 3, 4}.

    Paths go through :func:`read_image` (BGR(A), upright, checked); arrays are checked and returned
    as they are (the pixel limit guards decoding, and an array is already decoded). No float copy
    of the whole image is made, so huge images cost only their own memory.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, max_pixels=max_pixels, allow_truncated=allow_truncated)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a file path or a numpy array, got {type(image).__name__}")
    check_image_array(image)
    return image


def upright_bytes(data: bytes, name: str = "image", **options) -> tuple[bytes, EncodedImage]:
    """Bytes a decoder that ignores EXIF (TensorFlow's) decodes upright, and the checked header.

    Bytes stored upright are returned unchanged; others are decoded, turned upright and re-encoded
    (PNG stays PNG, everything else becomes JPEG quality 95). ``options`` are those of
    :func:`decode_image`.
    """
    import cv2

    try:
        info = validate_encoded_image(
            data,
            max_pixels=options.get("max_pixels", DEFAULT_MAX_PIXELS),
            allow_truncated=options.get("allow_truncated", False),
        )
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    if info.orientation == 1:
        return bytes(data), info
    pixels = decode_image(data, name, **options)
    if info.format == "png":
        ok, encoded = cv2.imencode(".png", pixels)
    else:
        ok, encoded = cv2.imencode(
            ".jpg", to_uint8_bgr(pixels, "bgr"), [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
    if not ok:
        raise ValueError(f"{name}: cannot re-encode the upright image")
    return encoded.tobytes(), info


def check_image_array(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is HxW, HxWx1, HxWx3 or HxWx4 of a supported dtype."""
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        pass
    elif image.ndim != 2:
        raise ValueError(
            f"image must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be at least 1x1 pixels, got shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64, np.bool_):
        raise ValueError(
            f"image dtype must be uint8, uint16, float32 or float64 (in [0, 1]), got {image.dtype}"
        )


def to_rgb_float(pixels: np.ndarray, color: str = "rgb") -> np.ndarray:
    """An image or crop (any supported dtype/channels) -> float32 RGB HxWx3 in [0, 1].

    uint8 is divided by 255, uint16 by 65535, floats are clipped to [0, 1]; gray is repeated to
    three channels, alpha is dropped, ``color="bgr"`` swaps the channel order.
    """
    if color not in ("rgb", "bgr"):
        raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
    if pixels.dtype == np.uint8:
        out = pixels.astype(np.float32) / 255.0
    elif pixels.dtype == np.uint16:
        out = pixels.astype(np.float32) / 65535.0
    elif pixels.dtype == np.bool_:
        out = pixels.astype(np.float32)
    else:
        out = np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0)
    if out.ndim == 2:
        out = out[..., None]
    if out.shape[2] == 1:
        return np.repeat(out, 3, axis=2)
    out = out[..., :3]
    if color == "bgr":
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


def to_uint8_bgr(pixels: np.ndarray, color: str = "rgb") -> np.ndarray:
    """Any supported image -> uint8 BGR HxWx3 (for drawing, detection and writing).

    A uint8 BGR image is returned as it is (no copy).
    """
    import cv2

    if pixels.dtype == np.uint8:
        out = pixels
    elif pixels.dtype == np.uint16:
        out = (pixels // 257).astype(np.uint8)
    else:
        out = (np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(
            np.uint8
        )
    if out.ndim == 2:
        return cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    if out.shape[2] == 1:
        return cv2.cvtColor(out[..., 0], cv2.COLOR_GRAY2BGR)
    out = out[..., :3]
    if color == "rgb":
        out = out[..., ::-1]
    return np.ascontiguousarray(out)
