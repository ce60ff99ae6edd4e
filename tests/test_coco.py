"""COCO keypoints on the real val2017 samples: reader, prepare, OKS AP through pycocotools, top-down
prediction on ground-truth and detected boxes, predict --format coco, training defaults, overfit."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from hgkeras import geometry
from hgkeras.cli import main
from hgkeras.data.coco import coco_box_to_center_scale, read_coco_keypoints
from hgkeras.data.readers import read_annotations
from hgkeras.evaluation import coco
from hgkeras.spec import COCO, get_pose
from hgkeras.training.validation import ValidationCallback


@pytest.fixture(scope="module")
def sample(real_data) -> dict:
    paths = {
        "annotations": real_data / "coco" / "person_keypoints_sample.json",
        "images": real_data / "coco" / "images",
        "detections": real_data / "coco" / "person_detections_sample.json",
    }
    paths["data"] = json.loads(paths["annotations"].read_text())
    return paths


def _gt_results(data: dict) -> list[dict]:
    """The ground truth written as a results file (people with keypoints, score 1)."""
    return [
        {
            "image_id": a["image_id"],
            "category_id": 1,
            "keypoints": list(a["keypoints"]),
            "score": 1.0,
        }
        for a in data["annotations"]
        if a["num_keypoints"] > 0 and not a["iscrowd"]
    ]


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------------------ spec, reader


def test_coco_skeleton_matches_the_annotation_file(sample):
    (category,) = sample["data"]["categories"]
    assert COCO.joint_names == tuple(category["keypoints"])
    assert set(COCO.limbs) == {(a - 1, b - 1) for a, b in category["skeleton"]}
    assert get_pose("coco") is COCO
    for a, b in COCO.flip_pairs:
        assert COCO.joint_names[a].replace("left", "right") == COCO.joint_names[b]
    assert [COCO.side(j) for j in (0, 1, 2)] == ["center", "left", "right"]


def test_reader_keeps_people_with_keypoints_not_crowd(sample):
    skipped: list[str] = []
    records = read_annotations(sample["annotations"], "coco", skipped=skipped)
    assert len(records) == 12 and {r.pose for r in records} == {"coco"}
    assert len(skipped) == 2 and all("num_keypoints 0" in s for s in skipped)
    by_id = {a["id"]: a for a in sample["data"]["annotations"]}
    for r in records:
        ann = by_id[r.person_id]
        values = np.array(ann["keypoints"], np.float64).reshape(17, 3)
        np.testing.assert_array_equal(r.visible, values[:, 2] > 0)  # v=1 and v=2 are annotated
        np.testing.assert_array_equal(r.extra["visibility"], values[:, 2])
        seen = r.visible > 0
        np.testing.assert_allclose(
            r.joints[seen], values[seen, :2], atol=1e-4
        )  # 0-based, as stored
        assert r.normalizer == pytest.approx(ann["area"], rel=1e-6)  # OKS s^2
        assert r.image_id == ann["image_id"] and int(seen.sum()) == ann["num_keypoints"]
    assert {r.image for r in records} == {p.name for p in sample["images"].iterdir()}


@pytest.mark.parametrize("shape", [(256, 256), (256, 192)])
def test_crop_box_is_the_aspect_corrected_bbox_padded_by_1_25(shape):
    """The bbox's continuous corners land inside the crop; its long side (after the aspect ratio
    correction) spans 1 / 1.25 of the crop, centred."""
    height, width = shape
    bbox = [100.0, 50.0, 60.0, 200.0]  # tall: height decides
    for box in (bbox, [100.0, 50.0, 300.0, 90.0]):  # wide: width decides
        center, scale = coco_box_to_center_scale(box, width / height)
        matrix = geometry.crop_matrix(center, scale, shape)
        x, y, w, h = box
        corners = np.array([[x - 0.5, y - 0.5], [x + w - 0.5, y + h - 0.5]])
        (cx1, cy1), (cx2, cy2) = geometry.apply_matrix(matrix, corners) + 0.5  # pixel edges
        assert cx1 >= -1e-9 and cy1 >= -1e-9 and cx2 <= width + 1e-9 and cy2 <= height + 1e-9
        fills = max((cx2 - cx1) / width, (cy2 - cy1) / height)
        assert fills == pytest.approx(1 / 1.25)
        assert (cx1 + cx2) / 2 == pytest.approx(width / 2) and (cy1 + cy2) / 2 == pytest.approx(
            height / 2
        )


def test_non_square_heatmaps_decode_back_to_image_pixels():
    """256x192 input, 64x48 heatmaps: targets at known points decode to the same image points."""
    from hgkeras.codec import HeatmapCodec, render_heatmaps

    center, scale = coco_box_to_center_scale([200.0, 80.0, 120.0, 260.0], 192 / 256)
    rng = np.random.default_rng(0)
    on_grid = np.stack([rng.integers(2, 46, 17), rng.integers(2, 62, 17)], axis=1).astype(float)
    to_image = geometry.invert_matrix(geometry.crop_matrix(center, scale, (64, 48)))
    joints = geometry.apply_matrix(to_image, on_grid)
    heatmaps = render_heatmaps(on_grid[None], np.ones((1, 17)), (64, 48), sigma=2.0)
    assert tuple(heatmaps.shape) == (1, 64, 48, 17)
    decoded, scores = HeatmapCodec().decode_to_image(
        heatmaps, center[None], np.array([scale]), (256, 192)
    )
    np.testing.assert_allclose(np.asarray(decoded)[0], joints, atol=1e-3)
    np.testing.assert_allclose(np.asarray(scores), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["annotations"][3].pop("bbox"), "annotations[3] has no field 'bbox'"),
        (
            lambda d: d["annotations"][5].update(keypoints=[0] * 50),
            "annotations[5] (id 488308) field 'keypoints' has 50 values, expected 51",
        ),
        (
            lambda d: d["annotations"][0]["keypoints"].__setitem__(2, 3),
            "annotations[0] (id 442619) has visibility flags other than 0, 1, 2",
        ),
        (lambda d: d.pop("images"), "not a COCO annotation file"),
        (lambda d: d["annotations"][2].update(area="big"), "(id 230195) field 'area' must be"),
        (lambda d: d["annotations"][1].update(image_id=7), "refers to image_id 7"),
    ],
)
def test_bad_annotation_files_name_the_file_and_index(sample, tmp_path, change, message):
    data = copy.deepcopy(sample["data"])
    change(data)
    path = _write(tmp_path / "person_keypoints_bad.json", data)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        read_annotations(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------ prepare


def test_prepare_coco_writes_12_records_and_lists_the_skipped(sample, tmp_path, capsys):
    out = tmp_path / "records"
    code = main(
        ["prepare", "coco", "--annotations", str(sample["annotations"]), "--images",
         str(sample["images"]), "--out", str(out), "--input-shape", "256x192", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "coco" and manifest["num_joints"] == 17
    assert manifest["splits"]["train"]["records"] == 12
    assert manifest["aspect_ratio"] == 0.75 and manifest["box_padding"] == 1.25
    assert sorted(manifest["skipped_annotations"]) == [
        "000000040083.jpg (annotation 1202706): no labelled keypoints (num_keypoints 0)",
        "000000196141.jpg (annotation 508900): no labelled keypoints (num_keypoints 0)",
    ]
    assert "train: 12 records" in capsys.readouterr().out

    from hgkeras.data import pose_dataset

    (batch,) = pose_dataset(out, 12, training=False, split="train", input_size=64)
    expected = read_coco_keypoints(sample["annotations"], aspect_ratio=0.75)
    np.testing.assert_allclose(batch["joints"], np.stack([r.joints for r in expected]), atol=1e-3)
    np.testing.assert_allclose(batch["normalizer"], [r.normalizer for r in expected], rtol=1e-6)
    np.testing.assert_array_equal(batch["image_id"], [r.image_id for r in expected])


# --------------------------------------------------------------------------------------- OKS scoring


def test_ground_truth_as_results_scores_ap_1(sample, tmp_path, capsys):
    results = _write(tmp_path / "results.json", _gt_results(sample["data"]))
    out = tmp_path / "metrics.json"
    code = main(
        ["evaluate", "--data", str(sample["annotations"]), "--predictions", str(results),
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads(out.read_text())
    for key in ("AP", "AP50", "AP75", "APm", "APl", "AR"):
        assert metrics[key] == pytest.approx(1.0), key
    printed = capsys.readouterr().out
    assert "AP50" in printed and "1.000" in printed


def _perturbed(data: dict, oks_of_person) -> list[dict]:
    """GT results with every labelled keypoint moved right so that each keypoint's OKS term is
    ``oks_of_person(k)``: d_i = sqrt(-2 ln(oks) * area) * 2 sigma_i (pycocotools' formula)."""
    results = _gt_results(data)
    areas = {a["id"]: a["area"] for a in data["annotations"]}
    ids = [a["id"] for a in data["annotations"] if a["num_keypoints"] > 0]
    for k, (entry, ann_id) in enumerate(zip(results, ids, strict=True)):
        values = np.array(entry["keypoints"], np.float64).reshape(17, 3)
        shift = np.sqrt(-2.0 * math.log(oks_of_person(k)) * areas[ann_id]) * 2 * COCO.sigmas
        values[:, 0] += np.where(values[:, 2] > 0, shift, 0.0)
        entry["keypoints"] = values.reshape(-1).tolist()
    return results


def test_perturbation_of_known_oks_scores_what_pycocotools_computes(sample):
    """OKS 0.72 for everybody: matched at thresholds 0.50..0.70 (5 of 10), missed at 0.75..0.95."""
    from pycocotools.cocoeval import COCOeval

    results = _perturbed(sample["data"], lambda k: 0.72)
    gt = coco._ground_truth(sample["data"])
    evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "keypoints")
    evaluator.evaluate()
    best = [  # each person's best match is its own perturbed pose
        np.max(evaluator.ious[key][:, g])
        for key in evaluator.ious
        for g, gt in enumerate(evaluator._gts[key])
        if gt["num_keypoints"] > 0
    ]
    assert len(best) == 12
    np.testing.assert_allclose(best, 0.72, rtol=1e-6)
    metrics = coco.evaluate_results(sample["data"], results)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.5) and metrics["AR"] == pytest.approx(0.5)


