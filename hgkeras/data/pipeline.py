"""``pose_dataset``: the tf.data input pipeline over TFRecord shards (schema 1).

CPU work per example is one decode and one crop. For training, the crop is a *source crop*: a square
of ``source_margin`` x the person box around the centre, resized to ``source_size`` pixels, large enough
for the device-side augmentation (:mod:`hgkeras.data.augment`, run by :class:`hgkeras.training.trainer.PoseTrainer`)
to rotate and scale inside it. For evaluation it is the model input itself: the person box resized to
``input_size``, no augmentation, in a deterministic order, with the metadata needed to map predictions
back to the original image.

Crops follow the one crop policy of :mod:`hgkeras.crop` (``docs/architecture.md``), the same pixels
that :class:`hgkeras.PosePredictor`, ``hgkeras evaluate --images`` and the exported graphs see.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path

from hgkeras import io
from hgkeras.data.tfrecords import (
    LEGACY_TMP_SUFFIX,
    MANIFEST_NAME,
    feature_spec,
    manifest_pose,
    parse_shard_name,
    read_manifest,
    shard_name,
)
from hgkeras.geometry import PIXELS_PER_SCALE

logger = logging.getLogger(__name__)

#: Default source crop side as a multiple of the person box side (200 * scale): 2, what the Torch
#: augmentation law's extreme sample needs (box x 1.414 turned by 45 degrees spans 2 box sides;
#: ``hgkeras.data.augment.Augmentation().required_margin()``). The Torch code crops from the whole
#: image, so a person well inside it never shows an empty border; neither does a source crop of 2.
SOURCE_MARGIN = 2.0
#: Default side in pixels of the training source crop: the margin at the 256 input's resolution.
SOURCE_SIZE = 512


def _manifest_shards(manifest: dict) -> dict[str, dict]:
    """Shard file name -> its manifest entry (with its split), for every split of a manifest."""
    return {
        entry["file"]: {**entry, "split": split}
        for split, info in manifest.get("splits", {}).items()
        for entry in info.get("shards", [])
    }


def _check_against_manifest(files: list[str], folder: Path, manifest: dict) -> None:
    """Shards must be listed in their folder's manifest and have the size it records."""
    listed = _manifest_shards(manifest)
    for name in files:
        entry = listed.get(Path(name).name)
        if entry is None:
            raise ValueError(
                f"{name}: not a shard of {folder / MANIFEST_NAME} (a leftover of another prepare "
                "run?); run `hgkeras prepare` again or pass the listed shards only"
            )
        expected = entry.get("bytes")  # absent in manifests before hgkeras 0.2
        size = os.path.getsize(name)
        if expected is not None and size != expected:
            raise ValueError(
                f"{name}: {size} bytes, but {folder / MANIFEST_NAME} lists {expected}: the shard "
                "was changed or cut after prepare; run `hgkeras prepare` again"
            )


