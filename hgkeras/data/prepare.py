"""Convert MPII/FLIC annotations and images into sharded TFRecords (the logic of ``hgkeras prepare``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hgkeras.data.readers import read_annotations
from hgkeras.data.records import PoseRecord
from hgkeras.data.tfrecords import write_tfrecords


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


def prepare_dataset(
    dataset: str,
    annotations: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    shards: int | None = None,
    splits: Sequence[str] | None = None,
    observer_centric: bool = False,
    valid_annotations: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    input_shape: str | Sequence[int] = (256, 256),
) -> dict:
    """Read ``annotations`` (any supported layout) and write TFRecords + manifest to ``out``.

    Args:
        dataset: "mpii", "flic" (checked against the file's joint count) or "coco".
        annotations: annotation file.
        images: directory holding the images named in the annotations.
        out: output directory.
        shards: shards per split (default: about 1024 records per shard).
        splits: keep only these splits (default: all).
        observer_centric: FLIC: swap left/right labels of people seen from behind.
        valid_annotations: an annotation file whose people form the validation split (e.g. the Torch
            ``valid.h5`` for the MPII release ``.mat``); matching training people become "valid".
        input_shape: COCO: the model input (height, width) the crop boxes are made for.
        workers: shards written at the same time (default: the machine's cores).
        progress: show a progress bar.
    Returns the manifest (see :func:`hgkeras.data.tfrecords.write_tfrecords`: transactional, and a
    ValueError when no record has a usable image).
    """
    if dataset == "coco":
        from hgkeras.data.coco import prepare_coco

        if observer_centric or valid_annotations is not None:
            raise ValueError("observer_centric and valid_annotations do not apply to COCO")
        return prepare_coco(
            annotations, images, out, input_shape=input_shape, shards=shards, splits=splits,
            progress=progress,
        )  # fmt: skip
    skipped: list[str] = []
    records = read_annotations(
        annotations, dataset, observer_centric=observer_centric, skipped=skipped
    )
    if valid_annotations is not None:
        valid = read_annotations(valid_annotations, dataset)
        assign_validation_split(records, valid)
    if splits:
        records = [r for r in records if r.split in set(splits)]
    if not records:
        raise ValueError(f"{annotations}: no records to write (splits {list(splits or [])})")
    manifest = write_tfrecords(
        records,
        images,
        out,
        shards=shards,
        workers=workers,
        skipped_annotations=skipped,
        source=str(annotations),
        progress=progress,
        extra={
            "observer_centric": observer_centric,
            "valid_annotations": str(valid_annotations) if valid_annotations else None,
        },
    )
    return manifest
