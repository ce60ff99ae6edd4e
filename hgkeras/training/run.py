"""The training run behind ``python train.py`` and ``hgkeras train``.

:class:`TrainConfig` holds every setting (each one a flag of :mod:`hgkeras.cli.commands.train`);
:func:`resolve_config` fills the defaults (the paper's when ``--dataset`` is given, a small CPU-sized
run on the shipped MPII samples otherwise); :func:`train` runs it: distribution strategy, datasets,
model, callbacks (crash-safe backup, learning-rate steps, NaN stop, best/last models, CSV and
TensorBoard logs, PCKh), ``fit``, a final PCKh evaluation and, where available, the export.

Output layout of ``--out DIR`` (written by the chief alone: worker 0 or ``chief`` of ``TF_CONFIG``,
JAX process 0; the other processes write the same files into a scratch folder they remove)::

    config.json          the resolved configuration (written before training)
    best.keras           the pose network with the best val_pckh so far (best.json: value, epoch)
    last.keras           the pose network after the last finished epoch
    log.csv              one row per epoch: losses per stack, learning rate, PCKh
    logs/                TensorBoard event files (train/ and validation/)
    backup/              the resume state (weights + optimizer + epoch), see ``--out`` reuse
    results.json         the final evaluation
    data/                TFRecords built from the shipped samples (embedded run only)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The paper's settings (docs/method.md "Targets, loss, training"), used when ``--dataset`` is given.
PAPER_DEFAULTS: dict[str, Any] = {
    "stacks": 8,
    "features": 256,
    "modules": 1,
    "depth": 4,
    "input_size": 256,
    "batch_size": 6,
    "epochs": 100,
    "steps_per_epoch": None,
    "lr": 2.5e-4,
    "lr_drops": [60, 90],
    "sigma": 1.0,
    "augment": True,
    "flip_eval": True,
    "val_every": 1,
}

#: The embedded run (no data arguments): a small network learns the 5 shipped real MPII people, sized
#: to finish in a few minutes on a 2-core CPU. The people are also the validation set, so this shows
#: that the whole chain learns (PCKh in original image pixels), not how well it generalises. Without
#: augmentation the network never sees mirrored people, so the flip test is off as well.
EMBEDDED_DEFAULTS: dict[str, Any] = {
    "stacks": 2,
    "features": 64,
    "modules": 1,
    "depth": 4,
    "input_size": 128,
    "batch_size": 5,
    "epochs": 9,
    "steps_per_epoch": 100,
    "lr": 1e-3,
    "lr_drops": [8],
    "sigma": 1.0,
    "augment": False,
    "flip_eval": False,
    "val_every": 3,
}

DATASET_JOINTS = {"mpii": 16, "flic": 11, "coco": 17}
MIXED_PRECISION = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


@dataclass
class TrainConfig:
    """Every setting of a training run (each one a flag of ``python train.py``, see its ``--help``)."""

    dataset: str | None = None
    data_dir: str | None = None
    train_pattern: str | None = None
    val_pattern: str | None = None
    samples_dir: str | None = None
    out: str = "runs/hourglass"
    stacks: int = 8
    features: int = 256
    modules: int = 1
    depth: int = 4
    joints: int = 16
    input_size: int = 256
    batch_size: int = 6
    val_batch_size: int | None = None
    epochs: int = 100
    steps_per_epoch: int | None = None
    lr: float = 2.5e-4
    lr_drops: list[int] = field(default_factory=lambda: [60, 90])
    lr_factor: float = 0.1
    lr_warmup_epochs: int = 0
    scale_lr_with_batch: bool = False
    init_weights: str | None = None
    stack_weights: list[float] | None = None
    sigma: float = 1.0
    augment: bool = True
    flip_eval: bool = True
    val_every: int = 1
    val_limit: int | None = None
    pckh_protocol: str = "official"
    mixed_precision: str = "off"
    jit_compile: bool | str = "auto"
    steps_per_execution: int = 1
    seed: int = 0
    export: bool = True
    verbose: int | str = "auto"
    embedded: bool = False
    backend: str = ""
    distribution: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------ config

#: Settings of config.json that are derived by the run, not chosen: not repeated by ``--config``.
DERIVED = ("embedded", "backend", "distribution", "joints")


def read_config_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of an earlier run's ``config.json`` (for ``--config``), without derived ones."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"--config {path}: not JSON ({error})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"--config {path}: expected a JSON object of settings")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ValueError(f"--config {path}: unknown settings {unknown}")
    if settings.get("embedded"):
        # The embedded run's own records (rebuilt in --out) and dataset are not data arguments.
        settings.pop("data_dir", None)
        settings.pop("dataset", None)
    return {k: v for k, v in settings.items() if k not in DERIVED and v is not None}


def resolve_config(given: dict[str, Any]) -> TrainConfig:
    """A complete, validated :class:`TrainConfig` from the settings given (flag names with ``_``).

    The defaults are the paper's when data is given, the embedded run's otherwise.
    """
    given = {k: v for k, v in given.items() if v is not None}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"unknown training settings {unknown}")
    has_data = any(given.get(k) for k in ("dataset", "data_dir", "train_pattern", "val_pattern"))
    defaults = dict(PAPER_DEFAULTS if has_data else EMBEDDED_DEFAULTS)
    if given.get("dataset") == "coco":
        from hgkeras.data.coco import TRAINING_DEFAULTS

        defaults.update(TRAINING_DEFAULTS)  # the usual top-down COCO settings
    config = TrainConfig(**{**defaults, **given})
    config.embedded = not has_data
    if config.embedded:
        config.dataset = "mpii"
        if "out" not in given:
            config.out = "runs/embedded"
    elif config.dataset is None:
        raise ValueError(
            "--dataset (mpii, flic or coco) is required with --data-dir or --*-pattern"
        )
    if config.data_dir and (config.train_pattern or config.val_pattern):
        raise ValueError("give either --data-dir or --train-pattern/--val-pattern, not both")
    if not config.embedded and not config.data_dir and not config.train_pattern:
        raise ValueError("--train-pattern is required without --data-dir")
    config.joints = DATASET_JOINTS[config.dataset]
    if config.stack_weights is None:
        config.stack_weights = [1.0] * config.stacks
    validate_config(config)
    return config


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError naming the flag of the first inconsistent setting."""
    for name in (
        "stacks",
        "features",
        "modules",
        "depth",
        "batch_size",
        "epochs",
        "steps_per_execution",
    ):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be a positive integer, got {value!r}"
            )
    if config.features % 2:
        raise ValueError(f"--features must be even, got {config.features}")
    factor = 2 ** (config.depth + 2)
    if config.input_size < factor or config.input_size % factor:
        raise ValueError(
            f"--input-size must be a positive multiple of {factor} for --depth {config.depth}, "
            f"got {config.input_size}"
        )
    if config.steps_per_epoch is not None and config.steps_per_epoch < 1:
        raise ValueError(f"--steps-per-epoch must be >= 1, got {config.steps_per_epoch}")
    if config.val_batch_size is not None and config.val_batch_size < 1:
        raise ValueError(f"--val-batch-size must be >= 1, got {config.val_batch_size}")
    if config.lr_warmup_epochs < 0:
        raise ValueError(f"--lr-warmup-epochs must be >= 0, got {config.lr_warmup_epochs}")
    if config.val_every < 1:
        raise ValueError(f"--val-every must be >= 1, got {config.val_every}")
    if config.val_limit is not None and config.val_limit < 1:
        raise ValueError(f"--val-limit must be >= 1, got {config.val_limit}")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ValueError(f"--lr must be a positive number, got {config.lr}")
    if not (config.lr_factor > 0 and math.isfinite(config.lr_factor)):
        raise ValueError(f"--lr-factor must be a positive number, got {config.lr_factor}")
    if not (config.sigma > 0 and math.isfinite(config.sigma)):
        raise ValueError(f"--sigma must be a positive number, got {config.sigma}")
    if len(config.stack_weights) != config.stacks:
        raise ValueError(
            f"--stack-weights needs one weight per stack ({config.stacks}), "
            f"got {len(config.stack_weights)}: {config.stack_weights}"
        )
    if config.mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"--mixed-precision must be one of {sorted(MIXED_PRECISION)}, got {config.mixed_precision!r}"
        )
    config.lr_drops = sorted(int(d) for d in config.lr_drops)


