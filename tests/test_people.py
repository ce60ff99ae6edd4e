"""Several people per image: COCO detection files, plug-in detectors, HOG scores, overlays."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from hgkeras import StackedHourglass
from hgkeras.cli import main
from hgkeras.inference.boxes import DetectionFile, nms
from hgkeras.inference.detect import detect_people, hog_score
from hgkeras.inference.predictor import PosePredictor
from hgkeras.vis.draw import PERSON_COLORS

#: People in person_detections_sample.json scoring >= 0.5, per image.
EXPECTED = {
    "000000000785.jpg": 1,
    "000000040083.jpg": 5,
    "000000196141.jpg": 6,
    "000000197388.jpg": 6,
}


@pytest.fixture(scope="module")
def model():
    return StackedHourglass(num_stacks=1, num_features=16, depth=2, image_shape=(64, 64, 3))


@pytest.fixture(scope="module")
def model_path(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def test_detection_file_gives_boxes_per_image(real_data, tmp_path):
    path = real_data / "coco" / "person_detections_sample.json"
    detections = DetectionFile(path, min_score=0.5)
    entries = json.loads(path.read_text())
    for name, count in EXPECTED.items():
        boxes, scores = detections.lookup(real_data / "coco" / "images" / name)
        assert len(boxes) == count and np.all(np.diff(scores) <= 0) and scores.min() >= 0.5
    boxes, scores = detections.lookup("000000000785.jpg")
    best = max((e for e in entries if e["image_id"] == 785), key=lambda e: e["score"])
    x, y, w, h = best["bbox"]
    np.testing.assert_allclose(boxes[0], [x, y, x + w, y + h])  # [x, y, w, h] -> corners
    assert len(DetectionFile(path, min_score=0.0)) == len(entries)
    # suppression: the two overlapping boxes of one person in 197388 become one at IoU 0.5
    assert len(DetectionFile(path, nms_iou=0.5).lookup("000000197388.jpg")[0]) == 5
    # by file name, other categories left out, bad entries named
    named = tmp_path / "named.json"
    named.write_text(json.dumps([
        {"file_name": "a.png", "bbox": [1, 2, 3, 4], "score": 0.9},
        {"image_id": "a.png", "bbox": [5, 5, 5, 5], "score": 0.8, "category_id": 3},
    ]))  # fmt: skip
    assert DetectionFile(named).lookup("some/dir/a.png")[0].tolist() == [[1, 2, 4, 6]]
    assert len(DetectionFile(named).lookup("b.png")[0]) == 0
    named.write_text(json.dumps([{"image_id": 1, "bbox": [1, 2, 3], "score": 1}]))
    with pytest.raises(ValueError, match=r"named\.json entry 0: 'bbox' must be \[x, y, w, h\]"):
        DetectionFile(named)


def test_predict_boxes_file_gives_every_detected_person(model_path, real_data, tmp_path):
    out = tmp_path / "out"
    images = real_data / "coco" / "images"
    detections = real_data / "coco" / "person_detections_sample.json"
    args = ["predict", str(images), "--model", str(model_path), "--out", str(out), "--quiet"]
    assert main(args + ["--boxes", str(detections), "--no-flip"]) == 0
    for name, count in EXPECTED.items():
        record = json.loads((out / name.replace(".jpg", ".json")).read_text())
        people = record["people"]
        assert len(people) == count
        assert all(0.5 <= p["detection_score"] <= 1 for p in people)
        assert all(np.isfinite(p["keypoints"]).all() for p in people)
    overlay = cv2.imread(str(out / "000000197388.png"))
    for color in PERSON_COLORS[:6]:  # one colour per person
        assert np.any(np.all(overlay == color, axis=-1)), color
    assert main(args + ["--boxes", str(detections), "--detect"]) == 2


def test_detector_callable_gives_the_people(model, real_data):
    calls = []

    def my_detector(image_bgr):
        calls.append(image_bgr.shape)
        return [[10, 20, 110, 300], [200, 40, 320, 380], [0, 0, 5, 5]], [0.9, 0.95, 0.1]

    predictor = PosePredictor(model, detector=my_detector, flip=False)
    people = predictor.predict(real_data / "coco" / "images" / "000000000785.jpg")
    assert calls == [(425, 640, 3)]
    assert [p.detection_score for p in people] == [0.95, 0.9, 0.1]  # best first
    assert people[0].box == (200.0, 40.0, 320.0, 380.0)
    broken = PosePredictor(model, detector=lambda image: [[1, 2, 3, 4]], flip=False)
    with pytest.raises(ValueError, match="must return"):
        broken.predict(np.zeros((50, 50, 3), np.uint8))
    with pytest.raises(ValueError, match="callable"):
        PosePredictor(model, detector="yolo")


def test_whole_image_as_one_person_is_said(model):
    predictor = PosePredictor(model, flip=False)
    with pytest.warns(UserWarning, match="whole image is taken as one person"):
        predictor.predict(np.zeros((40, 30, 3), np.uint8))


def test_hog_scores_lie_in_zero_one(real_data):
    assert hog_score(0.0) == 0.5 and 0 < hog_score(-5) < hog_score(1.09) < 1
    image = cv2.imread(str(real_data / "mpii" / "images" / "052475643.jpg"))
    boxes, scores = detect_people(image)
    assert len(boxes) >= 1 and np.all((scores >= 0.5) & (scores < 1.0))
    strict = detect_people(image, min_score=float(scores.max()))[1]
    assert len(strict) == 1  # the threshold is on the same [0, 1] scale


def test_nms_is_opencvs():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, (30, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 40, (30, 2))], axis=1)
    scores = rng.uniform(0, 1, 30)
    rects = [(x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes]
    expected = cv2.dnn.NMSBoxes(rects, scores.tolist(), 0.0, 0.3)
    assert nms(boxes, scores, 0.3).tolist() == np.asarray(expected).reshape(-1).tolist()
