"""Inference on whole images: image loading, person boxes and :class:`PosePredictor`."""
