"""The network and its trainer for a training run, as its configuration describes them.

:func:`build_trainer` makes the :class:`~hgkeras.models.hourglass.StackedHourglass` (size and
initialisation, keypoint set, heatmap codec), wraps it in a
:class:`~hgkeras.training.trainer.PoseTrainer` (augmentation law, seed) and compiles it with the configured optimiser
(:func:`hgkeras.optimizers.make_optimizer`); :func:`load_initial_weights` starts it from a saved network.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hgkeras.training.recipes import base_learning_rate

if TYPE_CHECKING:
    from hgkeras.training.distribution import Distribution
    from hgkeras.training.recipes import TrainConfig


def build_trainer(config: TrainConfig, dist: Distribution | None = None):
    """(hourglass, trainer): the StackedHourglass and its PoseTrainer, built and compiled."""
    from hgkeras.codec import HeatmapCodec
    from hgkeras.models.hourglass import StackedHourglass
    from hgkeras.optimizers import make_optimizer
    from hgkeras.training.datasets import source_crop_size, source_margin
    from hgkeras.training.recipes import config_pose
    from hgkeras.training.trainer import PoseTrainer

    hourglass = StackedHourglass(
        num_stacks=config.stacks,
        num_features=config.features,
        num_modules=config.modules,
        num_joints=config.joints,
        depth=config.depth,
        image_shape=(config.input_size, config.input_size, 3),
        pose=config_pose(config),
        codec=HeatmapCodec(config.decoder, config.sigma),
        init=config.init,
        name="stacked_hourglass",
    )
    trainer_class = PoseTrainer
    if dist is not None and dist.strategy is not None and dist.num_inputs > 1:
        from hgkeras.training._keras_internals import multi_worker_trainer_class

        trainer_class = multi_worker_trainer_class(PoseTrainer)
    trainer = trainer_class(
        hourglass, augment=config.augment, seed=config.seed,
        source_margin=source_margin(config), **config.augmentation,
    )  # fmt: skip
    # Built up front so that a resumed run can load its backup before the first step.
    source = source_crop_size(config)
    trainer.build(
        {
            "image": (None, source, source, 3),
            "joints": (None, config.joints, 2),
            "visible": (None, config.joints),
        }
    )
    trainer.compile(
        optimizer=make_optimizer(config.optimizer, base_learning_rate(config)),
        stack_weights=config.stack_weights,
        jit_compile=config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )
    return hourglass, trainer


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