def _some(names: list[str], shown: int = 5) -> str:
    """The first few names, comma-separated, and how many more there are."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _check_shard_sets(files: list[str]) -> None:
    """Without a manifest: every ``NAME-i-of-N`` set must hold all N shards."""
    groups: dict[tuple[str, str, int], set[int]] = {}
    for name in files:
        parsed = parse_shard_name(name)
        if parsed is not None:
            split, index, count = parsed
            groups.setdefault((str(Path(name).parent), split, count), set()).add(index)
    for (folder, split, count), found in sorted(groups.items()):
        missing = [shard_name(split, i, count) for i in range(count) if i not in found]
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            raise FileNotFoundError(
                f"{folder}: {len(missing)} of the {count} shards of {split!r} are missing ({shown}); "
                "an interrupted `hgkeras prepare`? Run it again"
            )


def resolve_shards(pattern: str | os.PathLike | list, split: str | None = None) -> list[str]:
    """Shard files for a directory written by ``hgkeras prepare`` (+ ``split``), a glob or a list.

    Checks made without reading the shards: a directory needs a complete manifest, and every shard it
    lists must exist with the recorded size (the error names the missing ones). Files of a glob or a
    list must be listed in the manifest beside them; without a manifest, each ``NAME-i-of-N`` set must
    be complete. Temporaries of unfinished writes and manifests are never returned.
    """
    if isinstance(pattern, (list, tuple)):
        files = [str(p) for p in pattern]
    else:
        path = Path(pattern)
        if path.is_dir():
            manifest = read_manifest(path)
            splits = manifest.get("splits", {})
            if split is None:
                if len(splits) != 1:
                    raise ValueError(
                        f"{path} holds splits {sorted(splits)}; pass split=... to choose one"
                    )
                split = next(iter(splits))
            if split not in splits:
                raise ValueError(f"{path}: no split {split!r} (has {sorted(splits)})")
            if not splits[split]["records"]:
                raise ValueError(
                    f"{path}: split {split!r} holds no records (every image was skipped: see "
                    f"skipped_images in {MANIFEST_NAME})"
                )
            names = [s["file"] for s in splits[split]["shards"]]
            missing = [n for n in names if not (path / n).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{path}: {len(missing)} of the {len(names)} shards of split {split!r} listed "
                    f"in {MANIFEST_NAME} are missing ({_some(missing)}); run `hgkeras prepare` again"
                )
            files = [str(path / n) for n in names]
        else:
            files = [
                f
                for f in glob.glob(str(pattern))
                if not io.is_temporary(f)
                and not f.endswith(LEGACY_TMP_SUFFIX)
                and Path(f).name != MANIFEST_NAME
            ]
            files.sort()
    if not files:
        raise FileNotFoundError(
            f"no TFRecord shards match {pattern!r}" + (f" (split {split})" if split else "")
        )
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"TFRecord shard not found: {missing[0]}")
    by_folder: dict[Path, list[str]] = {}
    for name in files:
        by_folder.setdefault(Path(name).parent, []).append(name)
    for folder, names in by_folder.items():
        if (folder / MANIFEST_NAME).is_file():
            _check_against_manifest(names, folder, read_manifest(folder))
        else:
            _check_shard_sets(names)
    return files


def _count_records(path: str) -> tuple[int, int, str | None]:
    """(good records, byte offset after them, error message or None) of one TFRecord file."""
    import tensorflow as tf

    count, offset = 0, 0
    lengths = tf.data.TFRecordDataset(path).map(tf.strings.length).batch(4096)
    try:
        for batch in lengths:
            values = batch.numpy()
            count += len(values)
            offset += int(values.sum()) + 16 * len(values)  # length, 2 CRCs per record
        return count, offset, None
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as err:
        # Pin the damaged record down: read on one record at a time after the good batches.
        try:
            for value in tf.data.TFRecordDataset(path).skip(count).map(tf.strings.length):
                count += 1
                offset += int(value) + 16
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError):
            pass
        message = str(err.message).split("[Op:")[0].split("}}")[-1].strip()
        return count, offset, message


def verify_shards(files: list[str], *, skip_corrupt: bool = False, workers: int = 8) -> list[str]:
    """Read every shard once (CRC checks) and compare record counts with the manifest beside them.

    Returns ``files``, or with ``skip_corrupt`` the files without the damaged shards (a warning names
    each). Otherwise a damaged shard is a ValueError naming the shard, the index and byte offset of the
    first bad record, and the reason; so is a shard whose record count differs from its manifest.
    """
    from concurrent.futures import ThreadPoolExecutor

    expected: dict[str, int] = {}
    for folder in {Path(f).parent for f in files}:
        if (folder / MANIFEST_NAME).is_file():
            for name, entry in _manifest_shards(read_manifest(folder)).items():
                expected[str(folder / name)] = int(entry["records"])
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as pool:
        counts = list(pool.map(_count_records, files))
    problems: dict[str, str] = {}
    for name, (count, offset, error) in zip(files, counts, strict=True):
        listed = expected.get(str(Path(name)))
        if error is not None:
            problems[name] = (
                f"{name}: record {count} (starting at byte offset {offset}) is damaged: {error}"
            )
        elif listed is not None and count != listed:
            problems[name] = f"{name}: {count} records, but its manifest lists {listed}"
    if not problems:
        return files
    if not skip_corrupt:
        raise ValueError(
            "; ".join(problems.values())
            + ". Run `hgkeras prepare` again, or skip damaged shards (skip_corrupt=True)"
        )
    kept = [f for f in files if f not in problems]
    for message in problems.values():
        logger.warning("skipping a damaged shard: %s", message)
    if not kept:
        raise ValueError("every shard is damaged: " + "; ".join(problems.values()))
    return kept


def _manifest_beside(files: list[str]) -> dict:
    """The manifest in the shards' folder, or {} when there is none."""
    path = Path(files[0]).parent / MANIFEST_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def _first_example(files: list[str]):
    """The first record of the shards as a ``tf.train.Example``."""
    import tensorflow as tf

    for raw in tf.data.TFRecordDataset(files[:1]).take(1):
        return tf.train.Example.FromString(raw.numpy())
    raise ValueError(f"{files[0]}: empty shard")


def _num_joints(files: list[str]) -> int:
    """Joints per record: from a manifest beside the shards, else from the first record."""
    value = _manifest_beside(files).get("num_joints")
    if value:
        return int(value)
    return len(_first_example(files).features.feature["visible"].int64_list.value)


