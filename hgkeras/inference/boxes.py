"""Person boxes: detector outputs, COCO detection-result files, non-maximum suppression, crop checks.

A detector is any callable ``detector(image_bgr) -> (boxes, scores)`` taking a uint8 BGR (H, W, 3)
image and returning boxes (N, 4) as (x1, y1, x2, y2) in that image's pixels and scores (N,) in
[0, 1]; :func:`hgkeras.inference.detect.detect_people` (OpenCV's HOG) is the built-in one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hgkeras import geometry

Detector = Callable[[np.ndarray], tuple[Any, Any]]

#: A crop box must be at least this many pixels high.
MIN_BOX_SIDE = 1.0
#: ... and at most this many times the image's longer side (a person box larger than that is an error).
MAX_BOX_FACTOR = 10.0
#: COCO's category id of people.
PERSON_CATEGORY = 1


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes ``a`` (N, 4) and ``b`` (M, 4), (x1, y1, x2, y2): (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: Any, scores: Any, iou_threshold: float = 0.45) -> np.ndarray:
    """Indices of the boxes (N, 4) x1,y1,x2,y2 kept by non-maximum suppression, best first.

    OpenCV's ``cv2.dnn.NMSBoxes`` (greedy, by score; a box is dropped when its IoU with a kept
    one exceeds ``iou_threshold``).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    rects = [(x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes.tolist()]
    shifted = scores - scores.min() + 1.0  # NMSBoxes needs scores above its threshold (>= 0)
    import cv2

    keep = cv2.dnn.NMSBoxes(rects, shifted.tolist(), 0.0, float(iou_threshold))
    return np.asarray(keep, np.int64).reshape(-1)


def check_boxes(
    boxes: Any, scores: Any = None, what: str = "boxes"
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) float64 boxes and (N,) scores (NaN when None) after checking shapes and values."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        array = np.zeros((0, 4))
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(
            f"{what} must be (x1, y1, x2, y2) or a list of them (N, 4), got shape {array.shape}"
        )
    for box in array:
        geometry.box_to_center_scale(box)  # validates finiteness and x2 > x1, y2 > y1
    if scores is None:
        values = np.full(len(array), np.nan)
    else:
        values = np.asarray(scores, np.float64).reshape(-1)
        if len(values) != len(array):
            raise ValueError(f"{what}: {len(array)} boxes but {len(values)} scores")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{what}: scores must be finite, got {values.tolist()}")
    return array, values


def run_detector(
    detector: Detector, image_bgr: np.ndarray, min_score: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Call ``detector`` and check what it returns; boxes scoring >= ``min_score``, best first."""
    name = getattr(detector, "__name__", type(detector).__name__)
    try:
        result = detector(image_bgr)
        boxes, scores = result
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"detector {name} must return (boxes (N, 4) x1, y1, x2, y2, scores (N,)): {error}"
        ) from error
    boxes, scores = check_boxes(boxes, scores, what=f"detector {name}")
    keep = scores >= min_score
    boxes, scores = boxes[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


def check_crop_box(
    center: Sequence[float], scale: float, height: int, width: int, aspect_ratio: float = 1.0
) -> None:
    """Raise ValueError unless the crop box (``center``, ``scale``) is usable on a HxW image.

    The box (height ``200 * scale``, width ``aspect_ratio`` times that) must be finite, between
    :data:`MIN_BOX_SIDE` pixels and :data:`MAX_BOX_FACTOR` times the image's longer side high,
    and overlap the image.
    """
    cx, cy = (float(v) for v in np.asarray(center, np.float64).reshape(-1)[:2])
    scale = float(scale)
    if not all(math.isfinite(v) for v in (cx, cy, scale)):
        raise ValueError(f"center {[cx, cy]} and scale {scale!r} must be finite")
    side = geometry.PIXELS_PER_SCALE * scale
    longest = float(max(height, width))
    if not MIN_BOX_SIDE <= side <= MAX_BOX_FACTOR * longest:
        raise ValueError(
            f"scale {scale:g} (a {side:g} px box) is outside [{MIN_BOX_SIDE / 200:g}, "
            f"{MAX_BOX_FACTOR * longest / 200:g}] for a {width}x{height} image (box height "
            f"between {MIN_BOX_SIDE:g} px and {MAX_BOX_FACTOR:g}x the image's longer side)"
        )
    half_w, half_h = side * aspect_ratio / 2.0, side / 2.0
    if (
        cx + half_w < -0.5
        or cx - half_w > width - 0.5
        or cy + half_h < -0.5
        or cy - half_h > height - 0.5
    ):
        raise ValueError(
            f"the crop box around center ({cx:g}, {cy:g}) with scale {scale:g} lies outside the "
            f"{width}x{height} image"
        )


def crop_box_checks_tf(center, scale, image_size, aspect_ratio: float = 1.0) -> list:
    """TensorFlow assertions of :func:`check_crop_box` (``image_size``: (height, width) tensor)."""
    import tensorflow as tf

    height, width = tf.cast(image_size[0], tf.float32), tf.cast(image_size[1], tf.float32)
    side = geometry.PIXELS_PER_SCALE * scale
    half_w, half_h = side * aspect_ratio / 2.0, side / 2.0
    inside = tf.reduce_all(
        tf.stack([
            center[0] + half_w >= -0.5, center[0] - half_w <= width - 0.5,
            center[1] + half_h >= -0.5, center[1] - half_h <= height - 0.5,
        ])
    )  # fmt: skip
    return [
        tf.debugging.assert_greater_equal(
            side,
            MIN_BOX_SIDE,
            message=f"scale: the box (200 * scale) must be >= {MIN_BOX_SIDE:g} px",
        ),
        tf.debugging.assert_less_equal(
            side,
            MAX_BOX_FACTOR * tf.maximum(height, width),
            message=f"scale: the box (200 * scale) must be <= {MAX_BOX_FACTOR:g}x the longer "
            "image side",
        ),
        tf.debugging.Assert(inside, ["center: the crop box lies outside the image"]),
    ]


class DetectionFile:
    """Person boxes per image from a COCO detection-results JSON file.

    The file is a list of ``{"image_id", "bbox": [x, y, w, h], "score", "category_id"}`` entries
    (what COCO detectors write); ``image_id`` is the COCO id (an int: ``000000000785.jpg`` is 785)
    or a file name; an entry may also carry ``file_name``. Entries of other categories than people
    (``category_id`` 1) and scoring under ``min_score`` are left out; with ``nms_iou`` the boxes of
    each image go through :func:`nms`.
    """

    def __init__(
        self, path: str | Path, min_score: float = 0.5, nms_iou: float | None = None
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"boxes file not found: {self.path}")
        try:
            entries = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{self.path}: not a JSON file: {error}") from None
        if not isinstance(entries, list):
            raise ValueError(
                f"{self.path}: a COCO detection-results file is a JSON list of "
                f"{{image_id, bbox, score}} entries, got a {type(entries).__name__}"
            )
        grouped: dict[str, tuple[list, list]] = {}
        for index, entry in enumerate(entries):
            where = f"{self.path} entry {index}"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
            if entry.get("category_id", PERSON_CATEGORY) != PERSON_CATEGORY:
                continue
            key = entry.get("file_name", entry.get("image_id"))
            if key is None:
                raise ValueError(f"{where}: needs 'image_id' (or 'file_name')")
            bbox = entry.get("bbox")
            score = entry.get("score", 1.0)
            try:
                x, y, w, h = (float(v) for v in bbox)
                score = float(score)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{where}: 'bbox' must be [x, y, w, h] and 'score' a number, got "
                    f"bbox={bbox!r} score={score!r}"
                ) from None
            if not all(math.isfinite(v) for v in (x, y, w, h, score)):
                raise ValueError(f"{where}: bbox {bbox} and score {score!r} must be finite")
            if w <= 0 or h <= 0 or score < min_score:
                continue  # empty boxes happen in real results; they hold nobody
            boxes, scores = grouped.setdefault(self._key(key), ([], []))
            boxes.append((x, y, x + w, y + h))
            scores.append(score)
        self.boxes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for key, (boxes, scores) in grouped.items():
            array, values = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
            order = (
                nms(array, values, nms_iou)
                if nms_iou is not None
                else np.argsort(-values, kind="stable")
            )
            self.boxes[key] = (array[order], values[order])

    @staticmethod
    def _key(value: Any) -> str:
        """Image ids and file names as one key: the file stem as an int when it is one."""
        stem = Path(str(value)).stem
        return str(int(stem)) if stem.isdigit() else stem

    def lookup(self, image_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (N, 4) x1, y1, x2, y2, scores (N,)) for an image file, best first; empty if none."""
        return self.boxes.get(self._key(Path(image_path).name), (np.zeros((0, 4)), np.zeros(0)))

    def __len__(self) -> int:
        return sum(len(scores) for _, scores in self.boxes.values())
