"""hgkeras.optimizers: Torch's RMSprop rule on every backend, under loss scaling, saved and reloaded."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from hgkeras.optimizers import OPTIMIZERS, TorchRMSprop, make_optimizer

#: ``measure()``: 200 steps of gradients from 1e-2 to 1e-7 against Torch's formula in float64 (run
#: in this process under TensorFlow and in a fresh one per other backend).
FORMULA_CODE = """
import numpy as np
import keras
from hgkeras.optimizers import TorchRMSprop

MAGNITUDES = np.array([1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7])


def torch_reference(gradients, lr, rho=0.99, eps=1e-8):
    # optim.rmsprop: m = rho m + (1 - rho) g^2; x -= lr g / (sqrt(m) + eps), in float64
    x, m = np.zeros(gradients.shape[1]), np.zeros(gradients.shape[1])
    for g in gradients:
        m = rho * m + (1 - rho) * g * g
        x = x - lr * g / (np.sqrt(m) + eps)
    return x


def relative_errors(optimizer, gradients):
    variable = keras.Variable(np.zeros(gradients.shape[1], "float32"))
    for g in gradients:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g.astype("float32")), variable)])
    want = torch_reference(gradients, 2.5e-4)
    return np.abs(keras.ops.convert_to_numpy(variable) - want) / np.abs(want)


def measure():
    # (largest relative error of ours over the six magnitudes, Keras' RMSprop's at 1e-5)
    rng = np.random.default_rng(0)
    gradients = MAGNITUDES * rng.uniform(0.5, 1.5, (200, MAGNITUDES.size))
    ours = relative_errors(TorchRMSprop(2.5e-4), gradients)
    stock = relative_errors(keras.optimizers.RMSprop(2.5e-4, rho=0.99, epsilon=1e-8), gradients)
    return float(ours.max()), float(stock[3])
"""


def test_torch_formula_from_1e_2_to_1e_7_under_tensorflow():
    namespace: dict = {}
    exec(FORMULA_CODE, namespace)
    ours, stock = namespace["measure"]()
    assert ours < 1e-4
    assert stock > 0.5  # Keras' rule moves a 1e-5 gradient's parameter far less (the test can fail)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_torch_formula_under_backend(run_backend, backend):
    output = run_backend(backend, FORMULA_CODE + "\nprint('ERRORS', *measure())\n")
    ours, stock = (float(v) for v in output.split("ERRORS")[-1].split())
    assert ours < 1e-4 and stock > 0.5


def _dense(optimizer) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer, "mse")
    return model


def _data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")


def test_saved_with_its_state_and_reloaded(tmp_path):
    x, y = _data()
    model = _dense(make_optimizer(learning_rate=1e-3))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is TorchRMSprop
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    config = keras.optimizers.serialize(TorchRMSprop(1e-3, rho=0.9, epsilon=1e-6))
    again = keras.optimizers.deserialize(config)
    assert (type(again), again.rho, again.epsilon) == (TorchRMSprop, 0.9, 1e-6)


def test_loss_scaling_gives_the_same_steps():
    """Wrapped in Keras' LossScaleOptimizer (mixed_float16) the updates are those of the bare rule."""
    x, y = _data()
    bare = _dense(TorchRMSprop(1e-2))
    scaled = _dense(keras.optimizers.LossScaleOptimizer(TorchRMSprop(1e-2)))
    for model in (bare, scaled):
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
    for a, b in zip(bare.get_weights(), scaled.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_every_name_makes_an_optimizer():
    kinds = {name: type(make_optimizer(name, 1e-3)).__name__ for name in OPTIMIZERS}
    assert kinds == {"rmsprop": "TorchRMSprop", "adam": "Adam", "keras_rmsprop": "RMSprop"}
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_optimizer("sgd")
