"""Shared test fixtures: paths to the real sample data and a runner for other Keras backends.

The in-process backend is TensorFlow (set before keras is imported). Code that must run under jax or
torch goes through ``run_backend``, which starts a fresh interpreter with ``KERAS_BACKEND`` set,
since Keras reads the variable once, at import.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# triton (installed with CUDA PyTorch, and by the test extra) crashes the process when loaded after
# TensorFlow, and torch loads it for an optimiser (test_weights.py builds one in this TensorFlow
# process): load it first, as hgkeras does under the torch backend (tests/test_install_order.py).
if importlib.util.find_spec("triton") is not None:
    importlib.import_module("triton")

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``tests/data``: real MPII, FLIC and COCO files shipped with the tests (see its README)."""
    return REAL_DATA


@pytest.fixture(scope="session")
def overfit_mpii_trainer(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(trainer ``.keras`` path, TFRecord dir, samples dir): a 1-stack, 32-feature, 64x64 network
    overfit to the five shipped MPII people through the embedded run's chain (TFRecords,
    ``pose_dataset`` source crops, ``PoseTrainer``, no augmentation), saved as the trainer."""
    import keras
    import tensorflow as tf

    from hgkeras import PoseTrainer, StackedHourglass, pose_dataset
    from hgkeras.data.samples import SAMPLES_DIR, write_sample_records

    root = tmp_path_factory.mktemp("overfit_mpii")
    samples = SAMPLES_DIR
    records = write_sample_records(root / "records")
    keras.utils.set_random_seed(0)
    hourglass = StackedHourglass(
        num_stacks=1, num_features=32, depth=2, image_shape=(64, 64, 3), pose="mpii"
    )
    trainer = PoseTrainer(hourglass, augment=False, sigma=1.0, seed=0)
    trainer.compile(optimizer=keras.optimizers.Adam(2e-3), jit_compile=False)
    batch = next(iter(pose_dataset(records, 5, training=True, split="train", source_size=96)))
    data = tf.data.Dataset.from_tensors(batch).repeat()
    trainer.fit(data, steps_per_epoch=300, epochs=1, verbose=0)
    path = root / "trainer.keras"
    trainer.save(path)
    return path, records, samples


def run_backend(
    backend: str, code: str, *args: str, timeout: float = 900, cwd: Path | None = None
) -> str:
    """Run ``code`` in a new Python process under ``KERAS_BACKEND=backend``; return its stdout.

    Fails the test with the process's output if it exits non-zero.
    """
    env = dict(os.environ)
    env["KERAS_BACKEND"] = backend
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("JAX_PLATFORMS", "cpu")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        cwd=str(cwd or REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{backend} subprocess exited {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}"
            f"\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result.stdout


@pytest.fixture(name="run_backend")
def run_backend_fixture():
    return run_backend
