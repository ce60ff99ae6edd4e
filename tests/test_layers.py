"""The BatchNorm layer: identical to Keras' under every backend; fused kernels under torch and TF."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from hgkeras import StackedHourglass
from hgkeras.models.layers import BatchNorm

COMPARE = """
import numpy as np
import keras
from keras import layers, ops
from hgkeras.models.layers import BatchNorm

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
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    w = tf.constant(rng.normal(size=x.shape).astype("float32"))
    xt = tf.constant(x)

    def grads(layer, jit):
        @tf.function(jit_compile=jit)
        def step(inputs):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                loss = tf.reduce_sum(layer(inputs, training=True) * w)
            return tape.gradient(loss, [inputs, layer.gamma.value, layer.beta.value])
        return [g.numpy() for g in step(xt)]

    for jit in (False, True):
        for g, h in zip(grads(stock, jit), grads(ours, jit)):
            assert np.abs(g - h).max() < 1e-4 * max(1.0, np.abs(g).max()), (jit, np.abs(g - h).max())
    # mixed precision: float16 activations, float32 statistics, float16 outputs
    half = BatchNorm(epsilon=1e-5, momentum=0.9, dtype="mixed_float16")
    half.build(x.shape)
    half.gamma.assign(stock.gamma.numpy())
    half.beta.assign(stock.beta.numpy())
    out = half(tf.cast(x, "float16"), training=True)
    assert out.dtype == tf.float16 and half.moving_mean.dtype == "float32"
    ref = layers.BatchNormalization(epsilon=1e-5, momentum=0.9)
    ref.build(x.shape)
    ref.gamma.assign(stock.gamma.numpy())
    ref.beta.assign(stock.beta.numpy())
    expected = ref(tf.cast(tf.cast(x, "float16"), "float32"), training=True).numpy()
    assert np.abs(out.numpy().astype("float32") - expected).max() < 2e-2
    assert np.abs(half.moving_mean.numpy() - ref.moving_mean.numpy()).max() < 1e-3
# bfloat16: the fused kernel runs on the bfloat16 input (no float32 copy), the statistics stay
# float32, the outputs are bfloat16 and agree with float32 Keras on the same input within bfloat16
# rounding, in training and inference.
seen = []
if keras.backend.backend() == "torch":
    import torch.nn.functional as F

    batch_norm = F.batch_norm
    F.batch_norm = lambda x, *a, **k: seen.append(str(x.dtype)) or batch_norm(x, *a, **k)
low = BatchNorm(epsilon=1e-5, momentum=0.9, dtype="mixed_bfloat16")
ref = layers.BatchNormalization(epsilon=1e-5, momentum=0.9)
for layer in (low, ref):
    layer.build(x.shape)
    layer.gamma.assign(stock.gamma.numpy())
    layer.beta.assign(stock.beta.numpy())
xin = ops.cast(x, "bfloat16")
xref = ops.cast(xin, "float32")
for training in (True, False):
    out, expected = low(xin, training=training), ops.convert_to_numpy(ref(xref, training=training))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16", out.dtype
    error = np.abs(ops.convert_to_numpy(ops.cast(out, "float32")) - expected).max()
    assert error < 2 * 2.0**-7 * np.abs(expected).max(), (training, error)
assert low.moving_mean.dtype == low.moving_variance.dtype == "float32"
for name in ("moving_mean", "moving_variance"):
    d = np.abs(getattr(low, name).numpy() - getattr(ref, name).numpy()).max()
    assert d < 1e-4 * max(1.0, np.abs(getattr(ref, name).numpy()).max()), (name, d)
if keras.backend.backend() == "torch":
    F.batch_norm = batch_norm
    assert seen == ["torch.bfloat16"] * 2, seen
print("OK")
"""


def test_batch_norm_matches_keras_under_torch(run_backend):
    assert "OK" in run_backend("torch", COMPARE)


def test_batch_norm_matches_keras_under_tensorflow(run_backend):
    assert "OK" in run_backend("tensorflow", COMPARE)


CONV_AND_POOL = """
import numpy as np
import keras
from keras import layers, ops
from hgkeras.models.layers import Conv2D, MaxPooling2D

rng = np.random.default_rng(0)
x = rng.normal(size=(2, 12, 10, 6)).astype("float32")
cases = [
    dict(filters=5, kernel_size=3, padding="same"),
    dict(filters=7, kernel_size=1, activation="relu"),
    dict(filters=4, kernel_size=1, use_bias=False),
    dict(filters=8, kernel_size=7, strides=2, padding="valid"),
    dict(filters=3, kernel_size=3, strides=2, padding="same"),  # stock path under torch
]
backend = keras.backend.backend()


def grad_of_input(layer, w):
    if backend == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        (layer(xt) * torch.tensor(w)).sum().backward()
        return xt.grad.numpy()
    import jax
    import jax.numpy as jnp

    return np.asarray(jax.grad(lambda v: jnp.sum(layer(v) * w))(jnp.asarray(x)))


