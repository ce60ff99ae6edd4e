"""``hgkeras --help`` and ``hgkeras info``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hgkeras import _env
from hgkeras.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    assert "info" in capsys.readouterr().out


def test_info_reports_versions_backend_and_model_cost(capsys):
    assert main(["info", "--stacks", "2", "--features", "64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "tensorflow"
    assert info["versions"]["keras"].startswith("3.")
    assert info["devices"]
    assert info["model"]["config"]["num_stacks"] == 2
    assert info["model"]["macs_per_image"] > 0


def test_info_reports_8_stack_macs_in_text(capsys):
    assert main(["info", "--stacks", "8"]) == 0
    out = capsys.readouterr().out
    assert "25,434,112" in out and "27.44 G" in out


# ------------------------------------------------------------------ start-up: fast and quiet

HEAVY = ("tensorflow", "keras", "jax", "torch", "cv2")

#: Runs the console script's main() in a fresh process, then reports which heavy modules it loaded.
PROBE = f"""
import json, sys
from hgkeras.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({{"code": code, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def _plain_env(repo_root, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: none of the test suite's TensorFlow settings."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "HGKERAS_DEBUG")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def predictions_file(real_data, tmp_path_factory) -> Path:
    """1-based Torch-layout predictions for every person of the real MPII valid.h5 (ground truth + 2 px)."""
    import h5py

    path = tmp_path_factory.mktemp("preds") / "preds.h5"
    with h5py.File(real_data / "mpii" / "valid.h5", "r") as annot, h5py.File(path, "w") as out:
        out["preds"] = annot["part"][:] + 2.0
    return path


@pytest.mark.parametrize("command", ["--help", "--version", "evaluate"])
def test_light_commands_load_no_keras_tensorflow_and_print_no_start_up_lines(
    command, repo_root, real_data, predictions_file, tmp_path
):
    argv = [command]
    if command == "evaluate":
        argv += [
            "--predictions",
            str(predictions_file),
            "--data",
            str(real_data / "mpii" / "valid.h5"),
        ]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        cwd=tmp_path, env=_plain_env(repo_root), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "loaded": []}, result.stdout + result.stderr
    assert result.stderr == ""
    if command == "evaluate":
        assert "2958 people" in result.stdout and "Total" in result.stdout


def test_version_names_the_package_version(capsys):
    import hgkeras

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"hgkeras {hgkeras.__version__}\n"


def test_lazy_top_level_names_resolve():
    import hgkeras

    assert set(hgkeras.__all__) <= set(dir(hgkeras))
    from hgkeras import MPII, StackedHourglass, read_annotations  # noqa: F401

    assert MPII.num_joints == 16
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        hgkeras.nothing  # noqa: B018


TENSORFLOW_START = "import hgkeras, tensorflow as tf; print(len(tf.config.list_physical_devices()))"


def test_tensorflow_start_up_lines_are_hidden(repo_root, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", TENSORFLOW_START],
        cwd=tmp_path, env=_plain_env(repo_root), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 1
    assert result.stderr == ""


@pytest.mark.parametrize(
    "how", [{"HGKERAS_DEBUG": "1"}, "--verbose"], ids=["HGKERAS_DEBUG", "--verbose"]
)
def test_debug_switch_leaves_tensorflow_logging_alone(how, repo_root, tmp_path):
    code = (
        "import os, sys, hgkeras\n"
        "from hgkeras.cli import main\n"
        "if len(sys.argv) > 1: main(sys.argv[1:])\n"
        "hooked = [getattr(f, 'name', None) for f in sys.meta_path]\n"
        "print('tensorflow' in hooked, os.environ.get('TF_CPP_MIN_LOG_LEVEL'),\n"
        "      os.environ.get('HGKERAS_DEBUG'))\n"
    )
    env = _plain_env(repo_root, **(how if isinstance(how, dict) else {}))
    argv = [how] if isinstance(how, str) else []
    result = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False None 1"


def test_quiet_by_default(repo_root, tmp_path):
    code = (
        "import os, sys, hgkeras\n"
        "hooked = [getattr(f, 'name', None) for f in sys.meta_path]\n"
        "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'tensorflow' in hooked)\n"
    )
    quiet = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_plain_env(repo_root),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    chosen = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path,
        env=_plain_env(repo_root, TF_CPP_MIN_LOG_LEVEL="1"), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert quiet.stdout.split() == ["3", "True"]
    assert chosen.stdout.split() == ["1", "True"]  # the user's own level wins


NATIVE_LINES = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796118494.117401    8693 port.cc:153] oneDNN custom operations are on.\n"
    b"I0000 00:00:1796118494.117676    8693 cudart_stub.cc:31] Could not find cuda drivers\n"
    b"E0000 00:00:1796118495.980508    8693 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
    b"UserWarning: a real warning\n"
)


def test_filtered_stderr_drops_native_log_lines_and_keeps_the_rest(capfd):
    with _env.filtered_stderr():
        os.write(2, NATIVE_LINES)
    assert capfd.readouterr().err == "UserWarning: a real warning\n"


def test_filtered_stderr_keeps_everything_when_the_import_fails(capfd):
    with pytest.raises(ImportError), _env.filtered_stderr():
        os.write(2, NATIVE_LINES)
        raise ImportError("broken")
    assert capfd.readouterr().err == NATIVE_LINES.decode()


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_import_hgkeras_then_keras_loads_saved_models(backend, repo_root, tmp_path):
    """The documented ``import hgkeras; keras.models.load_model(...)``: importing Keras registers
    hgkeras' classes, though ``import hgkeras`` itself loads no Keras."""
    save = (
        "from hgkeras import StackedHourglass\n"
        "StackedHourglass(num_stacks=1, num_features=16, depth=1, image_shape=(64, 64, 3))"
        ".save('m.keras')\n"
    )
    load = (
        "import sys, hgkeras\n"
        "assert 'keras' not in sys.modules\n"
        "import keras\n"
        "model = keras.models.load_model('m.keras')\n"
        "print(type(model).__name__, 'tensorflow' in sys.modules)\n"
    )
    env = _plain_env(repo_root, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    for code in (save, load):
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["StackedHourglass", str(backend == "tensorflow")]
