"""Pictures of poses: skeleton overlays and heatmap montages (OpenCV, uint8 BGR images).

Limb and joint colours follow the person-centric side of each joint (:meth:`Skeleton.side`):
left = blue, right = orange, centre = green (a limb takes the side of its joints, centre when they
differ). Joints below ``min_score`` and limbs touching them are drawn faded.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from hgkeras.spec import Skeleton

#: BGR colours per side.
SIDE_COLORS: dict[str, tuple[int, int, int]] = {
    "left": (255, 128, 0),  # blue
    "right": (0, 128, 255),  # orange
    "center": (0, 200, 0),  # green
}
#: Opacity of low-confidence joints and limbs.
FADED_ALPHA = 0.3
#: Default confidence under which joints are faded.
DEFAULT_MIN_SCORE = 0.3


def _limb_side(skeleton: Skeleton, a: int, b: int) -> str:
    side_a, side_b = skeleton.side(a), skeleton.side(b)
    return side_a if side_a == side_b else "center"


def draw_pose(
    image: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray | None = None,
    skeleton: Skeleton | None = None,
    box: Sequence[float] | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    thickness: int | None = None,
) -> np.ndarray:
    """Draw one person's skeleton on a copy of ``image`` (uint8 BGR HxWx3) and return it.

    Args:
        keypoints: (J, 2) (x, y) in the image's pixels.
        scores: (J,) confidences; joints below ``min_score`` are faded. None = all confident.
        skeleton: the pose spec (joint names, limbs); required.
        box: optional person box (x1, y1, x2, y2) to outline in grey.
        thickness: line width in pixels; default grows with the image size.
    """
    return draw_people(
        image, [(keypoints, scores, box)], skeleton, min_score=min_score, thickness=thickness
    )


def draw_people(
    image: np.ndarray,
    people: Sequence,
    skeleton: Skeleton | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    thickness: int | None = None,
) -> np.ndarray:
    """Draw several people on a copy of ``image`` (uint8 BGR HxWx3).

    ``people`` holds :class:`hgkeras.inference.predictor.PersonPose` objects or (keypoints, scores, box) tuples.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"draw_people needs a uint8 BGR image (H, W, 3), got {image.dtype} {image.shape}"
        )
    height, width = image.shape[:2]
    if thickness is None:
        thickness = max(1, int(round(max(height, width) / 320)))
    radius = thickness + 1
    strong = image.copy()
    faint = image.copy()
    faint_mask = np.zeros((height, width), np.uint8)
    strong_mask = np.zeros((height, width), np.uint8)
    for person in people:
        if hasattr(person, "keypoints"):
            keypoints, scores, box = person.keypoints, person.scores, person.box
        else:
            keypoints, scores, box = person
        keypoints = np.asarray(keypoints, np.float64)
        num_joints = len(keypoints)
        if keypoints.ndim != 2 or keypoints.shape[1] != 2:
            raise ValueError(f"keypoints must be (J, 2), got shape {keypoints.shape}")
        scores = np.ones(num_joints) if scores is None else np.asarray(scores, np.float64)
        if skeleton is None:
            raise ValueError("drawing needs the pose spec (skeleton=MPII, FLIC, predictor.pose)")
        skel = skeleton
        if skel.num_joints != num_joints:
            raise ValueError(
                f"skeleton {skel.name!r} has {skel.num_joints} joints, keypoints have {num_joints}"
            )
        finite = np.all(np.isfinite(keypoints), axis=1)
        points = [
            (int(round(x)), int(round(y))) if ok else None
            for (x, y), ok in zip(keypoints, finite, strict=True)
        ]
        if box is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cv2.rectangle(strong, (x1, y1), (x2, y2), (160, 160, 160), max(1, thickness // 2))
            cv2.rectangle(strong_mask, (x1, y1), (x2, y2), 255, max(1, thickness // 2))
        for a, b in skel.limbs:
            if points[a] is None or points[b] is None:
                continue
            color = SIDE_COLORS[_limb_side(skel, a, b)]
            confident = min(scores[a], scores[b]) >= min_score
            canvas, mask = (strong, strong_mask) if confident else (faint, faint_mask)
            cv2.line(canvas, points[a], points[b], color, thickness, cv2.LINE_AA)
            cv2.line(mask, points[a], points[b], 255, thickness, cv2.LINE_AA)
        for j, point in enumerate(points):
            if point is None:
                continue
            color = SIDE_COLORS[skel.side(j)]
            canvas, mask = (strong, strong_mask) if scores[j] >= min_score else (faint, faint_mask)
            cv2.circle(canvas, point, radius, color, -1, cv2.LINE_AA)
            cv2.circle(canvas, point, radius, (255, 255, 255), 1, cv2.LINE_AA)
            cv2.circle(mask, point, radius, 255, -1, cv2.LINE_AA)
    out = image.astype(np.float32)
    fade = (faint_mask.astype(np.float32) / 255.0 * FADED_ALPHA)[..., None]
    out = out * (1.0 - fade) + faint.astype(np.float32) * fade
    keep = (strong_mask.astype(np.float32) / 255.0)[..., None]
    out = out * (1.0 - keep) + strong.astype(np.float32) * keep
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def heatmap_montage(
    heatmaps: np.ndarray,
    crop: np.ndarray | None = None,
    joint_names: Sequence[str] | None = None,
    columns: int = 4,
    cell_size: int = 128,
) -> np.ndarray:
    """A grid of one tile per joint: the heatmap in colour (JET) over the network's input crop.

    Args:
        heatmaps: (h, w, J) heatmaps of one person.
        crop: (H, W, 3) the network input (RGB float in [0, 1], or uint8 RGB); grey if None.
        joint_names: tile captions, default "joint j".
        columns: tiles per row.
        cell_size: tile side in pixels.

    Returns a uint8 BGR image; values are clipped to [0, 1] before colouring, so tiles of
    different joints are comparable.
    """
    heatmaps = np.asarray(heatmaps, np.float32)
    if heatmaps.ndim != 3:
        raise ValueError(f"heatmaps must be (h, w, J), got shape {heatmaps.shape}")
    num_joints = heatmaps.shape[2]
    if joint_names is None:
        joint_names = [f"joint {j}" for j in range(num_joints)]
    if len(joint_names) != num_joints:
        raise ValueError(f"{len(joint_names)} joint names for {num_joints} heatmaps")
    if columns < 1 or cell_size < 8:
        raise ValueError(f"columns must be >= 1 and cell_size >= 8, got {columns}, {cell_size}")
    if crop is None:
        background = np.full((cell_size, cell_size, 3), 96, np.uint8)
    else:
        crop = np.asarray(crop)
        if crop.dtype != np.uint8:
            crop = (np.clip(crop.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        background = cv2.resize(
            np.ascontiguousarray(crop[..., ::-1]), (cell_size, cell_size), cv2.INTER_AREA
        )
        background = cv2.cvtColor(cv2.cvtColor(background, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    rows = (num_joints + columns - 1) // columns
    montage = np.zeros((rows * cell_size, columns * cell_size, 3), np.uint8)
    for j in range(num_joints):
        value = np.clip(heatmaps[..., j], 0.0, 1.0)
        value = cv2.resize(value, (cell_size, cell_size), interpolation=cv2.INTER_NEAREST)
        colored = cv2.applyColorMap((value * 255.0 + 0.5).astype(np.uint8), cv2.COLORMAP_JET)
        alpha = (0.25 + 0.75 * value)[..., None]
        tile = (background * (1.0 - alpha) + colored * alpha).astype(np.uint8)
        label = f"{joint_names[j]} {float(heatmaps[..., j].max()):.2f}"
        cv2.putText(
            tile, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA
        )
        r, c = divmod(j, columns)
        montage[r * cell_size : (r + 1) * cell_size, c * cell_size : (c + 1) * cell_size] = tile
    return montage


def write_overlay(
    path: str | Path,
    image: str | Path | np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray | None,
    skeleton: Skeleton | None = None,
    threshold: float = DEFAULT_MIN_SCORE,
) -> Path:
    """Draw one person on ``image`` (a file, or a uint8 BGR array) and write it to ``path`` atomically."""
    if isinstance(image, (str, Path)):
        source = Path(image)
        image = cv2.imread(str(source), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read an image from {source}")
    drawn = draw_pose(image, keypoints, scores, skeleton, min_score=threshold)
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", drawn)
    if not ok:
        raise ValueError(f"cannot encode an image as {path.suffix!r} for {path}")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(encoded.tobytes())
    os.replace(tmp, path)
    return path
