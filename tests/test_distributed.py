"""PoseTrainer under tf.distribute (2 logical CPU devices) and mixed precision: the loss, gradients and
augmentation of a global batch equal the single-device ones, replicas draw different augmentation,
and coordinates, targets and heatmap outputs stay float32."""

from __future__ import annotations

import json

import pytest

MIRRORED_CODE = """
import json
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from hgkeras.models.hourglass import StackedHourglass
from hgkeras.training.trainer import PoseTrainer


def make(strategy, augment):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        hourglass = StackedHourglass(num_stacks=2, num_features=16, num_joints=16, depth=1,
                                     image_shape=(32, 32, 3))
        # Frozen BatchNorm: per-replica batch statistics would differ from the global batch's.
        for layer in hourglass.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        trainer = PoseTrainer(hourglass, augment=augment, seed=5)
        trainer.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
    return trainer


rng = np.random.default_rng(0)
data = {"image": rng.integers(0, 255, (4, 48, 48, 3)).astype("uint8"),
        "joints": rng.uniform(8, 40, (4, 16, 2)).astype("float32"),
        "visible": np.ones((4, 16), "float32")}
one, two = tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result = {}
for augment in (False, True):
    runs = {}
    for name, strategy in (("one", one), ("two", two)):
        trainer = make(strategy, augment)
        ds = tf.data.Dataset.from_tensor_slices(data).batch(4)
        history = trainer.fit(ds, epochs=2, verbose=0, shuffle=False).history
        runs[name] = ({k: v[-1] for k, v in history.items()}, trainer.hourglass.get_weights())
    result[f"augment_{augment}"] = {
        "logs": {name: logs for name, (logs, _) in runs.items()},
        "weight_diff": max(float(np.max(np.abs(a - b)))
                           for a, b in zip(runs["one"][1], runs["two"][1])),
    }

# The same person on both replicas: their augmented targets must differ.
trainer = make(two, True)
same = {k: np.repeat(v[:1], 4, axis=0) for k, v in data.items()}
batch = next(iter(two.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices(same).batch(4))))
targets = two.run(lambda d: trainer.prepare(d, training=True)[1], args=(batch,))
a, b = (np.asarray(t) for t in two.experimental_local_results(targets))
result["replica_target_diff"] = float(np.max(np.abs(a - b)))

# What train.py refuses under tf.distribute, and whether Keras still fails there (a Dense model).
from hgkeras.training.distribution import Distribution, check_distribution_settings
from hgkeras.training.recipes import TrainConfig

dist = Distribution("MirroredStrategy (2 devices)", two, 2)
result["refusals"], result["keras_fails"] = {}, {}
for name, setting in (("jit_compile", {"jit_compile": True}),
                      ("steps_per_execution", {"steps_per_execution": 2})):
    try:
        check_distribution_settings(TrainConfig(**setting), dist)
    except ValueError as error:
        result["refusals"][name] = str(error)
    with two.scope():
        dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        dense.compile("sgd", "mse", **setting)
    try:
        dense.fit(np.ones((8, 4)), np.ones((8, 2)), batch_size=4, verbose=0)
        result["keras_fails"][name] = False
    except Exception:
        result["keras_fails"][name] = True
check_distribution_settings(TrainConfig(), dist)  # the defaults pass

# Torch's RMSprop under the strategy: the same steps as on one device (a Dense model).
from hgkeras.optimizers import TorchRMSprop

steps, x = {}, rng.normal(size=(8, 4)).astype("float32")
for name, strategy in (("one", one), ("two", two)):
    with strategy.scope():
        keras.utils.set_random_seed(2)
        dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        dense.compile(TorchRMSprop(1e-2), "mse", jit_compile=False)
    dense.fit(x, x[:, :2] * 0.5, batch_size=4, epochs=2, shuffle=False, verbose=0)
    steps[name] = dense.get_weights()
result["rmsprop_weight_diff"] = max(float(np.max(np.abs(a - b)))
                                    for a, b in zip(steps["one"], steps["two"]))

# The chief-to-all broadcast that resumes multi-worker runs is exact for bytes and floats.
from hgkeras.training.distribution import _tf_broadcast_from_chief

sent = [np.frombuffer(rng.bytes(4096), np.int32), np.asarray([-1, 7, 2**30 - 1], np.int32),
        rng.normal(size=(3, 5)).astype("float32")]
got = _tf_broadcast_from_chief(two, sent)
result["broadcast_exact"] = all(np.array_equal(np.asarray(g).astype(a.dtype), a)
                                for a, g in zip(sent, got))
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def mirrored() -> dict:
    """One run of MIRRORED_CODE (2 logical CPU devices) for the tests below."""
    from conftest import run_backend

    return json.loads(run_backend("tensorflow", MIRRORED_CODE).strip().splitlines()[-1])


def test_two_replicas_match_one_device(mirrored):
    result = mirrored
    for augment in ("augment_False", "augment_True"):
        logs = result[augment]["logs"]
        for name in ("one", "two"):
            stacks = logs[name]["stack_1_loss"] + logs[name]["stack_2_loss"]
            assert logs[name]["loss"] == pytest.approx(stacks, rel=1e-5), (augment, logs)
        for key in ("loss", "stack_1_loss", "stack_2_loss"):
            assert logs["two"][key] == pytest.approx(logs["one"][key], rel=1e-5), (augment, logs)
        assert result[augment]["weight_diff"] < 1e-5, result
    assert result["replica_target_diff"] > 0.1, result


def test_jit_compile_and_multi_step_under_mirrored_strategy_are_refused_in_one_line(mirrored):
    """Both fail inside Keras under tf.distribute (checked on a Dense model: when a Keras upgrade
    fixes one, this fails and the refusal can go); train.py refuses them at the start, saying why
    and what to use instead."""
    result = mirrored
    assert result["keras_fails"] == {"jit_compile": True, "steps_per_execution": True}, result
    jit, steps = result["refusals"]["jit_compile"], result["refusals"]["steps_per_execution"]
    for message in (jit, steps):
        assert "\n" not in message and "MirroredStrategy (2 devices)" in message
    assert "--jit-compile does not work" in jit and "KERAS_BACKEND=jax" in jit
    assert "keras-team/keras#19246" in steps and "--steps-per-execution 1" in steps


def test_chief_broadcast_under_tf_distribute_is_exact(mirrored):
    assert mirrored["broadcast_exact"] is True


def test_torch_rmsprop_under_mirrored_strategy_matches_one_device(mirrored):
    assert mirrored["rmsprop_weight_diff"] < 1e-6, mirrored


MIXED_CODE = """
import json, sys
import numpy as np
import keras
from hgkeras.models.hourglass import StackedHourglass
from hgkeras.training.trainer import PoseTrainer

