"""Keras callbacks: the validation score of the model's pose spec at epoch end."""

from __future__ import annotations

import logging
import math
import re

import keras

from hgkeras.evaluation import metrics

logger = logging.getLogger(__name__)

#: OKS summary numbers logged beside AP (``val_ap50`` ...).
_AP_LOGGED = ("AP50", "AP75", "APm", "APl", "AR")


def log_name(group: str) -> str:
    """A group name as a log key suffix: lower case, runs of other characters as ``_``."""
    return re.sub(r"[^0-9a-z]+", "_", group.lower()).strip("_")


def log_values(result: dict, pose, prefix: str | None = None) -> dict[str, float]:
    """The log entries of a :func:`hgkeras.evaluation.evaluate.score_for_pose` result of ``pose``.

    The headline under ``prefix`` (default ``val_`` + the spec's metric: ``val_pckh`` for PCKh,
    ``val_pck`` for torso or box PCK, ``val_ap`` for OKS), then ``<prefix>_<group>`` for each group
    of the spec (PCK; NaN groups left out) or ``val_ap50`` ... ``val_ar`` (OKS), and
    ``val_error_px``, the mean error in pixels.
    """
    from hgkeras.evaluation.evaluate import summary_key
    from hgkeras.spec import get_pose

    spec = get_pose(pose)
    prefix = prefix or f"val_{spec.metric}"
    values = {prefix: float(result[summary_key(result)])}
    if spec.metric == "ap":
        values.update(
            {f"val_{name.lower()}": float(result[name]) for name in _AP_LOGGED if name in result}
        )
    else:
        for group in spec.group_table:
            value = float(result.get(group, math.nan))
            if not math.isnan(value):
                values[f"{prefix}_{log_name(group)}"] = value
    error = float(result.get("mean_error_px", math.nan))
    if not math.isnan(error):
        values["val_error_px"] = error
    return values


class ValidationCallback(keras.callbacks.Callback):
    """Score the validation set at epoch end and log the pose spec's metric (+ per group) in ``logs``.

    The model evaluated is ``getattr(self.model, "hourglass", self.model)`` (a training wrapper such as
    ``PoseTrainer`` shares its hourglass); its pose spec (:func:`hgkeras.spec.pose_of`) decides the
    metric, the groups and the names. Every ``every_n_epochs`` epochs the callback predicts
    ``dataset`` (the evaluation dict of ``pose_dataset(..., training=False)``: model-input crops,
    ``center``, ``scale``, original-pixel ``joints``, ``visible``, ``normalizer``, ``box``,
    ``image_id``), optionally with the flip test, decodes to original image pixels (with ``decoder``,
    default the codec the model is trained with: :func:`hgkeras.codec.codec_for`), scores it
    (:func:`hgkeras.evaluation.evaluate.score_for_pose`) and adds :func:`log_values` to ``logs``:

    * MPII: ``val_pckh`` = PCKh@0.5 ``Total`` (official) or ``Mean`` (``protocol="hrnet"``),
      ``val_pckh_head``, ``val_pckh_shoulder``, ... ``val_pckh_ankle``.
    * FLIC: ``val_pck`` = PCK@0.2 of the torso ``Mean``, ``val_pck_shoulder``, ... ``val_pck_head``.
    * A set scored against its boxes: ``val_pck`` and ``val_pck_<keypoint>`` (or its groups).
    * A set scored by OKS: ``val_ap``, ``val_ap50``, ``val_ap75``, ``val_apm``, ``val_apl``, ``val_ar``.
    * Every set: ``val_error_px``, the mean error in original image pixels.

    Put it BEFORE ``ModelCheckpoint(monitor=<the headline>, mode="max")`` and ``TensorBoard`` in the
    callbacks list: Keras passes one ``logs`` dict through the callbacks in order. Epochs that are
    skipped by ``every_n_epochs`` log nothing.
    """

    def __init__(
        self,
        dataset,
        every_n_epochs: int = 1,
        flip: bool = True,
        protocol: str = "official",
        prefix: str | None = None,
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

    def _pose(self):
        from hgkeras.spec import pose_of

        return pose_of(getattr(self.model, "hourglass", self.model))

    def evaluate(self) -> dict[str, object]:
        """Predict and score the dataset now; returns the full metrics dict."""
        from hgkeras.codec import codec_for
        from hgkeras.evaluation.evaluate import predict_eval_dataset, score_for_pose

        network = getattr(self.model, "hourglass", self.model)
        pose = self._pose()
        codec = codec_for(network, self.decoder)
        out = predict_eval_dataset(network, self.dataset, self.flip, pose, codec)
        return score_for_pose(out, pose, protocol=self.protocol)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every_n_epochs != 0:
            return
        result = self.evaluate()
        self.last_result = result
        values = log_values(result, self._pose(), self.prefix)
        if logs is not None:
            logs.update(values)
        if self.verbose:
            name, headline = next(iter(values.items()))
            print(f"\nEpoch {epoch + 1}: {name} = {headline:.2f}")
        logger.info("epoch %d: %s", epoch + 1, values)
