"""Training recipes and the configuration of a run.

A :class:`Recipe` is a named set of training settings, each taken from one reference codebase (the
sources of every value are tabled in ``docs/training.md`` "Recipes"). :class:`TrainConfig` holds every
setting of a run (each one a flag of ``python train.py``); :func:`resolve_config` fills the settings
not given from the recipe (``--recipe NAME``, else the dataset's: :data:`DEFAULT_RECIPES`) and checks
them. The resolved configuration, the recipe's name included, is the run's ``config.json``.

Importing this module loads neither Keras nor TensorFlow (the command line builds its help from it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hgkeras.data.augment import Augmentation

#: ``--mixed-precision`` -> Keras dtype policy.
MIXED_PRECISION = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


@dataclass(frozen=True)
class Recipe:
    """A named set of training settings (network, optimisation, targets, augmentation, validation).

    Every field but ``name`` and ``description`` is a :class:`TrainConfig` setting of the same name;
    a flag given on the command line overrides the recipe's value.

    Attributes:
        name: the ``--recipe`` name.
        description: where the values come from, in one line.
        stacks, features, modules, depth, input_size: the network.
        batch_size: global batch.
        epochs: epochs of ``steps_per_epoch`` steps (None: one pass over the training people).
        optimizer: a name of :data:`hgkeras.optimizers.OPTIMIZERS`.
        lr: learning rate; ``lr_drops`` epochs at which it is multiplied by ``lr_factor``.
        sigma: target Gaussian standard deviation in heatmap pixels.
        init: weight initialisation (:data:`hgkeras.models.hourglass.INITIALISATIONS`).
        augment: augmentation on or off; ``augmentation`` its law.
        flip_eval: the flip test in validation; ``val_every``: validate every N epochs.
    """

    name: str
    description: str
    stacks: int
    features: int
    modules: int
    depth: int
    input_size: int
    batch_size: int
    epochs: int
    steps_per_epoch: int | None
    optimizer: str
    lr: float
    lr_drops: tuple[int, ...]
    lr_factor: float
    sigma: float
    init: str
    augment: bool
    augmentation: Augmentation
    flip_eval: bool
    val_every: int

    def settings(self) -> dict[str, Any]:
        """The recipe's :class:`TrainConfig` settings (JSON-ready)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del values["name"], values["description"]
        values["lr_drops"] = list(self.lr_drops)
        values["augmentation"] = self.augmentation.to_dict()
        return values


#: The network of the paper and of every reference code: 8 stacks of order 4, 256 features, 256 px.
_PAPER_NETWORK = {"stacks": 8, "features": 256, "modules": 1, "depth": 4, "input_size": 256}

NEWELL2016 = Recipe(
    name="newell2016",
    description="the Torch code that produced the paper's numbers (princeton-vl/pose-hg-train)",
    **_PAPER_NETWORK,
    batch_size=6,
    epochs=100,
    steps_per_epoch=8000,
    optimizer="rmsprop",
    lr=2.5e-4,
    lr_drops=(),  # the code has no schedule: its authors lowered the rate by hand
    lr_factor=0.1,
    sigma=1.75,  # image.gaussian(7): sigma 0.25 x 7 pixels
    init="torch",
    augment=True,
    augmentation=Augmentation(),
    flip_eval=True,
    val_every=1,
)


def _after(base: Recipe, **changes: Any) -> Recipe:
    """``base`` with ``changes`` (each other recipe lists only where it differs)."""
    return dataclasses.replace(base, **changes)


def _linear_scale(scale: float, **changes: Any) -> Augmentation:
    """A law whose scale is ``1 + z``, ``z`` clipped at ``scale`` (the PyTorch ports', COCO's)."""
    return Augmentation(scale=scale, scale_limit=scale, scale_law="linear", **changes)


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        NEWELL2016,
        _after(
            NEWELL2016,
            name="princeton",
            description="princeton-vl/pytorch_stacked_hourglass (0.902 MPII val. for 8 stacks)",
            batch_size=16,
            epochs=251,  # iterations 0 .. 250,999: its loop stops after 250k
            steps_per_epoch=1000,
            optimizer="adam",
            lr=1e-3,
            lr_drops=(100,),  # 1e-3 -> 2e-4 after iteration 100,000
            lr_factor=0.2,
            sigma=1.0,
            init="pytorch",
            # its colour jitter (hue, saturation, brightness, contrast) is not expressible
            augmentation=_linear_scale(
                0.25, rotation_limit=30.0, rotation_probability=1.0, distribution="uniform"
            ),
        ),
        _after(
            NEWELL2016,
            name="bearpaw",
            description="bearpaw/pytorch-pose (88.6-88.8 MPII val. for 8 stacks)",
            steps_per_epoch=None,
            lr_drops=(60, 90),
            sigma=1.0,
            init="pytorch",
            augmentation=_linear_scale(0.25, rotation_probability=0.6, color_range=(0.8, 1.2)),
        ),
        _after(
            NEWELL2016,
            name="coco",
            description="hgkeras' top-down COCO settings: HRNet's 210-epoch schedule and sigma 2",
            batch_size=32,
            epochs=210,
            steps_per_epoch=None,
            lr_drops=(170, 200),
            sigma=2.0,
            init="keras",
            augmentation=_linear_scale(
                0.3, rotation=40.0, rotation_limit=40.0, rotation_probability=0.6
            ),
        ),
        _after(
            NEWELL2016,
            name="embedded",
            description="the CPU demonstration: a small network learns the 5 shipped MPII people",
            stacks=2,
            features=64,
            input_size=128,
            batch_size=5,
            epochs=9,
            steps_per_epoch=100,
            lr=1e-3,
            lr_drops=(8,),
            sigma=1.0,
            init="keras",
            # Five people are also the validation set: without augmentation the network never sees
            # mirrored people, so the flip test is off as well.
            augment=False,
            flip_eval=False,
            val_every=3,
        ),
        _after(
            NEWELL2016,
            name="small",
            description="users' own keypoint sets of tens to thousands of labelled frames",
            stacks=2,
            features=128,
            batch_size=8,
            epochs=100,
            steps_per_epoch=100,
            lr=1e-3,
            lr_drops=(70, 90),
            sigma=2.0,
        ),
    )
}

