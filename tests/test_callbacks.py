"""ValidationCallback: known-answer scoring through the real decode path, and integration with fit/ModelCheckpoint."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

# Shared by the in-process (TensorFlow) tests and the jax/torch subprocesses.
KNOWN_ANSWER = r"""
import numpy as np
import keras
import tensorflow as tf
from keras import ops

from hgkeras import MPII, geometry
from hgkeras.training.validation import ValidationCallback
from hgkeras.codec import render_heatmaps


def pooling_model():
    # 'heatmaps' = 4x4 average pooling of a 16-channel 'image': the image encodes the heatmaps exactly.
    inputs = keras.Input((64, 64, 16))
    model = keras.Model(inputs, [keras.layers.AveragePooling2D(4)(inputs)])
    model.pose = MPII  # a plain Keras model carries no pose spec: give it the joint set
    return model


def eval_dataset():
    # 4 people; joints on integer heatmap pixels (no quarter-pixel shift), mapped to the original image.
    rng = np.random.default_rng(0)
    n = 4
    centers = rng.uniform(200, 400, (n, 2)).astype("float32")
    scales = np.array([1.0, 2.0, 1.5, 3.0], "float32")
    hm = rng.integers(2, 14, (n, 16, 2)).astype("float32")
    joints = ops.convert_to_numpy(geometry.heatmap_to_image(hm, centers, scales, 16))
    maps = ops.convert_to_numpy(render_heatmaps(hm, np.ones((n, 16)), 16))
    images = np.repeat(np.repeat(maps, 4, axis=1), 4, axis=2)  # (n, 64, 64, 16)
    normalizer = np.full(n, 0.02, "float32")  # threshold 0.01 px: the inverse crop must be exact
    gt = joints.copy()
    gt[:2, 10] += [0.0, 0.05]  # r_wrist of 2 people off by 0.05 px > 0.01 -> Wrist (50 + 100) / 2
    visible = np.ones((n, 16), "float32")
    visible[0, 0] = 0  # r_ankle of person 0 not annotated
    data = {"image": images.astype("float32"), "center": centers, "scale": scales, "joints": gt,
            "visible": visible, "normalizer": normalizer,
            "image_id": np.arange(n), "person_id": np.zeros(n, "int64")}
    return tf.data.Dataset.from_tensor_slices(data).batch(2)


model = pooling_model()
callback = ValidationCallback(eval_dataset(), flip=False)
callback.set_model(model)
logs = {"loss": 1.0}
callback.on_epoch_end(0, logs)
assert logs["val_pckh_wrist"] == 75.0, logs
for group in ("head", "shoulder", "elbow", "hip", "knee", "ankle"):
    assert logs["val_pckh_" + group] == 100.0, (group, logs)
# 14 x 4 - 1 scored joints, 2 misses
assert abs(logs["val_pckh"] - 100.0 * 53 / 55) < 1e-9, logs
assert logs["loss"] == 1.0

class Wrapper:  # a training wrapper (e.g. PoseTrainer) is evaluated through its .hourglass
    hourglass = model


wrapped = ValidationCallback(eval_dataset(), flip=False)
wrapped.set_model(Wrapper())
logs = {}
wrapped.on_epoch_end(0, logs)
assert abs(logs["val_pckh"] - 100.0 * 53 / 55) < 1e-9, logs

skipping = ValidationCallback(eval_dataset(), every_n_epochs=2, flip=False)
skipping.set_model(model)
logs = {}
skipping.on_epoch_end(0, logs)
assert logs == {}, logs
skipping.on_epoch_end(1, logs)
assert "val_pckh" in logs
print("KNOWN_ANSWER_OK")
"""

FIT = r"""
import sys
import numpy as np
import keras
import tensorflow as tf

from hgkeras import MPII
from hgkeras.training.validation import ValidationCallback

keras.utils.set_random_seed(0)
# A tiny trainable stand-in for the hourglass (same input/output contract, fast to compile).
inputs = keras.Input((64, 64, 3))
model = keras.Model(inputs, [keras.layers.AveragePooling2D(4)(keras.layers.Conv2D(16, 1)(inputs))])
model.pose = MPII
model.compile(optimizer="rmsprop", loss=["mse"])
rng = np.random.default_rng(0)
x = rng.random((2, 64, 64, 3)).astype("float32")
y = np.zeros((2, 16, 16, 16), "float32")
n = 4
evaluation = tf.data.Dataset.from_tensor_slices({
    "image": rng.random((n, 64, 64, 3)).astype("float32"),
    "center": np.full((n, 2), 100.0, "float32"), "scale": np.ones(n, "float32"),
    "joints": rng.uniform(20, 180, (n, 16, 2)).astype("float32"), "visible": np.ones((n, 16), "float32"),
    "normalizer": np.full(n, 30.0, "float32"),
}).batch(2)
path = sys.argv[1]
checkpoint = keras.callbacks.ModelCheckpoint(path, monitor="val_pckh", mode="max", save_best_only=True)
history = model.fit(x, y, epochs=2, batch_size=2, verbose=0,
                    callbacks=[ValidationCallback(evaluation, flip=True), checkpoint])
