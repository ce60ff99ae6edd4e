"""Data: annotation readers, TFRecord writers and the tf.data training pipeline.

The names below are imported on first use, so reading annotations does not load TensorFlow.
"""

import importlib

_LAZY = {
    "PoseRecord": "hgkeras.data.records",
    "pose_dataset": "hgkeras.data.pipeline",
    "read_annotations": "hgkeras.data.readers",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hgkeras.data' has no attribute {name!r}")


__all__ = sorted(_LAZY)