#: The recipe of the run on the shipped samples (no data given).
EMBEDDED_RECIPE = "embedded"


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; a ValueError naming the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    return RECIPES[name]


@dataclass
class TrainConfig:
    """Every setting of a training run (each one a flag of ``python train.py``, see its ``--help``).

    The defaults are the ``newell2016`` recipe's; :func:`resolve_config` takes the chosen recipe's.
    """

    dataset: str | None = None
    pose: str | dict[str, Any] | None = None
    data_dir: str | None = None
    train_pattern: str | None = None
    val_pattern: str | None = None
    samples_dir: str | None = None
    out: str = "runs/hourglass"
    recipe: str | None = None
    stacks: int = NEWELL2016.stacks
    features: int = NEWELL2016.features
    modules: int = NEWELL2016.modules
    depth: int = NEWELL2016.depth
    joints: int = 16
    input_size: int = NEWELL2016.input_size
    init: str = NEWELL2016.init
    batch_size: int = NEWELL2016.batch_size
    val_batch_size: int | None = None
    epochs: int = NEWELL2016.epochs
    steps_per_epoch: int | None = NEWELL2016.steps_per_epoch
    optimizer: str = NEWELL2016.optimizer
    lr: float = NEWELL2016.lr
    lr_drops: list[int] = field(default_factory=lambda: list(NEWELL2016.lr_drops))
    lr_factor: float = NEWELL2016.lr_factor
    lr_warmup_epochs: int = 0
    scale_lr_with_batch: bool = False
    init_weights: str | None = None
    stack_weights: list[float] | None = None
    sigma: float = NEWELL2016.sigma
    decoder: str = "paper"
    augment: bool = NEWELL2016.augment
    augmentation: dict[str, Any] = field(default_factory=NEWELL2016.augmentation.to_dict)
    flip_eval: bool = NEWELL2016.flip_eval
    val_every: int = NEWELL2016.val_every
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
        # The embedded run's own records (rebuilt in --out) and keypoint set are not data arguments.
        for key in ("data_dir", "dataset", "pose"):
            settings.pop(key, None)
    elif settings.get("pose") is not None:
        settings.pop("dataset", None)  # the name of the recorded spec, which ``pose`` holds whole
    return {k: v for k, v in settings.items() if k not in DERIVED and v is not None}


def resolve_pose(given: dict[str, Any], has_data: bool):
    """The run's pose spec: ``--pose`` (a name, spec file or dict), else the spec in the manifest of
    ``--data-dir``, else ``--dataset``'s; MPII for the run on the shipped samples.

    ValueError when ``--dataset`` names another set than the data holds, or no source names one.
    """
    from hgkeras.spec import POSES, get_pose

    dataset = given.get("dataset")
    if dataset is not None and dataset not in POSES:
        raise ValueError(
            f"--dataset must be one of {', '.join(sorted(POSES))} (built-in sets; give any other "
            f"set with --pose or in the records' manifest), got {dataset!r}"
        )
    if given.get("pose") is not None:
        try:
            spec = get_pose(given["pose"])
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(f"--pose: {error}") from None
        source = "--pose"
    elif given.get("data_dir"):
        from hgkeras.data.tfrecords import read_manifest

        try:
            manifest = read_manifest(given["data_dir"])
        except FileNotFoundError as error:
            if dataset is None:
                raise ValueError(f"--data-dir: {error}") from None
            manifest = {}  # the run reports the missing data where it reads it
        if manifest.get("pose") is None and dataset is None:
            raise ValueError(
                f"--data-dir {given['data_dir']}: its manifest names no pose spec; give --dataset "
                "or --pose"
            )
        spec = get_pose(manifest["pose"]) if manifest.get("pose") is not None else POSES[dataset]
        source = f"the manifest of --data-dir {given['data_dir']}"
    elif dataset is not None:
        return POSES[dataset]
    elif not has_data:
        return POSES["mpii"]
    else:
        raise ValueError(
            "give --dataset (mpii, flic or coco) or --pose (a spec .json file) with "
            "--train-pattern/--val-pattern: the records' keypoint set"
        )
    if dataset is not None and POSES[dataset] != spec:
        raise ValueError(
            f"--dataset {dataset} does not match {source}, which holds the keypoint set "
            f"{spec.name!r} ({spec.num_joints} keypoints); leave out --dataset"
        )
    return spec


