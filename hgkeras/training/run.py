"""The training run behind ``python train.py`` and ``hgkeras train``.

:class:`TrainConfig` holds every setting (each one a command-line flag, see :func:`build_parser`);
:func:`resolve_config` fills the defaults (the paper's when ``--dataset`` is given, a small CPU-sized
run on the shipped MPII samples otherwise); :func:`train` runs it: distribution strategy, datasets,
model, callbacks (crash-safe backup, learning-rate steps, NaN stop, best/last models, CSV and
TensorBoard logs, PCKh), ``fit``, a final PCKh evaluation and, where available, the export.

Output layout of ``--out DIR``::

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

import argparse
import dataclasses
import json
import math
import os
import sys
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
    """Every setting of a training run (see ``python train.py --help`` for their meaning)."""

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
    val_batch_size: int = 16
    epochs: int = 100
    steps_per_epoch: int | None = None
    lr: float = 2.5e-4
    lr_drops: list[int] = field(default_factory=lambda: [60, 90])
    lr_factor: float = 0.1
    stack_weights: list[float] | None = None
    sigma: float = 1.0
    augment: bool = True
    flip_eval: bool = True
    val_every: int = 1
    val_limit: int | None = None
    pckh_protocol: str = "official"
    mixed_precision: str = "off"
    jit_compile: bool | str = "auto"
    seed: int = 0
    export: bool = True
    verbose: int | str = "auto"
    embedded: bool = False
    backend: str = ""
    distribution: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------- flags


def _int_list(text: str) -> list[int]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"epochs must be >= 0, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative finite numbers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every training flag to ``parser`` (shared by ``train.py`` and ``hgkeras train``)."""
    p = "(paper default: %s; embedded run: %s)"

    def both(key: str) -> str:
        return p % (PAPER_DEFAULTS[key], EMBEDDED_DEFAULTS[key])

    data = parser.add_argument_group(
        "data",
        "Give --dataset with --data-dir (TFRecords of `hgkeras prepare`: train split for fit, valid "
        "split for PCKh) or with --train-pattern/--val-pattern. With no data argument the embedded "
        "run trains a small model on the shipped real MPII samples. --dataset coco starts from the "
        "top-down COCO defaults (input 256, sigma 2, batch 32, 210 epochs, drops at 170,200; "
        "docs/evaluation.md) instead of the paper's.",
    )
    data.add_argument("--dataset", choices=sorted(DATASET_JOINTS), help="dataset of the records")
    data.add_argument("--data-dir", help="directory of prepared TFRecords (manifest.json + shards)")
    data.add_argument("--train-pattern", help="glob of training TFRecord shards")
    data.add_argument("--val-pattern", help="glob of validation TFRecord shards")
    data.add_argument(
        "--samples-dir",
        help="embedded run: directory with samples.json and images/ "
        "(default: the samples shipped inside the package)",
    )
    data.add_argument(
        "--val-limit",
        type=int,
        help="evaluate PCKh on the first N validation people only (default: all)",
    )

    model = parser.add_argument_group("model")
    model.add_argument("--stacks", type=int, help="hourglass stacks N " + both("stacks"))
    model.add_argument("--features", type=int, help="feature width f " + both("features"))
    model.add_argument(
        "--modules", type=int, help="residual modules per resolution m " + both("modules")
    )
    model.add_argument("--depth", type=int, help="hourglass order n " + both("depth"))
    model.add_argument(
        "--input-size", type=int, help="square input crop in pixels " + both("input_size")
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, help="global batch size " + both("batch_size"))
    opt.add_argument("--val-batch-size", type=int, help="evaluation batch size (default 16)")
    opt.add_argument("--epochs", type=int, help="epochs " + both("epochs"))
    opt.add_argument(
        "--steps-per-epoch",
        type=int,
        help="training steps per epoch (default: training people // batch size; embedded run: 100)",
    )
    opt.add_argument("--lr", type=float, help="RMSprop learning rate " + both("lr"))
    opt.add_argument(
        "--lr-drops",
        type=_int_list,
        help="comma-separated epochs at which the learning rate is multiplied by --lr-factor, "
        "'none' for a constant rate " + both("lr_drops"),
    )
    opt.add_argument(
        "--lr-factor", type=float, help="multiplier at each learning-rate drop (default 0.1)"
    )
    opt.add_argument(
        "--stack-weights",
        type=_float_list,
        help="comma-separated loss weight per stack (default: 1 for every stack)",
    )
    opt.add_argument(
        "--sigma", type=float, help="target Gaussian sigma in heatmap pixels (default 1)"
    )
    opt.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rotation/scale/flip/colour augmentation " + both("augment"),
    )
    opt.add_argument("--seed", type=int, help="random seed (default 0)")

    ev = parser.add_argument_group("evaluation")
    ev.add_argument(
        "--flip-eval",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average with the mirrored image when measuring PCKh " + both("flip_eval"),
    )
    ev.add_argument(
        "--val-every",
        type=int,
        help="measure val_pckh every N epochs (and after the last) " + both("val_every"),
    )
    ev.add_argument(
        "--pckh-protocol",
        choices=("official", "hrnet"),
        help="PCKh protocol of the logged total (default official: Head = neck + head top)",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--out",
        help="output directory; running the same command again resumes there "
        "(default runs/hourglass, embedded run: runs/embedded)",
    )
    run.add_argument(
        "--mixed-precision",
        choices=sorted(MIXED_PRECISION),
        help="compute dtype policy; heatmap outputs and losses stay float32 (default off)",
    )
    run.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="force XLA compilation on or off (default: Keras chooses per backend)",
    )
    run.add_argument(
        "--export",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export the best model for serving at the end, when hgkeras.deploy.export is available "
        "(default: on)",
    )
    run.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        help="Keras fit verbosity: 1 progress bar, 2 one line per epoch, 0 silent (default auto)",
    )
    return parser


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a Stacked Hourglass pose network (Keras 3; set KERAS_BACKEND). "
        "`python train.py --stacks 8 --dataset mpii --data-dir DIR` trains with the paper's "
        "settings; `python train.py` alone runs a short training on the shipped MPII samples. "
        "A run killed at any moment continues when the same command is started again.",
    )
    return add_arguments(parser)


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Turn parsed flags into a complete, validated :class:`TrainConfig`."""
    given = {k: v for k, v in vars(args).items() if v is not None and k != "func"}
    given.pop("command", None)
    has_data = any(given.get(k) for k in ("dataset", "data_dir", "train_pattern", "val_pattern"))
    defaults = dict(PAPER_DEFAULTS if has_data else EMBEDDED_DEFAULTS)
    if given.get("dataset") == "coco":
        from hgkeras.data.coco import TRAINING_DEFAULTS

        defaults.update(TRAINING_DEFAULTS)  # the usual top-down COCO settings
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in {**defaults, **given}.items() if k in names}
    config = TrainConfig(**values)
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
        "val_batch_size",
        "epochs",
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


def parse_config(argv: Sequence[str] | None = None, prog: str = "train.py") -> TrainConfig:
    """Parse command-line flags into a resolved :class:`TrainConfig` (exits on bad flags)."""
    return resolve_config(build_parser(prog).parse_args(argv))


# ------------------------------------------------------------------------------ distribution


@dataclass
class Distribution:
    """How the run is spread: a description, the TF strategy (or None) and this process's role."""

    description: str
    strategy: Any = None
    num_replicas: int = 1
    is_chief: bool = True
    worker_index: int = 0

    def scope(self):
        import contextlib

        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()


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


