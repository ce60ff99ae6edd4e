"""Annotation readers: MPII and FLIC source files -> :class:`~hgkeras.data.records.PoseRecord` lists.

Supported layouts (auto-detected by :func:`read_annotations`):

* MPII release ``mpii_human_pose_v1_u12_1.mat``: MATLAB struct ``RELEASE`` with ``annolist`` (one entry per
  image: ``image.name``, ``annorect`` = people with ``x1 y1 x2 y2`` head box, ``scale``, ``objpos.x/.y``,
  ``annopoints.point`` = ``x, y, id, is_visible``), ``img_train`` (1 train, 0 test), ``single_person``.
* MPII and FLIC Torch annot ``.h5`` (pose-hg-train): ``imgname, part (N,J,2), center, scale, normalize,
  index, person, visible``; centre/scale already adjusted. The layout does not say which set it holds:
  MPII unless the caller names another (``pose="flic"``); a joint count that differs from the named
  set's is an error.
* HRNet/mmpose ``.json``: a list of ``{image, center, scale, joints, joints_vis}`` with RAW MPII
  centre/scale and optional ``head_box`` ``[x1, y1, x2, y2]`` (hgkeras extension, gives the PCKh size);
  MPII unless the caller names another set, as for ``.h5``.
* COCO keypoint files (a JSON object with ``images`` and ``annotations``): read by
  :func:`hgkeras.data.coco.read_coco_keypoints` (any keypoint category; 0-based keypoints as stored).
* FLIC ``examples.mat``: struct array ``examples`` with ``coords (2, 29)``, ``filepath``, ``torsobox``,
  ``imgdims``, ``istrain``, ``istest``.

All sources are 1-based MATLAB pixels; readers subtract :data:`hgkeras.geometry.MATLAB_OFFSET`. A joint
counts as annotated when its source coordinates are finite and the source says so: a point present in
the release .mat, ``joints_vis`` > 0 in JSON, anything but the Torch files' missing marker (0, 0) in
``.h5``. Annotated joints may lie just outside the image (MPII's toolkit scores them too).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hgkeras.data.coco import is_coco_json, read_coco_keypoints
from hgkeras.data.records import PoseRecord
from hgkeras.geometry import MATLAB_OFFSET
from hgkeras.spec import FLIC, MPII, PoseSpec, get_pose

logger = logging.getLogger(__name__)

#: The Torch code moves MPII's raw centre down by this many ``scale`` units of pixels ...
MPII_CENTER_SHIFT = 15.0
#: ... and enlarges the raw scale by this factor before cropping.
MPII_SCALE_FACTOR = 1.25
#: PCKh head size = this factor times the head box diagonal.
HEAD_SIZE_FACTOR = 0.6
#: FLIC ``coords`` columns (1-based) of the 11 joints in :data:`hgkeras.spec.FLIC` order.
FLIC_COLUMNS = (1, 2, 3, 4, 5, 6, 7, 10, 13, 14, 17)
#: The Torch FLIC annot files use one fixed scale for every person.
FLIC_SCALE = 2.2

SPLITS = ("train", "valid", "test")


def adjust_mpii_center_scale(center: Iterable[float], scale: float) -> tuple[np.ndarray, float]:
    """Raw MPII (objpos, scale) -> the (centre, scale) the Torch code crops with (apply once)."""
    cx, cy = (float(v) for v in center)
    return np.array([cx, cy + MPII_CENTER_SHIFT * scale]), float(scale) * MPII_SCALE_FACTOR


def head_size(box: Iterable[float]) -> float:
    """PCKh normaliser of a head box (x1, y1, x2, y2): 0.6 x its diagonal."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return HEAD_SIZE_FACTOR * math.hypot(x2 - x1, y2 - y1)


def _flic_normalizer(joints: np.ndarray, visible: np.ndarray) -> float:
    """FLIC PCK normaliser, the torso size of :data:`hgkeras.spec.FLIC` (left shoulder to right hip, as
    docs/method.md), where both of its joints are annotated, else NaN. The Torch FLIC annot files store the
    other diagonal in ``normalize``; readers keep it in ``record.extra["torch_normalize"]``."""
    if all(visible[j] for j in FLIC.torso_joints):
        return float(FLIC.torso_size(joints))
    return float("nan")


