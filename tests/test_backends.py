"""The model under each Keras backend, each in its own process, and weights moved between backends.

Each backend's smoke run fits, predicts and saves; it also writes weights (with non-trivial BatchNorm
statistics) and reference outputs, which every other backend must then reproduce. The hourglass has
order 2 (every layer type of order 4; tracing and compiling the order-4 graph cost most of each run).
"""

from __future__ import annotations

import pytest

BACKENDS = ["tensorflow", "jax", "torch"]

# hgkeras before TensorFlow: under torch with triton installed, TensorFlow's import loads Keras, and
# hgkeras has triton loaded first (test_install_order.py).
SMOKE = """
import sys
import hgkeras
import numpy as np
import tensorflow as tf
import keras
from hgkeras import StackedHourglass, compile_model

backend, out = sys.argv[1], sys.argv[2]
assert keras.backend.backend() == backend, keras.backend.backend()
keras.utils.set_random_seed(0)
model = compile_model(
    StackedHourglass(num_stacks=2, num_features=32, depth=2, image_shape=(64, 64, 3))
)
rng = np.random.default_rng(0)
x = rng.random((4, 64, 64, 3), dtype=np.float32)
y = rng.random((4, 16, 16, 16), dtype=np.float32)
ds = tf.data.Dataset.from_tensor_slices((x, (y, y))).batch(2)
history = model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
assert np.isfinite(history.history["loss"][0])
pred = model.predict(x, verbose=0)
assert len(pred) == 2 and all(p.shape == (4, 16, 16, 16) for p in pred)
model.save(f"{out}/{backend}.keras")
loaded = keras.models.load_model(f"{out}/{backend}.keras")
for a, b in zip(pred, loaded.predict(x, verbose=0)):
    np.testing.assert_allclose(a, b, atol=1e-6)

# Reference for the cross-backend test: non-trivial BatchNorm statistics, weights and outputs.
for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
model.save_weights(f"{out}/{backend}.weights.h5")
np.save(f"{out}/x.npy", x)
np.save(f"{out}/{backend}_y.npy", np.stack([np.asarray(p) for p in model.predict(x, verbose=0)]))
print("OK", type(loaded).__name__)
"""

LOAD = """
import sys
import numpy as np
from hgkeras import StackedHourglass

out, sources = sys.argv[1], sys.argv[2:]
model = StackedHourglass(num_stacks=2, num_features=32, depth=2, image_shape=(64, 64, 3))
x = np.load(f"{out}/x.npy")
for source in sources:
    model.load_weights(f"{out}/{source}.weights.h5")
    y = np.stack([np.asarray(p) for p in model.predict(x, verbose=0)])
    reference = np.load(f"{out}/{source}_y.npy")
    print(source, float(np.abs(y - reference).max()), float(np.abs(reference).max()))
"""


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("backends")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_predict_save_under_backend(backend, run_backend, smoke_dir):
    out = run_backend(backend, SMOKE, backend, str(smoke_dir))
    assert "OK StackedHourglass" in out


@pytest.mark.parametrize("target", BACKENDS)
def test_weights_saved_under_other_backends_give_same_outputs(target, run_backend, smoke_dir):
    sources = [b for b in BACKENDS if b != target]
    missing = [s for s in sources if not (smoke_dir / f"{s}.weights.h5").exists()]
    if missing:
        pytest.fail(f"smoke runs did not produce weights for {missing}")
    out = run_backend(target, LOAD, str(smoke_dir), *sources)
    rows = [line.split() for line in out.strip().splitlines()]
    assert [r[0] for r in rows] == sources
    for source, diff, scale in rows:
        assert float(scale) > 1e-3
        assert float(diff) <= 1e-4, f"{source} weights under {target}: max abs diff {diff}"
