"""Sharded TFRecords of PoseRecords: schema, transactional parallel writer and manifest.

Schema version 1, one ``tf.train.Example`` per person (see ``datasets/README.md``):

===================  =======  ==============================================================
key                  type     meaning
===================  =======  ==============================================================
image/encoded        bytes    the image file's bytes as stored (JPEG or PNG)
image/filename       bytes    file name relative to the image directory
image/height, width  int64    size in pixels as tf.io.decode_image returns it (no EXIF turn)
joints               float    J*2 values (x0, y0, x1, y1, ...), 0-based original pixels
visible              int64    J flags, 1 = annotated
center               float    2 values, adjusted person centre (0-based pixels)
scale                float    adjusted person scale (box side / 200 px)
normalizer           float    the pose spec's normaliser value (head size, torso size, box
                              side, OKS area: :meth:`hgkeras.spec.PoseSpec.normalizer_value`)
image_id, person_id  int64    ids from the annotation source
split, dataset       bytes    "train"/"valid"/"test", the pose spec's name
box                  float    4 values (x1, y1, x2, y2), 0-based pixels; NaN if unknown (absent
                              in shards of hgkeras before 0.3: read as NaN)
===================  =======  ==============================================================

The manifest holds the pose spec's full dict (``"pose"``, :func:`manifest_pose` reads it back).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hgkeras import io
from hgkeras.data.images import image_size
from hgkeras.data.records import PoseRecord
from hgkeras.spec import PoseSpec, get_pose

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_SUFFIX = ".tfrecord"
#: Shard file names: ``{split}-{index:05d}-of-{count:05d}.tfrecord``.
SHARD_PATTERN = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")
#: Suffix of half-written shards of hgkeras before 0.2 (``NAME.tfrecord.tmp``); removed on re-runs.
LEGACY_TMP_SUFFIX = ".tmp"


def shard_name(split: str, index: int, count: int) -> str:
    """File name of shard ``index`` of ``count`` of a split, e.g. ``train-00000-of-00004.tfrecord``."""
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def parse_shard_name(name: str) -> tuple[str, int, int] | None:
    """(split, index, count) of a shard file name made by :func:`shard_name`, else None."""
    match = SHARD_PATTERN.match(os.path.basename(name))
    if match is None:
        return None
    return match["split"], int(match["index"]), int(match["count"])


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
        "dataset": strings(record.pose),
        "box": floats(record.box),
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
        "box": tf.io.FixedLenFeature([4], tf.float32, default_value=[float("nan")] * 4),
    }


@dataclass
class _ShardJob:
    split: str
    index: int
    count: int
    records: Sequence[PoseRecord]

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index, self.count)


def _skip_entry(record: PoseRecord, reason: str) -> dict:
    return {
        "image": record.image,
        "image_id": record.image_id,
        "person_id": record.person_id,
        "split": record.split,
        "reason": reason,
    }


def _write_shard(
    job: _ShardJob,
    image_dir: Path,
    out_dir: Path,
    reader: Callable[[Path], bytes],
    advance: Callable[[int], None],
) -> tuple[dict, list[dict]]:
    """Write one shard through a temporary name; return its manifest entry and the skipped records.

    Only the current image's bytes are held (records of one image are adjacent), so memory does not
    grow with the shard or the dataset.
    """
    import tensorflow as tf

    skipped: list[dict] = []
    written = 0
    current: tuple[str, tuple[bytes, int, int] | str] | None = None
    with io.atomic_path(out_dir / job.name) as temp:
        with tf.io.TFRecordWriter(temp) as writer:
            for record in job.records:
                advance(1)
                problem = record_problem(record)
                if problem:
                    skipped.append(_skip_entry(record, problem))
                    continue
                if current is None or current[0] != record.image:
                    try:
                        data = reader(image_dir / record.image)
                        entry: tuple[bytes, int, int] | str = (data, *image_size(data))
                    except FileNotFoundError:
                        entry = "missing image file"
                    except (OSError, ValueError) as err:
                        entry = f"unreadable image: {err}"
                    current = (record.image, entry)
                entry = current[1]
                if isinstance(entry, str):
                    skipped.append(_skip_entry(record, entry))
                    continue
                writer.write(encode_example(record, *entry))
                written += 1
        size = os.path.getsize(temp)
    return {"file": job.name, "records": written, "bytes": size}, skipped


def _plan_shards(
    records: Sequence[PoseRecord], image_dir: Path, shards: int | None, records_per_shard: int
) -> list[_ShardJob]:
    """Split each split's records into contiguous shards of about equal numbers of present images."""
    by_split: dict[str, list[PoseRecord]] = {}
    for record in records:
        by_split.setdefault(record.split, []).append(record)
    present = {name: (image_dir / name).is_file() for name in {r.image for r in records}}
    if not any(present.values()):
        first = next(iter(sorted(present)))
        raise FileNotFoundError(
            f"{image_dir}: none of the {len(present)} images named in the annotations exists "
            f"(first: {first}); check --images"
        )
    jobs = []
    for split, items in by_split.items():
        expected = sum(present[r.image] for r in items)
        count = shards or max(1, math.ceil(expected / records_per_shard))
        count = min(count, max(1, expected))
        weights = np.cumsum([0] + [int(present[r.image]) for r in items])
        bounds = np.searchsorted(weights, np.linspace(0, expected, count + 1).round(), side="left")
        bounds[-1] = len(items)
        jobs += [_ShardJob(split, i, count, items[bounds[i] : bounds[i + 1]]) for i in range(count)]
    return jobs


