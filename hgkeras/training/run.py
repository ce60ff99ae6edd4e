"""The training run behind ``python train.py`` and ``hgkeras train``.

:class:`~hgkeras.training.recipes.TrainConfig` holds every setting (each one a flag of
:mod:`hgkeras.cli.commands.train`); :func:`~hgkeras.training.recipes.resolve_config` fills the ones not
given from a recipe (the Torch code's when ``--dataset mpii`` is given, a small CPU-sized run on the
shipped MPII samples without data); :func:`train` runs it: distribution (:mod:`.distribution`),
datasets (:mod:`.datasets`), network and trainer (:mod:`.build`), callbacks (:mod:`.run_callbacks`:
crash-safe backup, learning-rate steps, NaN stop, best/last models, CSV and TensorBoard logs,
validation), ``fit``, a final evaluation and, where available, the export.

Output layout of ``--out DIR`` (written by the chief alone: worker 0 or ``chief`` of ``TF_CONFIG``,
JAX process 0; the other processes write the same files into a scratch folder they remove)::

    config.json          the resolved configuration (written before training)
    best.keras           the pose network with the best validation score so far (best.json): the
                         set's metric, val_pckh (MPII), val_pck (FLIC, own sets) or val_ap (COCO)
    last.keras           the pose network after the last finished epoch
    log.csv              one row per epoch: losses per stack, learning rate, validation
    logs/                TensorBoard event files (train/ and validation/)
    backup/              the resume state (weights + optimizer + epoch), see ``--out`` reuse
    results.json         the final evaluation
    data/                TFRecords built from the shipped samples (embedded run only)
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hgkeras.training.build import build_trainer, load_initial_weights
from hgkeras.training.datasets import build_datasets, resolve_data
from hgkeras.training.distribution import (
    Distribution,
    check_distribution_settings,
    scratch_dir,
    select_distribution,
)
from hgkeras.training.recipes import MIXED_PRECISION, TrainConfig
from hgkeras.training.run_callbacks import build_callbacks, validation_metric


def _check_resume_config(config: TrainConfig, path: Path) -> None:
    """Refuse to resume into ``--out`` holding a run of a different network or dataset."""
    if not path.exists():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return
    fixed = ("dataset", "pose", "stacks", "features", "modules", "depth", "joints", "input_size")
    changed = [k for k in fixed if k in previous and previous[k] != getattr(config, k)]
    if changed and (path.parent / "backup").exists():
        diffs = ", ".join(f"{k}: {previous[k]} -> {getattr(config, k)}" for k in changed)
        raise ValueError(
            f"{path.parent} holds a resumable run of a different network ({diffs}); "
            "use another --out or delete that directory"
        )


def _export(model_path: Path, out: Path, flip: bool) -> str | None:
    """Export ``model_path`` for TF Serving into ``out/export`` when :mod:`hgkeras.deploy.export` exists.

    Returns the version directory, or None when this installation has no export module.
    """
    try:
        from hgkeras.deploy.export import export_model
    except ImportError:
        print("export: hgkeras.deploy.export is not available in this version; skipped", flush=True)
        return None
    result = export_model(model_path, out / "export", flip=flip, force=True)
    print(f"exported to {result.version_dir}", flush=True)
    return str(result.version_dir)


def fit_verbosity(verbose: int | str) -> int:
    """``--verbose``; by default progress bars (1) on a terminal, one line per epoch (2) otherwise."""
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(verbose)


def train(config: TrainConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run training as configured; returns a summary (also written to ``--out/results.json``).

    ``callbacks``: extra Keras callbacks (e.g. W&B or MLflow loggers), run after the run's own
    logging callbacks and before the backup. Raises RuntimeError when the loss becomes NaN or
    infinite (the message names the step; the saved files keep the last finite state).
    """
    import keras

    if config.mixed_precision != "off":
        keras.mixed_precision.set_global_policy(MIXED_PRECISION[config.mixed_precision])
    dist = select_distribution(config.batch_size)  # before any model, dataset or TF op
    keras.utils.set_random_seed(config.seed)
    config.backend = keras.backend.backend()
    config.distribution = dist.description
    check_distribution_settings(config, dist)
    if dist.num_replicas > 1 and config.batch_size % dist.num_replicas:
        raise ValueError(
            f"--batch-size {config.batch_size} must be divisible by the {dist.num_replicas} replicas"
        )

    # Only the chief writes into --out. Every other worker or process runs the same steps (Keras'
    # saving has collective steps) in a scratch folder of its own, removed at the end (and at the
    # start, after a killed run), and takes the chief's state by broadcast: resuming needs no shared
    # file system.
    out = Path(config.out)
    scratch = None if dist.is_chief else scratch_dir(out, dist.worker_index)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        return _train(config, dist, scratch or out, callbacks)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _train(config: TrainConfig, dist: Distribution, out: Path, callbacks: Sequence) -> dict:
    import keras
    import numpy as np

    from hgkeras.training import callbacks as tc

    chief = dist.is_chief
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    _check_resume_config(config, config_path)
    sources = resolve_data(config, out)
    if config.steps_per_epoch is None:
        config.steps_per_epoch = max(1, sources.num_train // config.batch_size)
    resolved = config.to_json()
    if chief:
        print("Resolved configuration:\n" + json.dumps(resolved, indent=2, sort_keys=True),
              flush=True)  # fmt: skip
    tc.write_json_atomic(config_path, resolved)

    # The chief's backup decides where every worker's record stream starts.
    state = tc.CrashSafeBackupAndRestore.read_state_file(out / "backup") if chief else None
    epoch = np.asarray(int(state["epoch"]) if state else -1, np.int32)
    (saved,) = dist.broadcast_from_chief([epoch])
    initial_epoch = max(int(saved), 0)

    with dist.scope():
        hourglass, trainer = build_trainer(config, dist)
    if config.init_weights and int(saved) < 0:  # every process loads them (the same values)
        summary = load_initial_weights(hourglass, config.init_weights)
        if chief:
            print(summary, flush=True)
    train_ds, val_ds = build_datasets(
        config, sources, dist, start_step=initial_epoch * config.steps_per_epoch
    )
    run_callbacks = build_callbacks(
        config, out, val_ds, config.steps_per_epoch, extra=callbacks, dist=dist
    )

    started = time.time()
    history = trainer.fit(
        train_ds,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        callbacks=list(run_callbacks.values()),
        verbose=fit_verbosity(config.verbose),
        shuffle=False,  # the dataset shuffles (deterministically, see pose_dataset)
    )
    seconds = time.time() - started
    nan = run_callbacks["nan"].message
    if nan:
        saved_state = tc.CrashSafeBackupAndRestore.read_state_file(out / "backup")
        where = f"after epoch {saved_state['epoch']}" if saved_state else "of no finished epoch"
        raise RuntimeError(
            f"training stopped: {nan}. backup/, last.keras and best.keras in {out} keep the last "
            f"finite state ({where}); re-run with other settings (e.g. a lower --lr) to continue "
            "from there"
        )

    summary: dict[str, Any] = {
        "epochs": config.epochs,
        "steps_per_epoch": config.steps_per_epoch,
        "optimizer_iterations": int(keras.ops.convert_to_numpy(trainer.optimizer.iterations)),
        "train_seconds_this_session": round(seconds, 1),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "distribution": dist.description,
        "backend": config.backend,
    }
    if "validation" in run_callbacks:
        result = run_callbacks["validation"].final_result()
        summary.update(_score_summary(result, config))
        summary["best"] = {
            validation_metric(config): run_callbacks["best"].best,
            "epoch": run_callbacks["best"].best_epoch,
        }
    if config.export:  # on every process (loading a model has collective steps under JAX)
        best = out / "best.keras"
        summary["export"] = _export(
            best if best.exists() else out / "last.keras", out, config.flip_eval
        )
    tc.write_json_atomic(out / "results.json", summary)
    return summary


def run_training(config: TrainConfig, prog: str) -> int:
    """Train ``config``; exit code 0, 1 for a NaN stop, 2 for bad input (one-line message)."""
    try:
        train(config)
    except RuntimeError as error:
        if str(error).startswith("training stopped"):
            print(f"{prog}: {error}", file=sys.stderr)
            return 1
        raise
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


def _score_summary(result: dict, config: TrainConfig) -> dict[str, Any]:
    """The final validation result for results.json (and its line on stdout)."""
    from hgkeras.evaluation.evaluate import summary_key
    from hgkeras.training.recipes import config_pose

    spec = config_pose(config)
    metric = validation_metric(config)
    if metric == "val_ap":
        print(f"Final OKS AP (flip {config.flip_eval}): {result['AP']:.3f}", flush=True)
        return {"oks": result, "val_ap": result["AP"]}
    key = summary_key(result)
    name = "PCKh" if spec.metric == "pckh" else "PCK"
    protocol = f"{config.pckh_protocol} protocol, " if spec.metric == "pckh" else ""
    line = (
        f"Final {name}@{spec.threshold:g} ({protocol}flip {config.flip_eval}): "
        f"{key} {float(result[key]):.2f}"
    )
    if "mean_error_px" in result:
        line += f"; mean error {float(result['mean_error_px']):.2f} px"
    print(line, flush=True)
    scores = {
        k: (float(v) if isinstance(v, (int, float)) else v)
        for k, v in result.items()
        if not hasattr(v, "shape")
    }
    return {spec.metric: scores, metric: float(result[key])}
