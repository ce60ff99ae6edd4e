"""hgkeras: Stacked Hourglass networks for human pose estimation (Newell et al., ECCV 2016) in Keras 3.

Runs under every Keras 3 backend (``KERAS_BACKEND=tensorflow|jax|torch``); exports to TF Serving and ONNX.
"""

from hgkeras.joints import FLIC, MPII, Skeleton, get_skeleton
from hgkeras.model import StackedHourglass, compile_model, count_macs, count_params

__version__ = "0.1.0"

__all__ = [
    "FLIC",
    "MPII",
    "Skeleton",
    "StackedHourglass",
    "compile_model",
    "count_macs",
    "count_params",
    "get_skeleton",
    "__version__",
]
