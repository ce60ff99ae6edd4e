"""Person boxes without any download: OpenCV's built-in HOG + linear SVM people detector.

The detector (Dalal & Triggs, 64x128 window) finds upright, mostly unoccluded people of at least
about 100 px height in the (resized) image; it is a convenience for images with several people,
not a state-of-the-art detector. Pass your own boxes for anything better.
"""

from __future__ import annotations

import cv2
import numpy as np

#: The HOG window is 64x128; images are resized so their long side is at most this (speed).
DEFAULT_MAX_SIDE = 960


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.45) -> np.ndarray:
    """Indices of the boxes (N, 4) x1,y1,x2,y2 kept by greedy non-maximum suppression, best first."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    areas = np.maximum(0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0, boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(0, xx2 - xx1) * np.maximum(0, yy2 - yy1)
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def detect_people(
    image_bgr: np.ndarray,
    min_score: float = 0.0,
    iou_threshold: float = 0.45,
    max_side: int = DEFAULT_MAX_SIDE,
    win_stride: int = 8,
    pyramid_scale: float = 1.05,
) -> tuple[np.ndarray, np.ndarray]:
    """People boxes in a uint8 BGR (or gray) image with OpenCV's default HOG people detector.

    Args:
        min_score: minimum SVM score to keep a window (0 = everything OpenCV reports).
        iou_threshold: non-maximum suppression overlap.
        max_side: the image is shrunk so its long side is at most this before detection
            (boxes are returned in the original pixels); images smaller than the 64x128 window
            are enlarged to fit it.
        win_stride, pyramid_scale: ``detectMultiScale`` settings (finer = slower, more recall).

    Returns (boxes (N, 4) float64 x1, y1, x2, y2 in original pixels, scores (N,)), best first;
    empty arrays when nobody is found.
    """
    image = np.asarray(image_bgr)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(
            f"detect_people needs a uint8 gray or BGR image, got {image.dtype} {image.shape}"
        )
    height, width = image.shape[:2]
    factor = min(1.0, max_side / max(height, width))
    factor = max(factor, 64.0 / width, 128.0 / height)  # fit at least one window
    small = image
    if factor != 1.0:
        size = (max(64, int(round(width * factor))), max(128, int(round(height * factor))))
        interp = cv2.INTER_AREA if factor < 1.0 else cv2.INTER_LINEAR
        small = cv2.resize(image, size, interpolation=interp)
    fx, fy = small.shape[1] / width, small.shape[0] / height
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    rects, weights = hog.detectMultiScale(
        small, winStride=(win_stride, win_stride), padding=(8, 8), scale=pyramid_scale
    )
    if len(rects) == 0:
        return np.zeros((0, 4)), np.zeros((0,))
    rects = np.asarray(rects, np.float64).reshape(-1, 4)
    scores = np.asarray(weights, np.float64).reshape(-1)
    boxes = np.stack(
        [
            rects[:, 0] / fx,
            rects[:, 1] / fy,
            (rects[:, 0] + rects[:, 2]) / fx,
            (rects[:, 1] + rects[:, 3]) / fy,
        ],
        axis=1,
    )
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], -0.5, width - 0.5)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], -0.5, height - 0.5)
    good = scores >= min_score
    boxes, scores = boxes[good], scores[good]
    keep = nms(boxes, scores, iou_threshold)
    return boxes[keep], scores[keep]
