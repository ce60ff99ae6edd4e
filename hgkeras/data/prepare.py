"""Annotations in any supported format -> sharded TFRecords (the logic of ``hgkeras prepare``).

Formats: ``mpii`` and ``flic`` (their annotation files, :mod:`hgkeras.data.readers`), ``coco``
(any COCO keypoint category, :mod:`hgkeras.data.coco`), ``dlc`` (a DeepLabCut project,
:mod:`hgkeras.data.dlc`) and ``yolo`` (an Ultralytics YOLO-pose dataset, :mod:`hgkeras.data.yolo`).
Every format gives PoseRecords and a pose spec; the spec travels whole in the manifest.

For the users' formats (coco, dlc, yolo):

* The spec is the format's (keypoint names, skeleton), with flip pairs given (``flip_pairs``; YOLO's
  ``flip_idx``) or found by name (:func:`hgkeras.spec.infer_flip_pairs`); ``pose`` (a spec, its name
  or its JSON file) replaces it whole, and must name the format's keypoints in the same order.
* Splits: the format's (COCO ``valid_annotations``, YOLO's train/val/test), else
  ``valid_fraction`` of the images become "valid" by :func:`split_by_image`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hgkeras.data.readers import read_annotations
from hgkeras.data.records import PoseRecord
from hgkeras.data.tfrecords import write_tfrecords
from hgkeras.spec import PoseSpec, get_pose, parse_flip_pairs

#: The formats ``hgkeras prepare`` reads.
FORMATS = ("mpii", "flic", "coco", "dlc", "yolo")
#: Formats whose files make the pose spec (the others are built-in sets).
USER_FORMATS = ("coco", "dlc", "yolo")


def assign_validation_split(
    records: Sequence[PoseRecord], valid_records: Sequence[PoseRecord], tolerance: float = 2.0
) -> int:
    """Relabel as "valid" the training records that appear in ``valid_records`` (e.g. ``valid.h5``).

    A record matches when it shows the same image and its (adjusted) centre lies within ``tolerance``
    pixels of a validation person's centre. Returns the number of records relabelled.
    """
    by_image: dict[str, list[np.ndarray]] = {}
    for record in valid_records:
        by_image.setdefault(record.image, []).append(record.center)
    moved = 0
    for record in records:
        centers = by_image.get(record.image)
        if record.split != "train" or not centers:
            continue
        if min(float(np.linalg.norm(record.center - c)) for c in centers) <= tolerance:
            record.split = "valid"
            moved += 1
    return moved


def split_by_image(records: Sequence[PoseRecord], fraction: float) -> int:
    """Move ``fraction`` of the training images (all their records) to "valid"; returns the count.

    Deterministic and independent of record order: the images are ranked by the SHA-1 of their
    name (as the records give it, relative to the image folder) and the first
    ``round(fraction * images)`` become "valid" (at least one when ``fraction`` > 0, never all).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {fraction!r}")
    names = sorted({r.image for r in records if r.split == "train"})
    count = min(len(names) - 1, max(1, round(fraction * len(names)))) if fraction > 0 else 0
    ranked = sorted(names, key=lambda n: hashlib.sha1(n.encode("utf-8")).hexdigest())
    chosen = set(ranked[: max(0, count)])
    for record in records:
        if record.image in chosen:
            record.split = "valid"
    return len(chosen)


def finish_pose(
    spec: PoseSpec,
    *,
    flip_pairs: str | Sequence | None = None,
    pose: Any = None,
    origin: str = "names",
) -> tuple[PoseSpec, str]:
    """The spec to write, and where its flip pairs come from: "spec" (``pose``), "given"
    (``flip_pairs``) or ``origin`` (the format's: "names" = found by name, "flip_idx" = YOLO's).

    ``pose`` replaces ``spec`` whole (its keypoints must be the format's, in order); ``flip_pairs``
    (``"a:b,..."`` or index pairs; ``""`` for none) replaces the pairs.
    """
    if pose is not None:
        given = get_pose(pose)
        if tuple(n.lower() for n in given.joint_names) != tuple(
            n.lower() for n in spec.joint_names
        ):
            raise ValueError(
                f"pose {given.name!r} names the keypoints {list(given.joint_names)}, the data "
                f"{list(spec.joint_names)}: they must be the same, in the same order"
            )
        if flip_pairs is not None:
            raise ValueError("give the flip pairs in the pose spec file or as flip_pairs, not both")
        return given, "spec"
    if flip_pairs is not None:
        pairs = parse_flip_pairs(flip_pairs, spec.joint_names)
        return PoseSpec.from_config(
            {**spec.to_config(), "flip_pairs": pairs, "colors": None}
        ), "given"
    return spec, origin


