"""Pose specifications: joint names, left/right flip pairs, limbs for drawing and the PCK normaliser.

A :class:`PoseSpec` travels with the data and the model: the TFRecord manifest records its name
(``"pose"``) and :class:`hgkeras.StackedHourglass` keeps it in its config, so evaluation, prediction
and export read the joint set from there and never guess it from a joint count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PoseSpec:
    """A joint set in heatmap-channel order: names, flip pairs, drawing limbs and normaliser rule.

    ``normalizer`` names the PCK metric's normaliser: "head" (MPII PCKh, 0.6 x head-box diagonal)
    or "torso" (FLIC PCK, left shoulder to right hip) or "oks" (COCO: object keypoint similarity
    with the person's area); the set is open to other rules.
    """

    name: str
    joint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    limbs: tuple[tuple[int, int], ...]
    normalizer: str = "head"

    def __post_init__(self) -> None:
        flip_permutation(self.flip_pairs, len(self.joint_names))  # validates the pairs
        for a, b in self.limbs:
            if not (0 <= a < len(self.joint_names) and 0 <= b < len(self.joint_names)):
                raise ValueError(f"pose {self.name!r}: limb ({a}, {b}) is out of range")

    def to_config(self) -> dict[str, Any]:
        """JSON-friendly dict (:func:`get_pose` reads it back)."""
        return {
            "name": self.name,
            "joint_names": list(self.joint_names),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "limbs": [list(p) for p in self.limbs],
            "normalizer": self.normalizer,
        }

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def flip_permutation(self) -> np.ndarray:
        """Channel index map: ``flipped[..., j] = original[..., perm[j]]`` after a horizontal mirror."""
        return flip_permutation(self.flip_pairs, self.num_joints)

    def side(self, joint: int) -> str:
        """'left', 'right' or 'center' (from the joint's name, person-centric)."""
        name = self.joint_names[joint]
        if name.startswith(("l_", "left")):
            return "left"
        if name.startswith(("r_", "right")):
            return "right"
        return "center"


def flip_permutation(flip_pairs: tuple[tuple[int, int], ...], num_joints: int) -> np.ndarray:
    """The permutation of ``num_joints`` channels that swaps every (left, right) pair."""
    perm = np.arange(num_joints)
    for a, b in flip_pairs:
        if not (0 <= a < num_joints and 0 <= b < num_joints):
            raise ValueError(f"flip pair ({a}, {b}) is out of range for {num_joints} joints")
        perm[a], perm[b] = b, a
    return perm


MPII = PoseSpec(
    name="mpii",
    joint_names=(
        "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
        "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow",
        "l_wrist",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    limbs=(
        (0, 1), (1, 2), (2, 6), (3, 6), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
        (7, 12), (12, 11), (11, 10), (7, 13), (13, 14), (14, 15),
    ),
    normalizer="head",
)  # fmt: skip

FLIC = PoseSpec(
    name="flic",
    joint_names=(
        "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist", "l_hip", "r_hip",
        "l_eye", "r_eye", "nose",
    ),
    flip_pairs=((0, 3), (1, 4), (2, 5), (6, 7), (8, 9)),
    limbs=(
        (0, 1), (1, 2), (3, 4), (4, 5), (0, 3), (0, 6), (3, 7), (6, 7), (8, 10), (9, 10),
    ),
    normalizer="torso",
)  # fmt: skip

# COCO person keypoints (17 joints, the order of ``categories[0].keypoints`` in
# ``person_keypoints_*.json``); limbs are that file's ``skeleton`` made 0-based. COCO is scored with
# OKS (object keypoint similarity, :mod:`hgkeras.evaluation.coco`), not with PCK.
COCO = PoseSpec(
    name="coco",
    joint_names=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
        "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
        "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    limbs=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
        (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    ),
    normalizer="oks",
)  # fmt: skip

#: The known specs by name (a new joint set adds its entry here).
POSES: dict[str, PoseSpec] = {"mpii": MPII, "flic": FLIC, "coco": COCO}
#: The name this module had before specs carried normalisers (kept for existing code).
Skeleton = PoseSpec


def get_pose(pose: str | PoseSpec | dict) -> PoseSpec:
    """The spec named ``pose`` ('mpii', 'flic', ...), a spec itself, or one from :meth:`PoseSpec.to_config`.

    Joint counts are not accepted: several joint sets may have the same count.
    """
    if isinstance(pose, PoseSpec):
        return pose
    if isinstance(pose, dict):
        known = POSES.get(str(pose.get("name", "")).lower())
        try:
            spec = PoseSpec(
                name=str(pose["name"]),
                joint_names=tuple(pose["joint_names"]),
                flip_pairs=tuple(tuple(int(i) for i in p) for p in pose["flip_pairs"]),
                limbs=tuple(tuple(int(i) for i in p) for p in pose.get("limbs", ())),
                normalizer=str(pose.get("normalizer", "head")),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"a pose spec dict needs name, joint_names, flip_pairs: {error}"
            ) from None
        return known if known == spec else spec
    if isinstance(pose, str):
        key = pose.lower()
        if key not in POSES:
            raise ValueError(f"unknown pose spec {pose!r}; expected one of {sorted(POSES)}")
        return POSES[key]
    raise ValueError(
        f"a pose spec is given by name (one of {sorted(POSES)}) or as a PoseSpec, "
        f"got {type(pose).__name__} {pose!r}"
    )


def pose_config(spec: PoseSpec) -> str | dict[str, Any]:
    """What a config stores for ``spec``: its name when registered as such, else its full dict."""
    return spec.name if POSES.get(spec.name.lower()) == spec else spec.to_config()


#: The older name of :func:`get_pose`.
get_skeleton = get_pose


def pose_of(model: Any) -> PoseSpec:
    """The pose spec a model carries (``model.pose``; a trainer's ``.hourglass.pose``)."""
    pose = getattr(model, "pose", None)
    if pose is None and hasattr(model, "hourglass"):
        pose = getattr(model.hourglass, "pose", None)
    if pose is None:
        raise ValueError(
            f"{type(model).__name__} carries no pose spec (a StackedHourglass has one in its "
            "config); pass pose='mpii' / 'flic' / a PoseSpec explicitly"
        )
    return get_pose(pose)