def _check_joint_count(count: int, pose: PoseSpec, path: Path, where: str) -> None:
    """The layouts shared by MPII and FLIC hold the named set: its joint count, or a clear error."""
    if count != pose.num_joints:
        raise ValueError(
            f"{path}: {where} {count} joints; expected {pose.num_joints} ({pose.name}): name the "
            "set the file holds (pose='mpii', 'flic' or a spec)"
        )


def _joints_from_source(
    points: np.ndarray, flags: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """1-based source points (J, 2) (+ optional annotated flags) -> 0-based joints and visible."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(points).all(axis=1)
    if flags is not None:
        # The source says which joints are annotated; coordinates may lie just outside the image
        # (MPII has joints with y <= 0, and its toolkit scores them).
        ok &= np.asarray(flags, dtype=np.float64).reshape(-1) > 0
    else:
        ok &= ~((points[:, 0] == 0) & (points[:, 1] == 0))  # the Torch annot files' "missing"
    joints = np.where(ok[:, None], points - MATLAB_OFFSET, 0.0)
    return joints.astype(np.float32), ok.astype(np.uint8)


def _valid_box(center: np.ndarray, scale: float) -> str | None:
    """Reason why (centre, scale) cannot define a crop, or None."""
    if not np.all(np.isfinite(center)):
        return f"centre {center.tolist()} is not finite"
    if not math.isfinite(scale) or scale <= 0:
        return f"scale {scale!r} is not a positive number"
    return None


def _field(container: Any, name: str, path: Path, where: str) -> Any:
    """``container[name]`` / ``container.name`` or a ValueError naming the file and field."""
    try:
        if isinstance(container, dict):
            return container[name]
        return getattr(container, name)
    except (KeyError, AttributeError):
        raise ValueError(f"{path}: {where} has no field {name!r}") from None


def _numbers(
    value: Any, path: Path, where: str, name: str, shape: tuple[int | None, ...] | None = None
) -> np.ndarray:
    """``value`` as a float64 array of ``shape`` (None = any length), or a ValueError naming the file,
    the record and the field."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{path}: {where} field {name!r}: expected numbers, got {_short(value)}"
        ) from None
    if shape is not None and (
        array.ndim != len(shape)
        or any(s is not None and a != s for a, s in zip(array.shape, shape, strict=True))
    ):
        wanted = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(
            f"{path}: {where} field {name!r}: expected shape {wanted}, got {array.shape} "
            f"({_short(value)})"
        )
    return array


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_list(value: Any) -> list:
    """MATLAB struct arrays loaded with squeeze_me come back as one struct, an array, or empty."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return list(value.reshape(-1))
    return [value]


def _scalar(value: Any, path: Path, where: str, name: str) -> float:
    """A MATLAB scalar (possibly a 0-d/1-element array, or empty) as float; NaN when empty."""
    arr = _numbers(value, path, where, name).reshape(-1)
    if arr.size > 1:
        raise ValueError(
            f"{path}: {where} field {name!r}: expected one number, got {_short(value)}"
        )
    return float(arr[0]) if arr.size else float("nan")


# --------------------------------------------------------------------------------------------- MPII


def read_mpii_mat(path: str | Path, skipped: list[str] | None = None) -> list[PoseRecord]:
    """Read the MPII release ``.mat`` (struct ``RELEASE``); see the module docstring for the layout.

    Train images give every person with ``objpos``, ``scale`` and ``annopoints``; test images give every
    person with ``objpos`` and ``scale`` (no joints, ``visible`` all 0). ``image_id`` is the 0-based
    ``annolist`` index and ``person_id`` the 0-based ``annorect`` index.
    """
    import scipy.io

    path = Path(path)
    mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    if "RELEASE" not in mat:
        raise ValueError(f"{path}: not an MPII release file: no variable 'RELEASE'")
    release = mat["RELEASE"]
    annolist = _as_list(_field(release, "annolist", path, "RELEASE"))
    img_train = _numbers(
        _field(release, "img_train", path, "RELEASE"), path, "RELEASE", "img_train"
    )
    img_train = img_train.reshape(-1)
    if len(img_train) != len(annolist):
        raise ValueError(
            f"{path}: RELEASE.img_train has {len(img_train)} entries but annolist has {len(annolist)}"
        )
    single = getattr(release, "single_person", None)
    single_list = _as_list(single) if single is not None else []
    records: list[PoseRecord] = []
    for image_id, anno in enumerate(annolist):
        image = _field(anno, "image", path, f"RELEASE.annolist[{image_id}]")
        name = str(_field(image, "name", path, f"RELEASE.annolist[{image_id}].image"))
        split = "train" if int(img_train[image_id]) == 1 else "test"
        where_image = f"RELEASE.annolist[{image_id}]"
        singles = (
            {
                int(v) - 1
                for v in _numbers(
                    single_list[image_id], path, where_image, "single_person"
                ).reshape(-1)
            }
            if image_id < len(single_list)
            else set()
        )
        for person_id, rect in enumerate(_as_list(getattr(anno, "annorect", None))):
            where = f"{name} (annolist {image_id}, person {person_id})"
            objpos = getattr(rect, "objpos", None)
            raw_scale = _scalar(getattr(rect, "scale", []), path, where, "scale")
            if objpos is None or not hasattr(objpos, "x"):
                if skipped is not None:
                    skipped.append(f"{where}: no objpos")
                continue
            raw_center = np.array(
                [
                    _scalar(objpos.x, path, where, "objpos.x"),
                    _scalar(_field(objpos, "y", path, f"{where} objpos"), path, where, "objpos.y"),
                ]
            )
            reason = _valid_box(raw_center, raw_scale)
            if reason:
                if skipped is not None:
                    skipped.append(f"{where}: {reason}")
                continue
            center, scale = adjust_mpii_center_scale(raw_center, raw_scale)
            points = np.zeros((16, 2))
            flags = np.zeros(16)
            is_visible = np.zeros(16, np.uint8)
            annopoints = getattr(rect, "annopoints", None)
            has_points = annopoints is not None and hasattr(annopoints, "point")
            if split == "train" and not has_points:
                if skipped is not None:
                    skipped.append(f"{where}: train person without annopoints")
                continue
            if has_points:
                for k, point in enumerate(_as_list(annopoints.point)):
                    at = f"{where} annopoints.point[{k}]"
                    jid = _scalar(_field(point, "id", path, at), path, at, "id")
                    if not (math.isfinite(jid) and jid == int(jid) and 0 <= jid < 16):
                        raise ValueError(f"{path}: {at} field 'id': joint id {jid} outside 0..15")
                    jid = int(jid)
                    points[jid] = (
                        _scalar(_field(point, "x", path, at), path, at, "x"),
                        _scalar(_field(point, "y", path, at), path, at, "y"),
                    )
                    flags[jid] = 1
                    vis = getattr(point, "is_visible", 1)
                    try:
                        is_visible[jid] = int(_scalar(vis, path, at, "is_visible")) == 1
                    except ValueError:  # some releases store it as the string '1'/'0' (or empty)
                        is_visible[jid] = str(vis).strip() == "1"
            joints, visible = _joints_from_source(points, flags)
            box = [_scalar(getattr(rect, k, []), path, where, k) for k in ("x1", "y1", "x2", "y2")]
            normalizer = head_size(box) if all(math.isfinite(v) for v in box) else float("nan")
            records.append(
                PoseRecord(
                    image=name,
                    joints=joints,
                    visible=visible,
                    center=center - MATLAB_OFFSET,
                    scale=scale,
                    normalizer=normalizer,
                    split=split,
                    pose="mpii",
                    image_id=image_id,
                    person_id=person_id,
                    extra={"is_visible": is_visible, "single_person": person_id in singles},
                )
            )
    return records


def read_mpii_json(
    path: str | Path, skipped: list[str] | None = None, pose: str | PoseSpec = MPII
) -> list[PoseRecord]:
    """Read the HRNet/mmpose MPII JSON layout (raw centre/scale, 1-based joints) holding ``pose``.

    ``image_id`` numbers the distinct images in file order and ``person_id`` counts people within an
    image. An optional ``head_box`` [x1, y1, x2, y2] per record gives the PCKh normaliser.
    """
    path = Path(path)
    pose = get_pose(pose)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    if isinstance(data, dict) and "annotations" in data:
        raise ValueError(
            f"{path}: COCO-style JSON is not supported; expected a list of "
            "{image, center, scale, joints, joints_vis} records"
        )
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a JSON list of person records, got {type(data).__name__}"
        )
    split = _split_from_name(path, default="valid")
    records: list[PoseRecord] = []
    image_ids: dict[str, int] = {}
    people: dict[str, int] = {}
    for i, item in enumerate(data):
        where = f"record {i}"
        if not isinstance(item, dict):
            raise ValueError(f"{path}: {where} is not an object")
        for key in ("image", "center", "scale", "joints"):
            if key not in item:
                raise ValueError(f"{path}: {where} has no field {key!r}")
        name = str(item["image"])
        image_id = image_ids.setdefault(name, len(image_ids))
        person_id = people.get(name, 0)
        people[name] = person_id + 1
        raw_center = _numbers(item["center"], path, where, "center", (2,))
        raw_scale = (
            _scalar(item["scale"], path, where, "scale")
            if item["scale"] is not None
            else float("nan")
        )
        reason = _valid_box(raw_center, raw_scale)
        if reason:
            if skipped is not None:
                skipped.append(f"{name} ({where}): {reason}")
            continue
        points = _numbers(item["joints"], path, where, "joints", (None, 2))
        _check_joint_count(points.shape[0], pose, path, f"{where} field 'joints':")
        num_joints = points.shape[0]
        flags = item.get("joints_vis")
        if flags is not None:
            flags = _numbers(flags, path, where, "joints_vis", (num_joints,))
        joints, visible = _joints_from_source(points, flags)
        record_split = str(item.get("split", split))
        if record_split not in SPLITS:
            raise ValueError(
                f"{path}: {where} field 'split': {record_split!r} is not one of {SPLITS}"
            )
        center, scale = adjust_mpii_center_scale(raw_center, raw_scale)
        head_box = item.get("head_box")
        normalizer = (
            head_size(_numbers(head_box, path, where, "head_box", (4,)))
            if head_box is not None
            else float("nan")
        )
        records.append(
            PoseRecord(
                image=name,
                joints=joints,
                visible=visible,
                center=center - MATLAB_OFFSET,
                scale=scale,
                normalizer=normalizer,
                split=record_split,
                pose=pose.name,
                image_id=image_id,
                person_id=person_id,
            )
        )
    return records


# --------------------------------------------------------------------------------------------- Torch h5


def read_torch_h5(
    path: str | Path, skipped: list[str] | None = None, pose: str | PoseSpec = MPII
) -> list[PoseRecord]:
    """Read a pose-hg-train annot ``.h5`` holding ``pose`` (MPII's 16 joints, or FLIC's 11 when
    named; centre/scale adjusted). FLIC files are its test split."""
    import h5py

    path = Path(path)
    pose = get_pose(pose)
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file: {err}") from None
    with handle:
        for key in ("imgname", "part", "center", "scale"):
            if key not in handle:
                raise ValueError(
                    f"{path}: not a Torch annot file: missing dataset {key!r} (has {sorted(handle)})"
                )
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in handle["imgname"][:]]

        def numbers(key: str) -> np.ndarray:
            return _numbers(handle[key][:], path, f"dataset {key!r}", key)

        part = numbers("part")
        center = numbers("center")
        scale = numbers("scale").reshape(-1)
        n = len(names)
        if part.ndim != 3 or part.shape[0] != n or part.shape[2] != 2:
            raise ValueError(f"{path}: dataset 'part' must be (N={n}, J, 2), got {part.shape}")
        if center.shape != (n, 2) or scale.shape != (n,):
            raise ValueError(
                f"{path}: 'center' {center.shape} / 'scale' {scale.shape} do not match N={n}"
            )
        _check_joint_count(part.shape[1], pose, path, "dataset 'part' has")
        optional = {}
        for key in ("normalize", "index", "person"):
            if key in handle:
                optional[key] = numbers(key).reshape(-1)
                if optional[key].shape != (n,):
                    raise ValueError(
                        f"{path}: dataset {key!r} has {optional[key].size} values, expected N={n}"
                    )
        normalize = optional.get("normalize", np.full(n, np.nan))
        index = optional.get("index", np.arange(n))
        person = optional.get("person", np.zeros(n))
        is_visible = numbers("visible") if "visible" in handle else None
    flic = pose is FLIC
    split = _split_from_name(path, default="test" if flic else "valid")
    if flic and split == "valid":
        split = "test"  # FLIC has train and test only; the Torch code calls its test file "valid"
    records = []
    for i in range(n):
        reason = _valid_box(center[i], float(scale[i]))
        if reason:
            if skipped is not None:
                skipped.append(f"{names[i]} (record {i}): {reason}")
            continue
        joints, visible = _joints_from_source(part[i])
        extra = {}
        if is_visible is not None:
            extra["is_visible"] = (is_visible[i] > 0).astype(np.uint8)
        normalizer = float(normalize[i])
        if flic:
            extra["torch_normalize"] = normalizer
            normalizer = _flic_normalizer(joints, visible)
        records.append(
            PoseRecord(
                image=names[i],
                joints=joints,
                visible=visible,
                center=center[i] - MATLAB_OFFSET,
                scale=float(scale[i]),
                normalizer=normalizer,
                split=split,
                pose=pose.name,
                image_id=int(index[i]),
                person_id=int(person[i]),
                extra=extra,
            )
        )
    return records


# --------------------------------------------------------------------------------------------- FLIC


def flic_center(torsobox: Iterable[float], image_height: float) -> np.ndarray:
    """FLIC person centre as the Torch annot files store it (1-based): torso-box x centre, image mid-height."""
    x1, _, x2, _ = (float(v) for v in torsobox)
    return np.array([(x1 + x2) / 2.0, float(image_height) / 2.0])


def to_observer_centric(
    joints: np.ndarray, visible: np.ndarray
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Swap FLIC left/right labels when the person faces away (left shoulder left of right shoulder).

    This is the rule that turns ``valid_personcentric.h5`` into ``valid_observercentric.h5``.
    Returns (joints, visible, swapped).
    """
    left, right = FLIC.index("l_shoulder"), FLIC.index("r_shoulder")
    if visible[left] and visible[right] and joints[left, 0] < joints[right, 0]:
        perm = FLIC.flip_permutation
        return joints[perm], visible[perm], True
    return joints, visible, False


