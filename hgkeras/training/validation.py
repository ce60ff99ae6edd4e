"""Keras callbacks: validation PCKh at epoch end."""

from __future__ import annotations

import logging
import math

import keras

from hgkeras.evaluation import metrics

logger = logging.getLogger(__name__)

_LOG_GROUPS = {
    "mpii": ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle"),
    "flic": ("Shoulder", "Elbow", "Wrist", "Hip", "Head"),
}


class PCKhCallback(keras.callbacks.Callback):
    """Score the validation set at epoch end and log ``val_pckh`` (+ per-group values) into ``logs``.

    The model evaluated is ``getattr(self.model, "hourglass", self.model)`` (a training wrapper such as
    ``PoseTrainer`` shares its hourglass). Every ``every_n_epochs`` epochs the callback predicts
    ``dataset`` (the evaluation dict of ``pose_dataset(..., training=False)``: model-input crops,
    ``center``, ``scale``, original-pixel ``joints``, ``visible``, ``normalizer``), optionally with the
    flip test, decodes to original image pixels (with ``decoder``, default the codec the model is
    trained with: :func:`hgkeras.codec.codec_for`) and adds to ``logs``:

    * MPII (16 joints): ``val_pckh`` = PCKh@0.5 ``Total`` (official) or ``Mean`` (``protocol="hrnet"``),
      ``val_pckh_head``, ``val_pckh_shoulder``, ... ``val_pckh_ankle``.
    * FLIC (11 joints): ``val_pckh`` = PCK@0.2 ``Mean`` (the torso-normalised PCK; the name is kept so that
      one monitor works for both datasets), ``val_pckh_shoulder``, ... ``val_pckh_head``.

    Put it BEFORE ``ModelCheckpoint(monitor="val_pckh", mode="max")`` and ``TensorBoard`` in the
    callbacks list: Keras passes one ``logs`` dict through the callbacks in order. Epochs that are
    skipped by ``every_n_epochs`` log nothing.
    """

    def __init__(
        self,
        dataset,
        every_n_epochs: int = 1,
        flip: bool = True,
        protocol: str = "official",
        prefix: str = "val_pckh",
        verbose: int = 0,
        decoder: str | None = None,
    ) -> None:
        super().__init__()
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs!r}")
        if protocol not in metrics.PROTOCOLS:
            raise ValueError(f"protocol must be one of {metrics.PROTOCOLS}, got {protocol!r}")
        self.dataset = dataset
        self.every_n_epochs = int(every_n_epochs)
        self.flip = bool(flip)
        self.protocol = protocol
        self.prefix = prefix
        self.verbose = int(verbose)
        self.decoder = decoder
        self.last_result: dict[str, object] | None = None

    def evaluate(self) -> dict[str, object]:
        """Predict and score the dataset now; returns the full metrics dict."""
        from hgkeras.codec import codec_for
        from hgkeras.evaluation.evaluate import predict_eval_dataset, score_for_pose
        from hgkeras.spec import pose_of

        network = getattr(self.model, "hourglass", self.model)
        pose = pose_of(network)
        codec = codec_for(network, self.decoder)
        out = predict_eval_dataset(network, self.dataset, self.flip, pose, codec)
        return score_for_pose(out, pose, protocol=self.protocol)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every_n_epochs != 0:
            return
        result = self.evaluate()
        self.last_result = result
        headline = float(result["Total" if "Total" in result else "Mean"])
        values = {self.prefix: headline}
        for group in _LOG_GROUPS[result["dataset"]]:
            value = float(result[group])
            if not math.isnan(value):
                values[f"{self.prefix}_{group.lower()}"] = value
        if logs is not None:
            logs.update(values)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: {self.prefix} = {headline:.2f}")
        logger.info("epoch %d: %s", epoch + 1, values)
