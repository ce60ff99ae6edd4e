"""Shared test fixtures: paths to the real sample data and a runner for other Keras backends.

The in-process backend is TensorFlow (set before keras is imported). Code that must run under jax or
torch goes through ``run_backend``, which starts a fresh interpreter with ``KERAS_BACKEND`` set,
since Keras reads the variable once, at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``tests/data``: real MPII, FLIC and COCO files shipped with the tests (see its README)."""
    return REAL_DATA


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