# ------------------------------------------------------------------------------ distribution


@dataclass
class Distribution:
    """How the run is spread: a description, the TF strategy (or None) and this process's role.

    ``num_inputs`` input pipelines (workers or processes) each read shard ``input_index`` of the
    records; ``is_chief`` is the one process whose files are the run's result.
    """

    description: str
    strategy: Any = None
    num_replicas: int = 1
    is_chief: bool = True
    worker_index: int = 0
    num_inputs: int = 1
    jax_multi_process: bool = False

    def scope(self):
        import contextlib

        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def broadcast_from_chief(self, arrays: list) -> list:
        """``arrays`` (numpy) as the chief holds them, on every process; each must call it with
        arrays of the same shapes and dtypes. The identity with one input pipeline."""
        import numpy as np

        arrays = [np.asarray(a) for a in arrays]
        if self.num_inputs == 1:
            return arrays
        if self.jax_multi_process:
            from jax.experimental import multihost_utils

            shared = multihost_utils.broadcast_one_to_all(arrays)
        else:
            shared = _tf_broadcast_from_chief(self.strategy, arrays)
        return [
            np.asarray(s).astype(a.dtype).reshape(a.shape)
            for s, a in zip(shared, arrays, strict=True)
        ]


def _tf_broadcast_from_chief(strategy, arrays: list) -> list:
    """Broadcast from global replica 0 (the chief's first device) to every worker: one all-reduce
    (``ReplicaContext.all_reduce``) to which the other replicas contribute zeros.

    Floating arrays travel as they are; integer arrays of up to 32 bits as float32 pairs of 16-bit
    halves (exact, and float32 all-reduces exist on every device, integer ones not everywhere).
    """
    import numpy as np
    import tensorflow as tf

    wire = []
    for a in arrays:
        if a.dtype.kind == "f":
            wire.append(a.astype(np.float64 if a.dtype == np.float64 else np.float32))
        elif a.dtype.kind in "iub" and a.dtype.itemsize <= 4:
            bits = a.astype(np.int64) & 0xFFFFFFFF
            wire.append(np.stack([bits & 0xFFFF, bits >> 16]).astype(np.float32))
        else:
            raise ValueError(f"cannot broadcast {a.dtype} arrays")

    def replica_fn(*values):
        context = tf.distribute.get_replica_context()
        keep = tf.equal(context.replica_id_in_sync_group, 0)
        return context.all_reduce(
            tf.distribute.ReduceOp.SUM, [tf.where(keep, v, tf.zeros_like(v)) for v in values]
        )

    shared = tf.function(lambda *values: strategy.run(replica_fn, args=values))(
        *[tf.constant(w) for w in wire]
    )
    results = []
    for a, value in zip(arrays, shared, strict=True):
        value = strategy.experimental_local_results(value)[0].numpy()
        if a.dtype.kind != "f":
            low, high = value.astype(np.int64)
            bits = (low + (high << 16)).astype(np.uint32)
            value = bits.view(np.int32) if a.dtype.kind == "i" else bits
        results.append(value)
    return results


