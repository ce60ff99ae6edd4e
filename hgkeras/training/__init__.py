"""Training: the device-side augmenting trainer, callbacks and the run behind ``train.py``."""
