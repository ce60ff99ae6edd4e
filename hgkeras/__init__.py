"""hgkeras: Stacked Hourglass networks for human pose estimation (Newell et al., ECCV 2016) in Keras 3.

Runs under every Keras 3 backend (``KERAS_BACKEND=tensorflow|jax|torch``); exports to TF Serving and ONNX.
"""

import os as _os

# Keep TensorFlow's C++ start-up chatter out of the user's terminal (set the variable to override).
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hgkeras.models.hourglass import StackedHourglass, compile_model, count_macs, count_params  # noqa: E402
from hgkeras.spec import FLIC, MPII, Skeleton, get_skeleton  # noqa: E402

__version__ = "0.1.0"

#: Names imported on first use (they pull in TensorFlow's tf.data or OpenCV).
_LAZY = {
    "PosePredictor": "hgkeras.inference.predictor",
    "PoseTrainer": "hgkeras.training.trainer",
    "pose_dataset": "hgkeras.data",
    "read_annotations": "hgkeras.data",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hgkeras' has no attribute {name!r}")


__all__ = [
    "FLIC",
    "MPII",
    "PosePredictor",
    "PoseTrainer",
    "Skeleton",
    "StackedHourglass",
    "compile_model",
    "count_macs",
    "count_params",
    "get_skeleton",
    "pose_dataset",
    "read_annotations",
    "__version__",
]