def check_distribution_settings(config: TrainConfig, dist: Distribution) -> None:
    """Refuse, at the start and in one line, settings that Keras cannot run under ``dist``."""
    import keras

    if dist.strategy is None:
        return
    if config.jit_compile is True:
        # Keras compiles the whole cross-replica step (strategy.run and the all-reduce) as one XLA
        # function, which XLA places on a single device: it fails on several GPUs as on logical CPU
        # devices ("tf.Variable on a different device"; keras-team/keras#18145), and Keras' own
        # jit_compile="auto" turns XLA off under tf.distribute.
        raise ValueError(
            f"--jit-compile does not work under {dist.description} with Keras "
            f"{keras.__version__} (Keras compiles the whole multi-device step as one XLA function, "
            "which XLA cannot place on several devices); leave --jit-compile at its default (Keras "
            "then runs tf.distribute without XLA) or use KERAS_BACKEND=jax, whose DataParallel "
            "step is XLA-compiled"
        )
    if config.steps_per_execution > 1:
        # Keras runs the steps in a tf.while_loop whose tf.cond around the step calls the
        # optimizer's merge_call: "You must feed a value for placeholder tensor ..." even for a
        # Dense model (keras-team/keras#19246, open; benchmarks/training_scaling.py).
        raise ValueError(
            f"--steps-per-execution {config.steps_per_execution} does not work under "
            f"{dist.description} with Keras {keras.__version__} (its multi-step loop fails under "
            "tf.distribute, keras-team/keras#19246); use --steps-per-execution 1 there, or N > 1 "
            "on one device or with KERAS_BACKEND=jax"
        )


