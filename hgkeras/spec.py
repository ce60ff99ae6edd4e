"""Pose specifications: everything that differs between keypoint sets, in one object.

A :class:`PoseSpec` names the keypoints (in heatmap-channel order) and holds their left/right flip
pairs, the skeleton drawn between them and its colours, the evaluation rule (normaliser, PCK
threshold, the groups that logs and tables report, OKS sigmas) and the defaults the set trains with.
It travels with the data and the model: the TFRecord manifest holds its full dict (``"pose"``),
:class:`hgkeras.StackedHourglass` keeps it in its config and every export writes it to ``pose.json``,
so evaluation, prediction and export read the set from there and never guess it from a joint count.

MPII, FLIC and COCO are three specs of the registry :data:`POSES`; any other set is data: a JSON file
(:meth:`PoseSpec.from_file`, the layout of :meth:`PoseSpec.to_config`; ``docs/own-keypoints.md``) or
one made by a format reader (COCO categories, DeepLabCut projects, YOLO-pose datasets).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

#: Normaliser rules: "head" (MPII PCKh: 0.6 x head-box diagonal, from the annotations), "torso"
#: (FLIC PCK: distance between the spec's two ``torso_joints``), "box" (PCK relative to the longer
#: side of the person/animal box) and "oks" (COCO: object keypoint similarity AP with the
#: annotation's area; PCK of the box is reported beside it).
NORMALIZERS = ("head", "torso", "box", "oks")
#: PCK threshold (fraction of the normaliser) when the spec gives none.
DEFAULT_PCK_THRESHOLDS = {"head": 0.5, "torso": 0.2, "box": 0.2, "oks": 0.2}
#: The metric each rule reports, and so the training log's name (``val_<metric>``).
METRIC_NAMES = {"head": "pckh", "torso": "pck", "box": "pck", "oks": "ap"}
#: OKS sigma of every keypoint of a set that gives none: a lenient constant near COCO's largest
#: (hips, 0.107), because a set's label noise is unknown; override with ``oks_sigmas``.
DEFAULT_OKS_SIGMA = 0.1
#: COCO's per-keypoint OKS sigmas (pycocotools' ``kpt_oks_sigmas``), COCO person order.
COCO_OKS_SIGMAS = tuple(
    v / 10.0 for v in (0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07,
                       1.07, 0.87, 0.87, 0.89, 0.89)
)  # fmt: skip
#: Side colours (RGB hex) of sets with left/right pairs: left blue, right orange, centre green.
SIDE_COLORS = {"left": "#0080ff", "right": "#ff8000", "center": "#00c800"}
#: Keypoint colours (RGB hex) of sets without pairs, cycled in keypoint order (Tableau 10).
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")  # fmt: skip
#: Training recipe of sets other than MPII, FLIC and COCO (names of hgkeras.training.recipes): a
#: 2-stack network for tens to thousands of labelled frames.
CUSTOM_RECIPE = "small"
#: Training input (height, width) and heatmap sigma of sets that give none.
DEFAULT_INPUT_SHAPE = (256, 256)
DEFAULT_SIGMA = 2.0

_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


def _fail(name: str, field: str, message: str) -> ValueError:
    return ValueError(f"pose spec {name!r}: field {field!r}: {message}")


@dataclass(frozen=True)
class PoseSpec:
    """A keypoint set: names in heatmap-channel order and every rule that depends on the set.

    Attributes:
        name: the set's name ("mpii", "flic", "coco", "reaching", ...).
        joint_names: keypoint names, unique, in heatmap-channel order.
        flip_pairs: (left, right) index pairs swapped by a horizontal mirror; () when the set has
            none (then flip augmentation and the flip test do not apply).
        limbs: index pairs drawn as the skeleton.
        normalizer: the PCK normaliser rule, one of :data:`NORMALIZERS`.
        torso_joints: the two joints whose distance is the "torso" normaliser.
        pck_threshold: PCK threshold as a fraction of the normaliser; None: the rule's default
            (:data:`DEFAULT_PCK_THRESHOLDS`: 0.5 for "head", else 0.2).
        groups: (group name, joint indices) that logs and tables report, in order; () = one group
            per keypoint, named after it.
        unscored: joints never scored (MPII's pelvis and thorax); they are still trained.
        oks_sigmas: per-keypoint OKS sigmas; () = :data:`DEFAULT_OKS_SIGMA` each.
        colors: per-keypoint RGB colours "#rrggbb"; () = the default palette (:attr:`keypoint_colors`).
        input_shape: the model input (height, width): ``prepare`` makes crop boxes of its aspect
            ratio, and training without ``--recipe`` takes its longer side as ``--input-size``.
        sigma: the heatmap Gaussian's sigma (heatmap pixels) training takes without ``--recipe``.
        recipe: the training recipe of the set (``hgkeras.training.recipes``) when ``--recipe``
            is not given; ``sigma`` and ``input_shape`` then replace the recipe's.
    """

    name: str
    joint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    limbs: tuple[tuple[int, int], ...] = ()
    normalizer: str = "box"
    torso_joints: tuple[int, int] | None = None
    pck_threshold: float | None = None
    groups: tuple[tuple[str, tuple[int, ...]], ...] = ()
    unscored: tuple[int, ...] = ()
    oks_sigmas: tuple[float, ...] = ()
    colors: tuple[str, ...] = ()
    input_shape: tuple[int, int] = DEFAULT_INPUT_SHAPE
    sigma: float = DEFAULT_SIGMA
    recipe: str = CUSTOM_RECIPE

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"pose spec: field 'name' must be a non-empty string, got {name!r}")
        names = tuple(self.joint_names)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise _fail(name, "joint_names", f"must be non-empty strings, got {list(names)!r}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise _fail(name, "joint_names", f"names must be unique; repeated: {duplicates}")
        count = len(names)
        flip_pairs = tuple(_check_pair(name, "flip_pairs", p, count) for p in self.flip_pairs)
        seen: set[int] = set()
        for a, b in flip_pairs:
            if a == b or a in seen or b in seen:
                raise _fail(
                    name, "flip_pairs", f"pair {[a, b]}: each keypoint is in one pair at most"
                )
            seen.update((a, b))
        limbs = tuple(_check_pair(name, "limbs", p, count) for p in self.limbs)
        if self.normalizer not in NORMALIZERS:
            raise _fail(name, "normalizer", f"{self.normalizer!r} is not one of {NORMALIZERS}")
        torso = self.torso_joints
        if self.normalizer == "torso" and torso is None:
            raise _fail(name, "torso_joints", 'the "torso" normaliser needs its two joints')
        if torso is not None:
            torso = _check_pair(name, "torso_joints", torso, count)
        threshold = self.pck_threshold
        if threshold is None:
            threshold = DEFAULT_PCK_THRESHOLDS[self.normalizer]
        if isinstance(threshold, bool) or not (np.isfinite(threshold) and threshold > 0):
            raise _fail(name, "pck_threshold", f"must be a positive number, got {threshold!r}")
        unscored = tuple(sorted({_check_index(name, "unscored", j, count) for j in self.unscored}))
        groups = tuple(
            (str(group), tuple(_check_index(name, "groups", j, count) for j in members))
            for group, members in self.groups
        ) or tuple((names[j], (j,)) for j in range(count) if j not in unscored)
        group_names = [g for g, _ in groups]
        if len(set(group_names)) != len(group_names):
            raise _fail(name, "groups", f"group names must be unique, got {group_names}")
        for group, members in groups:
            if not members:
                raise _fail(name, "groups", f"group {group!r} has no keypoints")
        sigmas = tuple(float(s) for s in self.oks_sigmas) or (DEFAULT_OKS_SIGMA,) * count
        if len(sigmas) != count or not all(np.isfinite(s) and s > 0 for s in sigmas):
            raise _fail(name, "oks_sigmas", f"needs {count} positive numbers, got {list(sigmas)}")
        colors = tuple(self.colors)
        if not colors:
            colors = _default_colors(names, flip_pairs)
        if len(colors) != count or not all(isinstance(c, str) and _HEX.match(c) for c in colors):
            raise _fail(name, "colors", f'needs {count} colours "#rrggbb", got {list(colors)}')
        shape = tuple(self.input_shape)
        if len(shape) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in shape
        ):
            raise _fail(name, "input_shape", f"must be [height, width] > 0, got {list(shape)}")
        if isinstance(self.sigma, bool) or not (np.isfinite(self.sigma) and self.sigma > 0):
            raise _fail(name, "sigma", f"must be a positive number, got {self.sigma!r}")
        if not isinstance(self.recipe, str) or not self.recipe:
            raise _fail(name, "recipe", f"must be a recipe name, got {self.recipe!r}")
        normalised = {
            "joint_names": names, "flip_pairs": flip_pairs, "limbs": limbs, "torso_joints": torso,
            "pck_threshold": float(threshold), "groups": groups, "unscored": unscored,
            "oks_sigmas": sigmas, "colors": tuple(c.lower() for c in colors),
            "input_shape": (int(shape[0]), int(shape[1])), "sigma": float(self.sigma),
        }  # fmt: skip
        for key, value in normalised.items():
            object.__setattr__(self, key, value)

    # ------------------------------------------------------------------------------------ derived

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def flip_permutation(self) -> np.ndarray:
        """Channel index map: ``flipped[..., j] = original[..., perm[j]]`` after a horizontal mirror."""
        return flip_permutation(self.flip_pairs, self.num_joints)

    @property
    def flip(self) -> bool:
        """Whether flip augmentation and the flip test apply (the set has left/right pairs)."""
        return bool(self.flip_pairs)

    @property
    def threshold(self) -> float:
        """The PCK threshold as a fraction of the normaliser."""
        return float(self.pck_threshold)

    @property
    def metric(self) -> str:
        """The headline metric's name: "pckh" (head), "pck" (torso, box) or "ap" (oks)."""
        return METRIC_NAMES[self.normalizer]

    @property
    def scored(self) -> tuple[int, ...]:
        """The joints scored by PCK and the pixel errors (all but ``unscored``)."""
        return tuple(j for j in range(self.num_joints) if j not in self.unscored)

    @property
    def group_table(self) -> dict[str, tuple[int, ...]]:
        """Group name -> joint indices, in report order."""
        return dict(self.groups)

    @property
    def sigmas(self) -> np.ndarray:
        """Per-keypoint OKS sigmas (J,) float64."""
        return np.asarray(self.oks_sigmas, np.float64)

    def index(self, joint: str | int) -> int:
        """The index of a keypoint given by name (case-insensitive) or index; ValueError otherwise."""
        return _resolve_joint(joint, self.joint_names, self.name, "joint")

    def side(self, joint: int) -> str:
        """'left' or 'right' for a keypoint of a flip pair (by its name, :func:`name_side`, else
        the pair's first keypoint is left), 'center' for the others."""
        return _sides(self.joint_names, self.flip_pairs)[joint]

    @property
    def keypoint_colors(self) -> tuple[tuple[int, int, int], ...]:
        """RGB colour per keypoint (``colors`` as integer triples)."""
        return tuple(_rgb(c) for c in self.colors)

    @property
    def limb_colors(self) -> tuple[tuple[int, int, int], ...]:
        """RGB colour per limb: its keypoints' colour when they share one; else the centre colour
        (:data:`SIDE_COLORS`) for a set with flip pairs, the first keypoint's colour otherwise."""
        colors = self.keypoint_colors
        mixed = _rgb(SIDE_COLORS["center"]) if self.flip_pairs else None
        return tuple(
            colors[a] if colors[a] == colors[b] or mixed is None else mixed for a, b in self.limbs
        )

    def torso_size(self, joints) -> np.ndarray:
        """The "torso" normaliser of joints (..., J, 2): the distance between ``torso_joints``."""
        if self.torso_joints is None:
            raise ValueError(f"pose spec {self.name!r} names no torso_joints")
        joints = np.asarray(joints, np.float64)
        if joints.ndim < 2 or joints.shape[-2:] != (self.num_joints, 2):
            raise ValueError(
                f"joints must have shape (..., {self.num_joints}, 2) for pose {self.name!r}, "
                f"got {joints.shape}"
            )
        a, b = self.torso_joints
        return np.linalg.norm(joints[..., a, :] - joints[..., b, :], axis=-1)

    def normalizer_value(
        self,
        joints=None,
        visible=None,
        box: Sequence[float] | None = None,
        area: float | None = None,
    ) -> float:
        """The value of this spec's normaliser rule for one annotated instance, NaN when unknown.

        "torso": :meth:`torso_size` where both torso joints are annotated; "box": the longer side
        of ``box`` (x1, y1, x2, y2); "oks": ``area`` (the OKS s^2 in pixels^2; the box's area when
        the source gives none); "head": NaN (a head box is a reader's: MPII's readers set it).
        """
        nan = float("nan")
        if self.normalizer == "torso":
            if visible is None or joints is None or not all(visible[j] for j in self.torso_joints):
                return nan
            return float(self.torso_size(joints))
        if self.normalizer == "head":
            return nan
        if box is None or not np.all(np.isfinite(np.asarray(box, np.float64))):
            width = height = nan
        else:
            x1, y1, x2, y2 = (float(v) for v in box)
            width, height = x2 - x1, y2 - y1
        if self.normalizer == "box":
            return max(width, height)
        return float(area) if area is not None else width * height

    # ------------------------------------------------------------------------------ (de)serialise

    def to_config(self) -> dict[str, Any]:
        """The JSON-friendly dict (:meth:`from_config` and :func:`get_pose` read it back)."""
        return {
            "name": self.name,
            "joint_names": list(self.joint_names),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "limbs": [list(p) for p in self.limbs],
            "normalizer": self.normalizer,
            "torso_joints": list(self.torso_joints) if self.torso_joints is not None else None,
            "pck_threshold": self.pck_threshold,
            "groups": [[group, list(members)] for group, members in self.groups],
            "unscored": list(self.unscored),
            "oks_sigmas": list(self.oks_sigmas),
            "colors": list(self.colors),
            "input_shape": list(self.input_shape),
            "sigma": float(self.sigma),
            "recipe": self.recipe,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, strict: bool = False) -> PoseSpec:
        """A spec from its dict. Keypoints in pairs, limbs, groups and ``torso_joints`` may be named
        or indexed; absent fields take their defaults. ``strict``: unknown fields are an error
        (spec files); otherwise they are ignored (``pose.json`` holds export details beside it)."""
        if not isinstance(config, Mapping):
            raise ValueError(f"a pose spec is a JSON object, got {type(config).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        name = config.get("name")
        if strict and unknown:
            raise ValueError(
                f"pose spec {name!r}: unknown field(s) {unknown}; known fields: {sorted(known)}"
            )
        for key in ("name", "joint_names"):
            if key not in config:
                raise ValueError(
                    f"pose spec: field {key!r} is missing (it needs name and joint_names)"
                )
        if not isinstance(name, str):
            raise ValueError(f"pose spec: field 'name' must be a string, got {name!r}")
        raw_names = config["joint_names"]
        if isinstance(raw_names, str) or not isinstance(raw_names, Sequence):
            raise _fail(name, "joint_names", f"must be a list of names, got {raw_names!r}")
        names = tuple(raw_names)

        def pairs(key: str) -> tuple[tuple[int, int], ...]:
            value = config.get(key) or ()
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise _fail(name, key, f"must be a list of [a, b] pairs, got {value!r}")
            out = []
            for pair in value:
                if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
                    raise _fail(name, key, f"{pair!r} is not a pair [a, b]")
                out.append(tuple(_resolve_joint(j, names, name, key) for j in pair))
            return tuple(out)

        kwargs: dict[str, Any] = {
            "name": name,
            "joint_names": names,
            "flip_pairs": pairs("flip_pairs"),
            "limbs": pairs("limbs"),
        }
        if config.get("normalizer") is not None:
            kwargs["normalizer"] = str(config["normalizer"])
        if config.get("torso_joints") is not None:
            torso = config["torso_joints"]
            if isinstance(torso, str) or not isinstance(torso, Sequence) or len(torso) != 2:
                raise _fail(name, "torso_joints", f"must be two keypoints, got {torso!r}")
            kwargs["torso_joints"] = tuple(
                _resolve_joint(j, names, name, "torso_joints") for j in torso
            )
        if config.get("pck_threshold") is not None:
            kwargs["pck_threshold"] = _number(config["pck_threshold"], name, "pck_threshold")
        groups = config.get("groups")
        if groups:
            items = groups.items() if isinstance(groups, Mapping) else groups
            parsed = []
            for item in items:
                if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2:
                    raise _fail(name, "groups", f"expected {{group: [keypoints]}}, got {item!r}")
                group, members = item
                if isinstance(members, (str, int)):
                    members = [members]
                parsed.append(
                    (str(group), tuple(_resolve_joint(j, names, name, "groups") for j in members))
                )
            kwargs["groups"] = tuple(parsed)
        if config.get("unscored"):
            kwargs["unscored"] = tuple(
                _resolve_joint(j, names, name, "unscored") for j in config["unscored"]
            )
        if config.get("oks_sigmas"):
            kwargs["oks_sigmas"] = tuple(
                _number(s, name, "oks_sigmas") for s in config["oks_sigmas"]
            )
        if config.get("colors"):
            kwargs["colors"] = tuple(str(c) for c in config["colors"])
        if config.get("input_shape") is not None:
            shape = config["input_shape"]
            if isinstance(shape, int):
                shape = (shape, shape)
            if isinstance(shape, str) or not isinstance(shape, Sequence):
                raise _fail(name, "input_shape", f"must be [height, width], got {shape!r}")
            kwargs["input_shape"] = tuple(
                int(v) if isinstance(v, (int, float)) and float(v).is_integer() else v
                for v in shape
            )
        if config.get("sigma") is not None:
            kwargs["sigma"] = _number(config["sigma"], name, "sigma")
        if config.get("recipe") is not None:
            kwargs["recipe"] = config["recipe"]
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PoseSpec:
        """A spec from a JSON file (the layout of :meth:`to_config`; unknown fields are errors)."""
        from hgkeras.io import load_json

        path = Path(path)
        config = load_json(path, "pose spec file")
        try:
            return _registered(cls.from_config(config, strict=True))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def to_file(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_config` as JSON to ``path`` (atomically); returns the path."""
        from hgkeras.io import atomic_write_json

        atomic_write_json(path, self.to_config())
        return Path(path)


def _default_colors(names: Sequence[str], flip_pairs: Sequence[tuple[int, int]]) -> tuple[str, ...]:
    """The default palette: side colours (:data:`SIDE_COLORS`) for a set with flip pairs, else
    :data:`PALETTE` cycled in keypoint order."""
    if not flip_pairs:
        return tuple(PALETTE[j % len(PALETTE)] for j in range(len(names)))
    return tuple(SIDE_COLORS[side] for side in _sides(names, flip_pairs))


def _sides(names: Sequence[str], flip_pairs: Sequence[tuple[int, int]]) -> list[str]:
    """Each keypoint's side (see :meth:`PoseSpec.side`)."""
    sides = ["center"] * len(names)
    for a, b in flip_pairs:
        for joint, fallback in ((a, "left"), (b, "right")):
            parsed = name_side(names[joint])
            sides[joint] = parsed[0] if parsed is not None else fallback
    return sides


def _check_index(name: str, field: str, j: Any, count: int) -> int:
    if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 0 <= j < count:
        raise _fail(name, field, f"keypoint {j!r} is not an index in 0..{count - 1}")
    return int(j)


def _check_pair(name: str, field: str, pair: Any, count: int) -> tuple[int, int]:
    if len(pair) != 2:
        raise _fail(name, field, f"{list(pair)!r} is not a pair")
    return _check_index(name, field, pair[0], count), _check_index(name, field, pair[1], count)


def _number(value: Any, name: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, field, f"{value!r} is not a number")
    return float(value)


def _resolve_joint(joint: Any, names: Sequence[str], spec: str, field: str) -> int:
    """A keypoint given by index or (case-insensitive) name -> its index, or a ValueError."""
    if isinstance(joint, str):
        if joint in names:
            return list(names).index(joint)
        lowered = [str(n).lower() for n in names]
        if lowered.count(joint.lower()) == 1:
            return lowered.index(joint.lower())
        raise _fail(spec, field, f"no keypoint named {joint!r} (keypoints: {list(names)})")
    if isinstance(joint, bool) or not isinstance(joint, (int, np.integer)):
        raise _fail(spec, field, f"{joint!r} is neither a keypoint name nor an index")
    return int(joint)


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def flip_permutation(flip_pairs: Iterable[Sequence[int]], num_joints: int) -> np.ndarray:
    """The permutation of ``num_joints`` channels that swaps every (left, right) pair."""
    perm = np.arange(num_joints)
    for a, b in flip_pairs:
        if not (0 <= a < num_joints and 0 <= b < num_joints):
            raise ValueError(f"flip pair ({a}, {b}) is out of range for {num_joints} joints")
        perm[a], perm[b] = b, a
    return perm


# ------------------------------------------------------------------------------------ flip pairs

_SIDE_WORD = re.compile(r"left|right", re.IGNORECASE)
#: One-letter side marks: a prefix or suffix l/r set off by a separator (any case), or a capital
#: L/R before a capital or digit (prefix) or after a small letter or digit (suffix).
_SIDE_LETTER = (
    re.compile(r"^(?P<side>[lLrR])(?=[_\-. ]+\S)"),
    re.compile(r"^(?P<side>[LR])(?=[A-Z0-9])"),
    re.compile(r"(?<=\S[_\-. ])(?P<side>[lLrR])$"),
    re.compile(r"(?<=[a-z0-9])(?P<side>[LR])$"),
)


def name_side(name: str) -> tuple[str, str] | None:
    """('left' | 'right', the name with its side marked out, lower-case), or None.

    A side is the word ``left``/``right`` anywhere, in any case (``leftear``, ``Left_Eye``,
    ``ear_right``), else a one-letter prefix or suffix ``l``/``r`` set off by ``_``, ``-``, ``.``
    or a space (``l_wrist``, ``R-Paw``, ``ear.L``), or a capital ``L``/``R`` before a capital or
    digit (``LWrist``) or after a small letter or digit (``wristR``). A name with both words has
    no side.
    """
    words = _SIDE_WORD.findall(name)
    if len(words) == 1:
        side = "left" if words[0].lower() == "left" else "right"
        return side, _SIDE_WORD.sub("*", name, count=1).lower()
    if words:
        return None
    for pattern in _SIDE_LETTER:
        match = pattern.search(name)
        if match is not None:
            side = "left" if match["side"].lower() == "l" else "right"
            return side, (name[: match.start()] + "*" + name[match.end() :]).lower()
    return None


def infer_flip_pairs(joint_names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Left/right pairs found by name: two keypoints pair when swapping the side in one name
    (:func:`name_side`, case-insensitive) gives the other. Each pair is (left, right), in the order
    of the left keypoints; keypoints whose side-free name is shared by more than one per side pair
    with none."""
    by_key: dict[str, dict[str, list[int]]] = {}
    for j, name in enumerate(joint_names):
        parsed = name_side(name)
        if parsed is not None:
            side, key = parsed
            by_key.setdefault(key, {"left": [], "right": []})[side].append(j)
    pairs = [
        (sides["left"][0], sides["right"][0])
        for sides in by_key.values()
        if len(sides["left"]) == 1 and len(sides["right"]) == 1
    ]
    return tuple(sorted(pairs))


def parse_flip_pairs(
    text: str | Sequence, joint_names: Sequence[str]
) -> tuple[tuple[int, int], ...]:
    """``"a:b,c:d"`` (keypoint names or indices) or a list of pairs -> index pairs; ``""`` = none."""
    if isinstance(text, str):
        items = [item.strip() for item in text.split(",") if item.strip()]
        raw = []
        for item in items:
            parts = [p.strip() for p in item.split(":")]
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"--flip-pairs: {item!r} is not a pair LEFT:RIGHT")
            raw.append([int(p) if p.lstrip("-").isdigit() else p for p in parts])
    else:
        raw = [list(p) for p in text]
    names = tuple(joint_names)
    pairs = tuple(
        tuple(_resolve_joint(j, names, "flip pairs", "flip_pairs") for j in pair) for pair in raw
    )
    # validated as a spec would validate them
    PoseSpec("flip pairs", names, flip_pairs=pairs)
    return pairs


# -------------------------------------------------------------------------------------- registry

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
    # the paper's table; the MPII toolkit's Head is upper neck + head top
    groups=(
        ("Head", (8, 9)), ("Shoulder", (12, 13)), ("Elbow", (11, 14)), ("Wrist", (10, 15)),
        ("Hip", (2, 3)), ("Knee", (1, 4)), ("Ankle", (0, 5)),
    ),
    unscored=(6, 7),  # pelvis and thorax
    input_shape=(256, 256),
    sigma=1.75,  # the Torch code's image.gaussian(7) (the paper's text says 1)
    recipe="newell2016",
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
    torso_joints=(0, 7),  # left shoulder to right hip (docs/method.md)
    groups=(
        ("Shoulder", (0, 3)), ("Elbow", (1, 4)), ("Wrist", (2, 5)), ("Hip", (6, 7)),
        ("Head", (8, 9, 10)),
    ),
    input_shape=(256, 256),
    sigma=1.75,
    recipe="newell2016",
)  # fmt: skip

# COCO person keypoints (the order of ``categories[0].keypoints`` in ``person_keypoints_*.json``);
# limbs are that file's ``skeleton`` made 0-based. Scored with OKS AP (pycocotools) and COCO's sigmas.
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
    groups=(
        ("Head", (0, 1, 2, 3, 4)), ("Shoulder", (5, 6)), ("Elbow", (7, 8)), ("Wrist", (9, 10)),
        ("Hip", (11, 12)), ("Knee", (13, 14)), ("Ankle", (15, 16)),
    ),
    oks_sigmas=COCO_OKS_SIGMAS,
    input_shape=(256, 256),
    sigma=2.0,
    recipe="coco",
)  # fmt: skip

#: The built-in specs by name.
POSES: dict[str, PoseSpec] = {"mpii": MPII, "flic": FLIC, "coco": COCO}


def _registered(spec: PoseSpec) -> PoseSpec:
    """The registered spec equal to ``spec``, else ``spec``."""
    known = POSES.get(spec.name.lower())
    return known if known == spec else spec


def get_pose(pose: str | os.PathLike | PoseSpec | Mapping) -> PoseSpec:
    """A spec: a registered name ('mpii', 'flic', 'coco'), a spec JSON file (a path, or a string
    ending in .json), a PoseSpec, or a :meth:`PoseSpec.to_config` dict.

    A dict naming a registered spec whose fields agree with it (all of them, or the subset older
    hgkeras versions stored) gives the registered spec. Joint counts are not accepted: several
    joint sets may have the same count.
    """
    if isinstance(pose, PoseSpec):
        return pose
    if isinstance(pose, Mapping):
        known = POSES.get(str(pose.get("name", "")).lower())
        if known is not None:
            mine = known.to_config()
            try:
                merged = PoseSpec.from_config(
                    {**mine, **{k: v for k, v in pose.items() if k in mine}}
                )
            except ValueError:  # not the registered set: validated as itself below
                merged = None
            if merged == known:
                return known
        return _registered(PoseSpec.from_config(pose))
    if isinstance(pose, os.PathLike) or (isinstance(pose, str) and pose.lower().endswith(".json")):
        return PoseSpec.from_file(pose)
    if isinstance(pose, str):
        key = pose.lower()
        if key not in POSES:
            raise ValueError(
                f"unknown pose spec {pose!r}; expected one of {sorted(POSES)} or a spec .json file"
            )
        return POSES[key]
    raise ValueError(
        f"a pose spec is given by name (one of {sorted(POSES)}), as a spec .json file or as a "
        f"PoseSpec, got {type(pose).__name__} {pose!r}"
    )


def pose_config(spec: PoseSpec) -> str | dict[str, Any]:
    """What a config stores for ``spec``: its name when registered as such, else its full dict."""
    return spec.name if POSES.get(spec.name.lower()) == spec else spec.to_config()


def read_pose_json(pose: str | os.PathLike) -> PoseSpec:
    """A spec by name, or from any JSON file that holds one: a spec file, a manifest
    (``"pose"``) or an export's ``pose.json`` (its other fields are left aside)."""
    if isinstance(pose, str) and not pose.lower().endswith(".json"):
        return get_pose(pose)
    from hgkeras.io import load_json

    path = Path(pose)
    config = load_json(path, "pose spec file")
    if isinstance(config, dict) and isinstance(config.get("pose"), (dict, str)):
        config = config["pose"]
    try:
        return get_pose(config)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


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