def test_mixed_perturbations_give_the_precision_recall_area(sample):
    """Half the people (higher scores) at OKS 0.92, the others at 0.72: AP at 0.75..0.90 is the
    101-point interpolated area of precision 1 up to recall 0.5, i.e. 51/101."""
    results = _perturbed(sample["data"], lambda k: 0.92 if k % 2 else 0.72)
    for k, entry in enumerate(results):
        entry["score"] = 0.9 if k % 2 else 0.4
    metrics = coco.evaluate_results(sample["data"], results)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(51 / 101)
    assert metrics["AP"] == pytest.approx((5 * 1.0 + 4 * 51 / 101 + 0.0) / 10)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r[4].pop("score"), "entry 4 has no field 'score'"),
        (
            lambda r: r[2].update(keypoints=r[2]["keypoints"][:48]),
            "entry 2 field 'keypoints' has 48",
        ),
        (lambda r: r[0]["keypoints"].__setitem__(0, "x"), "entry 0 field 'keypoints' is not a num"),
        (lambda r: r[1].update(image_id=12345), "entry 1 has image_id 12345"),
    ],
)
def test_bad_results_files_are_clear_errors(sample, tmp_path, capsys, change, message):
    results = _gt_results(sample["data"])
    change(results)
    path = _write(tmp_path / "results.json", results)
    code = main(["evaluate", "--data", str(sample["annotations"]), "--predictions", str(path)])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and str(path) in error and "Traceback" not in error


