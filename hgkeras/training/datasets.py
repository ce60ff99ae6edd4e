"""Where a training run's records are and the tf.data pipelines that read them.

:func:`resolve_data` locates the training and validation shards (writing the shipped samples'
TFRecords for the embedded run); :func:`build_datasets` makes the training stream (resumable, one
shard per worker or process) and the validation dataset from :func:`hgkeras.data.pose_dataset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hgkeras.training.distribution import Distribution
    from hgkeras.training.recipes import TrainConfig


def _split_count(data_dir: Path, split: str) -> int | None:
    """People in ``split`` according to the directory's manifest (None when the split is absent)."""
    from hgkeras.data.tfrecords import read_manifest

    splits = read_manifest(data_dir).get("splits", {})
    if split not in splits:
        return None
    return int(splits[split]["records"])


@dataclass
class DataSources:
    """Where the training and validation shards are and how many people they hold."""

    train: Any  # a directory (with split) or a glob pattern
    train_split: str | None
    val: Any
    val_split: str | None
    num_train: int


def resolve_data(config: TrainConfig, out: Path) -> DataSources:
    """Locate the shards of the run (building the embedded TFRecords when needed)."""
    from hgkeras.data.pipeline import count_records, resolve_shards

    if config.embedded:
        from hgkeras.data.samples import SAMPLES_DIR, write_sample_records

        samples = Path(config.samples_dir) if config.samples_dir else SAMPLES_DIR
        config.data_dir = str(write_sample_records(out / "data", samples))
    if config.data_dir:
        data_dir = Path(config.data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"--data-dir {data_dir} is not a directory")
        train_files = resolve_shards(str(data_dir), "train")
        count = _split_count(data_dir, "train")
        val_split = "valid" if _split_count(data_dir, "valid") is not None else None
        return DataSources(
            str(data_dir),
            "train",
            str(data_dir) if val_split else None,
            val_split,
            count if count is not None else count_records(train_files),
        )
    train_files = resolve_shards(config.train_pattern)
    if config.val_pattern:
        resolve_shards(config.val_pattern)
    return DataSources(
        config.train_pattern, None, config.val_pattern, None, count_records(train_files)
    )


def source_margin(config: TrainConfig) -> float:
    """Person-box sides the training source crops show: what the augmentation law can draw
    (:meth:`~hgkeras.data.augment.Augmentation.required_margin`; 2 for the Torch code's), 1
    without augmentation (the crop is then the model input's box)."""
    from hgkeras.data.augment import Augmentation

    if not config.augment:
        return 1.0
    return Augmentation.from_dict(config.augmentation).required_margin()


def source_crop_size(config: TrainConfig) -> int:
    """Side of the training source crop: :func:`source_margin` boxes at the input's resolution
    (512 for the paper's 256 input and the Torch law), so augmentation never samples below it."""
    return int(round(config.input_size * source_margin(config)))


def default_val_batch_size() -> int:
    """16 people per validation batch on CPU, 64 on an accelerator (the flip test doubles it)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        accelerated = bool(tf.config.list_logical_devices("GPU"))
    elif backend == "jax":
        import jax

        accelerated = jax.default_backend() != "cpu"
    elif backend == "torch":
        import torch

        accelerated = torch.cuda.is_available()
    else:
        accelerated = False
    return 64 if accelerated else 16


def build_datasets(
    config: TrainConfig, sources: DataSources, dist: Distribution, start_step: int = 0
):
    """(training dataset, evaluation dataset or None) from :func:`hgkeras.data.pose_dataset`.

    The training stream starts after ``start_step`` global batches (a resumed run continues it). Under
    ``tf.distribute`` and JAX multi-process runs every worker or process reads its own shard of the
    serialized records before decoding.
    """
    from hgkeras.data import pose_dataset

    def records(batch_size: int, num_shards: int = 1, shard_index: int = 0):
        return pose_dataset(
            sources.train,
            batch_size,
            training=True,
            split=sources.train_split,
            source_size=source_crop_size(config),
            source_margin=source_margin(config),
            repeat=True,
            seed=config.seed,
            start=start_step * config.batch_size,
            num_shards=num_shards,
            shard_index=shard_index,
        )

    if dist.strategy is not None:

        def per_worker(context):
            return records(
                context.get_per_replica_batch_size(config.batch_size),
                context.num_input_pipelines,
                context.input_pipeline_id,
            )

        train = dist.strategy.distribute_datasets_from_function(per_worker)
    elif dist.num_inputs > 1:
        train = records(config.batch_size // dist.num_inputs, dist.num_inputs, dist.worker_index)
    else:
        train = records(config.batch_size)
    val = None
    if sources.val is not None:
        val_batch = config.val_batch_size or default_val_batch_size()
        val = pose_dataset(
            sources.val,
            val_batch,
            training=False,
            split=sources.val_split,
            input_size=config.input_size,
        )
        if config.val_limit:
            val = val.unbatch().take(config.val_limit).batch(val_batch)
    return train, val
