"""PoseTrainer: fit on real MPII shards under TensorFlow, JAX and PyTorch (2 steps, tiny model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hgkeras.data import read_annotations
from hgkeras.data.tfrecords import write_tfrecords

SAMPLES = "hgkeras/data/samples/mpii"

# The order of a tf.data script, hgkeras first: under torch with triton installed, hgkeras has
# triton loaded before TensorFlow (test_install_order.py).
FIT_CODE = """
import json, sys
import hgkeras
import tensorflow as tf
import numpy as np
import keras
from hgkeras.data import pose_dataset
from hgkeras.models.hourglass import StackedHourglass
from hgkeras.training.trainer import PoseTrainer

stacks = int(sys.argv[2])
hourglass = StackedHourglass(num_stacks=stacks, num_features=16, num_modules=1, num_joints=16,
                             depth=1, image_shape=(64, 64, 3))
before = [w.copy() for w in hourglass.get_weights()]
trainer = PoseTrainer(hourglass, seed=3)
trainer.compile(jit_compile=False if keras.backend.backend() == "tensorflow" else "auto")
data = pose_dataset(sys.argv[1], 2, training=True, source_size=96, seed=0)
history = trainer.fit(data, epochs=1, steps_per_epoch=2, verbose=0).history
changed = any(not np.allclose(a, b) for a, b in zip(before, hourglass.get_weights()))
print(json.dumps({"history": {k: float(v[-1]) for k, v in history.items()},
                  "changed": changed, "shared": trainer.hourglass is hourglass}))
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("train_tfr")
    records = read_annotations(repo_root / SAMPLES / "samples.json")
    write_tfrecords(records, repo_root / SAMPLES / "images", out, progress=False)
    return out


def _check(stdout: str, stacks: int) -> None:
    result = json.loads(stdout.strip().splitlines()[-1])
    history = result["history"]
    keys = {"loss"} | {f"stack_{i + 1}_loss" for i in range(stacks)}
    assert keys <= set(history), history
    assert all(math.isfinite(v) and v > 0 for v in history.values())
    # Stack weights are 1: the loss is the sum of the per-stack MSEs.
    total = sum(history[f"stack_{i + 1}_loss"] for i in range(stacks))
    assert history["loss"] == pytest.approx(total, rel=1e-4)
    assert result["changed"] and result["shared"]


def test_fit_tensorflow(shards, run_backend):
    _check(run_backend("tensorflow", FIT_CODE, str(shards), "2"), 2)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_fit_other_backends(shards, run_backend, backend):
    _check(run_backend(backend, FIT_CODE, str(shards), "1"), 1)


def test_trainer_rejects_bad_input(tmp_path):
    from hgkeras.models.hourglass import StackedHourglass
    from hgkeras.training.trainer import PoseTrainer

    hourglass = StackedHourglass(
        num_stacks=2,
        num_features=16,
        num_joints=11,
        depth=1,
        image_shape=(64, 64, 3),
        pose="flic",
    )
    trainer = PoseTrainer(hourglass, rotation=40.0, scale_law="linear", scale_limit=0.3)
    with pytest.raises(ValueError, match="stack_weights must have 2"):
        trainer.compile(stack_weights=[1.0])
    batch = {
        "image": np.zeros((1, 96, 96, 3), "uint8"),
        "joints": np.zeros((1, 16, 2), "float32"),
        "visible": np.ones((1, 16), "float32"),
    }
    with pytest.raises(ValueError, match=r"\(B, 11, 2\)"):
        trainer(batch)
    with pytest.raises(ValueError, match="expects dicts"):
        trainer(np.zeros((1, 64, 64, 3), "float32"))
    with pytest.raises(TypeError, match="unknown augmentation options"):
        PoseTrainer(hourglass, rotate=10)
    # A saved trainer (e.g. by ModelCheckpoint) loads back with the same hourglass weights.
    import keras

    trainer.compile(stack_weights=[0.5, 1.0])
    trainer.optimizer.build(trainer.trainable_variables)  # as after training
    trainer.save(tmp_path / "trainer.keras")
    loaded = keras.models.load_model(tmp_path / "trainer.keras")
    assert isinstance(loaded, PoseTrainer) and loaded.num_joints == 11
    assert loaded.augmentation == trainer.augmentation and loaded.augmentation.rotation == 40.0
    assert type(loaded.optimizer).__name__ == "TorchRMSprop"
    assert loaded.stack_weights == [0.5, 1.0] and loaded.optimizer is not None
    for a, b in zip(hourglass.get_weights(), loaded.hourglass.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