def select_distribution(batch_size: int) -> Distribution:
    """Pick data parallelism for the active backend and the visible devices.

    TensorFlow: ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` is set, ``MirroredStrategy`` over all
    GPUs when there are several, else none. JAX: ``keras.distribution.DataParallel`` over all devices
    when there are several. Torch: one device. Must run before any model or dataset is created.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if os.environ.get("TF_CONFIG"):
            is_chief, index = _tf_config_role()
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            workers = strategy.cluster_resolver.cluster_spec().num_tasks("worker")
            return Distribution(
                f"MultiWorkerMirroredStrategy ({workers} workers, "
                f"{strategy.num_replicas_in_sync} replicas)",
                strategy,
                strategy.num_replicas_in_sync,
                is_chief,
                index,
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

        devices = jax.devices()
        if len(devices) > 1:
            if batch_size % len(devices):
                raise ValueError(
                    f"--batch-size {batch_size} must be divisible by the {len(devices)} JAX devices"
                )
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
            return Distribution(
                f"keras DataParallel ({len(devices)} JAX devices)", None, len(devices)
            )
        return Distribution(f"single device ({devices[0]})")
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


def count_records(files: Sequence[str]) -> int:
    """Number of records in TFRecord files (reads them once)."""
    import tensorflow as tf

    return int(sum(1 for _ in tf.data.TFRecordDataset(list(files))))


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
    from hgkeras.data.pipeline import resolve_shards

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
    (384 for the paper's 256 input), so augmentation never samples below the model's resolution."""
    from hgkeras.data.pipeline import SOURCE_MARGIN

    return int(round(input_size * SOURCE_MARGIN))


