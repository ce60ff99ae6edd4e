"""Export formats (ONNX, LiteRT, OpenVINO; float32/float16/int8), their runtimes and the predictor on them."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys

import numpy as np
import pytest
from keras import ops
from serving_loopback import small_model

from hgkeras.cli import main
from hgkeras.deploy.formats import (
    FILENAMES,
    FORMATS,
    CalibrationCrops,
    FormatCheck,
    calibration_crops,
    calibration_people,
    default_calibration,
    ground_truth_scores,
    head_agreement,
    parse_formats,
)
from hgkeras.inference.predictor import PosePredictor
from hgkeras.inference.runtimes import (
    MissingRuntimeError,
    load_runtime,
    read_pose_spec,
    runtime_kind,
)

KINDS = {
    "saved_model": "saved_model",
    "onnx": "onnx",
    "onnx-int8": "onnx",
    "tflite": "tflite",
    "tflite-fp16": "tflite",
    "tflite-int8": "tflite",
    "openvino": "openvino",
}


@pytest.fixture(scope="module")
def every_format(tmp_path_factory):
    """A tiny model (1 stack, depth 1, 16 features, 64x64) exported in every format by `hgkeras
    export`."""
    root = tmp_path_factory.mktemp("formats")
    model = small_model(features=16, depth=1)
    model_path = root / "tiny.keras"
    model.save(model_path)
    argv = ["export", "--model", str(model_path), "--out", str(root / "models"), "--name", "tiny",
            "--formats", ",".join(FORMATS)]  # fmt: skip
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main(argv) == 0
    return model, model_path, root / "models" / "tiny" / "1", stdout.getvalue(), stderr.getvalue()


def model_file(version_dir, fmt):
    return version_dir if fmt == "saved_model" else version_dir / FILENAMES[fmt]


def test_every_format_is_written_named_checked_and_printed(every_format):
    _, _, version_dir, stdout, stderr = every_format
    names = {p.name for p in version_dir.iterdir()}
    assert {"saved_model.pb", "model.onnx", "model_int8.onnx", "model.tflite", "model_fp16.tflite",
            "model_int8.tflite", "model.xml", "model.bin", "pose.json"} <= names  # fmt: skip
    assert "10 real person crops (5 people and their mirror images)" in stdout
    for fmt in FORMATS:
        assert f"check {fmt}" in stdout
    for fmt in ("onnx", "tflite", "openvino"):  # float formats: within 1e-4, printed as such
        line = next(x for x in stdout.splitlines() if x.startswith(f"check {fmt} "))
        assert "(<= 0.0001)" in line and "keypoint agreement" in line
    fp16 = next(x for x in stdout.splitlines() if x.startswith("check tflite-fp16"))
    assert "(<= 0.02)" in fp16
    for fmt in ("onnx-int8", "tflite-int8"):
        line = next(x for x in stdout.splitlines() if x.startswith(f"check {fmt}"))
        numbers = re.search(
            r"([\d.]+)% of annotated joints within 0.1 head of Keras, PCK@0.5 ([\d.]+) "
            r"\(Keras ([\d.]+)\), mean error ([\d.]+) px \(Keras ([\d.]+)\)$",
            line,
        )  # the shipped people are annotated: the int8 warning is about the loss against them
        share, pck, float_pck, error, float_error = (float(v) for v in numbers.groups())
        assert 0 <= share <= 100
        lost = float_pck - pck > 2.0 or error > 1.1 * float_error
        assert ("WARNING: " + fmt in stderr) == lost, (line, stderr)
    spec = read_pose_spec(version_dir / "model.onnx")
    assert spec["input_size"] == [64, 64] and spec["joint_names"][0] == "r_ankle"
    assert [0, 5] in spec["flip_pairs"] and spec["formats"]["tflite-int8"] == "model_int8.tflite"
    assert 'name: "tiny"' in (version_dir.parents[1] / "models.config").read_text()


def test_runtimes_give_the_keras_heatmaps(every_format):
    model, _, version_dir, _, _ = every_format
    crops = calibration_crops(None, (64, 64))
    want = ops.convert_to_numpy(model(crops, training=False))
    limits = {"float32": 1e-4, "float16": 2e-2}
    for fmt, kind in KINDS.items():
        path = model_file(version_dir, fmt)
        assert runtime_kind(path) == kind
        runtime = load_runtime(path)
        assert runtime.input_size == (64, 64) and runtime.num_joints == 16
        assert runtime.pose.name == "mpii" and runtime.pose.flip_pairs[0] == (0, 5)
        for batch in (1, 3):  # dynamic batch
            got = runtime.run(crops[:batch])
            assert got.shape == (batch, 16, 16, 16) and got.dtype == np.float32
        got = runtime.run(crops)
        error = np.abs(got - want).max()
        precision = "int8" if "int8" in fmt else "float16" if "fp16" in fmt else "float32"
        if precision == "int8":  # quantised: same scale of values, not the same numbers
            assert error < 0.5 * np.abs(want).max() + 0.1, (fmt, error)
        else:
            assert error <= limits[precision], (fmt, error)


def test_predictor_on_every_format_finds_the_keras_keypoints(every_format, real_data):
    _, model_path, version_dir, _, _ = every_format
    record = json.loads((real_data / "mpii" / "samples.json").read_text())[0]
    image = real_data / "mpii" / "images" / record["image"]
    (cx, cy), half = record["center"], 100.0 * record["scale"]
    box = (cx - half, cy - half, cx + half, cy + half)
    want = PosePredictor(model_path).predict(image, boxes=[box])[0]
    heatmap_pixel = 1.25 * 2 * half / 16  # image pixels per heatmap pixel of the padded box
    for fmt in FORMATS:
        predictor = PosePredictor(model_file(version_dir, fmt))
        got = predictor.predict(image, boxes=[box])[0]
        assert got.joint_names == want.joint_names
        distance = np.linalg.norm(got.keypoints - want.keypoints, axis=-1)
        if "int8" in fmt:
            assert np.median(distance) <= 2 * heatmap_pixel, (fmt, distance)
        else:
            assert distance.max() <= 1e-2 * heatmap_pixel, (fmt, distance)
            np.testing.assert_allclose(got.scores, want.scores, atol=2e-2)


def test_evaluate_scores_an_onnx_file_like_the_keras_model(every_format, tmp_path):
    _, model_path, version_dir, _, _ = every_format
    data = default_calibration()  # the shipped samples, with head boxes
    results = {}
    for name, path in (("keras", model_path), ("onnx", version_dir / "model.onnx")):
        out = tmp_path / f"{name}.json"
        argv = ["evaluate", "--model", str(path), "--data", str(data), "--images",
                str(data.parent / "images"), "--out", str(out)]  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(argv) == 0
        results[name] = json.loads(out.read_text())
    assert results["onnx"]["per_joint"] == results["keras"]["per_joint"]


def test_calibration_from_annotations_or_tfrecords(real_data, tmp_path):
    from hgkeras.data.readers import read_annotations
    from hgkeras.data.tfrecords import write_tfrecords

    shipped = calibration_crops(None, (64, 64))
    assert shipped.shape == (10, 64, 64, 3) and 0.0 <= shipped.min() and shipped.max() <= 1.0
    np.testing.assert_array_equal(shipped[5:], shipped[:5, :, ::-1])  # mirror images
    data = real_data / "mpii" / "samples.json"
    assert calibration_crops(data, (64, 48), limit=4).shape == (4, 64, 48, 3)
    records = [r for r in read_annotations(default_calibration())]
    for r in records:
        r.split = "valid"
    write_tfrecords(
        records, default_calibration().parent / "images", tmp_path / "tf", progress=False
    )
    crops = calibration_crops(tmp_path / "tf", (64, 64))
    assert crops.shape == (10, 64, 64, 3)
    assert np.abs(crops - shipped).mean() < 0.02  # the same people, cropped by the data pipeline
    with pytest.raises(FileNotFoundError, match="calibration data"):
        calibration_crops(tmp_path / "nothing", (64, 64))
    with pytest.raises(FileNotFoundError, match="--calibration-images"):
        calibration_crops(data, (64, 64), images=tmp_path / "no_images")


def test_int8_onnx_keeps_the_residual_sums_float(every_format):
    """Quantised convolutions, but residual sums take float inputs (skip paths without Q/DQ);
    a fully quantised graph feeds every Add from a DequantizeLinear."""
    import onnx

    graph = onnx.load(str(model_file(every_format[2], "onnx-int8"))).graph
    producer = {name: node.op_type for node in graph.node for name in node.output}
    types = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Add"} <= types
    add_inputs = [
        producer.get(i) for node in graph.node if node.op_type == "Add" for i in node.input
    ]
    assert "DequantizeLinear" in add_inputs  # the convolution branch is quantised
    assert {"Add", "MaxPool"} & set(add_inputs)  # float skip paths
    # 7-bit weights (reduce_range): no saturating int16 sums on CPUs without VNNI
    weights = [
        onnx.numpy_helper.to_array(t)
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.INT8
    ]
    assert weights and max(int(np.abs(w).max()) for w in weights) <= 64


def test_head_agreement_scores_annotated_joints_against_a_tenth_of_the_head():
    reference = np.zeros((2, 16, 16, 2), np.float32)
    reference[:, 8, 8] = 1.0  # both joints of both crops at heatmap pixel (8, 8)
    moved = reference.copy()
    moved[0, 8, 8, 0], moved[0, 8, 10, 0] = 0.0, 1.0  # joint 0 of crop 0 moves 2 pixels
    moved[1] = 0.0
    moved[1, 0, 0] = 1.0  # crop 1 (not annotated) moves far
    visible = np.array([[True, True], [False, False]])
    # 0.1 head = 1/16 of the crop height = 1 heatmap pixel: joint 0 of crop 0 fails, joint 1 passes
    people = CalibrationCrops(np.zeros((2, 64, 64, 3)), np.array([1 / 16, 1 / 16]), visible)
    assert head_agreement(moved, reference, people) == 0.5
    people.tenth_head = np.array([3 / 16, 3 / 16])  # 3 pixels: both pass
    assert head_agreement(moved, reference, people) == 1.0


def test_annotated_calibration_knows_the_head_sizes(real_data):
    people = calibration_people(None, (64, 64))
    assert people.crops.shape == (10, 64, 64, 3) and people.visible.shape == (10, 16)
    assert people.visible[:5].sum() > 50 and not people.visible[5:].any()  # mirrors: not scored
    assert np.all((people.tenth_head > 0.005) & (people.tenth_head < 0.05))
    # the annotations in crop pixels: inside the person box (a crop of height `box` image pixels)
    seen = people.joints[people.visible]
    assert people.joints.shape == (10, 16, 2) and np.all((seen > -1) & (seen < 64))
    assert np.all(people.box > 100)


def test_ground_truth_scores_count_annotated_joints_in_image_pixels():
    heatmaps = np.zeros((2, 16, 16, 2), np.float32)
    heatmaps[:, 4, 4] = 1.0  # every joint decodes to heatmap pixel (4, 4): crop pixel (17.5, 17.5)
    joints = np.full((2, 2, 2), 17.5)
    joints[0, 1] = (21.5, 17.5)  # 4 crop pixels off: 8 image pixels in a box of 128
    visible = np.array([[True, True], [False, False]])
    people = CalibrationCrops(
        np.zeros((2, 64, 64, 3)), tenth_head=np.full(2, 0.1), visible=visible, joints=joints,
        box=np.full(2, 128.0),
    )  # fmt: skip
    # normaliser = 10 x tenth_head x box = 128 image pixels: PCK@0.5 counts both annotated joints
    assert ground_truth_scores(heatmaps, people) == (100.0, 4.0)
    people.tenth_head = np.full(2, 0.005)  # normaliser 6.4 px: 8 px is more than half of it
    assert ground_truth_scores(heatmaps, people) == (50.0, 4.0)


def test_format_names_and_int8_warning():
    assert parse_formats("tflite-int8, onnx,onnx") == ("onnx", "tflite-int8")
    with pytest.raises(ValueError, match="unknown export format.*'tfjs'"):
        parse_formats("onnx,tfjs")
    check = FormatCheck("onnx-int8", "int8", crops=10, max_abs=0.2, agreement=0.85)
    assert "85.0%" in check.warning and "WARNING" in check.warning
    assert FormatCheck("onnx-int8", "int8", crops=10, max_abs=0.2, agreement=0.95).warning is None
    assert FormatCheck("onnx", "float32", 10, 1e-6, 0.5, 1e-4).warning is None
    # annotated calibration people: the loss against the annotations decides, not the agreement
    check.pck, check.mean_error = (95.0, 96.1), (10.5, 10.0)  # -1.1 points, +5 %
    assert check.warning is None and "PCK@0.5 95.0 (Keras 96.1)" in check.describe()
    check.pck = (85.5, 96.1)
    assert "-10.6 points" in check.warning
    check.pck, check.mean_error = (96.1, 96.1), (11.5, 10.0)
    assert "+15%" in check.warning


def test_bad_model_files_and_missing_runtimes_give_clear_errors(
    every_format, tmp_path, monkeypatch, capsys
):
    _, _, version_dir, _, _ = every_format
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="cannot tell the model format"):
        runtime_kind(tmp_path / "model.pt")
    with pytest.raises(ValueError, match="SavedModel"):
        runtime_kind(tmp_path)
    with pytest.raises(FileNotFoundError, match="model not found"):
        load_runtime(tmp_path / "missing.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="cannot load an ONNX model"):
        load_runtime(tmp_path / "broken.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingRuntimeError, match=r"pip install 'hgkeras\[onnx\]'"):
        load_runtime(version_dir / "model.onnx")
    with pytest.raises(MissingRuntimeError, match=r"pip install 'hgkeras\[openvino\]'"):
        load_runtime(version_dir / "model.xml")
    data = default_calibration()
    argv = ["evaluate", "--model", str(version_dir / "model.onnx"), "--data", str(data),
            "--images", str(data.parent / "images")]  # fmt: skip
    assert main(argv) == 2  # one line from the CLI, no traceback
    err = capsys.readouterr().err
    assert "pip install 'hgkeras[onnx]'" in err and "Traceback" not in err


def test_export_cli_rejects_unknown_formats_in_one_line(tmp_path, capsys):
    argv = ["export", "--model", "m.keras", "--out", str(tmp_path), "--formats", "onnx,caffe"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "caffe" in err and "Traceback" not in err
