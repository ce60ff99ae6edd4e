"""Evaluation: MPII PCKh / FLIC PCK metrics, prediction files and the prediction of evaluation sets."""
