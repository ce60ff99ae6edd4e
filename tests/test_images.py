"""Reading user images: EXIF orientation, truncated files, trailing data, decoded-size limits."""

from __future__ import annotations

import re
import struct
import warnings

import cv2
import numpy as np
import pytest

from hgkeras import StackedHourglass
from hgkeras.data.images import (
    check_encoded_image,
    decode_image,
    image_size,
    inspect_encoded_image,
    read_image,
    upright_bytes,
    validate_encoded_image,
)
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
        validate_encoded_image(png[:-20])
    # also a JPEG cut inside its headers, before any scan data
    with pytest.raises(ValueError, match="truncated JPEG"):
        decode_image(data[:300])


def test_jpeg_with_trailing_data_is_accepted(real_data, tmp_path):
    data = (real_data / "mpii" / "images" / SAMPLE).read_bytes()
    motion = data + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40  # a "motion photo"
    info = validate_encoded_image(motion)
    assert info.complete and info.end == len(data) and (info.height, info.width) == (480, 854)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(
            decode_image(motion), cv2.imdecode(np.frombuffer(data, np.uint8), -1)
        )
    png = encode(np.zeros((5, 6, 3), np.uint8), ".png")
    assert validate_encoded_image(png + b"trailing").complete
    # the same rule in prepare's form: a problem string or None, and the checked size
    assert check_encoded_image(motion) is None and image_size(motion) == (480, 854)
    assert "truncated JPEG" in check_encoded_image(data[: len(data) * 2 // 3])
    assert check_encoded_image(b"GIF89a....") == "not a JPEG or PNG file"
    with pytest.raises(ValueError, match="truncated PNG"):
        image_size(png[:-20])


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


def test_saved_model_predict_image_checks_size_and_box_before_decoding(predictor, real_data):
    import tensorflow as tf

    from hgkeras.data.images import encoded_image_size_tf
    from hgkeras.deploy.export import PREDICT_IMAGE, build_serving_functions

    functions = build_serving_functions(predictor.model, max_pixels=50_000_000)
    predict_image = functions[PREDICT_IMAGE]
    jpeg = (real_data / "mpii" / "images" / SAMPLE).read_bytes()
    samples = {
        "jpeg": jpeg,
        "png": encode(np.zeros((30, 41, 3), np.uint8), ".png"),
        "bmp": encode(np.zeros((30, 41, 3), np.uint8), ".bmp"),
        "huge png": png_header(12000, 12000),
    }
    sizes = {k: encoded_image_size_tf(tf.constant(v)).numpy().tolist() for k, v in samples.items()}
    assert sizes == {
        "jpeg": [480, 854],
        "png": [30, 41],
        "bmp": [30, 41],
        "huge png": [12000, 12000],
    }

    def call(data, center, scale):
        return predict_image(
            image_bytes=tf.constant(data), center=tf.constant(center, tf.float32),
            scale=tf.constant(scale, tf.float32),
        )  # fmt: skip

    out = call(jpeg, [315.0, 245.5], 2.2)
    assert np.all(np.isfinite(out["keypoints"].numpy()))
    bad = [
        (samples["huge png"], [10.0, 10.0], 1.0, "more pixels than the limit of 50000000"),
        (jpeg, [315.0, 245.5], 1e30, "must be <= 10x the longer image side"),
        (jpeg, [315.0, 245.5], 1e-4, "must be >= 1 px"),
        (jpeg, [5000.0, 245.5], 1.0, "crop box lies outside the image"),
        (b"GIF-ish? no: plain text", [1.0, 1.0], 1.0, "not a JPEG, PNG, GIF or BMP"),
    ]
    for data, center, scale, message in bad:
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
            call(data, center, scale)


def test_serving_client_sends_upright_checked_bytes(real_data):
    from hgkeras.deploy.client import RestPoseClient

    sent = []

    class Recording(RestPoseClient):
        def _send(self, inputs, signature):
            sent.append(inputs)
            return {"keypoints": np.zeros((16, 2), np.float32), "scores": np.zeros(16, np.float32)}

    client = Recording("http://127.0.0.1:9", "hourglass")
    upright = cv2.imread(str(real_data / "mpii" / "images" / SAMPLE))
    turned = with_exif_orientation(encode(cv2.rotate(upright, cv2.ROTATE_90_CLOCKWISE)), 8)
    client.predict_image(turned, (700.0, 100.0), 1.0)  # x = 700 exists only in the upright view
    decoded = cv2.imdecode(np.frombuffer(sent[0]["image_bytes"].item(), np.uint8), -1)
    assert decoded.shape == (480, 854, 3)
    with pytest.raises(ValueError, match="lies outside the 854x480 image"):
        client.predict_image(turned, (100.0, 700.0), 0.5)
    with pytest.raises(ValueError, match="outside"):
        client.predict_image(turned, (400.0, 200.0), 1e30)
    with pytest.raises(ValueError, match="truncated JPEG"):
        client.predict_image(turned[: len(turned) // 2], (400.0, 200.0), 1.0)
    with pytest.raises(ValueError, match="144.0 MP"):
        client.predict_image(png_header(12000, 12000), (400.0, 200.0), 1.0)
    assert len(sent) == 1


def test_evaluate_refuses_a_truncated_image(predictor, repo_root, real_data, tmp_path, capsys):
    import shutil

    from hgkeras.cli import main

    images = tmp_path / "images"
    shutil.copytree(real_data / "mpii" / "images", images)
    data = (images / SAMPLE).read_bytes()
    (images / SAMPLE).write_bytes(data[: len(data) // 2])
    model = tmp_path / "m.keras"
    predictor.model.save(model)
    samples = repo_root / "hgkeras" / "data" / "samples" / "mpii" / "samples.json"
    argv = ["evaluate", "--model", str(model), "--data", str(samples), "--images", str(images),
            "--out", str(tmp_path / "r.json")]  # fmt: skip
    assert main(argv) == 2
    assert f"{SAMPLE}: truncated JPEG" in capsys.readouterr().err


@pytest.mark.slow  # one SavedModel export (~25 s)
def test_exported_pixel_limit_is_an_option(predictor, tmp_path):
    import tensorflow as tf

    from hgkeras.deploy.export import PREDICT_IMAGE, ExportOptions, export_model

    options = ExportOptions(name="tiny", max_pixels=2000, verify=False, models_config=False)
    result = export_model(predictor.model, tmp_path, options)
    predict_image = tf.saved_model.load(str(result.version_dir)).signatures[PREDICT_IMAGE]
    for size, ok in ((40, True), (50, False)):  # 1600 and 2500 pixels
        request = dict(
            image_bytes=tf.constant(encode(np.zeros((size, size, 3), np.uint8), ".png")),
            center=tf.constant([20.0, 20.0]), scale=tf.constant(0.2),
        )  # fmt: skip
        if ok:
            assert predict_image(**request)["keypoints"].shape == (16, 2)
        else:
            with pytest.raises(tf.errors.InvalidArgumentError, match="limit of 2000"):
                predict_image(**request)
    # the options travel to a TensorFlow subprocess as JSON (exports under jax and torch)
    assert ExportOptions.from_json(options.to_json()) == options