def _tf_config_role() -> tuple[bool, int]:
    """(is_chief, worker index) from ``TF_CONFIG``."""
    try:
        tf_config = json.loads(os.environ["TF_CONFIG"])
        task = tf_config.get("task", {})
        task_type, index = task.get("type", "worker"), int(task.get("index", 0))
        cluster = tf_config.get("cluster", {})
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"TF_CONFIG is not valid JSON with cluster and task: {error}") from None
    if not cluster or task_type not in cluster:
        raise ValueError(f"TF_CONFIG: task type {task_type!r} is not in its cluster {cluster}")
    if "chief" in cluster:
        return task_type == "chief", index
    return task_type == "worker" and index == 0, index


#: What the message for an unsupported multi-device request names.
MULTI_DEVICE_BACKENDS = (
    "several devices or machines are supported by KERAS_BACKEND=tensorflow (tf.distribute: all "
    "local GPUs, TF_CONFIG for machines) and KERAS_BACKEND=jax (keras.distribution: all local "
    "devices, KERAS_DISTRIBUTION_* for processes)"
)


def select_distribution(batch_size: int) -> Distribution:
    """Pick data parallelism for the active backend and the visible devices.

    TensorFlow: ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` is set, ``MirroredStrategy`` over
    all GPUs when there are several, else none. JAX: ``keras.distribution.initialize`` when
    ``KERAS_DISTRIBUTION_NUM_PROCESSES`` > 1 (with ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` and
    ``KERAS_DISTRIBUTION_PROCESS_ID``), then ``DataParallel`` over all devices of all processes
    when there are several. Torch: one device (a multi-process request is refused). Must run before
    any model or dataset is created.
    """
    import keras

    backend = keras.backend.backend()
    processes = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1") or 1)
    if backend == "tensorflow":
        import tensorflow as tf

        if os.environ.get("TF_CONFIG"):
            is_chief, index = _tf_config_role()
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            spec = strategy.cluster_resolver.cluster_spec()
            workers = sum(spec.num_tasks(job) for job in spec.jobs if job in ("chief", "worker"))
            return Distribution(
                f"MultiWorkerMirroredStrategy ({workers} workers, "
                f"{strategy.num_replicas_in_sync} replicas)",
                strategy,
                strategy.num_replicas_in_sync,
                is_chief,
                index,
                num_inputs=workers,
            )
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1:
            strategy = tf.distribute.MirroredStrategy()
            return Distribution(
                f"MirroredStrategy ({strategy.num_replicas_in_sync} GPUs)",
                strategy,
                strategy.num_replicas_in_sync,
            )
        return Distribution("single device (" + (gpus[0].name if gpus else "CPU") + ")")
    if backend == "jax":
        import jax

        from hgkeras.data.pipeline import keep_tensorflow_off_accelerators

        keep_tensorflow_off_accelerators()
        if processes > 1:
            keras.distribution.initialize()
        devices = jax.devices()
        process, count = jax.process_index(), jax.process_count()
        if len(devices) > 1:
            if batch_size % len(devices):
                raise ValueError(
                    f"--batch-size {batch_size} must be divisible by the {len(devices)} JAX devices"
                )
            # The records are sharded per process by pose_dataset (before decoding), not by Keras.
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
            )
            where = f", {count} processes" if count > 1 else ""
            return Distribution(
                f"keras DataParallel ({len(devices)} JAX devices{where})",
                None,
                len(devices),
                is_chief=process == 0,
                worker_index=process,
                num_inputs=count,
                jax_multi_process=count > 1,
            )
        return Distribution(f"single device ({devices[0]})")
    if processes > 1 or os.environ.get("TF_CONFIG") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            f"the {backend} backend of Keras trains on one device only; {MULTI_DEVICE_BACKENDS}"
        )
    if backend == "torch":
        import torch

        if torch.cuda.device_count() > 1:
            print(
                f"note: training on one of {torch.cuda.device_count()} GPUs; "
                + MULTI_DEVICE_BACKENDS,
                file=sys.stderr,
                flush=True,
            )
    return Distribution(f"single device ({backend})")


# -------------------------------------------------------------------------------------- data


