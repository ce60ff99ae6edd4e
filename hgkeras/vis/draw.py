"""Pictures of poses: skeleton overlays, training-sample previews and heatmap montages (uint8 BGR).

The one drawing module of the package (``hgkeras predict`` overlays, ``hgkeras preview`` grids, the
serving client's picture). With one person, joint and limb colours are the pose spec's
(:attr:`hgkeras.spec.PoseSpec.keypoint_colors` and ``limb_colors``): by default, for a set with
left/right pairs, the person-centric side of each joint (left = blue, right = orange, centre = green;
a limb takes the side of its joints, centre when they differ), else a palette of one colour per
keypoint. With several people each person gets a colour of :data:`PERSON_COLORS` (its left side
drawn lighter) and its index ``#k`` beside its box. Joints
below ``min_score`` and limbs touching them are drawn faded, or left out with ``hide_unannotated``.

Memory stays bounded on very large images: images whose longer side exceeds ``max_side`` are drawn
on a downscaled copy, faded parts are blended in small regions around each limb, and nothing is
converted to float as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from hgkeras import spec as pose_spec
from hgkeras.spec import PoseSpec


def _bgr(color: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """An RGB colour ("#rrggbb" or a triple) as OpenCV's BGR triple."""
    if isinstance(color, str):
        color = (int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16))
    return int(color[2]), int(color[1]), int(color[0])


#: BGR colours per side (:data:`hgkeras.spec.SIDE_COLORS`): left blue, right orange, centre green.
SIDE_COLORS: dict[str, tuple[int, int, int]] = {
    side: _bgr(color) for side, color in pose_spec.SIDE_COLORS.items()
}
#: BGR colours of people 0, 1, 2, ... when several are drawn (repeating after ten).
PERSON_COLORS: tuple[tuple[int, int, int], ...] = (
    (40, 40, 230),  # red
    (230, 120, 30),  # blue
    (40, 190, 40),  # green
    (200, 60, 200),  # magenta
    (20, 170, 240),  # amber
    (200, 200, 20),  # teal
    (120, 60, 160),  # plum
    (90, 150, 255),  # salmon
    (160, 160, 60),  # slate
    (60, 120, 120),  # olive
)
#: Opacity of low-confidence joints and limbs.
FADED_ALPHA = 0.3
#: Default confidence under which joints are faded.
DEFAULT_MIN_SCORE = 0.3
#: Overlays of images with a longer side above this are drawn on a downscaled copy.
DEFAULT_MAX_SIDE = 4096
BOX_COLOR = (160, 160, 160)


def _limb_side(skeleton: PoseSpec, a: int, b: int) -> str:
    side_a, side_b = skeleton.side(a), skeleton.side(b)
    return side_a if side_a == side_b else "center"


def _lighter(color: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(c + (255 - c) * 0.55) for c in color)


def person_color(index: int) -> tuple[int, int, int]:
    """The BGR colour of person ``index`` in multi-person overlays."""
    return PERSON_COLORS[index % len(PERSON_COLORS)]


