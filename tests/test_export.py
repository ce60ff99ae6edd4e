"""Export: SavedModel signatures and ONNX agree with Keras; predict_image crops like cv2; CLI, layout,
models.config (protobuf text, labels kept) and the TF Serving warm-up file."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from serving_loopback import NAME, exported

from hgkeras import MPII, geometry
from hgkeras.codec import HeatmapCodec, final_heatmaps
from hgkeras.crop import crop_numpy, crop_tf
from hgkeras.deploy.export import (
    PREDICT_IMAGE,
    SERVING_DEFAULT,
    SERVING_UINT8,
    decode_image_bytes,
    export_model,
    signature_summary,
)
from hgkeras.deploy.serving_config import (
    WARMUP_PATH,
    read_models_config,
    read_warmup_file,
    write_models_config,
)


def served_versions(out_dir, name=NAME):
    config = read_models_config(out_dir / "models.config")
    entry = next(c for c in config.model_config_list.config if c.name == name)
    return list(entry.model_version_policy.specific.versions)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return exported(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def loaded(export):
    return tf.saved_model.load(str(export[1]))


CODEC = HeatmapCodec()  # the paper's, the small model's own


def keras_reference(model, images):
    heatmaps = CODEC.heatmap_function(model, MPII.flip_permutation, flip=True)(images)
    keypoints, scores = CODEC.decode(heatmaps, (64, 64))
    return [ops.convert_to_numpy(t) for t in (heatmaps, keypoints, scores)]


def test_layout_signatures_and_models_config(export):
    _, version_dir = export
    assert version_dir.name == "1" and version_dir.parent.name == NAME
    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "model.onnx").is_file()
    assert not [p for p in version_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs
    summary = signature_summary(version_dir)
    assert set(summary) >= {SERVING_DEFAULT, SERVING_UINT8, PREDICT_IMAGE}
    default = summary[SERVING_DEFAULT]
    assert default["inputs"]["images"]["dtype"] == "DT_FLOAT"
    assert default["inputs"]["images"]["shape"] == (-1, 64, 64, 3)
    assert default["outputs"]["heatmaps"]["shape"] == (-1, 16, 16, 16)
    assert default["outputs"]["keypoints"]["shape"] == (-1, 16, 2)
    assert default["outputs"]["scores"]["shape"] == (-1, 16)
    assert summary[SERVING_UINT8]["inputs"]["images"]["dtype"] == "DT_UINT8"
    image = summary[PREDICT_IMAGE]
    assert {k: (v["dtype"], v["shape"]) for k, v in image["inputs"].items()} == {
        "image_bytes": ("DT_STRING", ()),
        "center": ("DT_FLOAT", (2,)),
        "scale": ("DT_FLOAT", ()),
    }
    assert image["outputs"]["keypoints"]["shape"] == (16, 2)
    config = read_models_config(version_dir.parents[1] / "models.config")
    (entry,) = config.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == (
        "hourglass", "/models/hourglass", "tensorflow",
    )  # fmt: skip
    assert 1 in served_versions(version_dir.parents[1])


def test_saved_model_matches_keras_float_and_uint8(export, loaded):
    model, _ = export
    images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)
    floats = images.astype(np.float32) / 255.0
    want = keras_reference(model, floats)
    for signature, batch in ((SERVING_DEFAULT, floats), (SERVING_UINT8, images)):
        got = loaded.signatures[signature](images=tf.constant(batch))
        assert np.abs(got["heatmaps"].numpy() - want[0]).max() <= 1e-5
        np.testing.assert_array_equal(got["keypoints"].numpy(), want[1])
        np.testing.assert_allclose(got["scores"].numpy(), want[2], atol=1e-5)
    # the flip test is baked in: it differs from the plain prediction
    plain = ops.convert_to_numpy(CODEC.heatmap_function(model, None, flip=False)(floats))
    assert np.abs(plain - want[0]).max() > 1e-4


def test_onnx_is_the_bare_network_with_dynamic_batch(export):
    """model.onnx maps images to the last stack's heatmaps (no flip, no decoding: the host does)."""
    import onnxruntime

    model, version_dir = export
    session = onnxruntime.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # symbolic batch
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["heatmaps"]
    for batch in (1, 4):
        images = np.random.default_rng(batch).random((batch, 64, 64, 3), dtype=np.float32)
        (got,) = session.run(None, {"images": images})
        want = ops.convert_to_numpy(final_heatmaps(model(images, training=False)))
        assert np.abs(got - want).max() <= 1e-4


