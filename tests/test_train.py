"""The training run (hgkeras.train, train.py): flags and config, callbacks, resume, NaN stop,
multi-worker agreement, other backends, and an end-to-end learning test on real MPII samples."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from hgkeras import training_callbacks as tc
from hgkeras.train import (
    EMBEDDED_DEFAULTS,
    PAPER_DEFAULTS,
    build_parser,
    parse_config,
    resolve_config,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ flags/config


def test_paper_defaults_when_dataset_given():
    config = parse_config(["--stacks", "8", "--dataset", "mpii", "--data-dir", "/data"])
    assert (config.stacks, config.features, config.modules, config.depth) == (8, 256, 1, 4)
    assert config.batch_size == 6 and config.epochs == 100 and config.lr == 2.5e-4
    assert config.lr_drops == [60, 90] and config.lr_factor == 0.1
    assert config.stack_weights == [1.0] * 8
    assert config.sigma == 1.0 and config.augment and config.flip_eval
    assert config.input_size == 256 and config.joints == 16 and not config.embedded
    assert parse_config(["--dataset", "flic", "--data-dir", "d"]).joints == 11


def test_embedded_defaults_without_data_arguments():
    config = parse_config([])
    assert config.embedded and config.dataset == "mpii" and config.out == "runs/embedded"
    for key, value in EMBEDDED_DEFAULTS.items():
        assert getattr(config, key) == value, key


def test_every_flag_overrides_and_is_documented():
    argv = (
        "--dataset mpii --data-dir d --stacks 2 --features 32 --modules 2 --depth 3 --input-size 64 "
        "--batch-size 4 --epochs 7 --steps-per-epoch 3 --lr 0.01 --lr-drops 2,5 --lr-factor 0.5 "
        "--stack-weights 0.5,1 --sigma 2 --no-augment --no-flip-eval --val-every 2 --seed 3 "
        "--mixed-precision bfloat16 --jit-compile --no-export --val-limit 9 --val-batch-size 8 "
        "--pckh-protocol hrnet --out o --verbose 2"
    ).split()
    c = parse_config(argv)
    assert (c.stacks, c.features, c.modules, c.depth, c.input_size) == (2, 32, 2, 3, 64)
    assert (c.batch_size, c.epochs, c.steps_per_epoch, c.lr) == (4, 7, 3, 0.01)
    assert (c.lr_drops, c.lr_factor, c.stack_weights, c.sigma) == ([2, 5], 0.5, [0.5, 1.0], 2.0)
    assert not c.augment and not c.flip_eval and c.val_every == 2 and c.seed == 3
    assert c.mixed_precision == "bfloat16" and c.jit_compile is True and not c.export
    assert (c.val_limit, c.val_batch_size, c.pckh_protocol, c.out, c.verbose) == (
        9, 8, "hrnet", "o", 2
    )  # fmt: skip
    help_text = build_parser().format_help()
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert option in help_text
        assert action.help, action.option_strings


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stacks", "2", "--stack-weights", "1,1,1"], "one weight per stack"),
        (["--input-size", "100"], "multiple of 64"),
        (["--features", "33"], "even"),
        (["--data-dir", "d"], "--dataset"),
        (["--dataset", "mpii"], "--train-pattern"),
        (["--lr", "0"], "--lr"),
        (["--dataset", "mpii", "--data-dir", "d", "--train-pattern", "x"], "not both"),
    ],
)
def test_bad_flags_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(build_parser().parse_args(argv))


def test_lr_schedule_is_a_function_of_the_epoch():
    assert [tc.step_learning_rate(e, 2.5e-4, [60, 90]) for e in (0, 59, 60, 89, 90, 99)] == [
        pytest.approx(v) for v in (2.5e-4, 2.5e-4, 2.5e-5, 2.5e-5, 2.5e-6, 2.5e-6)
    ]
    assert PAPER_DEFAULTS["lr_drops"] == [60, 90]


# ----------------------------------------------------------------------------------- callbacks


def _tiny_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.RMSprop(0.01), "mse")
    return model


def test_nan_stop_names_the_step(capsys):
    x = np.ones((12, 2), np.float32)
    y = np.ones((12, 1), np.float32)
    x[7] = np.nan  # batch size 2: the 4th step of the 1st epoch sees it
    stop = tc.StopOnNaN(steps_per_epoch=6)
    model = _tiny_model()
    history = model.fit(x, y, batch_size=2, epochs=3, shuffle=False, callbacks=[stop], verbose=0)
    assert stop.message is not None and "epoch 1, step 4" in stop.message
    assert "global step 4" in stop.message
    assert len(history.history["loss"]) == 1  # stopped in epoch 1
    assert "NaN stop" in capsys.readouterr().err


def test_backup_commits_atomically_and_restores_epoch_and_optimizer(tmp_path):
    x = np.random.default_rng(0).normal(size=(8, 2)).astype("float32")
    y = x.sum(1, keepdims=True)
    backup = tc.CrashSafeBackupAndRestore(tmp_path / "backup")
    model = _tiny_model()
    model.fit(x, y, batch_size=4, epochs=3, callbacks=[backup], verbose=0)
    state = json.loads((tmp_path / "backup" / "state.json").read_text())
    assert state == {"epoch": 3, "weights": "epoch-0003.weights.h5"}
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == [
        "epoch-0003.weights.h5",
        "state.json",
    ]
    # A half-written newer file (a kill during the save) is ignored: state.json is the commit point.
    (tmp_path / "backup" / ".tmp1-epoch-0004.weights.h5").write_bytes(b"partial")
    resumed = _tiny_model()
    history = resumed.fit(
        x, y, batch_size=4, epochs=5, callbacks=[tc.CrashSafeBackupAndRestore(tmp_path / "backup")],
        verbose=0,
    )  # fmt: skip
    assert len(history.history["loss"]) == 2  # epochs 4 and 5 only
    assert int(resumed.optimizer.iterations) == 5 * 2


def test_csv_log_keeps_late_columns_and_drops_rerun_epochs(tmp_path):
    path = tmp_path / "log.csv"
    log = tc.ResumableCSVLogger(path)
    log.on_epoch_begin(0)
    log.on_epoch_end(0, {"loss": 2.0})
    log.on_epoch_end(1, {"loss": 1.5, "val_pckh": 10.0})
    log.on_epoch_end(2, {"loss": 1.0})
    rows = tc.read_csv_log(path)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["val_pckh"] == "10.0" and rows[0]["val_pckh"] == ""
    resumed = tc.ResumableCSVLogger(path)  # restarted from the backup of epoch 2
    resumed.on_epoch_begin(2)
    resumed.on_epoch_end(2, {"loss": 0.9})
    assert [(r["epoch"], r["loss"]) for r in tc.read_csv_log(path)] == [
        ("1", "2.0"), ("2", "1.5"), ("3", "0.9")
    ]  # fmt: skip


def test_best_checkpoint_survives_resume(tmp_path):
    model = _tiny_model()
    model.build((None, 2))
    best = tc.BestModelCheckpoint(tmp_path / "best.keras", tmp_path / "best.json")
    best.set_model(model)
    best.on_train_begin()
    best.on_epoch_end(0, {"val_pckh": 50.0})
    best.on_epoch_end(1, {})  # not evaluated this epoch
    best.on_epoch_end(2, {"val_pckh": 40.0})
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 1
    again = tc.BestModelCheckpoint(tmp_path / "best.keras", tmp_path / "best.json")
    again.set_model(model)
    again.on_train_begin()
    assert again.best == 50.0
    mtime = (tmp_path / "best.keras").stat().st_mtime_ns
    again.on_epoch_end(3, {"val_pckh": 45.0})
    assert (tmp_path / "best.keras").stat().st_mtime_ns == mtime
    again.on_epoch_end(4, {"val_pckh": 60.0})
    assert json.loads((tmp_path / "best.json").read_text())["best"] == 60.0
    assert keras.models.load_model(tmp_path / "best.keras").count_params() == 3
