"""Users' keypoint sets on the real DeepLabCut Reaching project: the DeepLabCut, COCO and YOLO-pose
readers (the last two on fixtures derived from the project by tests/own_keypoints.py), prepare to
TFRecords for each format, scoring, logs, writers and drawing of a set of one's own."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
from own_keypoints import coco_from_dlc, dlc_labels, extent_box, yolo_from_dlc

from hgkeras.cli import main
from hgkeras.data.coco import choose_category, coco_pose, read_coco_keypoints
from hgkeras.data.dlc import BOX_MARGIN, MIN_BOX_SIDE, dlc_pose, read_dlc_project, write_dlc_csv
from hgkeras.data.prepare import finish_pose, split_by_image
from hgkeras.data.yolo import read_yolo_dataset, yolo_pose
from hgkeras.spec import PALETTE, PoseSpec, get_pose

NAMES = ("Hand", "Finger1", "Tongue", "Joystick1", "Joystick2")


@pytest.fixture(scope="module")
def project(real_data):
    return real_data / "dlc_reaching"


@pytest.fixture(scope="module")
def labels(project):
    return dlc_labels(project)


@pytest.fixture(scope="module")
def valid(labels):
    """Every fifth frame is held out in the COCO and YOLO fixtures (11 of 55)."""
    return set(labels["images"][::5])


@pytest.fixture(scope="module")
def coco_files(project, valid, tmp_path_factory):
    return coco_from_dlc(project, tmp_path_factory.mktemp("coco"), valid)


@pytest.fixture(scope="module")
def yolo_yaml(project, valid, tmp_path_factory):
    return yolo_from_dlc(project, tmp_path_factory.mktemp("yolo"), valid)


def _check_against_labels(records, labels, atol=1e-4):
    by_image = {name: k for k, name in enumerate(labels["images"])}
    for record in records:
        truth = labels["joints"][by_image[record.image.split("/", 2)[-1]] if record.image not in
                                 by_image else by_image[record.image]]  # fmt: skip
        seen = np.isfinite(truth).all(axis=1)
        np.testing.assert_array_equal(record.visible, seen)
        np.testing.assert_allclose(record.joints[seen], truth[seen], atol=atol)
        assert (record.joints[~seen] == 0).all()


# --------------------------------------------------------------------------------------- readers


def test_dlc_project_reader(project, labels):
    spec = dlc_pose(project)
    assert spec.name == "Reaching" and spec.joint_names == NAMES
    assert spec.limbs == ((0, 1), (3, 4)) and spec.flip_pairs == () and spec.normalizer == "box"
    skipped: list[str] = []
    records = read_dlc_project(project, spec, skipped)
    assert len(records) == 55 and not skipped and {r.split for r in records} == {"train"}
    assert [r.image_id for r in records] == list(range(55))
    assert all((project / r.image).is_file() for r in records)
    _check_against_labels(records, labels)
    tongue = np.array([r.visible[2] for r in records])
    assert tongue.sum() == np.isfinite(labels["joints"][:, 2, 0]).sum()
    assert 0 < tongue.sum() < 55  # the often unlabelled keypoint
    for r in records:
        seen = r.joints[r.visible > 0]
        low, high = seen.min(axis=0), seen.max(axis=0)
        expected = np.maximum(high - low + 2 * BOX_MARGIN * np.max(high - low), MIN_BOX_SIDE)
        np.testing.assert_allclose(r.box[2:] - r.box[:2], expected, rtol=1e-5)
        np.testing.assert_allclose((r.box[2:] + r.box[:2]) / 2, (low + high) / 2, atol=1e-3)
        assert r.normalizer == pytest.approx(float(np.max(r.box[2:] - r.box[:2])), rel=1e-5)


def test_dlc_h5_table_reads_as_the_csv_and_other_h5_is_refused(project, tmp_path):
    import h5py

    copy = tmp_path / "reaching"
    (copy / "labeled-data" / "reachingvideo1").mkdir(parents=True)
    shutil.copy(project / "config.yaml", copy)
    name = "labeled-data/reachingvideo1/CollectedData_Mackenzie.h5"
    shutil.copy(project / name, copy / name)
    from_h5 = read_dlc_project(copy)
    from_csv = read_dlc_project(project)
    for a, b in zip(from_h5, from_csv, strict=True):
        assert a.image == b.image
        np.testing.assert_array_equal(a.joints, b.joints)
    with h5py.File(copy / name, "w") as f:  # another HDF5 layout (pandas "fixed")
        f.create_group("df_with_missing").create_dataset("block0_values", data=np.zeros((2, 10)))
    with pytest.raises(ValueError, match="use the CSV DeepLabCut writes beside it"):
        read_dlc_project(copy)


def test_dlc_multi_animal_project(tmp_path):
    """Newer layout: three index columns, an individuals row; one instance per individual."""
    (tmp_path / "labeled-data" / "cage").mkdir(parents=True)
    (tmp_path / "config.yaml").write_text(
        "Task: mice\nscorer: me\nmultianimalproject: true\nbodyparts: MULTI!\n"
        "individuals: [m1, m2]\nmultianimalbodyparts: [snout, leftear, rightear]\n"
        "uniquebodyparts: [corner]\nskeleton: [[snout, leftear], [snout, corner]]\n"
    )
    parts = ["snout", "leftear", "rightear"]
    header = [
        ["scorer", "", ""] + ["me"] * 14,
        ["individuals", "", ""] + ["m1"] * 6 + ["m2"] * 6 + ["single"] * 2,
        ["bodyparts", "", ""] + [p for p in parts for _ in "xy"] * 2 + ["corner"] * 2,
        ["coords", "", ""] + ["x", "y"] * 7,
    ]
    rows = [
        ["labeled-data", "cage", "img0.png", *map(str, range(1, 13)), "5", "5"],
        ["labeled-data", "cage", "img1.png", "7", "8"] + [""] * 10 + ["5", "5"],
    ]
    table = tmp_path / "labeled-data" / "cage" / "CollectedData_me.csv"
    table.write_text("\n".join(",".join(row) for row in header + rows) + "\n")
    spec = dlc_pose(tmp_path)
    assert spec.joint_names == tuple(parts) and spec.flip_pairs == ((1, 2),)
    assert spec.limbs == ((0, 1),)  # the limb to the scene point is not the animal's
    skipped: list[str] = []
    records = read_dlc_project(tmp_path, skipped=skipped)
    assert [(r.image, r.person_id) for r in records] == [
        ("labeled-data/cage/img0.png", 0), ("labeled-data/cage/img0.png", 1),
        ("labeled-data/cage/img1.png", 0),
    ]  # fmt: skip
    np.testing.assert_array_equal(records[1].joints, [[7, 8], [9, 10], [11, 12]])
    np.testing.assert_array_equal(records[2].visible, [1, 0, 0])
    assert any("img1.png (m2): no labelled keypoints" in s for s in skipped)
    assert any("unique body parts ['corner']" in s for s in skipped)


def test_coco_reader_on_the_derived_file(coco_files, labels, valid):
    train, _ = coco_files
    data = json.loads(train.read_text())
    spec = coco_pose(choose_category(data))
    assert spec.name == "mouse" and spec.joint_names == NAMES and spec.limbs == ((0, 1), (3, 4))
    assert spec.flip_pairs == () and spec.metric == "ap"
    records = read_coco_keypoints(train, pose=spec)
    assert len(records) == 55 - len(valid) and {r.pose for r in records} == {"mouse"}
    _check_against_labels(records, labels)
    for r in records:
        truth = labels["joints"][labels["images"].index(r.image)]
        np.testing.assert_allclose(r.box, extent_box(truth), atol=1e-3)
        assert r.normalizer == pytest.approx(float(np.prod(r.box[2:] - r.box[:2])), rel=1e-5)
    # a second keypoint category: one must be chosen
    data["categories"].append({"id": 1, "name": "person", "keypoints": ["nose"]})
    several = train.with_name("several.json")
    several.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"2 keypoint categories .*choose one \(--category\)"):
        read_coco_keypoints(several)
    assert len(read_coco_keypoints(several, category="mouse")) == len(records)


def test_yolo_reader_on_the_derived_dataset(yolo_yaml, labels, valid, tmp_path, project):
    spec = yolo_pose(yolo_yaml)
    assert spec.name == "mouse" and spec.joint_names == NAMES and spec.flip_pairs == ()
    records = read_yolo_dataset(yolo_yaml, spec)
    assert len(records) == 55
    assert {r.image for r in records if r.split == "valid"} == {
        f"images/val/{name.rsplit('/', 1)[-1]}" for name in valid
    }
    by_name = {name.rsplit("/", 1)[-1]: k for k, name in enumerate(labels["images"])}
    for r in records:
        truth = labels["joints"][by_name[r.image.rsplit("/", 1)[-1]]]
        seen = np.isfinite(truth).all(axis=1)
        np.testing.assert_array_equal(r.visible, seen)
        np.testing.assert_allclose(r.joints[seen], truth[seen], atol=1e-3)  # normalised and back
        np.testing.assert_allclose(r.box, extent_box(truth), atol=1e-3)
    two = yolo_from_dlc(project, tmp_path / "xy", dims=2)  # no visibility: (0, 0) is unlabelled
    tongue = np.array([r.visible[2] for r in read_yolo_dataset(two)])
    assert tongue.sum() == np.isfinite(labels["joints"][:, 2, 0]).sum()
    label = next((tmp_path / "xy" / "labels" / "train").iterdir())
    label.write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(ValueError, match=rf"{label.name}: line 1: 4 values"):
        read_yolo_dataset(two)


def test_flip_pairs_given_or_from_a_spec_file(project, tmp_path):
    spec = dlc_pose(project)
    given, source = finish_pose(spec, flip_pairs="Joystick1:Joystick2")
    assert given.flip_pairs == ((3, 4),) and source == "given" and given.joint_names == NAMES
    assert finish_pose(spec) == (spec, "names")
    path = tmp_path / "reaching.json"
    path.write_text(json.dumps({**spec.to_config(), "pck_threshold": 0.1}))
    assert finish_pose(spec, pose=str(path))[0].threshold == 0.1
    path.write_text(json.dumps({"name": "x", "joint_names": ["Hand", "Finger1"]}))
    with pytest.raises(ValueError, match="must be the same, in the same order"):
        finish_pose(spec, pose=str(path))


def test_split_by_image_is_deterministic(project):
    records = read_dlc_project(project)
    assert split_by_image(records, 0.2) == 11
    chosen = {r.image for r in records if r.split == "valid"}
    again = read_dlc_project(project)[::-1]
    split_by_image(again, 0.2)
    assert {r.image for r in again if r.split == "valid"} == chosen


# ------------------------------------------------------------------------------------------ prepare


def _prepared(out, capsys) -> tuple[dict, str]:
    return json.loads((out / "manifest.json").read_text()), capsys.readouterr().out


def test_prepare_each_format_to_tfrecords(project, coco_files, yolo_yaml, tmp_path, capsys):
    from hgkeras.data import pose_dataset
    from hgkeras.data.pipeline import read_pose

    out = tmp_path / "dlc"
    argv = ["prepare", "dlc", "--annotations", str(project), "--out", str(out), "--valid-fraction",
            "0.2", "--split", "valid", "--input-shape", "128x128", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    manifest, printed = _prepared(out, capsys)
    spec = dataclasses.replace(dlc_pose(project), input_shape=(128, 128))  # --input-shape
    assert manifest["pose"] == spec.to_config() and read_pose(out, "valid") == spec
    assert list(manifest["splits"]) == ["valid"] and manifest["splits"]["valid"]["records"] == 11
    assert manifest["valid_fraction"] == 0.2 and manifest["valid_images"] == 11
    assert "flip pairs (found by name): none" in printed and "Hand, Finger1, Tongue" in printed
    (batch,) = pose_dataset(out, 11, training=False, split="valid", input_size=64)
    held_out = [
        r for r in read_dlc_project(project) if r.image_id in set(batch["image_id"].numpy())
    ]
    np.testing.assert_allclose(batch["joints"], np.stack([r.joints for r in held_out]), atol=1e-3)
    np.testing.assert_allclose(batch["box"], np.stack([r.box for r in held_out]), atol=1e-3)
    assert batch["image"].shape == (11, 64, 64, 3) and float(batch["image"].numpy().max()) > 0

    train, val = coco_files
    out = tmp_path / "coco"
    argv = ["prepare", "coco", "--annotations", str(train), "--valid-annotations", str(val),
            "--images", str(project), "--out", str(out), "--split", "valid", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    manifest, printed = _prepared(out, capsys)
    assert (
        get_pose(manifest["pose"]).name == "mouse" and manifest["splits"]["valid"]["records"] == 11
    )
    assert manifest["normalizer"] == "oks"

    out = tmp_path / "yolo"
    argv = ["prepare", "yolo", "--annotations", str(yolo_yaml), "--out", str(out), "--split",
            "valid", "--flip-pairs", "Joystick1:Joystick2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    manifest, printed = _prepared(out, capsys)
    assert manifest["splits"]["valid"]["records"] == 11 and manifest["pose"]["flip_pairs"] == [
        [3, 4]
    ]
    assert "flip pairs (given): Joystick1<->Joystick2" in printed
    argv = ["prepare", "yolo", "--annotations", str(yolo_yaml), "--out", str(out),
            "--valid-fraction", "0.2"]  # fmt: skip
    assert main(argv) == 2
    assert "has a validation split already" in capsys.readouterr().err


# ------------------------------------------------------------------------------ scoring, logs, files


def _outputs(records, shift=0.0):
    joints = np.stack([r.joints for r in records]).astype(np.float64)
    return {
        "pred": joints + shift, "joints": joints, "visible": np.stack([r.visible for r in records]),
        "normalizer": np.array([r.normalizer for r in records]), "box": np.stack([r.box for r in records]),
        "image_id": np.array([r.image_id for r in records]), "scores": np.ones(joints.shape[:2]),
    }  # fmt: skip


def test_box_pck_and_pixel_errors_of_an_own_set(project):
    from hgkeras.evaluation.evaluate import format_result, score_for_pose
    from hgkeras.training.validation import log_values

    spec = dlc_pose(project)
    records = read_dlc_project(project)
    out = _outputs(records)
    side = out["normalizer"]
    out["pred"][:, 0, 0] += 0.25 * side  # every Hand beyond 0.2 of the box side
    out["pred"][:, 1, 1] += 3.0  # every Finger1 3 px off: a hit
    result = score_for_pose(out, spec)
    assert result["Hand"] == 0.0 and result["Finger1"] == 100.0 and result["Joystick2"] == 100.0
    visible = out["visible"] > 0
    assert result["Mean"] == pytest.approx(
        100 * (visible.sum() - visible[:, 0].sum()) / visible.sum()
    )
    errors = np.concatenate([0.25 * side[visible[:, 0]], np.full(visible[:, 1].sum(), 3.0),
                             np.zeros(visible[:, 2:].sum())])  # fmt: skip
    assert result["mean_error_px"] == pytest.approx(errors.mean())
    assert result["median_error_px"] == pytest.approx(np.median(errors))
    assert result["error_px"]["Finger1"] == pytest.approx(3.0)
    logs = log_values(result, spec)
    assert "val_pckh" not in logs and logs["val_pck"] == result["Mean"]
    assert logs["val_pck_hand"] == 0.0 and logs["val_pck_joystick1"] == 100.0
    assert logs["val_error_px"] == pytest.approx(errors.mean())
    title, table = format_result(result, spec)
    assert title == "Reaching PCK@0.2 of the box's longer side"
    assert table.split("\n")[0].split() == [*NAMES, "Mean"]  # "Joy" twice: written whole


def test_oks_ap_of_coco_format_data_with_the_spec_sigmas(coco_files):
    from hgkeras.evaluation import coco

    train, _ = coco_files
    data = json.loads(train.read_text())
    truth = [{"image_id": a["image_id"], "category_id": 3, "keypoints": a["keypoints"],
              "score": 1.0} for a in data["annotations"]]  # fmt: skip
    assert coco.evaluate_results(train, truth)["AP"] == pytest.approx(1.0)
    # every labelled keypoint moved so that its OKS term is 0.72 with sigma 0.1: matched at
    # thresholds 0.50..0.70, missed at 0.75..0.95
    moved = []
    for entry, ann in zip(truth, data["annotations"], strict=True):
        values = np.array(entry["keypoints"], np.float64).reshape(-1, 3)
        shift = math.sqrt(-2.0 * math.log(0.72) * ann["area"]) * 2 * 0.1
        values[:, 0] += np.where(values[:, 2] > 0, shift, 0.0)
        moved.append({**entry, "keypoints": values.reshape(-1).tolist()})
    metrics = coco.evaluate_results(train, moved)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(0.0)
    # the same scored from arrays (an evaluation set), as the training callback does
    from hgkeras.evaluation.evaluate import score_for_pose
    from hgkeras.training.validation import log_values

    records = read_coco_keypoints(train)
    spec = get_pose(coco_pose(choose_category(data)))
    result = score_for_pose(_outputs(records), spec)
    assert result["AP"] == pytest.approx(1.0) and result["PCK"] == 100.0
    logs = log_values(result, spec)
    assert logs["val_ap"] == pytest.approx(1.0) and "val_pck" not in logs and "val_ap50" in logs


def test_prediction_writers_in_the_users_formats(project, coco_files, tmp_path):
    from hgkeras.evaluation import coco

    spec = dlc_pose(project)
    records = read_dlc_project(project)
    keypoints = np.stack([r.joints for r in records]).astype(np.float64)
    keypoints[np.stack([r.visible for r in records]) == 0] = np.nan
    copy = tmp_path / "reaching"
    (copy / "labeled-data" / "reachingvideo1").mkdir(parents=True)
    shutil.copy(project / "config.yaml", copy)
    table = copy / "labeled-data" / "reachingvideo1" / "CollectedData_Mackenzie.csv"
    write_dlc_csv(
        table, [r.image for r in records], keypoints, spec, np.full(keypoints.shape[:2], 0.9)
    )
    lines = table.read_text().splitlines()
    assert lines[2].startswith("coords,x,y,likelihood,x,y,likelihood")
    for a, b in zip(read_dlc_project(copy), records, strict=True):  # read back (likelihood ignored)
        assert a.image == b.image
        np.testing.assert_allclose(a.joints, b.joints, atol=1e-4)
        np.testing.assert_array_equal(a.visible, b.visible)
    with pytest.raises(ValueError, match=r"keypoints must have shape \(2, 5, 2\)"):
        write_dlc_csv(table, ["a", "b"], keypoints, spec)

    train, _ = coco_files
    truth = read_coco_keypoints(train)
    joints = np.stack([r.joints for r in truth])
    results = coco.results_from_predictions([r.image_id for r in truth], joints,
                                            np.ones(joints.shape[:2]), category_id=3)  # fmt: skip
    path = tmp_path / "results.json"
    coco.write_results(path, results)
    assert {r["category_id"] for r in json.loads(path.read_text())} == {3}
    assert coco.evaluate_results(train, path)["AP"] == pytest.approx(1.0)


def test_validation_callback_logs_the_sets_own_metric():
    """A model of an own set (a pooling 'network' whose input encodes the heatmaps) logs val_pck
    per keypoint and val_error_px, no val_pckh."""
    import keras
    import tensorflow as tf
    from keras import ops

    from hgkeras import geometry
    from hgkeras.codec import render_heatmaps
    from hgkeras.training.validation import ValidationCallback

    spec = PoseSpec("paws", ("front_paw", "back_paw", "nose"))
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, [keras.layers.AveragePooling2D(4)(inputs)])
    model.pose = spec
    hm = np.array([[[2, 2], [5, 5], [3, 6]]] * 2, "float32")
    centers, scales = np.full((2, 2), 50.0, "float32"), np.ones(2, "float32")
    joints = ops.convert_to_numpy(geometry.heatmap_to_image(hm, centers, scales, 8))
    gt = joints.copy()
    gt[0, 2, 0] += 30.0  # one nose 30 px off, beyond 0.2 x the 100-px box side
    maps = ops.convert_to_numpy(render_heatmaps(hm, np.ones((2, 3)), 8))
    data = {"image": np.repeat(np.repeat(maps, 4, 1), 4, 2), "center": centers, "scale": scales,
            "joints": gt, "visible": np.ones((2, 3), "float32"),
            "normalizer": np.full(2, 100.0, "float32")}  # fmt: skip
    callback = ValidationCallback(tf.data.Dataset.from_tensor_slices(data).batch(2), flip=False)
    callback.set_model(model)
    logs: dict = {}
    callback.on_epoch_end(0, logs)
    assert set(logs) == {"val_pck", "val_pck_front_paw", "val_pck_back_paw", "val_pck_nose",
                         "val_error_px"}  # fmt: skip
    assert logs["val_pck_nose"] == 50.0 and logs["val_pck"] == pytest.approx(100 * 5 / 6)
    assert logs["val_error_px"] == pytest.approx(30.0 / 6, abs=1e-3)


def test_overlays_use_the_spec_palette():
    from hgkeras.vis.draw import draw_people

    spec = PoseSpec("two", ("a", "b"), limbs=((0, 1),))
    image = np.zeros((60, 60, 3), np.uint8)
    drawn = draw_people(image, [(np.array([[10.0, 10.0], [50.0, 50.0]]), None, None)], spec)
    for (x, y), color in (((10, 10), PALETTE[0]), ((50, 50), PALETTE[1])):
        rgb = tuple(int(color[k : k + 2], 16) for k in (1, 3, 5))
        np.testing.assert_array_equal(drawn[y, x], rgb[::-1])  # BGR
    np.testing.assert_array_equal(
        drawn[30, 30], tuple(int(PALETTE[0][k : k + 2], 16) for k in (5, 3, 1))
    )