def default_samples_dir() -> Path:
    """The shipped real MPII samples (package data: ``hgkeras/data/samples/mpii``)."""
    return Path(__file__).resolve().parents[1] / "data" / "samples" / "mpii"


def _split_count(data_dir: Path, split: str) -> int | None:
    """People in ``split`` according to the directory's manifest (None when the split is absent)."""
    from hgkeras.data.tfrecords import read_manifest

    splits = read_manifest(data_dir).get("splits", {})
    if split not in splits:
        return None
    return int(splits[split]["records"])


def prepare_embedded_data(samples_dir: Path, out_dir: Path) -> Path:
    """TFRecords of the shipped samples in ``out_dir``: the people in both the train and valid split.

    The embedded run trains and measures PCKh on the same few real people (a learning demonstration,
    not a generalisation result). Returns ``out_dir``.
    """
    from hgkeras.data.readers import read_annotations
    from hgkeras.data.tfrecords import read_manifest, write_tfrecords

    annotations = samples_dir / "samples.json"
    images = samples_dir / "images"
    if not annotations.is_file():
        raise FileNotFoundError(f"embedded run: {annotations} not found (see --samples-dir)")
    try:
        manifest = read_manifest(out_dir)
        if manifest.get("source") == str(annotations) and set(manifest["splits"]) == {
            "train",
            "valid",
        }:
            return out_dir
    except (FileNotFoundError, ValueError, KeyError):
        pass
    people = read_annotations(annotations, "mpii")
    records = [dataclasses.replace(r, split="train") for r in people]
    records += [dataclasses.replace(r, split="valid") for r in people]
    write_tfrecords(records, images, out_dir, source=str(annotations), progress=False)
    return out_dir


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
        samples = Path(config.samples_dir) if config.samples_dir else default_samples_dir()
        data_dir = prepare_embedded_data(samples, out / "data")
        config.data_dir = str(data_dir)
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


def source_crop_size(input_size: int) -> int:
    """Side of the training source crop: the pipeline's margin around the box at the input resolution
    (512 for the paper's 256 input), so augmentation never samples below the model's resolution."""
    from hgkeras.data.pipeline import SOURCE_MARGIN

    return int(round(input_size * SOURCE_MARGIN))


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
            source_size=source_crop_size(config.input_size),
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


# ------------------------------------------------------------------------------------- model


def build_trainer(config: TrainConfig, dist: Distribution | None = None):
    """The StackedHourglass and its PoseTrainer, compiled with RMSprop (alpha 0.99, eps 1e-8)."""
    import keras

    from hgkeras.models.hourglass import StackedHourglass
    from hgkeras.training.trainer import PoseTrainer

    hourglass = StackedHourglass(
        num_stacks=config.stacks,
        num_features=config.features,
        num_modules=config.modules,
        num_joints=config.joints,
        depth=config.depth,
        image_shape=(config.input_size, config.input_size, 3),
        pose=config.dataset,
        name="stacked_hourglass",
    )
    trainer_class = PoseTrainer
    if dist is not None and dist.strategy is not None and dist.num_inputs > 1:
        from hgkeras.training._keras_internals import multi_worker_trainer_class

        trainer_class = multi_worker_trainer_class(PoseTrainer)
    # COCO's clipped law (the recipe module to come holds it as data)
    coco = dict(rotation=40.0, rotation_limit=40.0, rotation_probability=0.6, scale=0.3,
                scale_limit=0.3, scale_law="linear")  # fmt: skip
    options = coco if config.dataset == "coco" else {}
    trainer = trainer_class(
        hourglass, augment=config.augment, sigma=config.sigma, seed=config.seed, **options
    )
    # Built up front so that a resumed run can load its backup before the first step.
    source = source_crop_size(config.input_size)
    trainer.build(
        {
            "image": (None, source, source, 3),
            "joints": (None, config.joints, 2),
            "visible": (None, config.joints),
        }
    )
    optimizer = keras.optimizers.RMSprop(learning_rate=base_learning_rate(config), rho=0.99,
                                         epsilon=1e-8)  # fmt: skip
    trainer.compile(
        optimizer=optimizer,
        stack_weights=config.stack_weights,
        jit_compile=config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )
    return hourglass, trainer


#: The paper's batch size: the reference point of ``--scale-lr-with-batch``.
PAPER_BATCH_SIZE = 6