def resolve_config(given: dict[str, Any]) -> TrainConfig:
    """A complete, validated :class:`TrainConfig` from the settings given (flag names with ``_``).

    The keypoint set is :func:`resolve_pose`'s. Settings not given come, in this order, from
    ``given["recipe"]`` when given; else from the set's defaults (its ``sigma`` and the longer side
    of its ``input_shape``) over its recipe (:attr:`hgkeras.spec.PoseSpec.recipe`: ``newell2016``
    for MPII and FLIC, ``coco`` for COCO, ``small`` for other sets); the run on the shipped samples
    (no data given) uses ``embedded``. Flip augmentation and the flip test apply only to sets with
    flip pairs.
    """
    from hgkeras.spec import pose_config

    given = {k: v for k, v in given.items() if v is not None}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"unknown training settings {unknown}")
    has_data = any(given.get(k) for k in ("dataset", "data_dir", "train_pattern", "val_pattern"))
    if not has_data:  # the embedded run reads the shipped MPII samples
        given.pop("pose", None)
    spec = resolve_pose(given, has_data)
    defaults: dict[str, Any] = {}
    if given.get("recipe"):
        name = given["recipe"]
    elif not has_data:
        name = EMBEDDED_RECIPE
    else:
        name = spec.recipe
        defaults = {"sigma": spec.sigma, "input_size": max(spec.input_shape)}
    recipe = get_recipe(name).settings()
    if not spec.flip:
        recipe["flip_eval"] = False
        recipe["augmentation"] = {**recipe["augmentation"], "flip_probability": 0.0}
    config = TrainConfig(**{**recipe, **defaults, **given, "recipe": name})
    config.embedded = not has_data
    config.dataset = spec.name
    config.pose = pose_config(spec)
    if config.embedded and "out" not in given:
        config.out = "runs/embedded"
    if config.data_dir and (config.train_pattern or config.val_pattern):
        raise ValueError("give either --data-dir or --train-pattern/--val-pattern, not both")
    if not config.embedded and not config.data_dir and not config.train_pattern:
        raise ValueError("--train-pattern is required without --data-dir")
    if not spec.flip:
        if config.flip_eval:
            raise ValueError(
                f"--flip-eval: the keypoint set {spec.name!r} has no flip pairs, so no flip test"
            )
        if config.augment and Augmentation.from_dict(config.augmentation).flip_probability > 0:
            raise ValueError(
                f"flip augmentation: the keypoint set {spec.name!r} has no flip pairs (a mirrored "
                "image would need them); give them to `hgkeras prepare --flip-pairs`"
            )
    config.joints = spec.num_joints
    if config.stack_weights is None:
        config.stack_weights = [1.0] * config.stacks
    validate_config(config)
    return config


def config_pose(config: TrainConfig):
    """The pose spec of a resolved configuration."""
    from hgkeras.spec import get_pose

    return get_pose(config.pose if config.pose is not None else config.dataset)


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError naming the flag of the first inconsistent setting."""
    from hgkeras.codec import DECODERS
    from hgkeras.models.hourglass import INITIALISATIONS
    from hgkeras.optimizers import OPTIMIZERS

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
    if config.decoder not in DECODERS:
        raise ValueError(f"--decoder must be one of {', '.join(DECODERS)}, got {config.decoder!r}")
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(
            f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}"
        )
    if config.init not in INITIALISATIONS:
        raise ValueError(f"--init must be one of {', '.join(INITIALISATIONS)}, got {config.init!r}")
    if len(config.stack_weights) != config.stacks:
        raise ValueError(
            f"--stack-weights needs one weight per stack ({config.stacks}), "
            f"got {len(config.stack_weights)}: {config.stack_weights}"
        )
    if config.mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"--mixed-precision must be one of {sorted(MIXED_PRECISION)}, got {config.mixed_precision!r}"
        )
    if not isinstance(config.augmentation, dict):
        raise ValueError(f"augmentation must be an object of settings, got {config.augmentation!r}")
    config.augmentation = Augmentation.from_dict(config.augmentation).to_dict()
    config.lr_drops = sorted(int(d) for d in config.lr_drops)


#: The paper's batch size: the reference point of ``--scale-lr-with-batch``.
PAPER_BATCH_SIZE = NEWELL2016.batch_size


def base_learning_rate(config: TrainConfig) -> float:
    """``--lr``, times batch size / 6 with ``--scale-lr-with-batch`` (the linear scaling rule)."""
    if config.scale_lr_with_batch:
        return config.lr * config.batch_size / PAPER_BATCH_SIZE
    return config.lr