def build_datasets(config: TrainConfig, sources: DataSources, dist: Distribution):
    """(training dataset, evaluation dataset or None) from :func:`hgkeras.data.pose_dataset`."""
    import tensorflow as tf

    from hgkeras.data import pose_dataset

    train = pose_dataset(
        sources.train,
        config.batch_size,
        training=True,
        split=sources.train_split,
        source_size=source_crop_size(config.input_size),
        repeat=True,
        seed=config.seed,
    )
    if dist.strategy is not None and dist.strategy.extended._in_multi_worker_mode():
        # Every worker reads all shards and keeps its share of the examples: works for any shard count.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        train = train.with_options(options)
    val = None
    if sources.val is not None:
        val = pose_dataset(
            sources.val,
            config.val_batch_size,
            training=False,
            split=sources.val_split,
            input_size=config.input_size,
        )
        if config.val_limit:
            val = val.unbatch().take(config.val_limit).batch(config.val_batch_size)
    return train, val


# ------------------------------------------------------------------------------------- model


def _pose_trainer_class(distributed: bool):
    """PoseTrainer, or under a ``tf.distribute`` strategy a subclass that builds from one replica's batch.

    Keras 3.15's TensorFlow trainer starts ``fit`` by reducing the first distributed batch across
    replicas (``strategy.reduce("MEAN", batch)``) to build the model symbolically; with a dict batch
    under ``MultiWorkerMirroredStrategy`` that reduction fails ("Attempt to convert a value ({'image':
    PerReplica...}) to a Tensor"). Only the batch's shapes matter for the build, so the subclass takes
    the first local replica's values instead. Under multi-worker training it also gives the step's
    scalar logs a batch axis, which Keras' cross-worker reduction of the logs requires (tensorflow
    issue #72388).
    """
    from hgkeras.training.trainer import PoseTrainer

    if not distributed:
        return PoseTrainer

    class StrategyPoseTrainer(PoseTrainer):
        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            import tensorflow as tf
            from keras import tree

            strategy = getattr(self, "_distribute_strategy", None)
            if strategy is None or iterator is None:
                return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
            for _, _, it in iterator:
                batch = next(it)
                break
            local = tree.map_structure(
                lambda v: (
                    strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v
                ),
                batch,
            )
            with strategy.scope():
                self._symbolic_build(data_batch=local)

        def train_step(self, data):
            logs = super().train_step(data)
            strategy = getattr(self, "_distribute_strategy", None)
            if strategy is not None and strategy.extended._in_multi_worker_mode():
                # Keras reduces each log with strategy.reduce("MEAN", v, axis=0), which needs a
                # batch axis under MultiWorkerMirroredStrategy (scalars raise "Invalid reduction
                # dimension 0"): give every scalar one, the reduction then averages the workers.
                from keras import ops

                logs = {k: ops.reshape(v, (1,)) for k, v in logs.items()}
            return logs

    return StrategyPoseTrainer


def build_trainer(config: TrainConfig, distributed: bool = False):
    """The StackedHourglass and its PoseTrainer, compiled with RMSprop (alpha 0.99, eps 1e-8)."""
    import keras

    from hgkeras.models.hourglass import StackedHourglass

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
    trainer_class = _pose_trainer_class(distributed)
    from hgkeras.data.coco import AUGMENTATION

    options = AUGMENTATION if config.dataset == "coco" else {}
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
    optimizer = keras.optimizers.RMSprop(learning_rate=config.lr, rho=0.99, epsilon=1e-8)
    trainer.compile(
        optimizer=optimizer, stack_weights=config.stack_weights, jit_compile=config.jit_compile
    )
    return hourglass, trainer


# --------------------------------------------------------------------------------- callbacks