def test_bad_detections_files_are_clear_errors(sample, tmp_path):
    detections = json.loads(sample["detections"].read_text())
    detections[7].pop("bbox")
    path = _write(tmp_path / "detections.json", detections)
    with pytest.raises(ValueError, match=re.escape(f"{path}: entry 7 has no field 'bbox'")):
        coco.load_detections(path)
    assert len(coco.load_detections(sample["detections"])) == 118


def test_oks_nms_drops_near_duplicates_and_keeps_distinct_poses():
    base = np.array([[10.0 * j, 5.0 * j] for j in range(17)])
    poses = np.stack([base, base + 0.5, base + 60.0])
    results = coco.results_from_predictions(
        [1, 1, 1], poses, np.ones((3, 17)), [0.8, 0.9, 0.7], [[0, 0, 100, 100]] * 3
    )
    kept = coco.oks_nms(results, 0.9)
    assert [r["score"] for r in kept] == pytest.approx([0.9, 0.7])
    assert coco.rescore(0.5, np.array([0.1, 0.3, 0.5])) == pytest.approx(0.5 * 0.4)


# --------------------------------------------------------------------------- models, predict, train


@pytest.fixture(scope="module")
def tiny_coco_model(tmp_path_factory) -> Path:
    """An untrained 17-joint hourglass with a non-square 64x48 input, saved."""
    import keras

    from hgkeras.models.hourglass import StackedHourglass

    keras.utils.set_random_seed(0)
    model = StackedHourglass(
        num_stacks=1,
        num_features=16,
        num_joints=17,
        depth=2,
        image_shape=(64, 48, 3),
        pose="coco",
    )
    path = tmp_path_factory.mktemp("model") / "coco.keras"
    model.save(path)
    return path