def _mpii_person(real_data):
    """First MPII sample: image bytes, adjusted 0-based centre and scale (docs/method.md "Crop")."""
    record = json.loads((real_data / "mpii" / "samples.json").read_text())[0]
    raw_scale = float(record["scale"])
    center = np.array(record["center"], np.float64) + [0.0, 15.0 * raw_scale] - 1.0
    path = real_data / "mpii" / "images" / record["image"]
    return path, center.astype(np.float32), np.float32(raw_scale * 1.25)


def test_predict_image_crops_like_cv2_and_returns_original_pixels(export, loaded, real_data):
    model, _ = export
    path, center, scale = _mpii_person(real_data)
    data = path.read_bytes()
    # decoding and the in-graph crop agree with the OpenCV crop (one crop policy, hgkeras.crop)
    decoded = decode_image_bytes(tf.constant(data)).numpy()
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, rgb)  # identical JPEG decoding (accurate DCT)
    size = 64
    # predict_image crops the decoded uint8 image to crop_numpy's uint8 pixels exactly
    want_crop = crop_numpy(rgb, center, scale, size)
    crop = crop_tf(tf.constant(rgb), tf.constant(center), tf.constant(scale), (size, size)).numpy()
    np.testing.assert_array_equal(crop, want_crop)
    # a box half outside the image is padded with zeros
    edge = crop_tf(
        tf.ones((100, 100, 3)), tf.constant([0.0, 50.0]), tf.constant(0.5), (size, size)
    ).numpy()
    ones = cv2.warpAffine(
        np.ones((100, 100, 3), np.float32), geometry.crop_matrix([0.0, 50.0], 0.5, size),
        (size, size), flags=cv2.INTER_LINEAR,
    )  # fmt: skip
    assert edge[:, :31].max() == 0.0 and edge[:63, 32:].min() == 1.0
    assert np.abs(edge - ones).max() < 0.02

    out = loaded.signatures[PREDICT_IMAGE](
        image_bytes=tf.constant(data), center=tf.constant(center), scale=tf.constant(scale)
    )
    tf_crop = crop_tf(tf.constant(decoded), center, scale, (size, size)).numpy() / 255
    heatmaps = CODEC.heatmap_function(model, MPII.flip_permutation, flip=True)(tf_crop[None])
    keypoints, scores = CODEC.decode_to_image(heatmaps, center[None], scale[None], (size, size))
    np.testing.assert_allclose(
        out["keypoints"].numpy(), ops.convert_to_numpy(keypoints)[0], atol=1e-3
    )
    np.testing.assert_allclose(out["scores"].numpy(), ops.convert_to_numpy(scores)[0], atol=1e-5)
    # keypoints lie in the person box, in original image pixels
    half = 100 * scale
    assert np.all(np.abs(out["keypoints"].numpy() - center) <= half + 1)


