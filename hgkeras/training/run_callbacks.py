"""The callbacks of a training run, assembled in the order they must run.

The validation metric is the pose specification's (:attr:`hgkeras.spec.PoseSpec.metric`): PCKh
(``val_pckh``, MPII), PCK (``val_pck``, FLIC's torso and box-scored sets) or OKS AP (``val_ap``,
COCO), logged by :class:`~hgkeras.training.validation.ValidationCallback`. The best model is kept by
that metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hgkeras.training.recipes import base_learning_rate

if TYPE_CHECKING:
    from hgkeras.training.distribution import Distribution
    from hgkeras.training.recipes import TrainConfig


def validation_metric(config: TrainConfig) -> str:
    """The logged validation metric of the run: ``val_`` + its pose spec's metric."""
    from hgkeras.training.recipes import config_pose

    return f"val_{config_pose(config).metric}"


def validation_callback(dataset, config: TrainConfig):
    """The run's validation callback: every ``--val-every`` epochs and after the final one, it
    scores ``dataset`` by :func:`validation_metric`, and keeps the final epoch's result."""
    from hgkeras.training.validation import ValidationCallback

    class RunValidation(ValidationCallback):
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

    return RunValidation(
        dataset,
        every_n_epochs=config.val_every,
        flip=config.flip_eval,
        protocol=config.pckh_protocol,
        decoder=config.decoder,
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
    """The run's callbacks, by name, in the order they must run: the NaN stop first, validation
    ("validation") before its consumers (best model, CSV, TensorBoard), the user's ``extra``
    callbacks, the backup last.

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
        callbacks["validation"] = validation_callback(val_dataset, config)
        monitor = validation_metric(config)
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
