"""COCO person keypoints: ``person_keypoints_*.json`` -> :class:`~hgkeras.data.records.PoseRecord` lists.

Conventions (see ``docs/evaluation.md``, "COCO keypoints"):

* Keypoints ``[x1, y1, v1, ..., x17, y17, v17]`` are pixel indices (the centre of pixel column x, row y),
  which is hgkeras' 0-based pixel-centre convention (:mod:`hgkeras.geometry`): they are used unchanged,
  and results files are written in the same convention (as detectron2 and mmpose do).
* Visibility ``v``: 0 not labelled, 1 labelled but not visible, 2 labelled and visible. Both 1 and 2 are
  annotated joints (``PoseRecord.visible`` = 1, training targets and OKS); the raw flags are kept in
  ``record.extra["visibility"]``.
* ``bbox`` ``[x, y, w, h]`` is continuous (the image spans [0, W] x [0, H]); in pixel-centre coordinates
  its corners are (x - 0.5, y - 0.5) and (x + w - 0.5, y + h - 0.5). The crop box (top-down COCO
  practice) is the person box widened or heightened to the model input's aspect ratio (w / h: 1 for
  256x256, 0.75 for 256x192) about its centre, then enlarged by :data:`BOX_PADDING` (1.25).
* ``record.normalizer`` holds the annotation's ``area`` (the OKS scale s^2 in pixels^2).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hgkeras.data.records import PoseRecord
from hgkeras.geometry import box_to_center_scale
from hgkeras.spec import COCO

#: Top-down crop padding around the aspect-ratio-corrected person box.
BOX_PADDING = 1.25
#: The COCO person category id.
PERSON_CATEGORY = 1
#: The usual top-down COCO input sizes (height, width).
INPUT_SHAPES = ((256, 256), (256, 192))
# The training settings of ``train.py --dataset coco`` are the ``coco`` recipe
# (hgkeras.training.recipes).

_NUM_VALUES = 3 * COCO.num_joints


def coco_box_to_center_scale(
    bbox: Sequence[float], aspect_ratio: float = 1.0, padding: float = BOX_PADDING
) -> tuple[np.ndarray, float]:
    """A COCO ``bbox`` [x, y, w, h] -> (centre, scale) of its crop box for an input of ``aspect_ratio``."""
    x, y, w, h = (float(v) for v in bbox)
    box = (x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5)
    return box_to_center_scale(box, padding=padding, aspect_ratio=aspect_ratio)


def is_coco_json(path: str | Path) -> bool:
    """True when a ``.json`` file holds one JSON object (the COCO layout), not a list of records."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    return head[:1] == b"{"


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"COCO file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None


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


def load_coco_annotations(path: str | Path) -> dict:
    """Read and check a COCO person-keypoint annotation file; returns the parsed JSON object.

    Checked: ``images`` (``id``, ``file_name``), ``annotations`` (``id``, ``image_id`` of a listed image,
    ``keypoints`` of 51 numbers with v in {0, 1, 2}, ``bbox`` of 4, ``area``), and, when present, that the
    person category's keypoint names are the 17 COCO joints in order. Errors name the file and index.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
        raise ValueError(
            f"{path}: not a COCO annotation file: expected a JSON object with 'images' and "
            "'annotations'"
        )
    image_ids = set()
    for i, image in enumerate(data["images"]):
        _require(image, ("id", "file_name"), path, f"images[{i}]")
        image_ids.add(image["id"])
    for category in data.get("categories", []):
        if category.get("id") == PERSON_CATEGORY and "keypoints" in category:
            names = tuple(category["keypoints"])
            if names != COCO.joint_names:
                raise ValueError(
                    f"{path}: the person category's keypoints {list(names)} are not the 17 COCO "
                    f"joints {list(COCO.joint_names)}"
                )
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        _require(ann, ("id", "image_id", "keypoints", "bbox", "area"), path, where)
        where = f"annotations[{i}] (id {ann['id']})"
        values = _numbers(ann["keypoints"], _NUM_VALUES, path, where, "keypoints")
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
) -> list[PoseRecord]:
    """People of a COCO ``person_keypoints_*.json`` with at least one keypoint, not crowd.

    Args:
        path: the annotation file.
        skipped: if given, one reason string per annotation left out (crowd, no keypoints, empty box,
            not a person).
        aspect_ratio: width / height of the model input the crop boxes are made for.
        padding: crop box enlargement (1.25).
        split: the records' split (default from the file name: ``val`` -> "valid", else "train").

    ``image_id`` is the COCO image id, ``person_id`` the annotation id; ``extra`` holds
    ``annotation_id``, ``bbox``, ``area``, ``visibility`` (the raw 0/1/2 flags).
    """
    path = Path(path)
    data = load_coco_annotations(path)
    files = {image["id"]: str(image["file_name"]) for image in data["images"]}
    split = split or _split_from_name(path)
    records = []
    for ann in data["annotations"]:
        name = files[ann["image_id"]]
        label = f"{name} (annotation {ann['id']})"
        values = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        flags = values[:, 2].astype(np.uint8)
        num_keypoints = int(np.count_nonzero(flags))
        reason = None
        if ann.get("category_id", PERSON_CATEGORY) != PERSON_CATEGORY:
            reason = f"category_id {ann['category_id']} is not person"
        elif ann.get("iscrowd", 0):
            reason = "crowd annotation (iscrowd 1)"
        elif int(ann.get("num_keypoints", num_keypoints)) == 0 or num_keypoints == 0:
            reason = "no labelled keypoints (num_keypoints 0)"
        elif ann["bbox"][2] <= 0 or ann["bbox"][3] <= 0:
            reason = f"empty bbox {ann['bbox']}"
        if reason:
            if skipped is not None:
                skipped.append(f"{label}: {reason}")
            continue
        center, scale = coco_box_to_center_scale(ann["bbox"], aspect_ratio, padding)
        visible = flags > 0
        records.append(
            PoseRecord(
                image=name,
                joints=np.where(visible[:, None], values[:, :2], 0.0),
                visible=visible,
                center=center,
                scale=scale,
                normalizer=float(ann["area"]),
                split=split,
                dataset="coco",
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


def prepare_coco(
    annotations: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    input_shape: str | Sequence[int] = (256, 256),
    shards: int | None = None,
    split: str | None = None,
    splits: Sequence[str] | None = None,
    progress: bool = True,
) -> dict:
    """COCO annotations + images -> sharded TFRecords with a manifest (``hgkeras prepare coco``).

    Crop boxes are made for ``input_shape`` (height, width); the manifest lists every skipped
    annotation and image with its reason and records the box convention. ``split`` names the
    records' split (default from the file name), ``splits`` keeps only those. Returns the manifest.
    """
    from hgkeras.data.tfrecords import write_tfrecords

    height, width = parse_input_shape(input_shape)
    skipped: list[str] = []
    records = read_coco_keypoints(
        annotations, skipped, aspect_ratio=width / height, padding=BOX_PADDING, split=split
    )
    if splits:
        records = [r for r in records if r.split in set(splits)]
    if not records:
        raise ValueError(
            f"{annotations}: no person with keypoints to write (splits {list(splits or [])})"
        )
    return write_tfrecords(
        records,
        images,
        out,
        shards=shards,
        skipped_annotations=skipped,
        source=str(annotations),
        progress=progress,
        extra={
            "input_shape": [height, width],
            "aspect_ratio": width / height,
            "box_padding": BOX_PADDING,
            "normalizer": "COCO annotation area (OKS s^2)",
        },
    )