rng = np.random.default_rng(0)
data = {"image": rng.integers(0, 255, (2, 96, 96, 3)).astype("uint8"),
        "joints": rng.uniform(30.3, 70.3, (2, 16, 2)).astype("float32"),
        "visible": np.ones((2, 16), "float32")}
out = {}
for policy in ("float32", sys.argv[1]):
    keras.mixed_precision.set_global_policy(policy)
    hourglass = StackedHourglass(num_stacks=1, num_features=16, num_joints=16, depth=1,
                                 image_shape=(64, 64, 3))
    trainer = PoseTrainer(hourglass, augment=False)
    trainer.compile()  # Torch's RMSprop, loss-scaled under mixed_float16
    step = trainer(data, training=True)
    logs = trainer.fit(data, epochs=1, batch_size=2, verbose=0).history
    out[policy] = {
        "targets": keras.ops.convert_to_numpy(step["targets"]),
        "dtypes": [str(keras.backend.standardize_dtype(h.dtype)) for h in step["heatmaps"]]
        + [str(keras.backend.standardize_dtype(step["targets"].dtype))],
        "predict": str(hourglass.predict(data["image"][:, :64, :64] / 255.0, verbose=0).dtype),
        "loss": logs["loss"][-1],
        "optimizer": [type(trainer.optimizer).__name__,
                      type(getattr(trainer.optimizer, "inner_optimizer", None)).__name__],
    }
print(json.dumps({
    "target_diff": float(np.max(np.abs(out["float32"]["targets"] - out[sys.argv[1]]["targets"]))),
    "dtypes": out[sys.argv[1]]["dtypes"] + [out[sys.argv[1]]["predict"]],
    "loss": out[sys.argv[1]]["loss"],
    "optimizer": out[sys.argv[1]]["optimizer"],
}))
"""


@pytest.mark.parametrize(
    "backend, policy",
    [("tensorflow", "mixed_bfloat16"), ("tensorflow", "mixed_float16"), ("jax", "mixed_bfloat16"),
     pytest.param("torch", "mixed_bfloat16", marks=pytest.mark.slow)],
)  # fmt: skip
def test_mixed_precision_keeps_coordinates_targets_and_heatmaps_float32(
    run_backend, backend, policy
):
    result = json.loads(run_backend(backend, MIXED_CODE, policy).strip().splitlines()[-1])
    assert result["target_diff"] == 0.0, result
    assert result["dtypes"] == ["float32"] * 3, result
    assert result["loss"] > 0 and result["loss"] < 10, result
    if policy == "mixed_float16":
        assert result["optimizer"] == ["LossScaleOptimizer", "TorchRMSprop"], result
    else:
        assert result["optimizer"] == ["TorchRMSprop", "NoneType"], result


TORCH_CODE = """
import os
os.environ["KERAS_DISTRIBUTION_NUM_PROCESSES"] = "2"
from hgkeras.training.distribution import select_distribution
try:
    select_distribution(4)
except ValueError as error:
    print(error)
"""


def test_torch_multi_device_request_names_the_backends_that_support_it(run_backend):
    message = run_backend("torch", TORCH_CODE).strip().splitlines()[-1]
    assert "torch backend of Keras trains on one device" in message
    assert "KERAS_BACKEND=tensorflow" in message and "KERAS_BACKEND=jax" in message
