"""Reading user images: EXIF orientation, truncation, decoded-size limits, dtype/channel conversions.

Used by :class:`hgkeras.inference.predictor.PosePredictor`, ``hgkeras predict`` and ``evaluate``,
the overlays of :mod:`hgkeras.vis.draw` and the serving client. Files are read as bytes, checked
with :func:`hgkeras.data.images.validate_encoded_image` (truncated files are errors, trailing data
after the end marker is accepted, the header size is checked against ``max_pixels`` before
decoding), decoded with ``cv2.IMREAD_UNCHANGED`` (8/16-bit, gray and alpha survive) and turned
upright by their EXIF orientation, so keypoints are in the frame a photo viewer shows.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from hgkeras.data.images import (
    DEFAULT_MAX_PIXELS,
    EncodedImage,
    check_pixel_limit,
    validate_encoded_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "apply_orientation",
    "check_image_array",
    "decode_image",
    "load_image",
    "read_image",
    "to_rgb_float",
    "to_uint8_bgr",
    "upright_bytes",
]


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """The upright view of a stored image with EXIF ``orientation`` (1..8); 1 returns ``image``."""
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
