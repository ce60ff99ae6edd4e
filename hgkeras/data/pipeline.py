"""``pose_dataset``: the tf.data input pipeline over TFRecord shards (schema 1).

CPU work per example is one decode and one crop. For training, the crop is a *source crop*: a square
of ``source_margin`` x the person box around the centre, resized to ``source_size`` pixels, large enough
for the device-side augmentation (:mod:`hgkeras.data.augment`, run by :class:`hgkeras.training.trainer.PoseTrainer`)
to rotate and scale inside it. For evaluation it is the model input itself: the person box resized to
``input_size``, no augmentation, in a deterministic order, with the metadata needed to map predictions
back to the original image.

JPEG images are decoded with libjpeg's DCT down-scaling (1/2, 1/4, 1/8) when the person box is at least
that many times larger than the crop, which is both faster and an area-averaging (anti-aliased) resize.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from hgkeras.data.tfrecords import MANIFEST_NAME, SHARD_SUFFIX, feature_spec
from hgkeras.geometry import PIXELS_PER_SCALE

#: Default side in pixels of the training source crop.
SOURCE_SIZE = 384
#: Default source crop side as a multiple of the person box side (200 * scale).
SOURCE_MARGIN = 1.5
_RATIOS = (1, 2, 4, 8)


def resolve_shards(pattern: str | os.PathLike | list, split: str | None = None) -> list[str]:
    """Shard files for a glob pattern, a list of files, or a directory (+ ``split``) with a manifest.

    Files ending in ``.tmp`` (shards still being written) and manifests are never returned.
    """
    if isinstance(pattern, (list, tuple)):
        files = [str(p) for p in pattern]
    else:
        path = Path(pattern)
        if path.is_dir():
            manifest_path = path / MANIFEST_NAME
            if manifest_path.is_file():
                manifest = json.loads(manifest_path.read_text())
                splits = manifest.get("splits", {})
                if split is None:
                    if len(splits) != 1:
                        raise ValueError(
                            f"{path} holds splits {sorted(splits)}; pass split=... to choose one"
                        )
                    split = next(iter(splits))
                if split not in splits:
                    raise ValueError(f"{path}: no split {split!r} (has {sorted(splits)})")
                files = [str(path / s["file"]) for s in splits[split]["shards"]]
            else:
                prefix = f"{split}-" if split else ""
                files = sorted(glob.glob(str(path / f"{prefix}*{SHARD_SUFFIX}")))
        else:
            files = sorted(glob.glob(str(pattern)))
    files = [f for f in files if not f.endswith(".tmp") and Path(f).name != MANIFEST_NAME]
    if not files:
        raise FileNotFoundError(
            f"no TFRecord shards match {pattern!r}" + (f" (split {split})" if split else "")
        )
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"TFRecord shard not found: {missing[0]}")
    return files


def _num_joints(files: list[str]) -> int:
    """Joints per record: from a manifest beside the shards, else from the first record."""
    manifest_path = Path(files[0]).parent / MANIFEST_NAME
    if manifest_path.is_file():
        value = json.loads(manifest_path.read_text()).get("num_joints")
        if value:
            return int(value)
    import tensorflow as tf

    for raw in tf.data.TFRecordDataset(files[:1]).take(1):
        example = tf.train.Example.FromString(raw.numpy())
        return len(example.features.feature["visible"].int64_list.value)
    raise ValueError(f"{files[0]}: empty shard; cannot infer the number of joints")


def _cv2_warp(image, matrix, size: int):
    import cv2

    return cv2.warpAffine(
        image, matrix.astype("float64"), (size, size), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )  # fmt: skip


def decode_and_crop(
    encoded, height, width, center, scale, size: int, margin: float = 1.0, use_opencv: bool = True
):
    """Decode an image and crop the square of side ``margin * 200 * scale`` around ``center``.

    Returns (uint8 crop (size, size, 3), k, offset) where a point p of the original image lands on
    ``k * p + offset`` in the crop. Pixels outside the image are zero (as in the Torch code). The
    bilinear warp runs in OpenCV (``use_opencv``, about 10x faster) or in TensorFlow.
    """
    import tensorflow as tf

    size_f = float(size)
    side = margin * PIXELS_PER_SCALE * scale
    k = size_f / side  # crop pixels per image pixel
    offset = (size_f / 2.0 - 0.5) - k * center  # (2,)
    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, 2), b"\xff\xd8")
    # Largest DCT down-scaling ratio that keeps at least crop resolution.
    ratio_index = tf.cast(
        tf.math.floor(tf.math.log(tf.maximum(1.0 / k, 1.0)) / tf.math.log(2.0)), tf.int32
    )
    ratio_index = tf.where(is_jpeg, tf.clip_by_value(ratio_index, 0, len(_RATIOS) - 1), 0)

    def decoder(ratio: int):
        if ratio == 1:
            return lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return lambda: tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)

    image = tf.switch_case(ratio_index, [decoder(r) for r in _RATIOS])
    image.set_shape([None, None, 3])
    ratio = tf.cast(tf.gather(tf.constant(_RATIOS), ratio_index), tf.float32)
    # Decoded pixel j (at 1/ratio) covers original pixels around (j + 0.5) * ratio - 0.5, so the
    # original -> crop map q = k p + offset becomes, on decoded pixels, q = k r p_s + k (r - 1) / 2 + offset.
    kr = k * ratio
    shift = k * (ratio - 1.0) / 2.0
    if use_opencv:
        matrix = tf.stack(
            [tf.stack([kr, 0.0, shift + offset[0]]), tf.stack([0.0, kr, shift + offset[1]])]
        )
        crop = tf.numpy_function(
            lambda img, m: _cv2_warp(img, m, size), [image, matrix], tf.uint8, stateful=False
        )
    else:
        inv = 1.0 / kr  # output -> input, as ImageProjectiveTransform expects
        zero = tf.zeros_like(inv)
        transform = tf.stack(
            [
                inv,
                zero,
                -(shift + offset[0]) * inv,
                zero,
                inv,
                -(shift + offset[1]) * inv,
                zero,
                zero,
            ]
        )[None, :]
        crop = tf.raw_ops.ImageProjectiveTransformV3(
            images=image[None],
            transforms=transform,
            output_shape=tf.constant([size, size], tf.int32),
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )[0]
    crop.set_shape([size, size, 3])
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
    per_pass = _count_records(files) if start else 0
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


def _count_records(files: list[str]) -> int:
    """Records in the shards: from a manifest beside them when it lists them all, else counted."""
    import tensorflow as tf

    manifest_path = Path(files[0]).parent / MANIFEST_NAME
    if manifest_path.is_file():
        counts = {}
        for split in json.loads(manifest_path.read_text()).get("splits", {}).values():
            for shard in split.get("shards", []):
                if "file" in shard and "records" in shard:
                    counts[str(manifest_path.parent / shard["file"])] = int(shard["records"])
        if all(f in counts for f in files):
            return sum(counts[f] for f in files)
    return int(sum(1 for _ in tf.data.TFRecordDataset(files)))


def pose_dataset(
    pattern,
    batch_size: int,
    training: bool = True,
    *,
    split: str | None = None,
    source_size: int = SOURCE_SIZE,
    source_margin: float = SOURCE_MARGIN,
    input_size: int = 256,
    shuffle_buffer: int = 256,
    repeat: bool = False,
    drop_remainder: bool | None = None,
    seed: int | None = None,
    start: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    num_parallel_calls: int | None = None,
    use_opencv: bool = True,
):
    """A batched ``tf.data.Dataset`` of people from TFRecord shards.

    Args:
        pattern: glob of shard files, a list of files, or a directory written by ``hgkeras prepare``
            (then ``split`` chooses the split).
        batch_size: people per batch.
        training: True for augmentation source crops (shuffled), False for evaluation crops
            (deterministic order, every record once).
        source_size, source_margin: training source crop side in pixels and in person-box sides.
        input_size: evaluation crop side (the model input).
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

    Elements (dicts) follow the contract in the module docstring of :mod:`hgkeras.training.trainer`:
    training: ``image`` uint8 (B, S, S, 3), ``joints`` float32 (B, J, 2) in source-crop pixels,
    ``visible`` float32 (B, J). Evaluation: ``image`` float32 (B, input, input, 3) in [0, 1],
    ``center`` (B, 2), ``scale`` (B,), ``joints`` (B, J, 2) original pixels, ``visible`` (B, J),
    ``normalizer`` (B,), ``image_id`` (B,), ``person_id`` (B,) (int32).
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
            ex["image/encoded"], ex["image/height"], ex["image/width"], ex["center"],
            ex["scale"], source_size, source_margin, use_opencv,
        )  # fmt: skip
        return {"image": crop, "joints": joints * k + offset, "visible": visible}

    def eval_map(serialized):
        ex, joints, visible = parse(serialized)
        crop, _, _ = decode_and_crop(
            ex["image/encoded"], ex["image/height"], ex["image/width"], ex["center"],
            ex["scale"], input_size, 1.0, use_opencv,
        )  # fmt: skip
        return {
            "image": tf.cast(crop, tf.float32) / 255.0,
            "center": ex["center"],
            "scale": ex["scale"],
            "joints": joints,
            "visible": visible,
            "normalizer": ex["normalizer"],
            "image_id": tf.cast(ex["image_id"], tf.int32),
            "person_id": tf.cast(ex["person_id"], tf.int32),
        }

    ds = ds.map(
        train_map if training else eval_map, num_parallel_calls=autotune, deterministic=True
    )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
