"""COCO keypoint files -> :class:`~hgkeras.data.records.PoseRecord` lists, for any keypoint category.

A category's ``keypoints`` names and ``skeleton`` make the pose spec (:func:`coco_pose`): COCO's 17
person keypoints give :data:`hgkeras.spec.COCO`, any other list a spec of its own, named after the
category, with flip pairs found by name unless given, and OKS scoring. A file with several keypoint
categories needs one chosen (``category``: its id or name).

Conventions (see ``docs/evaluation.md``, "COCO keypoints"):

* Keypoints ``[x1, y1, v1, ..., xK, yK, vK]`` are pixel indices (the centre of pixel column x, row y),
  which is hgkeras' 0-based pixel-centre convention (:mod:`hgkeras.geometry`): they are used unchanged,
  and results files are written in the same convention (as detectron2 and mmpose do).
* Visibility ``v``: 0 not labelled, 1 labelled but not visible, 2 labelled and visible. Both 1 and 2 are
  annotated joints (``PoseRecord.visible`` = 1, training targets and OKS); the raw flags are kept in
  ``record.extra["visibility"]``.
* ``bbox`` ``[x, y, w, h]`` is continuous (the image spans [0, W] x [0, H]); in pixel-centre coordinates
  its corners are (x - 0.5, y - 0.5) and (x + w - 0.5, y + h - 0.5). The crop box (top-down COCO
  practice) is the person box widened or heightened to the model input's aspect ratio (w / h: 1 for
  256x256, 0.75 for 256x192) about its centre, then enlarged by :data:`BOX_PADDING` (1.25).
  ``record.box`` holds the pixel-centre box.
* ``record.normalizer`` holds the annotation's ``area`` (the OKS scale s^2 in pixels^2) for specs
  scored by OKS, else the value of the spec's rule (:meth:`hgkeras.spec.PoseSpec.normalizer_value`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hgkeras.data.records import BOX_PADDING, PoseRecord, record_from_box
from hgkeras.geometry import box_to_center_scale
from hgkeras.io import load_json
from hgkeras.spec import COCO, PoseSpec, infer_flip_pairs

#: The COCO person category id (the default category of results and detections).
PERSON_CATEGORY = 1
#: The usual top-down COCO input sizes (height, width).
INPUT_SHAPES = ((256, 256), (256, 192))
# The training settings of ``train.py --dataset coco`` are the ``coco`` recipe
# (hgkeras.training.recipes).


def pixel_box(bbox: Sequence[float]) -> np.ndarray:
    """A COCO ``bbox`` [x, y, w, h] (continuous) -> (x1, y1, x2, y2) in pixel-centre coordinates."""
    x, y, w, h = (float(v) for v in bbox)
    return np.array([x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5])


def coco_box_to_center_scale(
    bbox: Sequence[float], aspect_ratio: float = 1.0, padding: float = BOX_PADDING
) -> tuple[np.ndarray, float]:
    """A COCO ``bbox`` [x, y, w, h] -> (centre, scale) of its crop box for an input of ``aspect_ratio``."""
    return box_to_center_scale(pixel_box(bbox), padding=padding, aspect_ratio=aspect_ratio)


def is_coco_json(path: str | Path) -> bool:
    """True when a ``.json`` file holds one JSON object (the COCO layout), not a list of records."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    return head[:1] == b"{"


def _numbers(value: Any, count: int, path: Path, where: str, key: str) -> np.ndarray:
    """``value`` as ``count`` finite float64 numbers, or a ValueError naming the file and field."""
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {where} field {key!r} must be a list of numbers") from None
    if array.size != count:
        raise ValueError(f"{path}: {where} field {key!r} has {array.size} values, expected {count}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{path}: {where} field {key!r} has non-finite values")
    return array


def _require(item: Any, keys: Sequence[str], path: Path, where: str) -> None:
    if not isinstance(item, dict):
        raise ValueError(f"{path}: {where} is not a JSON object")
    for key in keys:
        if key not in item:
            raise ValueError(f"{path}: {where} has no field {key!r}")


def keypoint_categories(data: dict) -> list[dict]:
    """The categories of a COCO object that list ``keypoints``."""
    return [c for c in data.get("categories") or [] if isinstance(c, dict) and c.get("keypoints")]


def choose_category(data: dict, category: int | str | None = None, path: Any = "COCO data") -> dict:
    """The keypoint category ``category`` (its id, or its name) of a COCO object; None: the only one.

    ValueError naming ``path`` when there is none, when ``category`` is not one of them, or when
    there are several and none is chosen.
    """
    categories = keypoint_categories(data)
    listed = ", ".join(f"{c.get('id')} {c.get('name', '')!r}" for c in categories)
    if not categories:
        raise ValueError(
            f"{path}: no category lists 'keypoints' (COCO keypoint files name them in 'categories')"
        )
    if category is None:
        if len(categories) > 1:
            raise ValueError(
                f"{path}: {len(categories)} keypoint categories ({listed}); choose one (--category)"
            )
        return categories[0]
    for c in categories:
        if (
            c.get("id") == category
            or str(c.get("name")) == str(category)
            or (isinstance(category, str) and category.isdigit() and c.get("id") == int(category))
        ):
            return c
    raise ValueError(f"{path}: no keypoint category {category!r} (there are: {listed})")


def coco_pose(
    category: dict,
    flip_pairs: Sequence[Sequence[int]] | None = None,
    name: str | None = None,
    path: Any = "COCO data",
) -> PoseSpec:
    """The pose spec of a COCO keypoint category: its ``keypoints`` names and its (1-based)
    ``skeleton`` as limbs, scored by OKS. COCO's 17 person keypoints with no other pairs given are
    :data:`hgkeras.spec.COCO`; other sets get ``flip_pairs``, or the pairs found by name."""
    names = tuple(str(n) for n in category["keypoints"])
    if names == COCO.joint_names and flip_pairs is None and name in (None, COCO.name):
        return COCO
    limbs = []
    for k, limb in enumerate(category.get("skeleton") or []):
        if not (isinstance(limb, Sequence) and len(limb) == 2):
            raise ValueError(f"{path}: category {category.get('id')} skeleton[{k}] is not a pair")
        try:
            a, b = (int(v) - 1 for v in limb)  # COCO skeletons are 1-based
        except (TypeError, ValueError):
            raise ValueError(
                f"{path}: category {category.get('id')} skeleton[{k}] {limb!r} is not two numbers"
            ) from None
        limbs.append((a, b))
    try:
        return PoseSpec(
            name=name or str(category.get("name") or f"category_{category.get('id')}"),
            joint_names=names,
            flip_pairs=tuple(flip_pairs) if flip_pairs is not None else infer_flip_pairs(names),
            limbs=tuple(limbs),
            normalizer="oks",
        )
    except ValueError as error:
        raise ValueError(f"{path}: category {category.get('id')}: {error}") from None


def load_coco_annotations(path: str | Path, category: int | str | None = None) -> dict:
    """Read and check a COCO keypoint annotation file; returns the parsed JSON object.

    Checked: ``images`` (``id``, ``file_name``), a keypoint category (``category``: its id or name;
    None: the file's only one), and each annotation of it: ``id``, ``image_id`` of a listed image,
    ``keypoints`` of 3 x K numbers (K = the category's keypoints) with v in {0, 1, 2}, ``bbox`` of 4,
    ``area``. Annotations of other categories are not checked. Errors name the file and index.
    """
    path = Path(path)
    data = load_json(path, "COCO file")
    if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
        raise ValueError(
            f"{path}: not a COCO annotation file: expected a JSON object with 'images' and "
            "'annotations'"
        )
    image_ids = set()
    for i, image in enumerate(data["images"]):
        _require(image, ("id", "file_name"), path, f"images[{i}]")
        image_ids.add(image["id"])
    chosen = choose_category(data, category, path)
    count = 3 * len(chosen["keypoints"])
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        _require(ann, ("id", "image_id"), path, where)
        if ann.get("category_id", chosen["id"]) != chosen["id"]:
            continue
        _require(ann, ("keypoints", "bbox", "area"), path, where)
        where = f"annotations[{i}] (id {ann['id']})"
        values = _numbers(ann["keypoints"], count, path, where, "keypoints")
        flags = values[2::3]
        if not np.all(np.isin(flags, (0, 1, 2))):
            raise ValueError(f"{path}: {where} has visibility flags other than 0, 1, 2")
        _numbers(ann["bbox"], 4, path, where, "bbox")
        area = ann["area"]
        if isinstance(area, bool) or not isinstance(area, (int, float)) or not area >= 0:
            raise ValueError(f"{path}: {where} field 'area' must be a number >= 0, got {area!r}")
        if ann["image_id"] not in image_ids:
            raise ValueError(
                f"{path}: {where} refers to image_id {ann['image_id']} not in 'images'"
            )
    return data


def _split_from_name(path: Path) -> str:
    stem = path.stem.lower()
    if "val" in stem:
        return "valid"
    if "test" in stem:
        return "test"
    return "train"


def read_coco_keypoints(
    path: str | Path,
    skipped: list[str] | None = None,
    *,
    aspect_ratio: float = 1.0,
    padding: float = BOX_PADDING,
    split: str | None = None,
    category: int | str | None = None,
    pose: PoseSpec | None = None,
) -> list[PoseRecord]:
    """Instances of a COCO keypoint file's category with at least one keypoint, not crowd.

    Args:
        path: the annotation file.
        skipped: if given, one reason string per annotation left out (crowd, no keypoints, empty box,
            another category).
        aspect_ratio: width / height of the model input the crop boxes are made for.
        padding: crop box enlargement (1.25).
        split: the records' split (default from the file name: ``val`` -> "valid", else "train").
        category: the keypoint category (id or name); None: the file's only one.
        pose: the records' spec (default :func:`coco_pose` of the category); its normaliser rule
            gives ``record.normalizer``.

    ``image_id`` is the COCO image id, ``person_id`` the annotation id; ``extra`` holds
    ``annotation_id``, ``bbox``, ``area``, ``visibility`` (the raw 0/1/2 flags).
    """
    path = Path(path)
    data = load_coco_annotations(path, category)
    chosen = choose_category(data, category, path)
    spec = pose or coco_pose(chosen, path=path)
    if spec.num_joints != len(chosen["keypoints"]):
        raise ValueError(
            f"{path}: category {chosen['id']} has {len(chosen['keypoints'])} keypoints, pose "
            f"{spec.name!r} {spec.num_joints}"
        )
    files = {image["id"]: str(image["file_name"]) for image in data["images"]}
    split = split or _split_from_name(path)
    records = []
    for ann in data["annotations"]:
        name = files.get(ann["image_id"], f"image_id {ann['image_id']}")
        label = f"{name} (annotation {ann['id']})"
        reason = None
        if ann.get("category_id", chosen["id"]) != chosen["id"]:
            reason = f"category_id {ann['category_id']} is not {chosen.get('name', chosen['id'])}"
        else:
            values = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
            flags = values[:, 2].astype(np.uint8)
            num_keypoints = int(np.count_nonzero(flags))
            if ann.get("iscrowd", 0):
                reason = "crowd annotation (iscrowd 1)"
            elif int(ann.get("num_keypoints", num_keypoints)) == 0 or num_keypoints == 0:
                reason = "no labelled keypoints (num_keypoints 0)"
            elif ann["bbox"][2] <= 0 or ann["bbox"][3] <= 0:
                reason = f"empty bbox {ann['bbox']}"
        if reason:
            if skipped is not None:
                skipped.append(f"{label}: {reason}")
            continue
        records.append(
            record_from_box(
                name,
                values[:, :2],
                flags > 0,
                pixel_box(ann["bbox"]),
                spec,
                aspect_ratio=aspect_ratio,
                padding=padding,
                area=float(ann["area"]),
                split=split,
                image_id=int(ann["image_id"]),
                person_id=int(ann["id"]),
                extra={
                    "annotation_id": int(ann["id"]),
                    "bbox": [float(v) for v in ann["bbox"]],
                    "area": float(ann["area"]),
                    "visibility": flags,
                },
            )
        )
    # Records of one image adjacent, as the TFRecord writer's image cache expects.
    order = {image_id: k for k, image_id in enumerate(files)}
    records.sort(key=lambda r: order[r.image_id])
    return records


def parse_input_shape(text: str | Sequence[int]) -> tuple[int, int]:
    """'256x192' / (256, 192) -> (height, width), both positive."""
    if isinstance(text, str):
        parts = text.lower().replace(",", "x").split("x")
    else:
        parts = list(text)
    try:
        height, width = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"input shape must be HEIGHTxWIDTH, e.g. 256x192, got {text!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"input shape must be positive, got {text!r}")
    return height, width