def draw_pose(
    image: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray | None = None,
    skeleton: PoseSpec | None = None,
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


def _unpack(person) -> tuple[np.ndarray, np.ndarray | None, Sequence[float] | None, float | None]:
    if hasattr(person, "keypoints"):
        return person.keypoints, person.scores, person.box, getattr(person, "detection_score", None)
    keypoints, scores, box = person
    return keypoints, scores, box, None


def _blend(canvas: np.ndarray, rect, draw, alpha: float) -> None:
    """Draw ``draw(layer, (dx, dy))`` at opacity ``alpha`` inside ``rect`` (x0, y0, x1, y1) only."""
    height, width = canvas.shape[:2]
    x0, y0 = max(0, int(rect[0])), max(0, int(rect[1]))
    x1, y1 = min(width, int(rect[2]) + 1), min(height, int(rect[3]) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    roi = canvas[y0:y1, x0:x1]
    layer = roi.copy()
    draw(layer, (-x0, -y0))
    cv2.addWeighted(layer, alpha, roi, 1.0 - alpha, 0.0, dst=roi)


def _shift(point: tuple[int, int], offset: tuple[int, int]) -> tuple[int, int]:
    return point[0] + offset[0], point[1] + offset[1]


def draw_people(
    image: np.ndarray,
    people: Sequence,
    skeleton: PoseSpec | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    thickness: int | None = None,
    *,
    colors: str = "auto",
    labels: bool | None = None,
    hide_unannotated: bool = False,
    max_side: int | None = None,
    in_place: bool = False,
) -> np.ndarray:
    """Draw several people on ``image`` (uint8 BGR HxWx3); returns the drawn picture.

    Args:
        people: :class:`hgkeras.inference.predictor.PersonPose` objects or (keypoints, scores, box)
            tuples (keypoints (J, 2) in the image's pixels, scores (J,) or None, box or None).
        skeleton: the pose spec (joint names, limbs, sides); required.
        min_score: joints scoring below it (and limbs touching them) are drawn faded.
        thickness: line width in pixels of the drawn picture; default grows with its size.
        colors: "side" (the pose spec's colours: by default left blue, right orange, centre
            green), "person" (one colour per person, left side lighter) or "auto" (side for one
            person, person for several).
        labels: write ``#k`` (and the detection score when there is one) beside each person's
            box or topmost joint; default: when there are several people.
        hide_unannotated: leave out joints under ``min_score`` instead of fading them (previews
            pass visibility flags 0/1 as scores).
        max_side: draw on a copy downscaled so its longer side is at most this (keypoints
            scaled with it) and return that; None draws at full size.
        in_place: draw on ``image`` itself (full size only) instead of a copy.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"draw_people needs a uint8 BGR image (H, W, 3), got {image.dtype} {image.shape}"
        )
    if colors not in ("auto", "side", "person"):
        raise ValueError(f"colors must be 'auto', 'side' or 'person', got {colors!r}")
    people = [_unpack(person) for person in people]
    several = len(people) > 1
    by_person = colors == "person" or (colors == "auto" and several)
    labels = several if labels is None else labels
    height, width = image.shape[:2]
    if max_side is not None and max(height, width) > max_side:
        factor = max_side / max(height, width)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        canvas = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    else:
        canvas = image if in_place else image.copy()
    fx = canvas.shape[1] / width
    fy = canvas.shape[0] / height
    if thickness is None:
        thickness = max(1, int(round(max(canvas.shape[:2]) / 320)))
    radius = thickness + 1
    strong: list = []  # draw calls (function of (layer, offset)), after the faded ones
    for index, (keypoints, scores, box, det_score) in enumerate(people):
        keypoints = np.asarray(keypoints, np.float64)
        if keypoints.ndim != 2 or keypoints.shape[1] != 2:
            raise ValueError(f"keypoints must be (J, 2), got shape {keypoints.shape}")
        num_joints = len(keypoints)
        scores = np.ones(num_joints) if scores is None else np.asarray(scores, np.float64)
        if skeleton is None:
            raise ValueError("drawing needs the pose spec (skeleton=MPII, FLIC, predictor.pose)")
        skel = skeleton
        if skel.num_joints != num_joints:
            raise ValueError(
                f"skeleton {skel.name!r} has {skel.num_joints} joints, keypoints have {num_joints}"
            )
        base = person_color(index)
        joint_colors = [_bgr(c) for c in skel.keypoint_colors]
        limb_colors = [_bgr(c) for c in skel.limb_colors]

        def color_of(side: str, own: tuple[int, int, int], base=base) -> tuple[int, int, int]:
            if not by_person:
                return own
            return _lighter(base) if side == "left" else base

        scaled = keypoints * (fx, fy)
        finite = np.all(np.isfinite(scaled), axis=1) & np.all(np.abs(scaled) < 1e6, axis=1)
        points = [
            (int(round(x)), int(round(y))) if ok else None
            for (x, y), ok in zip(scaled, finite, strict=True)
        ]
        corner = None
        if box is not None:
            x1, y1, x2, y2 = (float(v) for v in box)
            p1 = (int(round(x1 * fx)), int(round(y1 * fy)))
            p2 = (int(round(x2 * fx)), int(round(y2 * fy)))

            def outline(c, o, p1=p1, p2=p2, k=base if by_person else BOX_COLOR):
                cv2.rectangle(c, _shift(p1, o), _shift(p2, o), k, max(1, thickness // 2))

            strong.append(outline)
            corner = p1
        for (a, b), own in zip(skel.limbs, limb_colors, strict=True):
            if points[a] is None or points[b] is None:
                continue
            confident = min(scores[a], scores[b]) >= min_score
            if not confident and hide_unannotated:
                continue
            color = color_of(_limb_side(skel, a, b), own)

            def limb(c, o, pa=points[a], pb=points[b], k=color):
                cv2.line(c, _shift(pa, o), _shift(pb, o), k, thickness, cv2.LINE_AA)

            if confident:
                strong.append(limb)
            else:
                pa, pb, pad = points[a], points[b], thickness + 2
                rect = (min(pa[0], pb[0]) - pad, min(pa[1], pb[1]) - pad,
                        max(pa[0], pb[0]) + pad, max(pa[1], pb[1]) + pad)  # fmt: skip
                _blend(canvas, rect, limb, FADED_ALPHA)
        for j, point in enumerate(points):
            if point is None:
                continue
            confident = scores[j] >= min_score
            if not confident and hide_unannotated:
                continue
            color = color_of(skel.side(j), joint_colors[j])

            def joint(c, o, p=point, k=color):
                cv2.circle(c, _shift(p, o), radius, k, -1, cv2.LINE_AA)
                cv2.circle(c, _shift(p, o), radius, (255, 255, 255), 1, cv2.LINE_AA)

            if confident:
                strong.append(joint)
            else:
                pad = radius + 2
                rect = (point[0] - pad, point[1] - pad, point[0] + pad, point[1] + pad)
                _blend(canvas, rect, joint, FADED_ALPHA)
        if labels:
            drawn = [p for p in points if p is not None]
            if corner is None and drawn:
                top = min(drawn, key=lambda p: p[1])
                corner = (top[0], top[1] - 2 * radius)
            if corner is not None:
                text = f"#{index}" if det_score is None else f"#{index} {float(det_score):.2f}"
                strong.append(lambda c, o, t=text, p=corner, k=base: _label(c, t, _shift(p, o), k))
    for draw in strong:
        draw(canvas, (0, 0))
    return canvas


def _label(canvas: np.ndarray, text: str, corner: tuple[int, int], color) -> None:
    """``text`` on a filled ``color`` tag whose lower left corner is just above ``corner``."""
    size = max(0.4, max(canvas.shape[:2]) / 1600)
    weight = max(1, int(round(size * 2)))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, weight)
    x = min(max(0, corner[0]), max(0, canvas.shape[1] - w - 4))
    y = min(max(h + base + 4, corner[1]), canvas.shape[0] - 1)
    cv2.rectangle(canvas, (x, y - h - base - 4), (x + w + 4, y), color, -1)
    cv2.putText(canvas, text, (x + 2, y - base - 2), cv2.FONT_HERSHEY_SIMPLEX, size,
                (255, 255, 255), weight, cv2.LINE_AA)  # fmt: skip


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
    skeleton: PoseSpec | None = None,
    threshold: float = DEFAULT_MIN_SCORE,
    max_side: int | None = DEFAULT_MAX_SIDE,
) -> Path:
    """Draw one person on ``image`` (a file, read upright, or a uint8 BGR array); write ``path``.

    Images longer than ``max_side`` are drawn downscaled (:func:`draw_people`); written atomically.
    """
    from hgkeras.data.images import read_image, to_uint8_bgr

    if isinstance(image, (str, Path)):
        image = to_uint8_bgr(read_image(image), "bgr")
    drawn = draw_people(
        image, [(keypoints, scores, None)], skeleton, min_score=threshold, max_side=max_side
    )
    path = Path(path)
    write_image(path, drawn)
    return path


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Encode ``image`` (uint8 BGR) by ``path``'s suffix (PNG without one) and write it atomically."""
    from hgkeras.io import atomic_write_bytes

    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise ValueError(f"cannot encode an image as {path.suffix!r} for {path}")
    atomic_write_bytes(path, encoded.tobytes())
