"""Sharded TFRecords of PoseRecords: schema, atomic shard writer and manifest.

Schema version 1, one ``tf.train.Example`` per person (see ``datasets/README.md``):

===================  =======  ==============================================================
key                  type     meaning
===================  =======  ==============================================================
image/encoded        bytes    the image file's bytes as stored (JPEG or PNG)
image/filename       bytes    file name relative to the image directory
image/height, width  int64    decoded size in pixels
joints               float    J*2 values (x0, y0, x1, y1, ...), 0-based original pixels
visible              int64    J flags, 1 = annotated
center               float    2 values, adjusted person centre (0-based pixels)
scale                float    adjusted person scale (box side / 200 px)
normalizer           float    PCKh head size (MPII) or torso size (FLIC); NaN if unknown
image_id, person_id  int64    ids from the annotation source
split, dataset       bytes    "train"/"valid"/"test", "mpii"/"flic"
===================  =======  ==============================================================
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hgkeras.data.records import PoseRecord
from hgkeras.spec import get_pose

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_SUFFIX = ".tfrecord"
_TMP_SUFFIX = ".tmp"


def shard_name(split: str, index: int, count: int) -> str:
    """File name of shard ``index`` of ``count`` of a split, e.g. ``train-00000-of-00004.tfrecord``."""
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def check_image_bytes(data: bytes) -> tuple[int, int]:
    """(height, width) of an encoded image, or ValueError saying why it is unusable.

    Truncated JPEG/PNG files are rejected (OpenCV would decode them partly without failing).
    """
    import cv2

    if len(data) == 0:
        raise ValueError("empty file")
    if data[:2] == b"\xff\xd8":
        if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
            raise ValueError("truncated JPEG (no end-of-image marker)")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-16:]:
            raise ValueError("truncated PNG (no IEND chunk)")
    else:
        raise ValueError("not a JPEG or PNG file")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("could not be decoded")
    return int(image.shape[0]), int(image.shape[1])


def record_problem(record: PoseRecord) -> str | None:
    """Why a record cannot be cropped (non-finite centre, non-positive scale), or None."""
    if not np.all(np.isfinite(record.center)):
        return f"centre {record.center.tolist()} is not finite"
    if not (np.isfinite(record.scale) and record.scale > 0):
        return f"scale {record.scale!r} is not a positive number"
    return None


def encode_example(record: PoseRecord, encoded: bytes, height: int, width: int) -> bytes:
    """Serialise one record and its image bytes as a ``tf.train.Example`` (schema 1).

    Joints with non-finite coordinates are stored as (0, 0) and not visible.
    """
    import tensorflow as tf

    def floats(values) -> tf.train.Feature:
        return tf.train.Feature(
            float_list=tf.train.FloatList(value=np.asarray(values, np.float32).reshape(-1))
        )

    def ints(values) -> tf.train.Feature:
        return tf.train.Feature(
            int64_list=tf.train.Int64List(value=np.asarray(values, np.int64).reshape(-1))
        )

    def strings(value: bytes | str) -> tf.train.Feature:
        if isinstance(value, str):
            value = value.encode()
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    finite = np.isfinite(record.joints).all(axis=1)
    joints = np.where(finite[:, None], record.joints, 0.0)
    visible = np.where(finite, record.visible, 0)
    feature = {
        "image/encoded": strings(encoded),
        "image/filename": strings(record.image),
        "image/height": ints([height]),
        "image/width": ints([width]),
        "joints": floats(joints),
        "visible": ints(visible),
        "center": floats(record.center),
        "scale": floats([record.scale]),
        "normalizer": floats([record.normalizer]),
        "image_id": ints([record.image_id]),
        "person_id": ints([record.person_id]),
        "split": strings(record.split),
        "dataset": strings(record.dataset),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec(num_joints: int) -> dict:
    """``tf.io.parse_single_example`` spec of schema 1 for ``num_joints`` joints."""
    import tensorflow as tf

    return {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/filename": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "joints": tf.io.FixedLenFeature([num_joints * 2], tf.float32),
        "visible": tf.io.FixedLenFeature([num_joints], tf.int64),
        "center": tf.io.FixedLenFeature([2], tf.float32),
        "scale": tf.io.FixedLenFeature([], tf.float32),
        "normalizer": tf.io.FixedLenFeature([], tf.float32),
        "image_id": tf.io.FixedLenFeature([], tf.int64),
        "person_id": tf.io.FixedLenFeature([], tf.int64),
        "split": tf.io.FixedLenFeature([], tf.string),
        "dataset": tf.io.FixedLenFeature([], tf.string),
    }


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_tfrecords(
    records: Sequence[PoseRecord],
    image_dir: str | Path,
    out_dir: str | Path,
    *,
    shards: int | None = None,
    records_per_shard: int = 1024,
    skipped_annotations: Sequence[str] = (),
    source: str | None = None,
    progress: bool = True,
    image_reader: Callable[[Path], bytes] | None = None,
    extra: dict | None = None,
) -> dict:
    """Write records (grouped by split) to sharded TFRecords plus ``manifest.json``; return the manifest.

    Args:
        records: people to write, in order (order within a split is kept across shards).
        image_dir: directory the records' ``image`` names are relative to.
        out_dir: output directory (created).
        shards: shards per split; default ``ceil(n / records_per_shard)``.
        skipped_annotations: reasons from the reader, copied into the manifest.
        source: annotation file name recorded in the manifest.
        progress: show a tqdm progress bar.
        image_reader: reads a file's bytes (default ``Path.read_bytes``).
        extra: further manifest entries (e.g. conversion options).

    Missing or corrupt images are skipped and listed in the manifest with the reason. Each shard is
    written to ``NAME.tmp`` and renamed when complete; shards of earlier runs that this run does not
    produce are removed after the new ones are in place, so re-running is safe.
    """
    import tensorflow as tf
    from tqdm import tqdm

    image_dir, out_dir = Path(image_dir), Path(out_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image directory not found: {image_dir}")
    if shards is not None and shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = image_reader or (lambda p: p.read_bytes())
    num_joints = {r.num_joints for r in records}
    if len(num_joints) > 1:
        raise ValueError(f"records disagree on the number of joints: {sorted(num_joints)}")
    datasets = sorted({r.dataset for r in records})

    by_split: dict[str, list[PoseRecord]] = {}
    for record in records:
        by_split.setdefault(record.split, []).append(record)

    image_cache: dict[str, tuple[bytes, int, int] | str] = {}
    skipped: list[dict] = []
    splits: dict[str, dict] = {}
    bar = tqdm(total=len(records), desc="writing", unit="rec", disable=not progress)
    for split, items in by_split.items():
        # Shard sizes count only records whose image file exists (decoding is checked on writing).
        present = {name: (image_dir / name).is_file() for name in {r.image for r in items}}
        expected = sum(present[r.image] for r in items)
        count = shards or max(1, math.ceil(expected / records_per_shard))
        count = min(count, max(1, expected))
        weights = np.cumsum([0] + [int(present[r.image]) for r in items])
        bounds = np.searchsorted(weights, np.linspace(0, expected, count + 1).round(), side="left")
        bounds[-1] = len(items)
        shard_info = []
        for index in range(count):
            name = shard_name(split, index, count)
            final = out_dir / name
            tmp = out_dir / (name + _TMP_SUFFIX)
            written = 0
            with tf.io.TFRecordWriter(str(tmp)) as writer:
                for record in items[bounds[index] : bounds[index + 1]]:
                    bar.update(1)
                    problem = record_problem(record)
                    if problem:
                        skipped.append(
                            {
                                "image": record.image,
                                "image_id": record.image_id,
                                "person_id": record.person_id,
                                "split": split,
                                "reason": problem,
                            }
                        )
                        continue
                    entry = image_cache.get(record.image)
                    if entry is None:
                        path = image_dir / record.image
                        try:
                            data = reader(path)
                            height, width = check_image_bytes(data)
                            entry = (data, height, width)
                        except FileNotFoundError:
                            entry = "missing image file"
                        except (OSError, ValueError) as err:
                            entry = f"unreadable image: {err}"
                        # Keep only the last image's bytes: records of one image are adjacent.
                        image_cache = {record.image: entry}
                    if isinstance(entry, str):
                        skipped.append(
                            {
                                "image": record.image,
                                "image_id": record.image_id,
                                "person_id": record.person_id,
                                "split": split,
                                "reason": entry,
                            }
                        )
                        continue
                    data, height, width = entry
                    writer.write(encode_example(record, data, height, width))
                    written += 1
            os.replace(tmp, final)
            shard_info.append({"file": name, "records": written})
        splits[split] = {
            "records": sum(s["records"] for s in shard_info),
            "shards": shard_info,
        }
    bar.close()

    keep = {s["file"] for info in splits.values() for s in info["shards"]}
    for old in out_dir.glob(f"*{SHARD_SUFFIX}"):
        if old.name not in keep:
            old.unlink()
    for stale in out_dir.glob(f"*{SHARD_SUFFIX}{_TMP_SUFFIX}"):
        stale.unlink()  # left by an interrupted run
    skeleton = get_pose(datasets[0]) if len(datasets) == 1 else None
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dataset": datasets[0] if len(datasets) == 1 else datasets,
        "pose": skeleton.name if skeleton else None,
        "num_joints": next(iter(num_joints)) if num_joints else 0,
        "joint_names": list(skeleton.joint_names) if skeleton else [],
        "source": source,
        "images": str(image_dir),
        "splits": splits,
        "skipped_images": skipped,
        "skipped_annotations": list(skipped_annotations),
        **(extra or {}),
    }
    _atomic_write_text(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=2))
    return manifest


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a TFRecord directory (ValueError on an unknown schema version)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {directory}")
    manifest = json.loads(path.read_text())
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema version {manifest.get('schema_version')!r}, this hgkeras reads "
            f"{SCHEMA_VERSION}"
        )
    return manifest