def test_evaluate_model_on_real_detections_writes_a_results_file(sample, tiny_coco_model, tmp_path):
    written, out = tmp_path / "results.json", tmp_path / "metrics.json"
    code = main(
        ["evaluate", "--model", str(tiny_coco_model), "--data", str(sample["annotations"]),
         "--images", str(sample["images"]), "--detections", str(sample["detections"]),
         "--write-predictions", str(written), "--out", str(out), "--no-flip"]
    )  # fmt: skip
    assert code == 0
    results = coco.load_results(written)
    assert 0 < len(results) <= 118  # OKS-NMS may drop duplicates
    detections = coco.load_detections(sample["detections"])
    assert {r["image_id"] for r in results} <= {d["image_id"] for d in detections}
    metrics = json.loads(out.read_text())
    assert metrics["num_results"] == len(results) and 0.0 <= metrics["AP"] <= 1.0
    assert coco.evaluate_results(sample["annotations"], written)["AP"] == pytest.approx(
        metrics["AP"]
    )


def test_predict_format_coco_writes_results_for_the_coco_tools(sample, tiny_coco_model, tmp_path):
    """Whole images as one person each, flip test with the COCO pairs, results the COCO tools read."""
    code = main(
        ["predict", str(sample["images"]), "--model", str(tiny_coco_model), "--out",
         str(tmp_path), "--format", "coco", "--no-overlay", "--quiet"]
    )  # fmt: skip
    assert code == 0
    results = coco.load_results(tmp_path / "results.json")
    assert sorted(r["image_id"] for r in results) == [785, 40083, 196141, 197388]
    coco.evaluate_results(sample["annotations"], results)  # pycocotools accepts it


def test_predict_format_coco_needs_coco_image_names(tiny_coco_model, real_data, tmp_path, capsys):
    image = real_data / "mpii" / "images" / "004645041.jpg"
    renamed = tmp_path / "photo.jpg"
    renamed.write_bytes(image.read_bytes())
    code = main(["predict", str(renamed), "--model", str(tiny_coco_model), "--out",
                 str(tmp_path / "out"), "--format", "coco"])  # fmt: skip
    assert code == 2 and "COCO id" in capsys.readouterr().err


def test_train_dataset_coco_uses_the_top_down_defaults(tmp_path):
    from hgkeras.cli.commands.train import parse_config
    from hgkeras.training.build import build_trainer
    from hgkeras.training.recipes import RECIPES
    from hgkeras.training.run_callbacks import build_callbacks

    config = parse_config(["--dataset", "coco", "--data-dir", str(tmp_path)])
    assert config.joints == 17 and config.recipe == "coco"
    coco_recipe = RECIPES["coco"]
    assert (config.sigma, config.batch_size, config.epochs, config.lr_drops) == (
        2.0,
        32,
        210,
        [170, 200],
    )
    assert config.input_size == 256 and config.augmentation == coco_recipe.augmentation.to_dict()
    small = parse_config(
        ["--dataset", "coco", "--data-dir", str(tmp_path), "--stacks", "1", "--features", "16",
         "--depth", "1", "--input-size", "32", "--sigma", "1.5"]
    )  # fmt: skip
    assert small.sigma == 1.5
    _, trainer = build_trainer(small)
    assert trainer.augmentation == coco_recipe.augmentation
    assert trainer.flip_permutation == list(COCO.flip_permutation)
    callbacks = build_callbacks(small, tmp_path, val_dataset=[], steps_per_epoch=1)
    assert isinstance(callbacks["validation"], ValidationCallback)
    assert callbacks["best"].monitor == "val_ap"


