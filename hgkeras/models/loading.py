"""The one way hgkeras turns "a model" into a Keras network: :func:`load_model`.

Every command, :class:`hgkeras.PosePredictor`, evaluation and export go through it, so a
``StackedHourglass``, a training wrapper (``PoseTrainer``) and their ``.keras`` files are accepted
everywhere alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras


def load_model(
    path_or_model: Any, *, fold_batch_norms: bool = False, compile: bool = False
) -> keras.Model:
    """The pose network of a model, a training wrapper or a ``.keras`` file.

    Args:
        path_or_model: a ``StackedHourglass`` or other Keras model, a ``PoseTrainer`` (its
            ``.hourglass`` is returned), or the path of a ``.keras`` file holding either.
        fold_batch_norms: return an inference copy with each conv -> BatchNorm pair folded into one
            conv (:func:`hgkeras.models.fold.fold_batch_norms`; same outputs, faster). The copy
            keeps the model's ``pose``.
        compile: restore the saved training configuration (optimizer, losses) of a file.

    Raises FileNotFoundError for a missing file and ValueError for a file that is not a Keras model
    (SavedModel folders, ONNX, LiteRT and OpenVINO files are served by their runtimes,
    :func:`hgkeras.inference.runtimes.load_runtime`). Such a runtime object (a callable from crops
    to heatmaps with ``run``, ``pose`` and ``input_size``) is returned as it is, so evaluation and
    prediction take exported models too; ``fold_batch_norms`` does not apply to it.
    """
    if _is_runtime(path_or_model):
        return path_or_model
    if isinstance(path_or_model, (str, os.PathLike)):
        model = _load_file(Path(path_or_model), compile)
    else:
        model = path_or_model
    model = getattr(model, "hourglass", model)  # a trainer shares its hourglass' weights
    if not isinstance(model, keras.Model):
        raise ValueError(
            "expected a Keras model, a PoseTrainer or a .keras path, got "
            f"{type(path_or_model).__name__}"
        )
    if fold_batch_norms:
        from hgkeras.models.fold import fold_batch_norms as fold

        return fold(model)
    return model


def _is_runtime(obj: Any) -> bool:
    """An exported-model runtime (:class:`hgkeras.inference.runtimes.Runtime` or alike)."""
    return (
        not isinstance(obj, (str, os.PathLike, keras.Model))
        and callable(getattr(obj, "run", None))
        and hasattr(obj, "pose")
        and hasattr(obj, "input_size")
    )


def _load_file(path: Path, compile: bool) -> keras.Model:
    if path.is_dir():
        kind = "a SavedModel folder" if (path / "saved_model.pb").is_file() else "a folder"
        raise ValueError(f"{path} is {kind}, not a .keras model file")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix.lower() != ".keras":
        raise ValueError(
            f"{path}: expected a .keras model file, got a {path.suffix or 'no'} suffix"
        )
    # The classes a file may name (StackedHourglass, PoseTrainer, ...) are registered by the
    # package itself once Keras is imported (hgkeras/__init__.py, _KERAS_CLASS_MODULES).
    try:
        return keras.models.load_model(path, compile=compile)
    except Exception as error:  # keras raises many types for a damaged or foreign file
        raise ValueError(f"cannot load a Keras model from {path}: {error}") from error
