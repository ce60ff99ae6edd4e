"""A keypoint set of one's own, end to end on the real Reaching frames: prepare (DeepLabCut, and a
made-up 3-keypoint set in COCO format), train (the set from the manifest, its recipe and its own
validation metric), evaluate (PCK of the box, errors in pixels, predictions in DeepLabCut's CSV and
COCO results), predict and export with the set's names; and how a run picks its settings."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from own_keypoints import coco_from_dlc, dlc_labels

from hgkeras.cli import main
from hgkeras.data.dlc import dlc_pose
from hgkeras.spec import MPII, get_pose
from hgkeras.training.recipes import get_recipe, resolve_config

TINY = ["--stacks", "1", "--features", "16", "--depth", "2", "--input-size", "64", "--batch-size",
        "4", "--epochs", "1", "--steps-per-epoch", "2", "--val-batch-size", "11"]  # fmt: skip


@pytest.fixture(scope="module")
def project(real_data):
    return real_data / "dlc_reaching"


@pytest.fixture(scope="module")
def reaching(project, tmp_path_factory):
    """(records, run): the Reaching project prepared with a fixed 20% split, and a tiny network
    trained on it by ``hgkeras train --data-dir`` alone (the set comes from the manifest)."""
    root = tmp_path_factory.mktemp("reaching")
    records, run = root / "records", root / "run"
    argv = ["prepare", "dlc", "--annotations", str(project), "--out", str(records),
            "--valid-fraction", "0.2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert main(["train", "--data-dir", str(records), "--out", str(run), *TINY]) == 0
    return records, run


def test_training_takes_the_set_from_the_manifest(reaching, project):
    records, run = reaching
    spec = dlc_pose(project)
    config = json.loads((run / "config.json").read_text())
    assert get_pose(config["pose"]) == spec and config["dataset"] == "Reaching"
    assert config["joints"] == 5 and config["recipe"] == "small"
    # no flip pairs: no mirrored samples and no flip test
    assert config["flip_eval"] is False and config["augmentation"]["flip_probability"] == 0.0
    assert config["sigma"] == spec.sigma and config["augment"] is True
    with (run / "log.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert {"val_pck", "val_pck_hand", "val_pck_joystick2", "val_error_px"} <= set(row)
    assert "val_pckh" not in row
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["val_pck"] <= 100.0 and results["pck"]["dataset"] == "Reaching"
    assert results["pck"]["mean_error_px"] > 0
    pose_json = json.loads(next((run / "export").rglob("pose.json")).read_text())
    assert pose_json["joint_names"] == list(spec.joint_names)
    assert pose_json["limbs"] == [[0, 1], [3, 4]]


def test_evaluate_writes_the_projects_own_layouts(reaching, project, tmp_path, capsys):
    records, run = reaching
    model = str(run / "best.keras")
    table = tmp_path / "CollectedData_hgkeras.csv"
    argv = ["evaluate", "--data", str(records), "--split", "valid", "--model", model,
            "--write-predictions", str(table), "--out", str(tmp_path / "eval.json")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Reaching PCK@0.2 of the box's longer side, 11 people" in printed
    assert "error in pixels: mean" in printed and "mean per group: Hand" in printed
    rows = list(csv.reader(table.open()))
    assert rows[1][1:4] == ["Hand"] * 3 and rows[2][1:4] == ["x", "y", "likelihood"]
    held_out = {row[0] for row in rows[3:]}
    labelled = set(dlc_labels(project)["images"])
    assert len(held_out) == 11 and held_out <= labelled
    document = json.loads((tmp_path / "eval.json").read_text())
    assert document["dataset"] == "Reaching" and document["summary"] == "Mean"
    # the same predictions as COCO results, scored by pycocotools against a COCO file of the frames
    results = tmp_path / "results.json"
    argv = ["evaluate", "--data", str(records), "--split", "valid", "--model", model,
            "--write-predictions", str(results)]  # fmt: skip
    assert main(argv) == 0
    entries = json.loads(results.read_text())
    assert len(entries) == 11 and len(entries[0]["keypoints"]) == 15
    with pytest.raises(ValueError, match="predictions are written as"):
        from hgkeras.evaluation.prediction_files import write_prediction_file

        write_prediction_file(tmp_path / "x.txt", {"pred": np.zeros((1, 5, 2))}, "mpii")


def test_predict_names_the_sets_keypoints(reaching, project, tmp_path):
    _, run = reaching
    image = project / "labeled-data" / "reachingvideo1" / "img005.png"
    out = tmp_path / "pred"
    argv = ["predict", str(image), "--model", str(run / "best.keras"), "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    (written,) = out.glob("*.json")
    document = json.loads(written.read_text())
    (person,) = document["people"]
    assert person["joint_names"] == list(dlc_pose(project).joint_names)
    assert np.asarray(person["keypoints"]).shape == (5, 2)


def test_a_made_up_keypoint_set_is_data(project, tmp_path):
    """Three keypoints that no code knows, from a COCO file: pairs found by name, flip on."""
    valid = set(dlc_labels(project)["images"][::5])
    (tmp_path / "coco").mkdir()
    train, val = coco_from_dlc(project, tmp_path / "coco", valid)
    for path in (train, val):
        data = json.loads(path.read_text())
        (category,) = data["categories"]
        category.update(name="gripper", keypoints=["nose", "left_grip", "right_grip"],
                        skeleton=[[2, 3]])  # fmt: skip
        for ann in data["annotations"]:
            k = ann["keypoints"]
            ann["keypoints"] = k[0:3] + k[9:15]
            ann["num_keypoints"] = sum(v > 0 for v in ann["keypoints"][2::3])
        path.write_text(json.dumps(data))
    records, run = tmp_path / "records", tmp_path / "run"
    argv = ["prepare", "coco", "--annotations", str(train), "--valid-annotations", str(val),
            "--images", str(project), "--out", str(records), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    argv = ["train", "--data-dir", str(records), "--out", str(run), "--no-export", *TINY]
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())
    spec = get_pose(config["pose"])
    assert spec.joint_names == ("nose", "left_grip", "right_grip") and spec.flip_pairs == ((1, 2),)
    assert config["flip_eval"] is True and config["augmentation"]["flip_probability"] == 0.5
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["val_ap"] <= 1.0 and results["oks"]["dataset"] == "gripper"
    # its COCO results file scores through pycocotools against the COCO validation file
    predictions = tmp_path / "results.json"
    argv = ["evaluate", "--data", str(records), "--split", "valid", "--model",
            str(run / "best.keras"), "--write-predictions", str(predictions)]  # fmt: skip
    assert main(argv) == 0
    category_id = json.loads(val.read_text())["categories"][0]["id"]
    assert {e["category_id"] for e in json.loads(predictions.read_text())} == {category_id}
    assert main(["evaluate", "--data", str(val), "--predictions", str(predictions)]) == 0


def test_a_run_takes_the_sets_defaults_under_its_flags_and_recipe(tmp_path):
    spec = get_pose(
        {"name": "fish", "joint_names": ["head", "fin_left", "fin_right", "tail"],
         "input_shape": [192, 192], "sigma": 1.5}
    )  # fmt: skip
    path = spec.to_file(tmp_path / "fish.json")
    assert spec.flip_pairs == ()  # "fin_left" names no side by the rules: no pairs
    config = resolve_config({"pose": str(path), "train_pattern": "shards-*"})
    small = get_recipe("small")
    assert (config.recipe, config.stacks, config.features) == (
        "small",
        small.stacks,
        small.features,
    )
    assert (config.sigma, config.input_size, config.joints) == (1.5, 192, 4)
    assert config.flip_eval is False and config.augmentation["flip_probability"] == 0.0
    # a recipe given replaces the set's defaults; a flag replaces both
    config = resolve_config({"pose": str(path), "train_pattern": "x", "recipe": "newell2016"})
    assert (config.sigma, config.input_size, config.stacks) == (1.75, 256, 8)
    config = resolve_config({"pose": str(path), "train_pattern": "x", "sigma": 3.0})
    assert config.sigma == 3.0 and config.input_size == 192
    # MPII trains as the Torch code by default, with its sigma
    config = resolve_config({"dataset": "mpii", "train_pattern": "x"})
    assert (config.recipe, config.sigma, config.pose) == ("newell2016", MPII.sigma, "mpii")
    with pytest.raises(ValueError, match="has no flip pairs, so no flip test"):
        resolve_config({"pose": str(path), "train_pattern": "x", "flip_eval": True})
    with pytest.raises(ValueError, match="--dataset mpii does not match --pose"):
        resolve_config({"pose": str(path), "dataset": "mpii", "train_pattern": "x"})
    with pytest.raises(ValueError, match="--dataset must be one of coco, flic, mpii"):
        resolve_config({"dataset": "fish", "train_pattern": "x"})
    with pytest.raises(ValueError, match="give --dataset .* or --pose"):
        resolve_config({"train_pattern": "x"})