def read_flic_mat(path: str | Path, skipped: list[str] | None = None) -> list[PoseRecord]:
    """Read FLIC ``examples.mat`` (11 joints, person-centric; split from ``istrain``/``istest``).

    Centre and scale are those of the Torch FLIC annot files (torso-box x centre, image mid-height,
    scale 2.2); the normaliser is FLIC's torso size (:meth:`hgkeras.spec.PoseSpec.torso_size`).
    ``image_id`` is the record index.
    """
    import scipy.io

    path = Path(path)
    mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    if "examples" not in mat:
        raise ValueError(f"{path}: not a FLIC examples file: no variable 'examples'")
    columns = np.array(FLIC_COLUMNS) - 1
    records = []
    for i, ex in enumerate(_as_list(mat["examples"])):
        where = f"examples[{i}]"
        coords = _numbers(_field(ex, "coords", path, where), path, where, "coords")
        if coords.ndim != 2 or coords.shape[0] != 2 or coords.shape[1] < max(FLIC_COLUMNS):
            raise ValueError(f"{path}: {where}.coords must be (2, 29), got {coords.shape}")
        name = str(_field(ex, "filepath", path, where))
        torsobox = _numbers(_field(ex, "torsobox", path, where), path, where, "torsobox")
        torsobox = torsobox.reshape(-1)
        imgdims = _numbers(_field(ex, "imgdims", path, where), path, where, "imgdims").reshape(-1)
        if torsobox.shape != (4,) or imgdims.size < 2:
            raise ValueError(f"{path}: {where}: torsobox must have 4 numbers and imgdims 2+")
        center = flic_center(torsobox, imgdims[0])
        reason = _valid_box(center, FLIC_SCALE)
        if reason:
            if skipped is not None:
                skipped.append(f"{name} ({where}): {reason}")
            continue
        joints, visible = _joints_from_source(coords[:, columns].T)
        istest = int(_scalar(getattr(ex, "istest", 0), path, where, "istest") == 1)
        istrain = int(_scalar(getattr(ex, "istrain", 0), path, where, "istrain") == 1)
        split = "test" if istest else ("train" if istrain else "unused")
        normalizer = _flic_normalizer(joints, visible)
        records.append(
            PoseRecord(
                image=name,
                joints=joints,
                visible=visible,
                center=center - MATLAB_OFFSET,
                scale=FLIC_SCALE,
                normalizer=normalizer,
                split=split,
                pose="flic",
                image_id=i,
                person_id=0,
            )
        )
    return records