def apply_pose(records: Sequence[PoseRecord], spec: PoseSpec) -> None:
    """Name ``spec`` in every record and set its normaliser value (box side, OKS area, ...)."""
    for record in records:
        record.pose = spec.name
        record.normalizer = spec.normalizer_value(
            record.joints, record.visible, record.box, record.extra.get("area")
        )


@dataclass
class Source:
    """What a format reader gives: the spec, the records, the folder their images are relative to,
    the reasons of the annotations left out and where the spec's flip pairs come from."""

    spec: PoseSpec
    records: list[PoseRecord]
    images: Path
    skipped: list[str] = field(default_factory=list)
    pairs_from: str = "names"
    category_id: int | None = None  # COCO: the category of the keypoints (for results files)


def read_source(
    fmt: str,
    annotations: str | Path,
    images: str | Path | None = None,
    *,
    aspect_ratio: float = 1.0,
    category: int | str | None = None,
    valid_annotations: str | Path | None = None,
    valid_images: str | Path | None = None,
) -> Source:
    """The spec and records of a users' format (coco, dlc, yolo), splits as the format gives them."""
    skipped: list[str] = []
    if fmt == "coco":
        from hgkeras.data.coco import (
            choose_category,
            coco_pose,
            load_coco_annotations,
            read_coco_keypoints,
        )

        if images is None:
            raise ValueError("COCO needs the image folder (--images)")
        data = load_coco_annotations(annotations, category)
        chosen = choose_category(data, category, annotations)
        spec = coco_pose(chosen, path=annotations)
        options = {"aspect_ratio": aspect_ratio, "category": category, "pose": spec}
        records = read_coco_keypoints(
            annotations, skipped, split="train" if valid_annotations else None, **options
        )
        root = Path(images)
        if valid_annotations is not None:
            valid = read_coco_keypoints(valid_annotations, skipped, split="valid", **options)
            root, records = _common_root(
                [(Path(images), records), (Path(valid_images or images), valid)]
            )
        return Source(spec, records, root, skipped, category_id=int(chosen["id"]))
    if fmt == "dlc":
        from hgkeras.data.dlc import dlc_pose, project_config, read_dlc_project

        if valid_annotations is not None or valid_images is not None:
            raise ValueError("a DeepLabCut project has no validation file: use valid_fraction")
        spec = dlc_pose(annotations)
        records = read_dlc_project(annotations, spec, skipped, aspect_ratio=aspect_ratio)
        return Source(spec, records, Path(images or project_config(annotations)[0]), skipped)
    if fmt == "yolo":
        from hgkeras.data.yolo import load_data_yaml, read_yolo_dataset, yolo_pose

        if valid_annotations is not None or valid_images is not None:
            raise ValueError("a YOLO dataset gives its splits in data.yaml (train, val, test)")
        spec = yolo_pose(annotations, category=category)
        records = read_yolo_dataset(
            annotations, spec, skipped, category=category, aspect_ratio=aspect_ratio
        )
        root, data = load_data_yaml(annotations)
        origin = "flip_idx" if data.get("flip_idx") is not None else "names"
        return Source(spec, records, Path(images or root), skipped, origin)
    raise ValueError(f"format must be one of {USER_FORMATS}, got {fmt!r}")


def _common_root(parts: list[tuple[Path, list[PoseRecord]]]) -> tuple[Path, list[PoseRecord]]:
    """Records of several image folders, renamed relative to the folders' common parent."""
    import os

    folders = [folder.resolve() for folder, _ in parts]
    root = Path(os.path.commonpath(folders))
    records = []
    for folder, items in zip(folders, (items for _, items in parts), strict=True):
        prefix = folder.relative_to(root).as_posix()
        for record in items:
            record.image = f"{prefix}/{record.image}" if prefix != "." else record.image
        records += items
    return root, records


