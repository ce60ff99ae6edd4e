"""Joint sets of the MPII, FLIC and COCO datasets: names, left/right flip pairs and limbs for drawing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    """A dataset's joints in heatmap-channel order, with the pairs swapped by a horizontal flip."""

    name: str
    joint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    limbs: tuple[tuple[int, int], ...]

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


MPII = Skeleton(
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
)  # fmt: skip

FLIC = Skeleton(
    name="flic",
    joint_names=(
        "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist", "l_hip", "r_hip",
        "l_eye", "r_eye", "nose",
    ),
    flip_pairs=((0, 3), (1, 4), (2, 5), (6, 7), (8, 9)),
    limbs=(
        (0, 1), (1, 2), (3, 4), (4, 5), (0, 3), (0, 6), (3, 7), (6, 7), (8, 10), (9, 10),
    ),
)  # fmt: skip

# COCO person keypoints (17 joints, the order of ``categories[0].keypoints`` in
# ``person_keypoints_*.json``); limbs are that file's ``skeleton`` made 0-based. COCO is scored with
# OKS (object keypoint similarity, :mod:`hgkeras.evaluation.coco`), not with PCKh.
COCO = Skeleton(
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
)  # fmt: skip

SKELETONS = {"mpii": MPII, "flic": FLIC, "coco": COCO}


def get_skeleton(name_or_joints: str | int) -> Skeleton:
    """The skeleton named 'mpii', 'flic' or 'coco', or the one with that many joints (16, 11, 17)."""
    if isinstance(name_or_joints, str):
        key = name_or_joints.lower()
        if key not in SKELETONS:
            raise ValueError(
                f"unknown dataset {name_or_joints!r}; expected one of {sorted(SKELETONS)}"
            )
        return SKELETONS[key]
    for skeleton in SKELETONS.values():
        if skeleton.num_joints == name_or_joints:
            return skeleton
    raise ValueError(
        f"no known skeleton has {name_or_joints} joints; expected 16 (MPII), 11 (FLIC) or 17 (COCO)"
    )
