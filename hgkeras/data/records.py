"""The common per-person annotation record that every reader returns and every writer takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hgkeras.geometry import box_to_center_scale

#: Crop boxes are the instance box, widened to the model input's aspect ratio, times this (the
#: usual top-down padding, as COCO methods use).
BOX_PADDING = 1.25


@dataclass
class PoseRecord:
    """One annotated person (or animal, or object).

    Coordinates are 0-based pixel centres of the original image (see :mod:`hgkeras.geometry`);
    readers of 1-based MATLAB sources convert on the way in.

    Attributes:
        image: image file name, relative to the dataset's image directory.
        joints: (J, 2) float32 (x, y); unannotated joints hold (0, 0) and ``visible`` 0.
        visible: (J,) uint8, 1 where the joint is annotated (MPII "is annotated", not "is visible").
        center: (2,) float32 crop-box centre, already adjusted as the Torch code crops it.
        scale: crop-box height / 200 px, already adjusted (x1.25 for MPII).
        normalizer: the value of the pose spec's normaliser rule (:data:`hgkeras.spec.NORMALIZERS`)
            in pixels: PCKh head size (MPII), torso size (FLIC), the box's longer side ("box"), the
            annotation area in pixels^2 (OKS s^2: COCO-format data); NaN when unknown.
        split: "train", "valid" or "test".
        pose: the name of the record's pose spec ("mpii", "flic", "coco", a user's set).
        image_id: index of the image in its source annotation file.
        person_id: index of the person within the image (or the source record index).
        box: (4,) float32 person box (x1, y1, x2, y2) in 0-based pixel-centre coordinates (the
            annotation's, or the labelled keypoints' padded extent); NaN when the source has none.
        extra: reader-specific details (not written to TFRecords).
    """

    image: str
    joints: np.ndarray
    visible: np.ndarray
    center: np.ndarray
    scale: float
    normalizer: float = float("nan")
    split: str = "train"
    pose: str = "mpii"
    image_id: int = -1
    person_id: int = -1
    extra: dict = field(default_factory=dict)
    box: np.ndarray = field(default_factory=lambda: np.full(4, np.nan, np.float32))

    def __post_init__(self) -> None:
        self.joints = np.asarray(self.joints, dtype=np.float32).reshape(-1, 2)
        self.visible = np.asarray(self.visible, dtype=np.uint8).reshape(-1)
        self.center = np.asarray(self.center, dtype=np.float32).reshape(2)
        self.scale = float(self.scale)
        self.normalizer = float(self.normalizer)
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        if self.visible.shape[0] != self.joints.shape[0]:
            raise ValueError(
                f"record {self.image!r}: joints {self.joints.shape} and visible "
                f"{self.visible.shape} disagree on the number of joints"
            )

    @property
    def num_joints(self) -> int:
        return int(self.joints.shape[0])


def record_from_box(
    image: str,
    joints,
    visible,
    box: Sequence[float],
    pose: Any,
    *,
    aspect_ratio: float = 1.0,
    padding: float = BOX_PADDING,
    area: float | None = None,
    **fields: Any,
) -> PoseRecord:
    """A record of an instance of ``pose`` (a :class:`hgkeras.spec.PoseSpec`) with a box (x1, y1,
    x2, y2): crop box :func:`hgkeras.geometry.box_to_center_scale` of it (``aspect_ratio``,
    ``padding``), normaliser :meth:`~hgkeras.spec.PoseSpec.normalizer_value` (``area`` for OKS);
    ``fields`` are the other :class:`PoseRecord` fields (split, image_id, ...)."""
    visible = np.asarray(visible) > 0
    joints = np.where(visible[:, None], np.asarray(joints, np.float64), 0.0)
    center, scale = box_to_center_scale(box, padding=padding, aspect_ratio=aspect_ratio)
    return PoseRecord(
        image=image,
        joints=joints,
        visible=visible,
        center=center,
        scale=scale,
        normalizer=pose.normalizer_value(joints, visible, box, area),
        pose=pose.name,
        box=np.asarray(box, np.float32),
        **fields,
    )
