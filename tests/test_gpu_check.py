"""benchmarks/gpu_check.py: every stage leaves a row or its error, and nothing needs TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
STATUSES = {"ok", "error", "timeout", "skipped"}

TRAIN_WITHOUT_TENSORFLOW = """
import sys

sys.path.insert(0, "benchmarks")
from gpu_check import block_tensorflow

block_tensorflow()
try:
    import tensorflow  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("the blocker let tensorflow import")

import keras
import numpy as np

import hgkeras
from hgkeras import PoseTrainer, StackedHourglass

model = StackedHourglass(num_stacks=1, num_features=16, depth=2, image_shape=(64, 64, 3))
trainer = PoseTrainer(model, seed=0)
trainer.compile()
rng = np.random.default_rng(0)
data = {
    "image": rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8),
    "joints": rng.uniform(20, 76, (2, 16, 2)).astype("float32"),
    "visible": np.ones((2, 16), "float32"),
}
history = trainer.fit(data, epochs=1, batch_size=2, verbose=0)
assert np.isfinite(history.history["loss"][0]), history.history
assert sys.modules["tensorflow"] is None, "something replaced the blocker"
print("OK", keras.backend.backend())
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_hgkeras_trains_from_numpy_without_tensorflow(run_backend, backend):
    """The GPU machine has no TensorFlow: import, model and PoseTrainer.fit must not need it."""
    assert f"OK {backend}" in run_backend(backend, TRAIN_WITHOUT_TENSORFLOW, timeout=300)


def _run(tmp_path, *args: str, timeout: float) -> dict:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--out", str(out), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "gpu_check" and result["schema"] == 1
    assert result["finished"] and result["gpu_found"] in (False, None)
    for stage in result["stages"]:
        assert stage["status"] in STATUSES, stage
        if stage["status"] == "ok":
            assert stage["rows"], stage
        else:
            assert stage["error"], stage
    return result


def test_a_stage_out_of_time_records_its_error_and_the_next_stage_runs(tmp_path):
    result = _run(
        tmp_path, "--tiny", "--backends", "torch", "--stages", "device,host_syncs",
        "--limit", "device=0.5", "--recipe", "princeton", timeout=240,
    )  # fmt: skip
    recipe = result["config"]["recipe"]
    assert result["recipe"] == recipe["name"] == "princeton" and recipe["optimizer"] == "adam"
    device, syncs = result["stages"]
    assert device["stage"] == "device" and device["status"] == "timeout"
    assert "time limit" in device["error"] and device["rows"] == []
    assert syncs["status"] == "ok" and syncs["rows"][0]["available"] is False


@pytest.mark.slow
def test_tiny_check_runs_every_stage_and_the_layers_match_on_cpu(tmp_path):
    # every stage under JAX (the GPU machine's main backend), the layer equivalence under torch too;
    # torch's other stages are the same code (test_a_stage_out_of_time... and the shell test run
    # torch stages); about 80 s on an idle 2-core machine, the budget leaves room for a loaded one
    result = _run(tmp_path, "--tiny", "--backends", "jax", "--budget", "600", "--recipe",
                  "newell2016", timeout=720)  # fmt: skip
    assert result["mode"] == "tiny" and result["device"] == "cpu (no GPU found)"
    planned = {(s, "jax") for s in ("device", "equivalence", "train", "inference", "validation",
                                    "host_syncs", "host_decode")}  # fmt: skip
    assert {(s["stage"], s["backend"]) for s in result["stages"]} == planned
    (tmp_path / "torch").mkdir()
    torch_run = _run(
        tmp_path / "torch", "--tiny", "--backends", "torch", "--stages", "equivalence", timeout=300
    )
    rows = {}
    for stage in result["stages"] + torch_run["stages"]:
        for row in stage["rows"]:
            rows.setdefault((row["kind"], row["backend"]), []).append(row)
    for backend in ("jax", "torch"):
        equivalence = rows[("equivalence", backend)]
        assert len(equivalence) == 14, equivalence  # 7 layer cases x (float32, mixed_bfloat16)
        assert all(row["passed"] for row in equivalence), [
            (row["layer"], row["dtype"], row["errors"]) for row in equivalence if not row["passed"]
        ]
    device = rows[("device", "jax")][0]
    assert device["platform"] == "cpu" and device["bfloat16_flops"] > 0
    assert not rows[("host_syncs", "jax")][0]["available"]
    for kind in ("train", "inference", "validation"):
        assert rows.get((kind, "jax")), kind
        for row in rows[(kind, "jax")]:
            assert row["images_per_s"] > 0, row
    for row in rows[("train", "jax")]:  # the newell2016 recipe's trainer (tiny sizes)
        assert row["loss_finite"] and 0 < row["fraction_of_bf16_matmul"], row
    assert rows[("host_decode", "jax")][0]["images_per_s"] > 0
    assert result["ceiling"]["bfloat16_flops"] > 0


def test_shell_entry_writes_the_json_log_and_device_listing_into_its_folder(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--tiny", "--cpu",
         "--backends", "torch", "--stages", "host_syncs"],
        cwd=REPO_ROOT, env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
        text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {"gpu_check.json", "gpu_check.log", "nvidia-smi.txt"}
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["budget_s"] == 500 and [s["status"] for s in result["stages"]] == ["ok"]
    assert "host_syncs" in (out / "gpu_check.log").read_text()