def prepare_dataset(
    dataset: str,
    annotations: str | Path,
    images: str | Path | None,
    out: str | Path,
    *,
    shards: int | None = None,
    splits: Sequence[str] | None = None,
    observer_centric: bool = False,
    valid_annotations: str | Path | None = None,
    valid_images: str | Path | None = None,
    valid_fraction: float | None = None,
    category: int | str | None = None,
    flip_pairs: str | Sequence | None = None,
    pose: Any = None,
    workers: int | None = None,
    progress: bool = True,
    input_shape: str | Sequence[int] = (256, 256),
) -> dict:
    """Read annotations of format ``dataset`` and write TFRecords + manifest to ``out``.

    Args:
        dataset: the format, one of :data:`FORMATS`.
        annotations: MPII/FLIC/COCO annotation file, DeepLabCut project folder (or its
            ``config.yaml``), YOLO ``data.yaml``.
        images: the folder the images are named relative to (needed for mpii, flic, coco; default
            the project folder for dlc and the dataset root for yolo).
        out: output directory.
        shards: shards per split (default: about 1024 records per shard).
        splits: keep only these splits (default: all).
        observer_centric: FLIC: swap left/right labels of people seen from behind.
        valid_annotations: MPII: an annotation file whose people form the validation split (e.g. the
            Torch ``valid.h5`` for the release ``.mat``); COCO: the validation annotation file.
        valid_images: COCO: the validation images' folder (default ``images``).
        valid_fraction: users' formats without a validation split: this fraction of the images
            (:func:`split_by_image`).
        category: COCO: the keypoint category (id or name); YOLO: the class (index or name).
        flip_pairs: users' formats: the flip pairs (``"a:b,..."`` by name or index, ``""`` none).
        pose: users' formats: a pose spec (its name, JSON file or object) used instead of the
            format's.
        input_shape: the model input (height, width) the crop boxes are made for (users' formats).
        workers: shards written at the same time (default: the machine's cores).
        progress: show a progress bar.
    Returns the manifest (see :func:`hgkeras.data.tfrecords.write_tfrecords`: transactional, and a
    ValueError when no record has a usable image).
    """
    from hgkeras.data.coco import BOX_PADDING, parse_input_shape

    if dataset not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {dataset!r}")
    if dataset in USER_FORMATS:
        if observer_centric:
            raise ValueError("observer_centric applies to FLIC only")
        height, width = parse_input_shape(input_shape)
        source = read_source(
            dataset, annotations, images, aspect_ratio=width / height, category=category,
            valid_annotations=valid_annotations, valid_images=valid_images,
        )  # fmt: skip
        spec, pairs_from = finish_pose(
            source.spec, flip_pairs=flip_pairs, pose=pose, origin=source.pairs_from
        )
        if spec.input_shape != (height, width):  # the input the boxes are made for
            spec = dataclasses.replace(spec, input_shape=(height, width))
        apply_pose(source.records, spec)
        records, image_dir, skipped = source.records, source.images, source.skipped
        extra = {
            "format": dataset,
            "flip_pairs_from": pairs_from,
            "input_shape": [height, width],
            "aspect_ratio": width / height,
            "box_padding": BOX_PADDING,
            "normalizer": spec.normalizer,
        }
        if source.category_id is not None:
            extra["category_id"] = source.category_id
    else:
        for name, value in (("valid_fraction", valid_fraction), ("category", category),
                            ("flip_pairs", flip_pairs), ("pose", pose), ("valid_images", valid_images)):  # fmt: skip
            if value is not None:
                raise ValueError(
                    f"{name} applies to the users' formats {USER_FORMATS}, not {dataset}"
                )
        if images is None:
            raise ValueError(f"{dataset} needs the image folder (--images)")
        spec = get_pose(dataset)
        skipped = []
        records = read_annotations(
            annotations, dataset, observer_centric=observer_centric, skipped=skipped
        )
        if valid_annotations is not None:
            valid = read_annotations(valid_annotations, dataset)
            assign_validation_split(records, valid)
        image_dir = Path(images)
        extra = {
            "observer_centric": observer_centric,
            "valid_annotations": str(valid_annotations) if valid_annotations else None,
        }
    if valid_fraction:
        if any(r.split == "valid" for r in records):
            raise ValueError(
                f"{annotations} has a validation split already; valid_fraction applies to data without one"
            )
        extra["valid_fraction"] = valid_fraction
        extra["valid_images"] = split_by_image(records, valid_fraction)
    if splits:
        records = [r for r in records if r.split in set(splits)]
    if not records:
        raise ValueError(f"{annotations}: no records to write (splits {list(splits or [])})")
    return write_tfrecords(
        records,
        image_dir,
        out,
        shards=shards,
        workers=workers,
        skipped_annotations=skipped,
        source=str(annotations),
        progress=progress,
        extra=extra,
        pose=spec,
    )


def flip_pair_names(spec: PoseSpec) -> str:
    """The flip pairs of a spec as ``left<->right, ...`` (``none`` without pairs)."""
    return (
        ", ".join(f"{spec.joint_names[a]}<->{spec.joint_names[b]}" for a, b in spec.flip_pairs)
        or "none"
    )
