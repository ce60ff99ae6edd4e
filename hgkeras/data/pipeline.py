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
import os
from pathlib import Path

from hgkeras.data.tfrecords import MANIFEST_NAME, SHARD_SUFFIX, feature_spec
from hgkeras.geometry import PIXELS_PER_SCALE

#: Default side in pixels of the training source crop.
SOURCE_SIZE = 384
#: Default source crop side as a multiple of the person box side (200 * scale).
SOURCE_MARGIN = 1.5


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
    """The pose spec of TFRecord shards: the manifest's ``pose`` (or ``dataset``) beside them, else
    the ``dataset`` field of the first record."""
    from hgkeras.spec import get_pose

    files = resolve_shards(pattern, split)
    manifest = _manifest_beside(files)
    name = manifest.get("pose") or manifest.get("dataset")
    if not isinstance(name, str):
        names = _first_example(files).features.feature["dataset"].bytes_list.value
        if not names:
            raise ValueError(f"{files[0]}: neither a manifest nor the records name the pose spec")
        name = names[0].decode()
    return get_pose(name)


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
        input_size: evaluation crop side or (height, width) (the model input).
        shuffle_buffer: serialized records in the shuffle buffer (training).
        repeat: repeat forever (training).
        drop_remainder: drop a last partial batch (default: True when training).
        seed: shuffle seed.
        num_parallel_calls: parallel decode/crop calls (default autotuned).
        use_opencv: crop with OpenCV through ``tf.numpy_function`` (else a TensorFlow op).

    Elements (dicts) follow the contract in the module docstring of :mod:`hgkeras.training.trainer`:
    training: ``image`` uint8 (B, S, S, 3), ``joints`` float32 (B, J, 2) in source-crop pixels,
    ``visible`` float32 (B, J). Evaluation: ``image`` float32 (B, input, input, 3) in [0, 1],
    ``center`` (B, 2), ``scale`` (B,), ``joints`` (B, J, 2) original pixels, ``visible`` (B, J),
    ``normalizer`` (B,), ``image_id`` (B,), ``person_id`` (B,) (int32).
    """
    import tensorflow as tf

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    files = resolve_shards(pattern, split)
    num_joints = _num_joints(files)
    spec = feature_spec(num_joints)
    autotune = num_parallel_calls or tf.data.AUTOTUNE
    if drop_remainder is None:
        drop_remainder = training

    if training:
        ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
        ds = ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 4),
            num_parallel_calls=autotune,
            deterministic=False,
        )
        if shuffle_buffer > 1:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
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
            "image_id": tf.cast(ex["image_id"], tf.int32),
            "person_id": tf.cast(ex["person_id"], tf.int32),
        }

    ds = ds.map(
        train_map if training else eval_map,
        num_parallel_calls=autotune,
        deterministic=not training,
    )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