def base_learning_rate(config: TrainConfig) -> float:
    """``--lr``, times batch size / 6 with ``--scale-lr-with-batch`` (the linear scaling rule)."""
    if config.scale_lr_with_batch:
        return config.lr * config.batch_size / PAPER_BATCH_SIZE
    return config.lr


def load_initial_weights(hourglass, path: str) -> str:
    """Copy the weights of the network saved in ``path`` into ``hourglass`` where shapes agree.

    Layers are matched by name; a layer whose weights have other shapes (the heatmap heads and the
    heatmap re-injection when the joint count differs) keeps its initialisation. Returns a summary.
    """
    import keras

    import hgkeras.models.hourglass  # noqa: F401  (registers the layers for load_model)

    if not Path(path).is_file():
        raise FileNotFoundError(f"--init-weights {path}: no such file")
    try:
        source = keras.models.load_model(path, compile=False)
    except (ValueError, OSError, TypeError) as error:
        raise ValueError(f"--init-weights {path}: not a saved Keras network ({error})") from None
    source = getattr(source, "hourglass", source)
    layers = {layer.name: layer for layer in source.layers}
    copied, kept = 0, []
    for layer in hourglass.layers:
        if not layer.weights:
            continue
        other = layers.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if other is None or [tuple(w.shape) for w in other.weights] != shapes:
            kept.append(layer.name)
            continue
        layer.set_weights(other.get_weights())
        copied += 1
    if not copied:
        raise ValueError(f"--init-weights {path}: no layer of that network fits this one")
    summary = f"initial weights from {path}: {copied} layers copied"
    if kept:
        summary += f", {len(kept)} re-initialised ({', '.join(kept[:6])}{', ...' if len(kept) > 6 else ''})"
    return summary


# --------------------------------------------------------------------------------- callbacks


class _ValidationPCKh:
    """Factory for a PCKhCallback that also evaluates after the final epoch."""

    @staticmethod
    def make(dataset, config: TrainConfig):
        from hgkeras.evaluation.coco import OKSAPCallback
        from hgkeras.training.validation import PCKhCallback

        coco = config.dataset == "coco"  # OKS AP (val_ap) in place of PCKh

        class RunPCKh(OKSAPCallback if coco else PCKhCallback):
            #: (the final epoch's result, a fingerprint of the weights it scored)
            final: tuple[dict, str] | None = None

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                if (epoch + 1) % self.every_n_epochs == 0 or epoch + 1 == config.epochs:
                    saved, self.every_n_epochs = self.every_n_epochs, 1
                    try:
                        super().on_epoch_end(epoch, logs)
                    finally:
                        self.every_n_epochs = saved
                if epoch + 1 == config.epochs:
                    self.final = (self.last_result, self._fingerprint())

            def _fingerprint(self) -> str:
                import hashlib

                import keras
                import numpy as np

                digest = hashlib.sha1()
                for weight in getattr(self.model, "hourglass", self.model).weights:
                    array = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
                    digest.update(array.tobytes())
                return digest.hexdigest()

            def final_result(self) -> dict:
                """The score of the weights as they are now: the final epoch's when nothing has
                changed them since (e.g. a callback restoring other weights at the end), else a
                new evaluation."""
                if self.final is not None and self.final[1] == self._fingerprint():
                    return self.final[0]
                return self.evaluate()

        return RunPCKh(
            dataset,
            every_n_epochs=config.val_every,
            flip=config.flip_eval,
            **({} if coco else {"protocol": config.pckh_protocol}),
        )