# --------------------------------------------------------------------------------------------- dispatch


def _split_from_name(path: Path, default: str) -> str:
    stem = path.stem.lower()
    for split in ("train", "valid", "test"):
        if split in stem:
            return split
    if "val" in stem:
        return "valid"
    return default


def detect_layout(path: str | Path) -> str:
    """'mpii_mat', 'flic_mat', 'torch_h5' or 'json' for an annotation file (ValueError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "torch_h5"
    if suffix == ".json":
        return "coco_json" if is_coco_json(path) else "json"
    if suffix == ".mat":
        import scipy.io

        try:
            names = {name for name, _, _ in scipy.io.whosmat(str(path))}
        except Exception as err:  # scipy raises several types for non-MAT content
            raise ValueError(f"{path}: not a readable MATLAB file: {err}") from None
        if "RELEASE" in names:
            return "mpii_mat"
        if "examples" in names:
            return "flic_mat"
        raise ValueError(
            f"{path}: unknown MATLAB layout: expected variable 'RELEASE' (MPII) or 'examples' "
            f"(FLIC), found {sorted(names)}"
        )
    raise ValueError(f"{path}: unknown annotation format {suffix!r}; expected .mat, .h5 or .json")


def read_annotations(
    path: str | Path,
    pose: str | PoseSpec | None = None,
    *,
    split: str | None = None,
    observer_centric: bool = False,
    skipped: list[str] | None = None,
) -> list[PoseRecord]:
    """Read an MPII, FLIC or COCO-format annotation file of any supported layout into PoseRecords.

    Args:
        path: MPII release ``.mat``, FLIC ``examples.mat``, Torch annot ``.h5``, HRNet ``.json`` or
            a COCO keypoint ``.json``.
        pose: the set the file holds (a name or spec). The release ``.mat``, ``examples.mat`` and
            COCO files say which set they hold (then ``pose`` is checked against it); Torch
            ``.h5`` and HRNet ``.json`` hold MPII unless ``pose`` names another set.
        split: keep only records of this split ("train", "valid", "test").
        observer_centric: FLIC only: swap left/right labels of people seen from behind.
        skipped: if given, a reason string is appended for every record that was left out.

    Records whose centre or scale is not finite/positive are skipped (with a reason); joints with
    non-finite or non-positive source coordinates are marked not annotated.
    """
    path = Path(path)
    layout = detect_layout(path)
    spec = get_pose(pose) if pose is not None else None
    if layout in ("torch_h5", "json"):
        reader = read_torch_h5 if layout == "torch_h5" else read_mpii_json
        records = reader(path, skipped=skipped, pose=spec or MPII)
    elif layout == "coco_json":
        records = read_coco_keypoints(path, skipped)
    else:
        records = (read_mpii_mat if layout == "mpii_mat" else read_flic_mat)(path, skipped=skipped)
    if spec is not None:
        wrong = [r for r in records if r.pose != spec.name]
        if wrong:
            raise ValueError(
                f"{path}: expected {spec.name} annotations but the file holds {wrong[0].pose} "
                f"({wrong[0].num_joints} joints; first: {wrong[0].image}, image_id "
                f"{wrong[0].image_id})"
            )
    if observer_centric:
        for record in records:
            if record.pose != "flic":
                raise ValueError(f"{path}: observer_centric applies to FLIC only")
            record.joints, record.visible, swapped = to_observer_centric(
                record.joints, record.visible
            )
            record.extra["observer_swapped"] = swapped
            record.normalizer = _flic_normalizer(record.joints, record.visible)
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        records = [r for r in records if r.split == split]
    if skipped:
        logger.warning("%s: skipped %d record(s), first: %s", path, len(skipped), skipped[0])
    return records