def read_pose(pattern, split: str | None = None):
    """The pose spec of TFRecord shards: the manifest's beside them (its full ``pose`` dict), else
    the built-in spec named by the ``dataset`` field of the first record."""
    from hgkeras.spec import get_pose

    files = resolve_shards(pattern, split)
    spec = manifest_pose(_manifest_beside(files))
    if spec is not None:
        return spec
    names = _first_example(files).features.feature["dataset"].bytes_list.value
    if not names:
        raise ValueError(f"{files[0]}: neither a manifest nor the records name the pose spec")
    return get_pose(names[0].decode())


def decode_and_crop(encoded, center, scale, size, margin: float = 1.0, use_opencv: bool = True):
    """Decode an image and crop the box of height ``margin * 200 * scale`` around ``center``.

    ``size`` is the crop's side (int) or (height, width). The crop follows the one crop policy
    (:mod:`hgkeras.crop`, ``docs/architecture.md``): large boxes are first shrunk by block averaging,
    then warped bilinearly with zeros outside the image. Returns (uint8 crop, k, offset) where a point
    p of the original image lands on ``k * p + offset`` in the crop. The crop runs in OpenCV through
    ``tf.numpy_function`` (``use_opencv``, faster on CPU) or in TensorFlow ops; both agree to
    rounding.
    """
    import tensorflow as tf

    from hgkeras import crop as person_crop

    out_h, out_w = person_crop.output_hw(size)
    box_scale = margin * scale
    k = out_h / (PIXELS_PER_SCALE * box_scale)  # crop pixels per image pixel
    offset = tf.stack([out_w / 2.0 - 0.5, out_h / 2.0 - 0.5]) - k * center  # (2,)
    image = person_crop.decode_image_tf(encoded)
    if use_opencv:
        crop = tf.numpy_function(
            lambda img, c, s: person_crop.crop_numpy(img, c, float(s), (out_h, out_w)),
            [image, center, box_scale],
            tf.uint8,
            stateful=False,
        )
    else:
        crop = person_crop.crop_tf(image, center, box_scale, (out_h, out_w))
        crop = tf.cast(tf.clip_by_value(tf.round(crop), 0.0, 255.0), tf.uint8)
    crop = tf.ensure_shape(crop, [out_h, out_w, 3])
    return crop, k, offset


def keep_tensorflow_off_accelerators() -> None:
    """Hide the GPUs from TensorFlow when Keras runs on JAX or torch (tf.data needs only the CPU).

    Without it TensorFlow reserves most of the GPU's memory that the training backend needs. Does
    nothing once TensorFlow has initialised its devices (the run calls it before anything else).
    """
    import keras
    import tensorflow as tf

    if keras.backend.backend() == "tensorflow":
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised
        pass


def _training_records(
    files: list[str],
    seed: int | None,
    shuffle_buffer: int,
    repeat: bool,
    start: int,
    num_shards: int,
    shard_index: int,
    autotune,
):
    """The serialized training records: deterministic shuffled passes, skipped to ``start``, sharded."""
    import tensorflow as tf

    base = tf.constant([0 if seed is None else int(seed), 0x5EED], tf.int64)
    per_pass = count_records(files) if start else 0
    first = start // per_pass if per_pass else 0

    def one_pass(index):
        pass_seed = tf.random.experimental.stateless_fold_in(base, index)
        order = tf.random.experimental.stateless_shuffle(tf.constant(files), pass_seed)
        records = tf.data.Dataset.from_tensor_slices(order).interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 4),
            num_parallel_calls=autotune,
            deterministic=True,
        )
        if shuffle_buffer > 1:
            # Blocks of ``shuffle_buffer`` records permuted by a stateless seed of (pass, block):
            # unlike Dataset.shuffle, a pure function of the seed that tensors can carry.
            records = (
                records.batch(shuffle_buffer)
                .enumerate()
                .map(
                    lambda block, values: tf.random.experimental.stateless_shuffle(
                        values, tf.random.experimental.stateless_fold_in(pass_seed, block)
                    )
                )
            )
            records = records.unbatch()
        return records

    passes = tf.data.Dataset.range(first, tf.int64.max if repeat else max(first, 1))
    ds = passes.flat_map(one_pass)
    if start - first * per_pass:
        ds = ds.skip(start - first * per_pass)
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)
    return ds


def count_records(files: list[str]) -> int:
    """Records in the shards: from a manifest beside them when it lists them all, else counted."""
    folder = Path(files[0]).parent
    listed = {
        str(folder / name): int(entry["records"])
        for name, entry in _manifest_shards(_manifest_beside(files)).items()
        if "records" in entry
    }
    if all(f in listed for f in files):
        return sum(listed[f] for f in files)
    import tensorflow as tf

    return int(sum(1 for _ in tf.data.TFRecordDataset(files)))


