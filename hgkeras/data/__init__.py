"""Data: annotation readers, TFRecord writers and the tf.data training pipeline."""

from hgkeras.data.pipeline import pose_dataset
from hgkeras.data.readers import read_annotations
from hgkeras.data.records import PoseRecord

__all__ = ["PoseRecord", "pose_dataset", "read_annotations"]
