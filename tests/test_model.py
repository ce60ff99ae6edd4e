"""The Stacked Hourglass model: exact size, structure, config and save/load, bad arguments."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from hgkeras import StackedHourglass, compile_model, count_macs, count_params
from hgkeras.optimizers import TorchRMSprop

# docs/method.md: trainable / non-trainable parameters at f=256, m=1, J=16.
PAPER_PARAMS = {
    1: (3_426_448, 16_640),
    2: (6_570_400, 31_488),
    4: (12_858_304, 61_184),
    8: (25_434_112, 120_576),
}


@pytest.mark.parametrize("stacks", [1, 2, 4, 8])
def test_parameter_counts_equal_method(stacks):
    model = StackedHourglass(num_stacks=stacks)
    assert count_params(model) == PAPER_PARAMS[stacks]
    assert model.count_params() == sum(PAPER_PARAMS[stacks])


def test_multiply_accumulates_match_method():
    assert round(count_macs(StackedHourglass(num_stacks=8)) / 1e9, 1) == 27.4
    assert round(count_macs(StackedHourglass(num_stacks=2)) / 1e9, 1) == 8.3


def small_model(**kwargs):
    args = dict(num_stacks=2, num_features=32, num_joints=16, image_shape=(64, 64, 3))
    args.update(kwargs)
    return StackedHourglass(**args)


def test_outputs_are_one_heatmap_tensor_per_stack():
    model = small_model(num_stacks=3, image_shape=(128, 64, 3), num_joints=11, pose="flic")
    assert model.output_names == ["stack_1", "stack_2", "stack_3"]
    outputs = model(np.zeros((2, 128, 64, 3), "float32"))
    assert [tuple(o.shape) for o in outputs] == [(2, 32, 16, 11)] * 3
    assert model.heatmap_shape == (32, 16, 11)


def test_layer_names_are_readable_and_unique():
    model = small_model()
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    for expected in [
        "stem_pad", "stem_conv", "stem_bn", "stem_res1_skip", "stem_res3_conv3",
        "hg1_n4_up1_res1_conv1", "hg1_n4_pool", "hg1_n1_low2_res1_conv2", "hg2_n3_low3_res1_add",
        "hg1_lin_conv", "hg1_merge_features", "hg1_merge_preds", "stack_2",
    ]:  # fmt: skip
        assert expected in names
    assert "hg2_merge_features" not in names  # the last stack merges nothing back


def test_stem_uses_torch_symmetric_padding():
    model = small_model()
    assert model.get_layer("stem_pad").padding == ((3, 3), (3, 3))
    assert model.get_layer("stem_conv").padding == "valid"
    bn = model.get_layer("stem_bn")
    assert bn.epsilon == 1e-5 and bn.momentum == pytest.approx(0.9)


def test_modules_per_resolution_repeat_residuals():
    model = small_model(num_modules=2)
    names = {layer.name for layer in model.layers}
    assert {"hg1_n4_up1_res2_add", "hg1_out_res2_add"} <= names


def test_config_round_trips():
    model = small_model(num_modules=2, depth=3, init="torch")
    clone = StackedHourglass.from_config(model.get_config())
    assert clone.get_config() == model.get_config() and clone.init == "torch"
    assert count_params(clone) == count_params(model)


def _weights(model, kind: type, index: int) -> np.ndarray:
    """The ``index``-th weight (0 kernel or scale, 1 bias or offset) of every layer of ``kind``."""
    found = [
        layer.get_weights()[index].ravel() for layer in model.layers if isinstance(layer, kind)
    ]
    return np.concatenate(found)


def test_initialisations():
    """Torch7 nn: conv weights and biases U(+-1/sqrt(fan_in)), BatchNorm scale U(0, 1), offset 0;
    PyTorch: the same convolutions, scale 1; Keras: Glorot kernels, zero biases, scale 1."""
    batch_norm = keras.layers.BatchNormalization
    for init in ("keras", "torch", "pytorch"):
        keras.utils.set_random_seed(0)
        model = small_model(num_stacks=1, depth=1, init=init)
        conv = model.get_layer("hg1_n1_low1_res1_conv2")  # 3x3 over half the features
        bound = 1 / np.sqrt(np.prod(conv.kernel.shape[:3]))
        kernel, bias = (np.asarray(w) for w in conv.get_weights())
        gamma, beta = _weights(model, batch_norm, 0), _weights(model, batch_norm, 1)
        assert np.all(beta == 0), init
        if init == "keras":
            assert np.all(bias == 0) and np.all(gamma == 1) and np.abs(kernel).max() > bound
            continue
        for values in (kernel, bias):
            assert bound >= np.abs(values).max() > 0.8 * bound, init
        if init == "torch":
            assert gamma.min() >= 0 and gamma.max() < 1 and abs(gamma.mean() - 0.5) < 0.05
        else:
            assert np.all(gamma == 1)


def test_keras_file_round_trip_gives_identical_outputs(tmp_path):
    model = small_model()
    x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    # make BatchNorm statistics non-trivial so inference differs from a fresh model
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.random.default_rng(1).normal(size=layer.moving_mean.shape))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, StackedHourglass)
    for a, b in zip(model.predict(x, verbose=0), loaded.predict(x, verbose=0), strict=True):
        np.testing.assert_array_equal(a, b)


def test_compile_model_defaults_to_paper_optimizer_and_one_loss_per_stack():
    model = compile_model(small_model())
    opt = model.optimizer
    assert isinstance(opt, TorchRMSprop)
    assert float(opt.learning_rate) == pytest.approx(2.5e-4)
    assert opt.rho == pytest.approx(0.99) and opt.epsilon == pytest.approx(1e-8)
    assert len(model.loss) == 2 and model._compile_loss._user_loss_weights == [1.0, 1.0]


def test_compile_model_stack_weights_weight_the_losses():
    x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    y = np.random.default_rng(1).random((2, 16, 16, 16), dtype=np.float32)
    model = compile_model(small_model(), stack_weights=[1.0, 0.0])
    results = model.evaluate(x, (y, y), verbose=0, return_dict=True)
    assert results["loss"] == pytest.approx(results["stack_1_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="stack_weights"):
        compile_model(small_model(), stack_weights=[1.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_stacks": 0}, "num_stacks"),
        ({"num_stacks": -2}, "num_stacks"),
        ({"num_stacks": 1.5}, "num_stacks"),
        ({"image_shape": (100, 64, 3)}, r"image_shape height must be a positive multiple of .* 64"),
        ({"image_shape": (64, 96, 3)}, r"image_shape width .* 64"),
        ({"image_shape": (64, 64, 1)}, "3 \\(RGB\\) channels"),
        ({"image_shape": (64, 64)}, r"\(height, width, 3\)"),
        ({"num_features": 33}, "num_features must be even"),
        ({"num_joints": 0}, "num_joints"),
        ({"depth": 0}, "depth"),
        ({"init": "he"}, "init must be one of"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_model(**kwargs)