def test_export_refuses_to_overwrite_and_validates_arguments(export, tmp_path):
    model, version_dir = export
    with pytest.raises(FileExistsError, match="--force"):
        export_model(model, version_dir.parents[1], name=NAME)
    with pytest.raises(ValueError, match="version"):
        export_model(model, tmp_path, name=NAME, version=0)
    with pytest.raises(ValueError, match="name"):
        export_model(model, tmp_path, name="../x")
    with pytest.raises(ValueError, match="no exported model"):
        write_models_config(tmp_path)


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from hgkeras.cli import main

    assert main(["export", "--model", str(tmp_path / "missing.keras"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing.keras" in err and "Traceback" not in err
    assert main(["export", "--model", "m.keras", "--out", str(tmp_path), "--version", "0"]) == 2
    assert "version must be an integer >= 1" in capsys.readouterr().err


def test_cli_exports_a_jax_trained_model_under_tensorflow(export, loaded, run_backend, tmp_path):
    """A .keras saved under jax is re-loaded under TensorFlow; --force replaces a version."""
    out = export[1].parents[1]
    (out / NAME / "2").mkdir()
    (out / NAME / "2" / "stale.txt").write_text("an old version")
    model_path = tmp_path / "jax.keras"
    stdout = run_backend(
        "jax",
        """
        import sys
        import keras
        from hgkeras import StackedHourglass
        from hgkeras.cli import main
        assert keras.backend.backend() == "jax"
        keras.utils.set_random_seed(3)
        StackedHourglass(num_stacks=1, num_features=32, depth=2, image_shape=(64, 64, 3)).save(
            sys.argv[1]
        )
        args = ["export", "--model", sys.argv[1], "--out", sys.argv[2], "--version", "2"]
        assert main(args) == 2  # exists: refused before any work
        sys.exit(main(args + ["--force", "--no-verify"]))  # the test compares with Keras below
        """,
        str(model_path),
        str(out),
    )
    assert "signature_def['predict_image']" in stdout and "DT_STRING" in stdout
    version_dir = out / NAME / "2"
    assert not (version_dir / "stale.txt").exists() and (version_dir / "saved_model.pb").is_file()
    assert served_versions(out)[:2] == [1, 2]

    import keras

    model = keras.models.load_model(model_path)
    images = np.random.default_rng(5).random((2, 64, 64, 3), dtype=np.float32)
    got = tf.saved_model.load(str(version_dir)).signatures[SERVING_DEFAULT](images=images)
    want = ops.convert_to_numpy(model(images))
    assert np.abs(got["heatmaps"].numpy() - want).max() <= 1e-5


def test_shipped_models_config_example_parses(repo_root):
    config = read_models_config(repo_root / "serving" / "models.config")
    (entry,) = config.model_config_list.config
    assert dict(entry.version_labels) == {"stable": 1, "canary": 2}


def test_models_config_round_trip_keeps_models_versions_and_labels(export, tmp_path):
    """A models.config edited by hand (labels, another model, a latest policy) survives an export."""
    model, _ = export
    out = tmp_path / "models"
    (out / "pose" / "1").mkdir(parents=True)
    (out / "pose" / "1" / "saved_model.pb").write_bytes(b"")  # a version on disk
    (out / "models.config").write_text(
        """model_config_list {
  config {
    name: "pose"
    base_path: "/srv/pose"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 } }
    version_labels { key: "stable" value: 1 }
  }
  config {
    name: "elsewhere"
    base_path: "gs://bucket/elsewhere"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
  }
}
"""
    )
    export_model(model, out, name="pose", version=2, verify=False, warmup=False)
    export_model(model, out, name="fresh", verify=False, warmup=False)
    config = read_models_config(out / "models.config")
    entries = {c.name: c for c in config.model_config_list.config}
    assert set(entries) == {"pose", "elsewhere", "fresh"}
    pose = entries["pose"]
    assert pose.base_path == "/srv/pose" and list(pose.model_version_policy.specific.versions) == [
        1, 2,
    ]  # fmt: skip
    assert dict(pose.version_labels) == {"stable": 1}
    assert entries["elsewhere"].model_version_policy.latest.num_versions == 2
    assert entries["elsewhere"].base_path == "gs://bucket/elsewhere"
    assert entries["fresh"].base_path == "/models/fresh"
    assert list(entries["fresh"].model_version_policy.specific.versions) == [1]
    # the written file is TF Serving's text format: parsing and writing again changes nothing
    text = (out / "models.config").read_text()
    write_models_config(out)
    assert (out / "models.config").read_text() == text
    (out / "models.config").write_text("model_config_list { config { nme: 'x' } }")
    with pytest.raises(ValueError, match="models.config: not a TF Serving ModelServerConfig"):
        write_models_config(out)


def test_warmup_file_holds_a_request_for_every_signature(export, loaded):
    _, version_dir = export
    logs = read_warmup_file(version_dir / WARMUP_PATH)
    requests = [log.predict_log.request for log in logs]
    assert {r.model_spec.signature_name for r in requests} == {
        SERVING_DEFAULT, SERVING_UINT8, PREDICT_IMAGE,
    }  # fmt: skip
    assert {r.model_spec.name for r in requests} == {NAME}
    for request in requests:  # each one runs on the SavedModel, as TF Serving replays them
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](
            **{k: tf.constant(v) for k, v in inputs.items()}
        )
        assert np.isfinite(outputs["keypoints"].numpy()).all()
    batches = sorted(
        tf.make_ndarray(r.inputs["images"]).shape[0]
        for r in requests
        if r.model_spec.signature_name == SERVING_DEFAULT
    )
    assert batches == [1, 8]


@pytest.mark.faults
def test_export_removes_the_temporary_folder_of_a_killed_export(export, tmp_path):
    from hgkeras import io

    model, _ = export
    leftover = tmp_path / NAME / ".2.tmp-0123456789ab"  # what a SIGKILL mid-export leaves
    (leftover / "variables").mkdir(parents=True)
    (leftover / "saved_model.pb").write_bytes(b"half")
    assert io.is_temporary(leftover.name)
    lines: list[str] = []
    export_model(model, tmp_path, name=NAME, version=2, verify=False, warmup=False,
                 models_config=False, log=lines.append)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / NAME).iterdir()) == ["2"]
    assert any("interrupted export" in line for line in lines)