def pose_dataset(
    pattern,
    batch_size: int,
    training: bool = True,
    *,
    split: str | None = None,
    source_size: int = SOURCE_SIZE,
    source_margin: float = SOURCE_MARGIN,
    input_size: int | tuple[int, int] = 256,
    shuffle_buffer: int = 256,
    repeat: bool = False,
    drop_remainder: bool | None = None,
    seed: int | None = None,
    start: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    num_parallel_calls: int | None = None,
    use_opencv: bool = True,
    verify: bool = True,
    skip_corrupt: bool = False,
):
    """A batched ``tf.data.Dataset`` of people from TFRecord shards.

    Args:
        pattern: glob of shard files, a list of files, or a directory written by ``hgkeras prepare``
            (then ``split`` chooses the split).
        batch_size: people per batch.
        training: True for augmentation source crops (shuffled), False for evaluation crops
            (deterministic order, every record once).
        source_size, source_margin: training source crop side in pixels and in person-box sides.
        input_size: evaluation crop side or (height, width) (the model input).
        shuffle_buffer: serialized records shuffled together (training; blocks of this size).
        repeat: repeat forever (training).
        drop_remainder: drop a last partial batch (default: True when training).
        seed: shuffle seed (training). The record stream is a sequence of passes over the data, pass
            ``p`` shuffled by ``(seed, p)`` (file order, then blocks of ``shuffle_buffer`` records;
            read deterministically), so the same seed gives the same stream.
        start: training: records of that stream to skip (a resumed run starts where it stopped:
            ``steps done * global batch``); whole passes are skipped without reading them.
        num_shards, shard_index: training: keep every ``num_shards``-th serialized record of the
            stream, from ``shard_index``, before decoding (one shard per worker or process: disjoint,
            together every record once per pass; ``batch_size`` is then the per-shard batch).
        num_parallel_calls: parallel decode/crop calls (default autotuned).
        use_opencv: crop with OpenCV through ``tf.numpy_function`` (else a TensorFlow op).
        verify: read every shard once first (:func:`verify_shards`), so a damaged shard is an error
            naming it and its bad record before any batch, not a TensorFlow traceback mid-epoch.
        skip_corrupt: leave damaged shards out (with a warning naming each) instead of failing.

    Elements (dicts) follow the contract in the module docstring of :mod:`hgkeras.training.trainer`:
    training: ``image`` uint8 (B, S, S, 3), ``joints`` float32 (B, J, 2) in source-crop pixels,
    ``visible`` float32 (B, J). Evaluation: ``image`` float32 (B, input, input, 3) in [0, 1],
    ``center`` (B, 2), ``scale`` (B,), ``joints`` (B, J, 2) original pixels, ``visible`` (B, J),
    ``normalizer`` (B,), ``box`` (B, 4) (NaN when unknown), ``image_id`` (B,), ``person_id`` (B,)
    (int32), ``filename`` (B,) (bytes: the image's name relative to the prepared image folder).
    """
    import tensorflow as tf

    keep_tensorflow_off_accelerators()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    files = resolve_shards(pattern, split)
    if verify:
        files = verify_shards(files, skip_corrupt=skip_corrupt)
    num_joints = _num_joints(files)
    spec = feature_spec(num_joints)
    autotune = num_parallel_calls or tf.data.AUTOTUNE
    if drop_remainder is None:
        drop_remainder = training

    if training:
        ds = _training_records(
            files, seed, shuffle_buffer, repeat, start, num_shards, shard_index, autotune
        )
    else:
        ds = tf.data.TFRecordDataset(files)

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        joints = tf.reshape(ex["joints"], [num_joints, 2])
        visible = tf.cast(ex["visible"], tf.float32)
        return ex, joints, visible

    def train_map(serialized):
        ex, joints, visible = parse(serialized)
        crop, k, offset = decode_and_crop(
            ex["image/encoded"], ex["center"], ex["scale"], source_size, source_margin,
            use_opencv,
        )  # fmt: skip
        return {"image": crop, "joints": joints * k + offset, "visible": visible}

    def eval_map(serialized):
        ex, joints, visible = parse(serialized)
        crop, _, _ = decode_and_crop(
            ex["image/encoded"], ex["center"], ex["scale"], input_size, 1.0, use_opencv,
        )  # fmt: skip
        return {
            "image": tf.cast(crop, tf.float32) / 255.0,
            "center": ex["center"],
            "scale": ex["scale"],
            "joints": joints,
            "visible": visible,
            "normalizer": ex["normalizer"],
            "box": ex["box"],
            "image_id": tf.cast(ex["image_id"], tf.int32),
            "person_id": tf.cast(ex["person_id"], tf.int32),
            "filename": ex["image/filename"],
        }

    ds = ds.map(
        train_map if training else eval_map, num_parallel_calls=autotune, deterministic=True
    )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
