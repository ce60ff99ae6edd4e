"""Import order under Keras' torch backend with triton installed (CUDA PyTorch brings it).

TensorFlow and triton each link their own LLVM: triton loaded after TensorFlow crashes the process
(SIGSEGV), and TensorFlow's own import loads Keras, whose torch backend loads triton. ``import
hgkeras`` first makes the first ``import tensorflow`` load triton before it; with TensorFlow loaded
and Keras not, importing Keras raises one clear error instead of the crash.

The logic is checked on stand-in ``tensorflow``/``triton`` modules (fast, on any machine); the real
libraries run in ``test_tensorflow_loaded_first_gives_the_clear_error_not_a_crash`` here and, hgkeras
first, in the torch runs of test_backends.py, test_training.py and test_train.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from hgkeras import _env

#: Stand-ins that record the order in which they are imported.
RECORDER = "import sys\nsys.loaded_in_order = [*getattr(sys, 'loaded_in_order', []), __name__]\n"

#: Runs ``sys.argv[1]`` (Python statements), then prints what loaded, in order, and the error.
PROBE = """
import json, sys
error = None
try:
    exec(sys.argv[1])
except ImportError as e:
    error = str(e)
print(json.dumps({"order": getattr(sys, "loaded_in_order", []), "error": error,
                  "heavy": [m for m in ("keras", "torch") if m in sys.modules]}))
"""


def _probe(code: str, tmp_path: Path, repo_root: Path, **env: str) -> dict:
    fakes = tmp_path / "fakes"
    fakes.mkdir(exist_ok=True)
    for name in ("tensorflow", "triton"):
        (fakes / f"{name}.py").write_text(RECORDER)
    environment = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "KERAS_HOME")}
    environment.update(PYTHONPATH=os.pathsep.join([str(fakes), str(repo_root)]), **env)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, code], cwd=tmp_path, env=environment,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("backend", "order"),
    [("torch", ["triton", "tensorflow"]), ("jax", ["tensorflow"]), ("tensorflow", ["tensorflow"])],
)
def test_import_hgkeras_then_tensorflow_loads_triton_first_under_torch_only(
    backend, order, tmp_path, repo_root
):
    got = _probe("import hgkeras\nimport tensorflow", tmp_path, repo_root, KERAS_BACKEND=backend)
    assert got == {"order": order, "error": None, "heavy": []}


def test_the_backend_of_keras_json_counts_without_importing_keras(tmp_path, repo_root):
    home = tmp_path / "keras_home"
    home.mkdir()
    (home / "keras.json").write_text(json.dumps({"backend": "torch", "floatx": "float32"}))
    got = _probe("import hgkeras\nimport tensorflow", tmp_path, repo_root, KERAS_HOME=str(home))
    assert got == {"order": ["triton", "tensorflow"], "error": None, "heavy": []}
    # KERAS_BACKEND wins over keras.json, as in Keras
    got = _probe(
        "import hgkeras\nimport tensorflow", tmp_path, repo_root,
        KERAS_HOME=str(home), KERAS_BACKEND="jax",
    )  # fmt: skip
    assert got["order"] == ["tensorflow"]


def test_tensorflow_first_refuses_keras_with_one_line_and_leaves_the_rest_working(
    tmp_path, repo_root
):
    code = "import tensorflow\nimport hgkeras\nimport importlib.util\n"
    code += "assert importlib.util.find_spec('keras') is not None\nimport keras"
    got = _probe(code, tmp_path, repo_root, KERAS_BACKEND="torch")
    assert got == {"order": ["tensorflow"], "error": _env.TENSORFLOW_FIRST, "heavy": []}
    assert "\n" not in _env.TENSORFLOW_FIRST and "before tensorflow" in _env.TENSORFLOW_FIRST


def test_help_loads_no_triton_under_torch(tmp_path, repo_root):
    code = "from hgkeras.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    got = _probe(code, tmp_path, repo_root, KERAS_BACKEND="torch")
    assert got == {"order": [], "error": None, "heavy": []}


def test_keras_backend_reads_like_keras(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert _env.keras_backend() == "tensorflow"  # no keras.json
    (tmp_path / "keras.json").write_text("{not json")
    assert _env.keras_backend() == "tensorflow"
    (tmp_path / "keras.json").write_text('{"backend": "jax"}')
    assert _env.keras_backend() == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "")  # empty: ignored, as Keras does
    assert _env.keras_backend() == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert _env.keras_backend() == "torch"


# ------------------------------------------------------------------ the real libraries

LINUX_X86_64 = sys.platform == "linux" and platform.machine() == "x86_64"
TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not LINUX_X86_64, reason="triton wheels exist for Linux x86_64")
def test_the_tested_environment_has_triton():
    """The test extra installs triton (as CUDA PyTorch does), so the torch runs meet it."""
    assert TRITON


@pytest.mark.skipif(not TRITON, reason="triton is not installed")
def test_tensorflow_loaded_first_gives_the_clear_error_not_a_crash(repo_root, tmp_path):
    """TensorFlow loaded without Keras (``TF_USE_LEGACY_KERAS=1``), then hgkeras: the data pipeline
    works; a Keras name fails with the one-line error, where loading triton would crash."""
    code = (
        "import tensorflow, sys\n"
        "import hgkeras\n"
        "assert 'keras' not in sys.modules and 'triton' not in sys.modules\n"
        "hgkeras.pose_dataset\n"
        "print('pipeline imported', flush=True)\n"
        "hgkeras.PoseTrainer\n"
    )
    env = dict(os.environ, KERAS_BACKEND="torch", TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert result.stdout.strip() == "pipeline imported"
    assert result.stderr.strip().splitlines()[-1] == f"ImportError: {_env.TENSORFLOW_FIRST}"
