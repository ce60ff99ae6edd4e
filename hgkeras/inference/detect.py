"""Person boxes without any download: OpenCV's built-in HOG + linear SVM people detector.

The detector (Dalal & Triggs, 64x128 window) finds upright, mostly unoccluded people of at least
about 100 px height in the (resized) image; it is a convenience for images with several people,
not a state-of-the-art detector. Pass your own boxes, or your own detector to
:class:`hgkeras.inference.predictor.PosePredictor` (``detector=``), for anything better.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from hgkeras.inference.boxes import nms

#: The HOG window is 64x128; images are resized so their long side is at most this (speed).
DEFAULT_MAX_SIDE = 960


def hog_score(margin: Any) -> np.ndarray:
    """The HOG SVM margin mapped to [0, 1]: the logistic ``1 / (1 + exp(-margin))``.

    Monotone, so rankings are unchanged; margin 0 (OpenCV's default decision threshold) maps to
    0.5. It is not a calibrated probability (no calibration data are shipped), only a score in the
    range every other detector uses.
    """
    return 1.0 / (1.0 + np.exp(-np.asarray(margin, np.float64)))


def detect_people(
    image_bgr: np.ndarray,
    min_score: float = 0.5,
    iou_threshold: float = 0.45,
    max_side: int = DEFAULT_MAX_SIDE,
    win_stride: int = 8,
    pyramid_scale: float = 1.05,
) -> tuple[np.ndarray, np.ndarray]:
    """People boxes in a uint8 BGR (or gray) image with OpenCV's default HOG people detector.

    Args:
        min_score: minimum score (:func:`hog_score`, in [0, 1]) to keep a window; 0.5 is SVM
            margin 0, OpenCV's own threshold, so it keeps everything OpenCV reports.
        iou_threshold: non-maximum suppression overlap (:func:`hgkeras.inference.boxes.nms`).
        max_side: the image is shrunk so its long side is at most this before detection
            (boxes are returned in the original pixels); images smaller than the 64x128 window
            are enlarged to fit it.
        win_stride, pyramid_scale: ``detectMultiScale`` settings (finer = slower, more recall).

    Returns (boxes (N, 4) float64 x1, y1, x2, y2 in original pixels, scores (N,) in [0, 1]),
    best first; empty arrays when nobody is found.
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
    scores = hog_score(np.asarray(weights, np.float64).reshape(-1))
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