values = history.history["val_pckh"]
assert len(values) == 2 and all(0.0 <= v <= 100.0 for v in values), values
assert "val_pckh_ankle" in history.history
import os
assert os.path.exists(path)
print("FIT_OK")
"""


def test_callback_logs_known_pckh_through_decode_path():
    namespace: dict = {}
    exec(compile(KNOWN_ANSWER, "known_answer", "exec"), namespace)  # asserts inside


def test_callback_feeds_model_checkpoint_during_fit(tmp_path, recwarn):
    import sys

    sys.argv = ["fit", str(tmp_path / "best.keras")]
    namespace: dict = {}
    exec(compile(FIT, "fit", "exec"), namespace)
    assert not [w for w in recwarn if "val_pckh" in str(w.message)]  # checkpoint found the metric


def test_callback_rejects_bad_arguments():
    from hgkeras.training.validation import ValidationCallback

    with pytest.raises(ValueError, match="every_n_epochs"):
        ValidationCallback([], every_n_epochs=0)
    with pytest.raises(ValueError, match="protocol"):
        ValidationCallback([], protocol="pck")


def _decode_checks() -> str:
    """The decoding checks of test_decoding.py (run in the same subprocess to save start-up time)."""
    spec = importlib.util.spec_from_file_location(
        "_decoding", Path(__file__).with_name("test_decoding.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DECODE


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_decoding_and_callback_under_other_backends(run_backend, backend, tmp_path):
    code = _decode_checks() + "\n" + KNOWN_ANSWER + "\n" + FIT
    out = run_backend(backend, code, str(tmp_path / "best.keras"))
    assert "DECODE_OK" in out and "KNOWN_ANSWER_OK" in out and "FIT_OK" in out


def test_flic_model_logs_pck_against_torso(tmp_path):
    """An 11-joint model is scored with FLIC PCK@0.2 against the left shoulder - right hip torso."""
    import keras
    import tensorflow as tf
    from keras import ops

    from hgkeras import FLIC, geometry
    from hgkeras.codec import render_heatmaps
    from hgkeras.training.validation import ValidationCallback

    inputs = keras.Input((32, 32, 11))
    model = keras.Model(inputs, [keras.layers.AveragePooling2D(4)(inputs)])
    model.pose = FLIC
    hm = np.tile(np.array([[2, 2], [3, 3], [4, 4], [5, 2], [5, 3], [5, 4], [2, 6], [5, 6],
                           [3, 1], [4, 1], [3, 2]], "float32"), (2, 1, 1))  # fmt: skip
    centers, scales = np.full((2, 2), 50.0, "float32"), np.ones(2, "float32")
    joints = ops.convert_to_numpy(geometry.heatmap_to_image(hm, centers, scales, 8))
    torso = np.linalg.norm(joints[:, 0] - joints[:, 7], axis=-1)
    gt = joints.copy()
    gt[0, 2, 0] += 0.21 * torso[0]  # left wrist of person 0 beyond 0.2 torso
    maps = ops.convert_to_numpy(render_heatmaps(hm, np.ones((2, 11)), 8))
    data = {
        "image": np.repeat(np.repeat(maps, 4, 1), 4, 2),
        "center": centers,
        "scale": scales,
        "joints": gt,
        "visible": np.ones((2, 11), "float32"),
        "normalizer": np.full(2, np.nan, "float32"),  # ignored for FLIC: torso from the joints
    }
    callback = ValidationCallback(tf.data.Dataset.from_tensor_slices(data).batch(2), flip=False)
    callback.set_model(model)
    logs: dict = {}
    callback.on_epoch_end(0, logs)
    assert logs["val_pck_wrist"] == pytest.approx(75.0)
    assert logs["val_pck"] == pytest.approx(100 * 21 / 22)
    assert "val_pckh" not in logs  # FLIC's metric is PCK of the torso, under its own name
