"""The BatchNorm layer: identical to Keras' under every backend, PyTorch's fused kernel under torch."""

from __future__ import annotations

import keras

from hgkeras import StackedHourglass
from hgkeras.layers import BatchNorm

COMPARE = """
import numpy as np
import keras
from keras import layers, ops
from hgkeras.layers import BatchNorm

rng = np.random.default_rng(0)
x = rng.normal(2, 3, (4, 6, 5, 8)).astype("float32")
stock = layers.BatchNormalization(epsilon=1e-5, momentum=0.9)
ours = BatchNorm(epsilon=1e-5, momentum=0.9)
for layer in (stock, ours):
    layer.build(x.shape)
    layer.gamma.assign(rng.normal(size=8).astype("float32") if layer is stock else stock.gamma.numpy())
    layer.beta.assign(np.linspace(-1, 1, 8).astype("float32"))
for step in range(3):
    a = ops.convert_to_numpy(stock(x * (step + 1), training=True))
    b = ops.convert_to_numpy(ours(x * (step + 1), training=True))
    assert np.abs(a - b).max() < 1e-5, np.abs(a - b).max()
for name in ("moving_mean", "moving_variance"):
    d = np.abs(getattr(stock, name).numpy() - getattr(ours, name).numpy()).max()
    assert d < 1e-5 * max(1.0, np.abs(getattr(stock, name).numpy()).max()), (name, d)
a = ops.convert_to_numpy(stock(x, training=False))
b = ops.convert_to_numpy(ours(x, training=False))
assert np.abs(a - b).max() < 1e-5
if keras.backend.backend() == "torch":
    import torch
    xa = torch.tensor(x, requires_grad=True)
    xb = torch.tensor(x, requires_grad=True)
    w = torch.randn(x.shape)
    (stock(xa, training=True) * w).sum().backward()
    (ours(xb, training=True) * w).sum().backward()
    assert (xa.grad - xb.grad).abs().max() < 1e-5
    for p, q in ((stock.gamma, ours.gamma), (stock.beta, ours.beta)):
        assert (p.value.grad - q.value.grad).abs().max() < 1e-4 * max(1.0, p.value.grad.abs().max())
print("OK")
"""


def test_batch_norm_matches_keras_under_torch(run_backend):
    assert "OK" in run_backend("torch", COMPARE)


def test_batch_norm_matches_keras_under_tensorflow(run_backend):
    assert "OK" in run_backend("tensorflow", COMPARE)


def test_model_batch_norms_are_keras_batch_normalization_with_torch_settings():
    model = StackedHourglass(num_stacks=1, num_features=32, image_shape=(64, 64, 3))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(isinstance(layer, BatchNorm) for layer in norms)
    assert all(layer.epsilon == 1e-5 for layer in norms)