def build_callbacks(
    config: TrainConfig,
    out: Path,
    val_dataset,
    steps_per_epoch: int,
    restore_dir: Path | None = None,
    extra: Sequence[Any] = (),
    dist: Distribution | None = None,
) -> dict:
    """The run's callbacks, by name, in the order they must run: the NaN stop first, PCKh before its
    consumers (best model, CSV, TensorBoard), the user's ``extra`` callbacks, the backup last.

    With several processes in ``dist`` every process runs the same callbacks (Keras' saving has
    collective steps under JAX); a non-chief's ``out`` is its scratch folder, and its backup
    callback takes the chief's state by broadcast instead of reading a file.
    """
    import keras

    from hgkeras.training import callbacks as tc

    callbacks: dict[str, keras.callbacks.Callback] = {
        "nan": tc.StopOnNaN(steps_per_epoch),
        "lr": tc.step_schedule(
            base_learning_rate(config), config.lr_drops, config.lr_factor, config.lr_warmup_epochs
        ),
    }
    if val_dataset is not None:
        callbacks["pckh"] = _ValidationPCKh.make(val_dataset, config)
        monitor = "val_ap" if config.dataset == "coco" else "val_pckh"
        callbacks["best"] = tc.BestModelCheckpoint(out / "best.keras", out / "best.json", monitor)
    callbacks["last"] = tc.LastModelCheckpoint(out / "last.keras")
    callbacks["csv"] = tc.ResumableCSVLogger(out / "log.csv")
    callbacks["tensorboard"] = tc.ScalarTensorBoard(out / "logs")
    for index, callback in enumerate(extra):
        callbacks[f"extra_{index}"] = callback
    # Last: an epoch counts as done (and is not run again after a kill) only once everything above
    # has written its files for it.
    several = dist is not None and dist.num_inputs > 1
    callbacks["backup"] = tc.CrashSafeBackupAndRestore(
        out / "backup",
        restore_dir=restore_dir,
        broadcast=dist.broadcast_from_chief if several else None,
        chief=dist is None or dist.is_chief,
    )
    return callbacks


# --------------------------------------------------------------------------------------- run


def _check_resume_config(config: TrainConfig, path: Path) -> None:
    """Refuse to resume into ``--out`` holding a run of a different network or dataset."""
    if not path.exists():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return
    fixed = ("dataset", "stacks", "features", "modules", "depth", "joints", "input_size")
    changed = [k for k in fixed if k in previous and previous[k] != getattr(config, k)]
    if changed and (path.parent / "backup").exists():
        diffs = ", ".join(f"{k}: {previous[k]} -> {getattr(config, k)}" for k in changed)
        raise ValueError(
            f"{path.parent} holds a resumable run of a different network ({diffs}); "
            "use another --out or delete that directory"
        )


def _export(model_path: Path, out: Path, flip: bool) -> str | None:
    """Export ``model_path`` for TF Serving into ``out/export`` when :mod:`hgkeras.deploy.export` exists.

    Returns the version directory, or None when this installation has no export module.
    """
    try:
        from hgkeras.deploy.export import export_model
    except ImportError:
        print("export: hgkeras.deploy.export is not available in this version; skipped", flush=True)
        return None
    result = export_model(model_path, out / "export", flip=flip, force=True)
    print(f"exported to {result.version_dir}", flush=True)
    return str(result.version_dir)


def fit_verbosity(verbose: int | str) -> int:
    """``--verbose``; by default progress bars (1) on a terminal, one line per epoch (2) otherwise."""
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(verbose)