for kwargs in cases:
    stock, ours = layers.Conv2D(**kwargs), Conv2D(**kwargs)
    stock.build(x.shape)
    ours.build(x.shape)
    stock.set_weights([rng.normal(size=v.shape).astype("float32") for v in stock.weights])
    ours.set_weights(stock.get_weights())
    a, b = ops.convert_to_numpy(stock(x)), ops.convert_to_numpy(ours(x))
    assert a.shape == b.shape and np.abs(a - b).max() < 1e-4, (kwargs, np.abs(a - b).max())
    w = rng.normal(size=a.shape).astype("float32")
    ga, gb = grad_of_input(stock, w), grad_of_input(ours, w)
    assert np.abs(ga - gb).max() < 1e-4, (kwargs, np.abs(ga - gb).max())
for kwargs in (dict(pool_size=2, strides=2), dict(pool_size=3, strides=1)):
    a = ops.convert_to_numpy(layers.MaxPooling2D(**kwargs)(x))
    b = ops.convert_to_numpy(MaxPooling2D(**kwargs)(x))
    np.testing.assert_array_equal(a, b)
print("OK")
"""


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_conv_and_pooling_match_keras(run_backend, backend):
    assert "OK" in run_backend(backend, CONV_AND_POOL)


def test_model_batch_norms_are_keras_batch_normalization_with_torch_settings():
    model = StackedHourglass(num_stacks=1, num_features=32, image_shape=(64, 64, 3))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(isinstance(layer, BatchNorm) for layer in norms)
    assert all(layer.epsilon == 1e-5 for layer in norms)


def test_upsample_add_equals_upsampling2d_then_add_with_gradients():
    import tensorflow as tf

    from hgkeras.models.layers import NearestUpsample2x, UpsampleAdd

    rng = np.random.default_rng(3)
    full = tf.constant(rng.normal(size=(2, 8, 6, 5)).astype("float32"))
    half = tf.constant(rng.normal(size=(2, 4, 3, 5)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([full, half])
        ours = UpsampleAdd()([full, NearestUpsample2x()(half)])
        stock = keras.layers.Add()([full, keras.layers.UpSampling2D(2)(half)])
        weights = tf.constant(rng.normal(size=(2, 8, 6, 5)).astype("float32"))
        loss_ours, loss_stock = tf.reduce_sum(ours * weights), tf.reduce_sum(stock * weights)
    np.testing.assert_array_equal(ours.numpy(), stock.numpy())
    for tensor in (full, half):
        np.testing.assert_allclose(
            tape.gradient(loss_ours, tensor).numpy(),
            tape.gradient(loss_stock, tensor).numpy(),
            rtol=1e-6,
            atol=1e-6,
        )


def test_upsample_add_names_the_shapes_it_cannot_add():
    from hgkeras.models.layers import NearestUpsample2x, UpsampleAdd

    half = NearestUpsample2x()(keras.Input((4, 4, 8)))
    with pytest.raises(ValueError, match=r"not twice the size"):
        UpsampleAdd(name="hg_add")([keras.Input((6, 8, 8)), half])
    with pytest.raises(ValueError, match=r"hg_add.*NearestUpsample2x"):
        UpsampleAdd(name="hg_add")([keras.Input((8, 8, 8)), keras.Input((4, 4, 8))])


def test_weights_of_the_upsampling2d_graph_load_into_the_same_layers(tmp_path, monkeypatch):
    """`.keras` files key weights by layer order: the graph must keep the order it had with
    ``UpSampling2D`` + ``Add`` (hgkeras 0.1 checkpoints), or they would load into the wrong layers."""
    import hgkeras.models.hourglass as hourglass

    config = dict(num_stacks=2, num_features=32, image_shape=(64, 64, 3))
    with monkeypatch.context() as patch:
        patch.setattr(
            hourglass, "NearestUpsample2x", lambda name: keras.layers.UpSampling2D(2, name=name)
        )
        patch.setattr(hourglass, "UpsampleAdd", lambda name: keras.layers.Add(name=name))
        legacy = StackedHourglass(**config)
    assert any(isinstance(layer, keras.layers.UpSampling2D) for layer in legacy.layers)
    rng = np.random.default_rng(4)
    for variable in legacy.weights:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    legacy.save_weights(tmp_path / "legacy.weights.h5")
    model = StackedHourglass(**config)
    assert [layer.name for layer in model.layers if layer.weights] == [
        layer.name for layer in legacy.layers if layer.weights
    ]
    model.load_weights(tmp_path / "legacy.weights.h5")
    x = rng.random((1, 64, 64, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(legacy(x, training=False)[-1])
    got = keras.ops.convert_to_numpy(model(x, training=False)[-1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