def remove_stale_files(out_dir: str | Path, keep: Sequence[str] = ()) -> list[str]:
    """Delete temporaries of interrupted writes and shard files not in ``keep``; return their names."""
    out_dir = Path(out_dir)
    removed = io.remove_temporaries(out_dir)
    for path in sorted(out_dir.iterdir()):
        stale_shard = parse_shard_name(path.name) is not None and path.name not in keep
        legacy_temp = path.name.endswith(SHARD_SUFFIX + LEGACY_TMP_SUFFIX)
        if path.is_file() and (stale_shard or legacy_temp):
            path.unlink()
            removed.append(path.name)
    return removed


def write_tfrecords(
    records: Sequence[PoseRecord],
    image_dir: str | Path,
    out_dir: str | Path,
    *,
    shards: int | None = None,
    records_per_shard: int = 1024,
    workers: int | None = None,
    skipped_annotations: Sequence[str] = (),
    source: str | None = None,
    progress: bool = True,
    image_reader: Callable[[Path], bytes] | None = None,
    extra: dict | None = None,
    pose: str | PoseSpec | None = None,
) -> dict:
    """Write records (grouped by split) to sharded TFRecords plus ``manifest.json``; return the manifest.

    Args:
        records: people to write, in order (order within a split is kept across shards).
        image_dir: directory the records' ``image`` names are relative to.
        out_dir: output directory (created).
        shards: shards per split; default ``ceil(n / records_per_shard)``.
        workers: shards written at the same time (threads; default: the machine's cores).
        skipped_annotations: reasons from the reader, copied into the manifest.
        source: annotation file name recorded in the manifest.
        progress: show a tqdm progress bar.
        image_reader: reads a file's bytes (default ``Path.read_bytes``).
        extra: further manifest entries (e.g. conversion options).
        pose: the records' pose spec, written whole into the manifest; default: the registered
            spec the records name (a set of one's own must be passed).

    The run is transactional: it first replaces the manifest with one marked ``"complete": false``
    (readers refuse such a folder), removes temporaries of interrupted runs, writes each shard under a
    temporary name renamed when complete, removes shards of earlier runs that this run does not
    produce, and writes the complete manifest last. Missing or corrupt images are skipped and listed in
    the manifest with the reason; ValueError when no record is usable.
    """
    import tensorflow  # noqa: F401  (imported here once, not by each writer thread)
    from tqdm import tqdm

    image_dir, out_dir = Path(image_dir), Path(out_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image directory not found: {image_dir}")
    if shards is not None and shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not records:
        raise ValueError("no records to write")
    spec = _records_pose(records, pose)
    jobs = _plan_shards(records, image_dir, shards, records_per_shard)

    out_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest_path = out_dir / MANIFEST_NAME
    io.atomic_write_json(
        manifest_path,
        {"schema_version": SCHEMA_VERSION, "complete": False, "started": started, "source": source},
    )
    remove_stale_files(out_dir, keep=[job.name for job in jobs])

    reader = image_reader or (lambda p: p.read_bytes())
    bar = tqdm(total=len(records), desc="writing", unit="rec", disable=not progress)
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            bar.update(n)

    pool = ThreadPoolExecutor(max_workers=min(workers or os.cpu_count() or 1, len(jobs)))
    try:
        futures = [
            pool.submit(_write_shard, job, image_dir, out_dir, reader, advance) for job in jobs
        ]
        results = [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()

    splits: dict[str, dict] = {}
    skipped: list[dict] = []
    for job, (entry, job_skipped) in zip(jobs, results, strict=True):
        info = splits.setdefault(job.split, {"records": 0, "shards": []})
        info["records"] += entry["records"]
        info["shards"].append(entry)
        skipped += job_skipped
    if not any(info["records"] for info in splits.values()):
        reasons = sorted({s["reason"] for s in skipped})
        raise ValueError(
            f"no usable record: all {len(records)} records were skipped ({'; '.join(reasons[:3])}); "
            f"{manifest_path} stays marked incomplete"
        )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "complete": True,
        "started": started,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dataset": spec.name,
        "pose": spec.to_config(),
        "num_joints": spec.num_joints,
        "joint_names": list(spec.joint_names),
        "source": source,
        "images": str(image_dir),
        "splits": splits,
        "skipped_images": skipped,
        "skipped_annotations": list(skipped_annotations),
        **(extra or {}),
    }
    io.atomic_write_json(manifest_path, manifest)
    return manifest


def _records_pose(records: Sequence[PoseRecord], pose: str | PoseSpec | None) -> PoseSpec:
    """The spec of the records (``pose``, else the registered one they name), checked against them."""
    names = sorted({r.pose for r in records})
    if pose is None:
        if len(names) != 1:
            raise ValueError(f"records of several pose specs {names}; write one set at a time")
        try:
            spec = get_pose(names[0])
        except ValueError:
            raise ValueError(
                f"records of pose {names[0]!r}, which is not a built-in spec: pass pose=its spec"
            ) from None
    else:
        spec = get_pose(pose)
    wrong = [r for r in records if r.pose != spec.name or r.num_joints != spec.num_joints]
    if wrong:
        raise ValueError(
            f"record {wrong[0].image!r} (image_id {wrong[0].image_id}) is of pose "
            f"{wrong[0].pose!r} with {wrong[0].num_joints} joints, not {spec.name!r} with "
            f"{spec.num_joints}"
        )
    return spec


def manifest_pose(manifest: dict) -> PoseSpec | None:
    """The pose spec a manifest records: its ``pose`` dict (or name, before hgkeras 0.3), else the
    name in ``dataset``; None when it names none."""
    pose = manifest.get("pose") or manifest.get("dataset")
    if isinstance(pose, (str, dict)):
        return get_pose(pose)
    return None


class IncompleteDataError(ValueError):
    """A TFRecord folder whose ``hgkeras prepare`` run did not finish (or that has no manifest)."""


def read_manifest(directory: str | Path, *, require_complete: bool = True) -> dict:
    """The manifest of a TFRecord directory.

    FileNotFoundError without one, ValueError on an unknown schema version, and
    :class:`IncompleteDataError` when the writing run did not finish (``require_complete``).
    """
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {directory}: not the output of a finished `hgkeras prepare` "
            "(if one was interrupted, run it again)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise ValueError(f"{path}: schema version {version!r}, this hgkeras reads {SCHEMA_VERSION}")
    # Manifests of hgkeras before 0.2 have no "complete" key; they were written last, so complete.
    if require_complete and manifest.get("complete", True) is not True:
        raise IncompleteDataError(
            f"{directory}: `hgkeras prepare` started {manifest.get('started', '?')} did not finish "
            f"({MANIFEST_NAME} is marked incomplete); its shards are not read. Run it again."
        )
    return manifest
