"""Draw predicted skeletons on images (OpenCV) and write overlay pictures."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import cv2
import numpy as np

from hgkeras.joints import Skeleton

#: BGR colours by body side.
SIDE_COLOURS = {"left": (255, 128, 0), "right": (0, 0, 255), "center": (0, 200, 0)}


def draw_skeleton(
    image: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray | None,
    skeleton: Skeleton,
    threshold: float = 0.0,
    radius: int | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """A copy of ``image`` (H, W, 3 BGR uint8) with joints and limbs drawn.

    ``keypoints`` (J, 2) are (x, y) 0-based pixel centres; joints with ``score < threshold`` and
    limbs touching them are not drawn. Limbs take the colour of their side (left blue, right red).
    """
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 BGR, got {image.shape} {image.dtype}")
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.shape != (skeleton.num_joints, 2):
        raise ValueError(
            f"keypoints must be ({skeleton.num_joints}, 2) for the {skeleton.name} skeleton, "
            f"got {keypoints.shape}"
        )
    scores = np.ones(skeleton.num_joints) if scores is None else np.asarray(scores).reshape(-1)
    shown = np.isfinite(keypoints).all(axis=1) & (scores >= threshold)
    size = max(image.shape[:2])
    radius = radius or max(2, size // 200)
    thickness = thickness or max(1, size // 300)
    out = image.copy()
    # cv2 draws on integer pixels; shift=4 keeps 1/16 px precision of the 0-based centres.
    to_fixed = lambda p: (int(round(p[0] * 16)), int(round(p[1] * 16)))  # noqa: E731
    for a, b in skeleton.limbs:
        if shown[a] and shown[b]:
            side = skeleton.side(a) if skeleton.side(a) == skeleton.side(b) else "center"
            cv2.line(
                out, to_fixed(keypoints[a]), to_fixed(keypoints[b]), SIDE_COLOURS[side],
                thickness, cv2.LINE_AA, shift=4,
            )  # fmt: skip
    for j in np.flatnonzero(shown):
        colour = SIDE_COLOURS[skeleton.side(int(j))]
        cv2.circle(out, to_fixed(keypoints[j]), radius * 16, colour, -1, cv2.LINE_AA, shift=4)
    return out


def write_overlay(
    path: str | Path,
    image: str | Path | np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray | None,
    skeleton: Skeleton,
    threshold: float = 0.0,
) -> Path:
    """Draw the skeleton on ``image`` (a file, or BGR uint8 array) and write it to ``path`` (PNG)."""
    if isinstance(image, (str, Path)):
        source = Path(image)
        image = cv2.imread(str(source), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read an image from {source}")
    drawn = draw_skeleton(image, keypoints, scores, skeleton, threshold)
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", drawn)
    if not ok:
        raise ValueError(f"cannot encode an image as {path.suffix!r} for {path}")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(encoded.tobytes())
    os.replace(tmp, path)
    return path