@pytest.mark.slow
def test_train_run_on_coco_logs_val_ap_and_keeps_the_best(sample, tmp_path):
    """A 2-epoch `train.py --dataset coco` run: OKS AP validation each epoch, best.keras on val_ap."""
    import dataclasses

    from hgkeras.cli.commands.train import parse_config
    from hgkeras.data.tfrecords import write_tfrecords
    from hgkeras.training.run import train

    people = read_coco_keypoints(sample["annotations"])
    people += [dataclasses.replace(r, split="valid") for r in people]
    write_tfrecords(people, sample["images"], tmp_path / "data", progress=False)
    config = parse_config(
        ["--dataset", "coco", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
         "--stacks", "1", "--features", "16", "--depth", "1", "--input-size", "32",
         "--batch-size", "4", "--epochs", "2", "--steps-per-epoch", "2", "--val-batch-size", "12",
         "--no-export", "--verbose", "0"]
    )  # fmt: skip
    summary = train(config)
    assert len(summary["history"]["val_ap"]) == 2 and summary["oks"]["num_results"] == 12
    assert summary["val_ap"] == summary["oks"]["AP"]
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["monitor"] == "val_ap" and (tmp_path / "run" / "best.keras").exists()


@pytest.mark.slow
def test_small_model_overfits_the_12_people_to_ap50_0_9(sample, tmp_path):
    """From scratch, a 1-stack, 32-feature hourglass at 64x64 trained with PoseTrainer (augmentation
    off) on the TFRecords of `prepare coco` reaches OKS AP50 >= 0.9 on the 12 people, scored by
    pycocotools in ORIGINAL image pixels through the full chain: the pipeline's source crops, the
    trainer's warp and targets, the model, decoding and the inverse crop transform. Scored twice: on
    the ground-truth boxes from the annotation file (cv2 crops, `evaluate_model`) and through the
    training callback (the pipeline's evaluation crops, `ValidationCallback`)."""
    import keras

    from hgkeras.data import pose_dataset
    from hgkeras.data.prepare import prepare_dataset
    from hgkeras.models.hourglass import StackedHourglass
    from hgkeras.training.trainer import PoseTrainer

    size = 64
    prepare_dataset("coco", sample["annotations"], sample["images"], tmp_path,
                    input_shape=(size, size), progress=False)  # fmt: skip
    # No augmentation: the source crops are the same every step, so one batch is decoded and reused.
    train = pose_dataset(tmp_path, 12, training=True, split="train", source_size=size * 3 // 2,
                         shuffle_buffer=1).take(1).cache().repeat()  # fmt: skip
    keras.utils.set_random_seed(0)
    hourglass = StackedHourglass(
        num_stacks=1,
        num_features=32,
        num_joints=17,
        depth=2,
        image_shape=(size, size, 3),
        pose="coco",
    )
    trainer = PoseTrainer(hourglass, augment=False, sigma=2.0, seed=0)
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = trainer.fit(train, epochs=3, steps_per_epoch=100, shuffle=False, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]

    metrics, results = coco.evaluate_model(
        hourglass, sample["annotations"], sample["images"], flip=False
    )
    assert len(results) == 12
    assert metrics["AP50"] >= 0.9, metrics

    callback = ValidationCallback(
        pose_dataset(tmp_path, 12, training=False, split="train", input_size=size), flip=False
    )
    callback.set_model(trainer)
    logs: dict = {}
    callback.on_epoch_end(0, logs)
    assert set(logs) == {
        "val_ap", "val_ap50", "val_ap75", "val_apm", "val_apl", "val_ar", "val_error_px"
    }  # fmt: skip
    assert logs["val_ap50"] >= 0.9, logs