class _ValidationPCKh:
    """Factory for a PCKhCallback that also evaluates after the final epoch."""

    @staticmethod
    def make(dataset, config: TrainConfig):
        from hgkeras.evaluation.coco import OKSAPCallback
        from hgkeras.training.validation import PCKhCallback

        coco = config.dataset == "coco"  # OKS AP (val_ap) in place of PCKh

        class RunPCKh(OKSAPCallback if coco else PCKhCallback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                if (epoch + 1) % self.every_n_epochs == 0 or epoch + 1 == config.epochs:
                    saved, self.every_n_epochs = self.every_n_epochs, 1
                    try:
                        super().on_epoch_end(epoch, logs)
                    finally:
                        self.every_n_epochs = saved

        return RunPCKh(
            dataset,
            every_n_epochs=config.val_every,
            flip=config.flip_eval,
            **({} if coco else {"protocol": config.pckh_protocol}),
        )


def build_callbacks(config: TrainConfig, out: Path, val_dataset, steps_per_epoch: int) -> dict:
    """The run's callbacks, by name, in the order they must run: PCKh before its consumers (best
    model, CSV, TensorBoard), the backup last."""
    import keras

    from hgkeras.training import callbacks as tc

    callbacks: dict[str, keras.callbacks.Callback] = {
        "lr": tc.step_schedule(config.lr, config.lr_drops, config.lr_factor),
        "nan": tc.StopOnNaN(steps_per_epoch),
    }
    if val_dataset is not None:
        callbacks["pckh"] = _ValidationPCKh.make(val_dataset, config)
        monitor = "val_ap" if config.dataset == "coco" else "val_pckh"
        callbacks["best"] = tc.BestModelCheckpoint(out / "best.keras", out / "best.json", monitor)
    callbacks["last"] = tc.LastModelCheckpoint(out / "last.keras")
    callbacks["csv"] = tc.ResumableCSVLogger(out / "log.csv")
    callbacks["tensorboard"] = tc.ScalarTensorBoard(out / "logs")
    # Last: an epoch counts as done (and is not run again after a kill) only once everything above
    # has written its files for it.
    callbacks["backup"] = tc.CrashSafeBackupAndRestore(out / "backup")
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


def train(config: TrainConfig) -> dict[str, Any]:
    """Run training as configured; returns a summary (also written to ``--out/results.json``).

    Raises RuntimeError when the loss becomes NaN (the message names the step).
    """
    import keras

    from hgkeras.training import callbacks as tc

    if config.mixed_precision != "off":
        keras.mixed_precision.set_global_policy(MIXED_PRECISION[config.mixed_precision])
    dist = select_distribution(config.batch_size)  # before any model, dataset or TF op
    keras.utils.set_random_seed(config.seed)
    config.backend = keras.backend.backend()
    config.distribution = dist.description
    if dist.num_replicas > 1 and config.batch_size % dist.num_replicas:
        raise ValueError(
            f"--batch-size {config.batch_size} must be divisible by the {dist.num_replicas} replicas"
        )

    out = Path(config.out)
    if not dist.is_chief:
        out = out / f"worker_{dist.worker_index}"  # non-chief workers keep their own files
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    _check_resume_config(config, config_path)

    sources = resolve_data(config, out)
    if config.steps_per_epoch is None:
        config.steps_per_epoch = max(1, sources.num_train // config.batch_size)
    resolved = config.to_json()
    print("Resolved configuration:\n" + json.dumps(resolved, indent=2, sort_keys=True), flush=True)
    tc.write_json_atomic(config_path, resolved)

    with dist.scope():
        hourglass, trainer = build_trainer(config, distributed=dist.strategy is not None)
    train_ds, val_ds = build_datasets(config, sources, dist)
    callbacks = build_callbacks(config, out, val_ds, config.steps_per_epoch)

    started = time.time()
    history = trainer.fit(
        train_ds,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        callbacks=list(callbacks.values()),
        verbose=config.verbose,
    )
    seconds = time.time() - started
    nan = callbacks["nan"].message
    if nan:
        raise RuntimeError(f"training stopped: {nan}")

    summary: dict[str, Any] = {
        "epochs": config.epochs,
        "steps_per_epoch": config.steps_per_epoch,
        "optimizer_iterations": int(keras.ops.convert_to_numpy(trainer.optimizer.iterations)),
        "train_seconds_this_session": round(seconds, 1),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "distribution": dist.description,
        "backend": config.backend,
    }
    if "pckh" in callbacks and config.dataset == "coco":
        result = callbacks["pckh"].evaluate()
        summary["oks"] = result
        summary["val_ap"] = result["AP"]
        summary["best"] = {"val_ap": callbacks["best"].best, "epoch": callbacks["best"].best_epoch}
        print(f"Final COCO OKS AP (flip {config.flip_eval}): {result['AP']:.3f}", flush=True)
    elif "pckh" in callbacks:
        result = callbacks["pckh"].evaluate()
        summary["pckh"] = {
            k: (float(v) if isinstance(v, (int, float)) else v)
            for k, v in result.items()
            if not hasattr(v, "shape")
        }
        key = "Total" if "Total" in result else "Mean"
        summary["val_pckh"] = float(result[key])
        summary["best"] = {
            "val_pckh": callbacks["best"].best,
            "epoch": callbacks["best"].best_epoch,
        }
        print(
            f"Final PCKh ({config.pckh_protocol} protocol, flip {config.flip_eval}): "
            f"{key} {float(result[key]):.2f}",
            flush=True,
        )
    if config.export and dist.is_chief:
        best = out / "best.keras"
        summary["export"] = _export(
            best if best.exists() else out / "last.keras", out, config.flip_eval
        )
    tc.write_json_atomic(out / "results.json", summary)
    return summary


def main(argv: Sequence[str] | None = None, prog: str = "train.py") -> int:
    """Command-line entry: parse flags, train, report errors in one line (exit code 2) or NaN (1)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        config = resolve_config(args)
    except ValueError as error:
        parser.error(str(error))
    return run_training(config, prog)


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
