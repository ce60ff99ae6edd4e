"""PosePredictor: image loading, person crops, default boxes, detection, drawing and accuracy on MPII."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from hgkeras import MPII, StackedHourglass, geometry
from hgkeras.crop import crop_numpy as crop_person
from hgkeras.data.images import to_rgb_float
from hgkeras.inference.detect import detect_people, nms
from hgkeras.inference.predictor import PersonPose, PosePredictor
from hgkeras.vis.draw import SIDE_COLORS, draw_people, heatmap_montage

# 0-based MPII head boxes of the five shipped people (data/README.md, same order as samples.json).
HEAD_BOXES = {
    "005808361.jpg": (914, 79, 1031, 237),
    "052475643.jpg": (316, 105, 361, 163),
    "051423444.jpg": (973, 179, 1051, 284),
    "004645041.jpg": (791, 199, 864, 313),
    "060754485.jpg": (578, 109, 656, 226),
}


@pytest.fixture(scope="module")
def tiny_model():
    """An untrained 1-stack network with a 64x64 input (fast; for shape/coordinate behaviour)."""
    return StackedHourglass(num_stacks=1, num_features=16, depth=2, image_shape=(64, 64, 3))


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return PosePredictor(tiny_model)


def _mpii_people(real_data):
    """Images (RGB uint8) and people of samples.json in 0-based pixels with Torch-adjusted boxes."""
    records = json.loads((real_data / "mpii" / "samples.json").read_text())
    people = []
    for record in records:
        bgr = cv2.imread(str(real_data / "mpii" / "images" / record["image"]))
        raw_scale = float(record["scale"])
        # Torch's adjustment (docs/method.md "Crop"): centre 15*scale px lower, scale x 1.25.
        center = np.asarray(record["center"], np.float64) - geometry.MATLAB_OFFSET
        center[1] += 15.0 * raw_scale
        joints = np.asarray(record["joints"], np.float64) - geometry.MATLAB_OFFSET
        x1, y1, x2, y2 = HEAD_BOXES[record["image"]]
        people.append(
            {
                "image": record["image"],
                "rgb": cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                "center": center,
                "scale": 1.25 * raw_scale,
                # the square person box of side 200 * raw scale: padded by 1.25 it is the crop
                "box": (
                    center[0] - 100 * raw_scale,
                    center[1] - 100 * raw_scale,
                    center[0] + 100 * raw_scale,
                    center[1] + 100 * raw_scale,
                ),
                "joints": joints,
                "visible": np.asarray(record["joints_vis"], np.float64),
                "head_size": 0.6 * np.hypot(x2 - x1, y2 - y1),
            }
        )
    return people


@pytest.fixture(scope="module")
def mpii_trained(real_data, overfit_mpii_trainer):
    """(the saved trainer of a tiny hourglass overfit to the five shipped MPII people, the people).

    64x64 input, 16x16 heatmaps: the PCKh threshold is about 0.8 heatmap pixel for these people,
    so the test needs sub-pixel decoding and exact coordinate mapping, not just a rough fit. The
    model was trained through TFRecords and ``PoseTrainer`` and never saw mirrored people, so it is
    evaluated with flip=False (the flip average itself is tested in tests/test_inference.py).
    """
    path, _, _ = overfit_mpii_trainer
    return path, _mpii_people(real_data)


def test_keypoints_in_original_pixels_match_mpii_ground_truth_within_pckh(mpii_trained):
    model, people = mpii_trained
    predictor = PosePredictor(model, flip=False)
    hits, total = 0, 0
    for p in people:
        (person,) = predictor.predict(p["rgb"], boxes=[p["box"]])
        np.testing.assert_allclose(person.center, p["center"], atol=1e-6)
        np.testing.assert_allclose(person.scale, p["scale"], rtol=1e-9)
        seen = p["visible"] > 0
        distance = np.linalg.norm(person.keypoints - p["joints"], axis=1)[seen]
        hits += int(np.sum(distance <= 0.5 * p["head_size"]))
        total += int(seen.sum())
    assert total == 76
    assert hits / total >= 0.8, f"PCKh@0.5 {hits}/{total}"


def test_path_and_bgr_array_give_the_same_result(mpii_trained, real_data):
    model, people = mpii_trained
    predictor = PosePredictor(model, flip=False)
    path = real_data / "mpii" / "images" / people[1]["image"]
    from_path = predictor.predict(path, boxes=people[1]["box"])[0]
    from_bgr = predictor.predict(cv2.imread(str(path)), people[1]["box"], color="bgr")[0]
    from_rgb = predictor.predict(people[1]["rgb"], people[1]["box"])[0]
    np.testing.assert_array_equal(from_path.keypoints, from_bgr.keypoints)
    np.testing.assert_array_equal(from_rgb.keypoints, from_bgr.keypoints)
    assert from_path.joint_names == MPII.joint_names


def test_crop_person_is_warp_affine_of_the_crop_matrix():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    center, scale = (50.0, 40.0), 0.4  # 80 px box -> 64 px crop: no pre-shrinking
    expected = cv2.warpAffine(image, geometry.crop_matrix(center, scale, 64), (64, 64))
    np.testing.assert_array_equal(crop_person(image, center, scale, 64), expected)


def test_crop_person_shrinks_large_boxes_without_aliasing():
    # binary noise: averaging ~10x10 source pixels per crop pixel leaves std ~127.5/10; a plain
    # bilinear warp samples ~4 source pixels per crop pixel, std >= 127.5/2
    noise = (np.random.default_rng(0).integers(0, 2, (640, 640)) * 255).astype(np.uint8)
    center, scale = (319.5, 319.5), 3.3  # 660 px box -> 64 px crop: 10.3 source px per crop px
    smooth = crop_person(noise, center, scale, 64).astype(np.float64)[4:-4, 4:-4]
    plain = cv2.warpAffine(noise, geometry.crop_matrix(center, scale, 64), (64, 64))
    aliased = plain.astype(np.float64)[4:-4, 4:-4]
    assert abs(smooth.mean() - 127.5) < 5 and smooth.std() < 20
    assert aliased.std() > 50
    # the shrunk crop keeps the geometry: a white square lands where crop_matrix puts it
    square = np.zeros((640, 640), np.uint8)
    square[200:300, 400:500] = 255
    crop = crop_person(square, center, scale, 64).astype(np.float64)
    corners = geometry.apply_matrix(
        geometry.crop_matrix(center, scale, 64), np.array([[399.5, 199.5], [499.5, 299.5]])
    )
    ys, xs = np.nonzero(crop > 127)
    np.testing.assert_allclose([xs.min() - 0.5, ys.min() - 0.5], corners[0], atol=1.0)
    np.testing.assert_allclose([xs.max() + 0.5, ys.max() + 0.5], corners[1], atol=1.0)


def test_default_is_the_whole_image_as_one_person(predictor):
    (person,) = predictor.predict(np.zeros((30, 50, 3), np.uint8))
    np.testing.assert_allclose(person.center, [24.5, 14.5])
    assert person.scale == pytest.approx(50 / 200)
    assert person.box == (-0.5, -0.5, 49.5, 29.5)
    assert person.keypoints.shape == (16, 2) and person.scores.shape == (16,)
    # all keypoints lie in the square crop around the image
    assert np.all(np.abs(person.keypoints - person.center) <= 25.0)


def test_boxes_give_one_person_each_in_order(predictor):
    image = np.full((100, 200, 3), 128, np.uint8)
    boxes = [(10, 10, 60, 90), (120, 20, 180, 80)]
    people = predictor.predict(image, boxes=boxes)
    assert [p.box for p in people] == [tuple(map(float, b)) for b in boxes]
    center, scale = geometry.box_to_center_scale(boxes[1], padding=1.25)
    np.testing.assert_allclose(people[1].center, center)
    assert people[1].scale == pytest.approx(scale) == pytest.approx(60 * 1.25 / 200)
    assert predictor.predict(image, boxes=[]) == []
    with pytest.raises(ValueError, match="x2 > x1"):
        predictor.predict(image, boxes=[(50, 10, 20, 90)])
    with pytest.raises(ValueError, match="not both"):
        predictor.predict(image, boxes=boxes, detect=True)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        predictor.predict(image, boxes=[(1, 2, 3)])


def test_odd_images(predictor):
    # 1x1: the box is the pixel itself, keypoints stay inside it
    (tiny,) = predictor.predict(np.full((1, 1, 3), 200, np.uint8))
    assert tiny.scale == pytest.approx(1 / 200)
    assert np.all(np.abs(tiny.keypoints) <= 0.5) and np.all(np.isfinite(tiny.scores))
    # 8000x6000: cropped straight from the image, no float copy of it; fast
    start = time.perf_counter()
    (huge,) = predictor.predict(np.zeros((6000, 8000, 3), np.uint8))
    assert time.perf_counter() - start < 10
    np.testing.assert_allclose(huge.center, [3999.5, 2999.5])
    assert huge.scale == pytest.approx(40.0)
    assert np.all(np.abs(huge.keypoints - huge.center) <= 4000.0)
    # grayscale == the same grey in RGB; RGBA == RGB; 16-bit == 8-bit * 257; floats in [0, 1]
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (48, 40), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    reference = predictor.predict(rgb)[0].keypoints
    np.testing.assert_array_equal(predictor.predict(gray)[0].keypoints, reference)
    np.testing.assert_array_equal(predictor.predict(gray[..., None])[0].keypoints, reference)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (48, 40, 1), dtype=np.uint8)], axis=2)
    np.testing.assert_array_equal(predictor.predict(rgba)[0].keypoints, reference)
    deep = rgb.astype(np.uint16) * 257
    np.testing.assert_array_equal(predictor.predict(deep)[0].keypoints, reference)
    floats = rgb.astype(np.float32) / 255.0
    np.testing.assert_allclose(predictor.predict(floats)[0].keypoints, reference, atol=1e-3)


def test_color_order_and_bad_inputs(predictor, tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        predictor.predict(rgb)[0].keypoints,
        predictor.predict(rgb[..., ::-1].copy(), color="bgr")[0].keypoints,
    )
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        predictor.predict(broken)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        predictor.predict(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        predictor.predict(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        predictor.predict(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(ValueError, match="color"):
        predictor.predict(rgb, color="hsv")
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        PosePredictor(tmp_path / "nope.keras")


def test_to_rgb_float_scales_each_dtype():
    np.testing.assert_allclose(to_rgb_float(np.array([[65535]], np.uint16)), np.ones((1, 1, 3)))
    np.testing.assert_allclose(
        to_rgb_float(np.array([[[0, 0, 255]]], np.uint8), "bgr")[0, 0], [1, 0, 0]
    )
    np.testing.assert_allclose(to_rgb_float(np.array([[[2.0, -1.0, 0.5]]]))[0, 0], [1, 0, 0.5])


def test_result_to_dict_is_json(predictor):
    (person,) = predictor.predict(np.zeros((20, 20, 3), np.uint8), return_heatmaps=True)
    data = json.loads(json.dumps(person.to_dict()))
    assert data["joint_names"] == list(MPII.joint_names)
    assert len(data["keypoints"]) == 16 and len(data["keypoints"][0]) == 2
    assert data["box"] == [-0.5, -0.5, 19.5, 19.5]
    assert person.heatmaps.shape == (16, 16, 16) and person.crop.shape == (64, 64, 3)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]])
    scores = np.array([0.5, 0.9, 0.3, 0.8])
    # IoU(b1, b0) = 81 / 119 = 0.68 > 0.45 -> b0 dropped; IoU(b1, b3) = 36 / 114 kept
    assert nms(boxes, scores, 0.45).tolist() == [1, 3, 2]


def test_hog_detector_finds_a_person_in_a_real_image(real_data, predictor):
    image = cv2.imread(str(real_data / "mpii" / "images" / "052475643.jpg"))
    boxes, scores = detect_people(image)
    assert len(boxes) >= 1 and np.all(np.diff(scores) <= 0)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert boxes.min() >= -0.5 and boxes[:, 2].max() <= 853.5 and boxes[:, 3].max() <= 479.5
    # the drawn person 052475643 (head box 316..361 x 105..163) is covered by a detection
    head = np.array([338.5, 134.0])
    inside = (boxes[:, 0] <= head[0] + 30) & (boxes[:, 2] >= head[0] - 30)
    assert np.any(inside & (boxes[:, 1] <= head[1]) & (boxes[:, 3] >= head[1]))
    people = predictor.predict(image, detect=True, color="bgr")
    assert len(people) == len(boxes)
    assert all(p.detection_score is not None for p in people)
    assert detect_people(np.zeros((10, 10, 3), np.uint8))[0].shape == (0, 4)


def test_draw_people_colours_by_side_and_fades_unsure_joints():
    image = np.zeros((200, 200, 3), np.uint8)
    keypoints = np.full((16, 2), np.nan)
    keypoints[0] = (40, 40)  # r_ankle (confident)
    keypoints[5] = (160, 40)  # l_ankle (confident)
    keypoints[9] = (100, 160)  # head_top (unsure)
    scores = np.array([0.9] * 16)
    scores[9] = 0.05
    drawn = draw_people(image, [(keypoints, scores, None)], MPII, min_score=0.3, thickness=3)
    assert image.max() == 0  # a copy is drawn on
    np.testing.assert_array_equal(drawn[40, 40], SIDE_COLORS["right"])
    np.testing.assert_array_equal(drawn[40, 160], SIDE_COLORS["left"])
    faded = drawn[160, 100].astype(float)
    assert 0 < faded.max() < 0.5 * max(SIDE_COLORS["center"])
    assert isinstance(PersonPose, type)


def test_heatmap_montage_has_one_tile_per_joint():
    maps = np.zeros((16, 16, 16), np.float32)
    maps[4, 8, 3] = 1.0
    montage = heatmap_montage(
        maps, np.zeros((64, 64, 3)), MPII.joint_names, columns=4, cell_size=64
    )
    assert montage.shape == (256, 256, 3) and montage.dtype == np.uint8
    tile = montage[0:64, 192:256]  # joint 3 (row 0, column 3); 4 tile px per heatmap px
    assert tile[16:20, 32:36, 2].min() > 100  # the peak is JET red
    assert tile[0:4, 0:4, 2].max() < 10 and tile[0:4, 0:4, 0].max() > 20  # zero is faint blue


def test_predictor_runs_under_torch(run_backend, tiny_model, tmp_path):
    path = tmp_path / "tiny.keras"
    tiny_model.save(path)
    code = """
import json, sys
import numpy as np
from hgkeras.inference.predictor import PosePredictor
image = np.random.default_rng(0).integers(0, 256, (90, 60, 3), dtype=np.uint8)
people = PosePredictor(sys.argv[1]).predict(image, boxes=[(10, 20, 50, 80)], return_heatmaps=True)
print(json.dumps([p.to_dict() for p in people] + [list(people[0].heatmaps.shape)]))
"""
    *people, shape = json.loads(run_backend("torch", code, str(path)).strip().splitlines()[-1])
    assert shape == [16, 16, 16] and len(people) == 1
    keypoints = np.asarray(people[0]["keypoints"])
    assert people[0]["center"] == [30.0, 50.0] and people[0]["scale"] == pytest.approx(0.375)
    # every keypoint lies in the 75 px square crop around the box centre
    assert keypoints.shape == (16, 2) and np.all(np.abs(keypoints - [30.0, 50.0]) <= 37.5)