def train(config: TrainConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run training as configured; returns a summary (also written to ``--out/results.json``).

    ``callbacks``: extra Keras callbacks (e.g. W&B or MLflow loggers), run after the run's own
    logging callbacks and before the backup. Raises RuntimeError when the loss becomes NaN or
    infinite (the message names the step; the saved files keep the last finite state).
    """
    import keras

    if config.mixed_precision != "off":
        keras.mixed_precision.set_global_policy(MIXED_PRECISION[config.mixed_precision])
    dist = select_distribution(config.batch_size)  # before any model, dataset or TF op
    keras.utils.set_random_seed(config.seed)
    config.backend = keras.backend.backend()
    config.distribution = dist.description
    check_distribution_settings(config, dist)
    if dist.num_replicas > 1 and config.batch_size % dist.num_replicas:
        raise ValueError(
            f"--batch-size {config.batch_size} must be divisible by the {dist.num_replicas} replicas"
        )

    # Only the chief writes into --out. Every other worker or process runs the same steps (Keras'
    # saving has collective steps) in a scratch folder of its own, removed at the end (and at the
    # start, after a killed run), and takes the chief's state by broadcast: resuming needs no shared
    # file system.
    out = Path(config.out)
    scratch = None if dist.is_chief else scratch_dir(out, dist.worker_index)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        return _train(config, dist, scratch or out, callbacks)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def scratch_dir(out: Path, worker_index: int) -> Path:
    """The temporary output folder of non-chief worker ``worker_index`` of the run into ``out``."""
    key = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"hgkeras-{key}-worker{worker_index}"


def _train(config: TrainConfig, dist: Distribution, out: Path, callbacks: Sequence) -> dict:
    import keras
    import numpy as np

    from hgkeras.training import callbacks as tc

    chief = dist.is_chief
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    _check_resume_config(config, config_path)
    sources = resolve_data(config, out)
    if config.steps_per_epoch is None:
        config.steps_per_epoch = max(1, sources.num_train // config.batch_size)
    resolved = config.to_json()
    if chief:
        print("Resolved configuration:\n" + json.dumps(resolved, indent=2, sort_keys=True),
              flush=True)  # fmt: skip
    tc.write_json_atomic(config_path, resolved)

    # The chief's backup decides where every worker's record stream starts.
    state = tc.CrashSafeBackupAndRestore.read_state_file(out / "backup") if chief else None
    epoch = np.asarray(int(state["epoch"]) if state else -1, np.int32)
    (saved,) = dist.broadcast_from_chief([epoch])
    initial_epoch = max(int(saved), 0)

    with dist.scope():
        hourglass, trainer = build_trainer(config, dist)
    if config.init_weights and int(saved) < 0:  # every process loads them (the same values)
        summary = load_initial_weights(hourglass, config.init_weights)
        if chief:
            print(summary, flush=True)
    train_ds, val_ds = build_datasets(
        config, sources, dist, start_step=initial_epoch * config.steps_per_epoch
    )
    run_callbacks = build_callbacks(
        config, out, val_ds, config.steps_per_epoch, extra=callbacks, dist=dist
    )

    started = time.time()
    history = trainer.fit(
        train_ds,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        callbacks=list(run_callbacks.values()),
        verbose=fit_verbosity(config.verbose),
        shuffle=False,  # the dataset shuffles (deterministically, see pose_dataset)
    )
    seconds = time.time() - started
    nan = run_callbacks["nan"].message
    if nan:
        saved_state = tc.CrashSafeBackupAndRestore.read_state_file(out / "backup")
        where = f"after epoch {saved_state['epoch']}" if saved_state else "of no finished epoch"
        raise RuntimeError(
            f"training stopped: {nan}. backup/, last.keras and best.keras in {out} keep the last "
            f"finite state ({where}); re-run with other settings (e.g. a lower --lr) to continue "
            "from there"
        )

    summary: dict[str, Any] = {
        "epochs": config.epochs,
        "steps_per_epoch": config.steps_per_epoch,
        "optimizer_iterations": int(keras.ops.convert_to_numpy(trainer.optimizer.iterations)),
        "train_seconds_this_session": round(seconds, 1),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "distribution": dist.description,
        "backend": config.backend,
    }
    if "pckh" in run_callbacks and config.dataset == "coco":
        result = run_callbacks["pckh"].final_result()
        summary["oks"] = result
        summary["val_ap"] = result["AP"]
        summary["best"] = {
            "val_ap": run_callbacks["best"].best,
            "epoch": run_callbacks["best"].best_epoch,
        }
        print(f"Final COCO OKS AP (flip {config.flip_eval}): {result['AP']:.3f}", flush=True)
    elif "pckh" in run_callbacks:
        result = run_callbacks["pckh"].final_result()
        summary["pckh"] = {
            k: (float(v) if isinstance(v, (int, float)) else v)
            for k, v in result.items()
            if not hasattr(v, "shape")
        }
        key = "Total" if "Total" in result else "Mean"
        summary["val_pckh"] = float(result[key])
        summary["best"] = {
            "val_pckh": run_callbacks["best"].best,
            "epoch": run_callbacks["best"].best_epoch,
        }
        print(
            f"Final PCKh ({config.pckh_protocol} protocol, flip {config.flip_eval}): "
            f"{key} {float(result[key]):.2f}",
            flush=True,
        )
    if config.export:  # on every process (loading a model has collective steps under JAX)
        best = out / "best.keras"
        summary["export"] = _export(
            best if best.exists() else out / "last.keras", out, config.flip_eval
        )
    tc.write_json_atomic(out / "results.json", summary)
    return summary


def run_training(config: TrainConfig, prog: str) -> int:
    """Train ``config``; exit code 0, 1 for a NaN stop, 2 for bad input (one-line message)."""
    try:
        train(config)
    except RuntimeError as error:
        if str(error).startswith("training stopped"):
            print(f"{prog}: {error}", file=sys.stderr)
            return 1
        raise
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0
