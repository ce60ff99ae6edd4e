"""Folding conv -> BatchNorm pairs for inference: same outputs, only the foldable pairs folded."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from hgkeras.models.fold import FoldedBatchNorm, call_graph, fold_batch_norms, foldable_pairs
from hgkeras.models.hourglass import StackedHourglass


def _randomize_batch_norms(model, seed: int = 0) -> None:
    """Give every batch norm non-trivial statistics, as a trained model has."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            for variable in layer.weights:
                kind = variable.path.rsplit("/", 1)[-1]
                low, high = (0.5, 2.0) if kind in ("gamma", "moving_variance") else (-1.0, 1.0)
                variable.assign(rng.uniform(low, high, variable.shape).astype("float32"))


def _outputs(model, x) -> np.ndarray:
    return np.stack([keras.ops.convert_to_numpy(o) for o in model(x, training=False)])


def test_folded_hourglass_matches_the_model_in_inference_mode(tmp_path):
    model = StackedHourglass(num_stacks=2, num_features=32, image_shape=(64, 64, 3))
    _randomize_batch_norms(model)
    x = np.random.default_rng(1).random((2, 64, 64, 3)).astype("float32")
    folded = fold_batch_norms(model)
    want, got = _outputs(model, x), _outputs(folded, x)
    assert np.abs(got - want).max() < 1e-5 * max(1.0, np.abs(want).max())
    # a copy: the original is untouched and still has all its batch norms
    assert all(not isinstance(layer, FoldedBatchNorm) for layer in model.layers)
    np.testing.assert_array_equal(_outputs(model, x), want)
    # the copy saves and loads like any functional model
    folded.save(tmp_path / "folded.keras")
    again = keras.models.load_model(tmp_path / "folded.keras")
    np.testing.assert_allclose(_outputs(again, x), got, rtol=0, atol=1e-6)


def test_hourglass_folds_bn2_bn3_stem_and_heads_and_keeps_pre_activation_norms():
    model = StackedHourglass(num_stacks=2, num_features=32, image_shape=(64, 64, 3))
    folded = fold_batch_norms(model)
    kinds = {layer.name: type(layer) for layer in folded.layers}
    norms = [name for name, kind in kinds.items() if name.endswith(("_bn", "_bn1", "_bn2", "_bn3"))]
    for name in norms:
        expect_folded = not name.endswith("_bn1")  # bn1 reads a sum, not a convolution
        assert (kinds[name] is FoldedBatchNorm) == expect_folded, name
    assert {"stem_bn", "hg1_lin_bn", "hg2_lin_bn"} <= {
        n for n, k in kinds.items() if k is FoldedBatchNorm
    }
    assert len(foldable_pairs(model)) == sum(k is FoldedBatchNorm for k in kinds.values())
    # the weights that carried the batch norms now sit in the convolutions
    assert folded.count_params() < model.count_params()


def test_fold_only_folds_a_norm_that_alone_reads_an_activation_free_conv():
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 3, padding="same", use_bias=False, name="a")(inputs)
    a = layers.BatchNormalization(center=False, name="a_bn")(a)  # folds: conv gets a bias
    b = layers.Conv2D(4, 1, name="b")(a)
    b_bn = layers.BatchNormalization(scale=False, name="b_bn")(b)  # b is also read by "b_skip"
    skip = layers.Add(name="b_skip")([b, b_bn])
    c = layers.Conv2D(4, 1, activation="relu", name="c")(skip)
    c = layers.BatchNormalization(name="c_bn")(c)  # after a ReLU: does not fold
    d = layers.BatchNormalization(name="d_bn")(layers.MaxPooling2D(name="pool")(c))
    model = keras.Model(inputs, d)
    _randomize_batch_norms(model)
    assert set(foldable_pairs(model)) == {"a"}
    folded = fold_batch_norms(model)
    assert isinstance(folded.get_layer("a_bn"), FoldedBatchNorm)
    assert folded.get_layer("a").use_bias
    for name in ("b_bn", "c_bn", "d_bn"):
        assert isinstance(folded.get_layer(name), layers.BatchNormalization)
    x = np.random.default_rng(2).random((3, 8, 8, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(model(x, training=False))
    got = keras.ops.convert_to_numpy(folded(x, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fold_keeps_norms_after_a_shared_conv_or_a_conv_that_is_also_an_output():
    inputs = keras.Input((8, 8, 3))
    shared = layers.Conv2D(3, 1, name="shared")
    first = layers.BatchNormalization(name="first_bn")(shared(inputs))  # shared is called twice
    second = shared(first)
    out = layers.Conv2D(4, 1, name="out")(second)
    out_bn = layers.BatchNormalization(name="out_bn")(out)  # "out" is a model output as well
    model = keras.Model(inputs, [out, out_bn])
    assert foldable_pairs(model) == {}
    calls, readers = call_graph(model)
    assert calls["shared"] == [[], ["first_bn"]] and readers["out"] == 2


def test_fold_rejects_what_is_not_a_keras_model():
    with pytest.raises(TypeError, match="functional keras model"):
        fold_batch_norms(np.zeros(3))


FOLD_UNDER_BACKEND = """
import numpy as np, keras
from hgkeras.models.hourglass import StackedHourglass
from hgkeras.models.fold import fold_batch_norms
model = StackedHourglass(num_stacks=1, num_features=32, depth=2, image_shape=(64, 64, 3))
rng = np.random.default_rng(0)
for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
        g, b, m, v = layer.get_weights()
        layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(size=b.shape),
                           rng.normal(size=m.shape), rng.uniform(0.5, 2, v.shape)])
x = rng.random((2, 64, 64, 3)).astype("float32")
want = keras.ops.convert_to_numpy(model(x, training=False)[-1])
got = keras.ops.convert_to_numpy(fold_batch_norms(model)(x, training=False)[-1])
assert np.abs(got - want).max() < 1e-5 * max(1.0, np.abs(want).max()), np.abs(got - want).max()
print("OK")
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_fold_under_other_backends(run_backend, backend):
    assert "OK" in run_backend(backend, FOLD_UNDER_BACKEND)
