"""Reading user images: EXIF orientation, truncated files, trailing data, decoded-size limits."""

from __future__ import annotations

import struct
import warnings

import cv2
import numpy as np
import pytest

from hgkeras import StackedHourglass
from hgkeras.data.images import check_encoded_image, inspect_encoded_image
from hgkeras.inference.images import decode_image, read_image, upright_bytes
from hgkeras.inference.predictor import PosePredictor

SAMPLE = "052475643.jpg"  # 854x480, one person


def with_exif_orientation(jpeg: bytes, orientation: int, order: str = "big") -> bytes:
    """``jpeg`` with an EXIF APP1 segment (one IFD entry: Orientation) right after its SOI."""
    fmt = ">" if order == "big" else "<"
    tiff = (b"MM" if order == "big" else b"II") + struct.pack(fmt + "HI", 42, 8)
    tiff += struct.pack(fmt + "H", 1)  # one entry
    tiff += struct.pack(fmt + "HHIHH", 0x0112, 3, 1, orientation, 0)  # SHORT, left-justified
    tiff += struct.pack(fmt + "I", 0)  # no next IFD
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def encode(image: np.ndarray, ext: str = ".jpg", *params: int) -> bytes:
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def predictor():
    model = StackedHourglass(num_stacks=1, num_features=16, depth=2, image_shape=(64, 64, 3))
    return PosePredictor(model)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("order", ["big", "little"])
def test_exif_orientation_is_applied_as_opencv_does_for_jpeg(orientation, order):
    stored = np.random.default_rng(orientation).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    data = with_exif_orientation(
        encode(stored, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 100), orientation, order
    )
    assert inspect_encoded_image(data).orientation == orientation
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # applies EXIF
    np.testing.assert_array_equal(decode_image(data), expected)
    assert decode_image(data, orient=False).shape == (24, 40, 3)


def test_rotated_photo_is_predicted_in_its_upright_frame(predictor, real_data, tmp_path):
    upright = cv2.imread(str(real_data / "mpii" / "images" / SAMPLE))
    stored = cv2.rotate(upright, cv2.ROTATE_90_COUNTERCLOCKWISE)  # a camera held sideways
    plain = encode(stored, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 100)
    path = tmp_path / "sideways.jpg"
    path.write_bytes(with_exif_orientation(plain, 6))  # 6: turn 90 degrees clockwise to view
    reference = cv2.rotate(cv2.imdecode(np.frombuffer(plain, np.uint8), 1), cv2.ROTATE_90_CLOCKWISE)
    np.testing.assert_array_equal(read_image(path), reference)
    with pytest.warns(UserWarning, match="whole image"):
        (whole,) = predictor.predict(path)
    np.testing.assert_allclose(whole.center, [426.5, 239.5])  # upright 854x480, not (239.5, 426.5)
    box = (139, 69, 491, 422)  # the MPII person box, in the upright picture
    (person,) = predictor.predict(path, boxes=[box])
    (expected,) = predictor.predict(reference, boxes=[box], color="bgr")
    np.testing.assert_array_equal(person.keypoints, expected.keypoints)
    # the serving client sends upright bytes: TensorFlow's decoders ignore EXIF
    sent, info = upright_bytes(path.read_bytes())
    assert info.orientation == 6
    decoded = cv2.imdecode(np.frombuffer(sent, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (480, 854, 3)
    assert np.abs(decoded.astype(int) - reference).mean() < 2.0  # JPEG quality 95
    assert upright_bytes(plain)[0] == plain  # stored upright: sent unchanged


def test_truncated_images_are_errors_unless_allowed(predictor, real_data, tmp_path):
    data = (real_data / "mpii" / "images" / SAMPLE).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert inspect_encoded_image(cut.read_bytes()).complete is False
    with pytest.raises(ValueError, match=r"cut\.jpg: truncated JPEG"):
        predictor.predict(cut, boxes=[(0, 0, 100, 200)])
    lenient = PosePredictor(predictor.model, allow_truncated=True)
    with pytest.warns(UserWarning, match="truncated JPEG"):
        assert len(lenient.predict(cut, boxes=[(0, 0, 100, 200)])) == 1
    png = encode(np.zeros((50, 60, 3), np.uint8), ".png")
    with pytest.raises(ValueError, match="truncated PNG"):
        check_encoded_image(png[:-20])
    # also a JPEG cut inside its headers, before any scan data
    with pytest.raises(ValueError, match="truncated JPEG"):
        decode_image(data[:300])


def test_jpeg_with_trailing_data_is_accepted(real_data, tmp_path):
    data = (real_data / "mpii" / "images" / SAMPLE).read_bytes()
    motion = data + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40  # a "motion photo"
    info = check_encoded_image(motion)
    assert info.complete and info.end == len(data) and (info.height, info.width) == (480, 854)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(
            decode_image(motion), cv2.imdecode(np.frombuffer(data, np.uint8), -1)
        )
    png = encode(np.zeros((5, 6, 3), np.uint8), ".png")
    assert check_encoded_image(png + b"trailing").complete


def png_header(width: int, height: int) -> bytes:
    """A PNG's signature, IHDR and IEND only: enough for the header checks, nothing to decode."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + b"\x00" * 4


def test_decoded_size_limit_is_checked_before_decoding(predictor, tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(12000, 12000))  # a 0.42 MB file of zeros would decode to 432 MB
    with pytest.raises(ValueError, match=r"huge\.png: image is 12000x12000 = 144\.0 MP.*100 MP"):
        predictor.predict(huge)
    big = tmp_path / "big.jpg"
    big.write_bytes(encode(np.zeros((1200, 1000, 3), np.uint8)))
    small_limit = PosePredictor(predictor.model, max_pixels=1_000_000)
    with pytest.raises(
        ValueError, match="1000x1200 = 1.2 MP, above the decoded-size limit of 1 MP"
    ):
        small_limit.predict(big, boxes=[(0, 0, 10, 10)])
    assert len(predictor.predict(big, boxes=[(0, 0, 10, 10)])) == 1  # under the default 100 MP


def test_box_scale_and_center_are_checked_against_the_image(predictor):
    image = np.zeros((100, 200, 3), np.uint8)
    with pytest.raises(ValueError, match="outside"):
        predictor.predict(image, boxes=[(0, 0, 1e30, 1e30)])  # was: NaN keypoints, no error
    with pytest.raises(ValueError, match="lies outside the 200x100 image"):
        predictor.predict(image, boxes=[(5000, 10, 5050, 90)])
    (person,) = predictor.predict(image, boxes=[(-30, -20, 60, 150)])  # partly outside: fine
    assert np.all(np.isfinite(person.keypoints))
