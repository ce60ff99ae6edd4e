"""hgkeras: Stacked Hourglass networks for human pose estimation (Newell et al., ECCV 2016) in Keras 3.

Runs under every Keras 3 backend (``KERAS_BACKEND=tensorflow|jax|torch``); exports to TF Serving and ONNX.

Importing :mod:`hgkeras` is cheap: the names below are imported on first use (PEP 562), so
``hgkeras --help`` and the scoring of a predictions file never load Keras or TensorFlow. Once Keras
is imported (by hgkeras or by you), hgkeras' Keras classes are registered, so
``import hgkeras; keras.models.load_model("best.keras")`` works.

Under Keras' torch backend with triton installed (it comes with CUDA PyTorch), import hgkeras before
TensorFlow: triton must be loaded before TensorFlow, and hgkeras sees to it
(:func:`hgkeras._env.keep_triton_before_tensorflow`).
"""

from __future__ import annotations

import importlib

from hgkeras import _env

__version__ = "0.1.0"

#: Modules whose Keras classes ``keras.models.load_model`` must know (registered on import).
_KERAS_CLASS_MODULES = (
    "hgkeras.models.hourglass",
    "hgkeras.models.fold",
    "hgkeras.training.trainer",
)

#: Public name -> the module that defines it (imported on first access).
_LAZY = {
    "StackedHourglass": "hgkeras.models.hourglass",
    "compile_model": "hgkeras.models.hourglass",
    "count_macs": "hgkeras.models.hourglass",
    "count_params": "hgkeras.models.hourglass",
    "FLIC": "hgkeras.spec",
    "MPII": "hgkeras.spec",
    "read_pose_json": "hgkeras.spec",
    "PosePredictor": "hgkeras.inference.predictor",
    "PoseTrainer": "hgkeras.training.trainer",
    "pose_dataset": "hgkeras.data.pipeline",
    "read_annotations": "hgkeras.data.readers",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'hgkeras' has no attribute {name!r}")


def _register_keras_classes() -> None:
    for module in _KERAS_CLASS_MODULES:
        importlib.import_module(module)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY) + ["__version__"]

# Last, once the package is complete: when Keras is already loaded, the registration imports
# hgkeras' submodules right here.
_env.quiet_startup()
_env.keep_triton_before_tensorflow()
_env.when_imported("keras", _register_keras_classes)
