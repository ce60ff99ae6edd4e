"""The common per-person annotation record that every reader returns and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PoseRecord:
    """One annotated person.

    Coordinates are 0-based pixel centres of the original image (see :mod:`hgkeras.geometry`);
    readers of 1-based MATLAB sources convert on the way in.

    Attributes:
        image: image file name, relative to the dataset's image directory.
        joints: (J, 2) float32 (x, y); unannotated joints hold (0, 0) and ``visible`` 0.
        visible: (J,) uint8, 1 where the joint is annotated (MPII "is annotated", not "is visible").
        center: (2,) float32 person-box centre, already adjusted as the Torch code crops it.
        scale: person-box side / 200 px, already adjusted (x1.25 for MPII).
        normalizer: PCKh head size (MPII) or torso size (FLIC) in pixels, the annotation area (COCO,
            the OKS s^2 in pixels^2); NaN when unknown.
        split: "train", "valid" or "test".
        dataset: "mpii", "flic" or "coco".
        image_id: index of the image in its source annotation file.
        person_id: index of the person within the image (or the source record index).
    """

    image: str
    joints: np.ndarray
    visible: np.ndarray
    center: np.ndarray
    scale: float
    normalizer: float = float("nan")
    split: str = "train"
    dataset: str = "mpii"
    image_id: int = -1
    person_id: int = -1
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.joints = np.asarray(self.joints, dtype=np.float32).reshape(-1, 2)
        self.visible = np.asarray(self.visible, dtype=np.uint8).reshape(-1)
        self.center = np.asarray(self.center, dtype=np.float32).reshape(2)
        self.scale = float(self.scale)
        self.normalizer = float(self.normalizer)
        if self.visible.shape[0] != self.joints.shape[0]:
            raise ValueError(
                f"record {self.image!r}: joints {self.joints.shape} and visible "
                f"{self.visible.shape} disagree on the number of joints"
            )

    @property
    def num_joints(self) -> int:
        return int(self.joints.shape[0])
