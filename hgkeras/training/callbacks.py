"""Training-run callbacks: crash-safe backup, learning-rate schedule, NaN stop, model and CSV logs.

These are used by :mod:`hgkeras.training.run`; each works under every Keras backend.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from hgkeras.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from hgkeras.training._keras_internals import start_fit_at_epoch


def step_learning_rate(
    epoch: int, base: float, drops: Sequence[int], factor: float = 0.1, warmup: int = 0
) -> float:
    """The learning rate of (0-based) ``epoch``: ``base`` times ``factor`` once per drop epoch reached.

    With ``drops=(60, 90)`` epochs 0-59 use ``base``, 60-89 ``base * factor``, 90+ ``base * factor**2``.
    With ``warmup`` N, epochs 0..N-1 ramp linearly up: epoch e uses ``(e + 1) / N`` of that rate.
    A pure function of the epoch index, so a resumed run gets the same rate as an uninterrupted one.
    """
    passed = sum(1 for d in drops if epoch >= int(d))
    rate = float(base) * float(factor) ** passed
    if warmup and epoch < warmup:
        rate *= (epoch + 1) / warmup
    return rate


def step_schedule(base: float, drops: Sequence[int], factor: float = 0.1, warmup: int = 0):
    """A ``keras.callbacks.LearningRateScheduler`` applying :func:`step_learning_rate` per epoch."""
    drops = tuple(int(d) for d in drops)

    def schedule(epoch: int, lr: float | None = None) -> float:
        return step_learning_rate(epoch, base, drops, factor, warmup)

    return keras.callbacks.LearningRateScheduler(schedule)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` through a temporary file and a rename."""
    atomic_write_json(path, data)


def save_model_atomic(model: keras.Model, path: str | os.PathLike) -> None:
    """``model.save(path)`` (a ``.keras`` file) through a temporary name and a rename."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def weights_are_finite(model: keras.Model) -> bool:
    """True when every weight of ``model`` is finite (never checkpoint a diverged network)."""
    return all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)


#: Broadcast of numpy arrays from the chief to every process (a collective: all processes call it).
Broadcast = Callable[[list[np.ndarray]], list[np.ndarray]]


class CrashSafeBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose backup survives a SIGKILL at any moment.

    Keras writes the weights file and the epoch counter in place, so a kill during the write leaves a
    corrupt file or a counter that disagrees with the weights. Here every backup goes to a new file
    ``epoch-NNNN.weights.h5`` (model weights and optimizer state) and only then is ``state.json``
    (the epoch counter and the file name) replaced by a rename: the commit point. Older files are
    removed afterwards. Restoring reads ``state.json`` and loads the file it names, from
    ``restore_dir`` when given. Weights that are not finite are never backed up: a diverged epoch
    leaves the last finite state.

    Several processes (multi-worker TF, multi-process JAX): only the chief (``chief=True``) reads
    a backup. ``broadcast`` (called by every process) hands the chief's epoch and committed weights
    file to the others, which write it into their own ``backup_dir`` (a scratch folder) and load it
    with the same call as the chief: every process resumes from the chief's state, no shared file
    system is needed, and the loads (collective under JAX) match on every process.
    """

    STATE = "state.json"

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        delete_checkpoint: bool = False,
        restore_dir: str | os.PathLike | None = None,
        broadcast: Broadcast | None = None,
        chief: bool = True,
    ) -> None:
        super().__init__(str(backup_dir), save_freq="epoch", delete_checkpoint=delete_checkpoint)
        self._dir = Path(backup_dir)
        self._restore_dir = Path(restore_dir) if restore_dir is not None else self._dir
        self._broadcast = broadcast
        self._chief = bool(chief)
        if not self._chief and broadcast is None:
            raise ValueError("a non-chief backup callback needs the chief's broadcast")

    @property
    def state_path(self) -> Path:
        return self._dir / self.STATE

    @classmethod
    def read_state_file(cls, backup_dir: str | os.PathLike) -> dict | None:
        """The committed state ``{"epoch", "weights"}`` of ``backup_dir``, or None when none."""
        path = Path(backup_dir) / cls.STATE
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise OSError(f"{path}: unreadable backup state ({error})") from None

    def read_state(self) -> dict | None:
        """The committed backup state of this callback's own directory."""
        return self.read_state_file(self._dir)

    def _load_model(self) -> None:
        state = self.read_state_file(self._restore_dir) if self._chief else None
        if state is not None:
            weights = self._restore_dir / state["weights"]
            if not weights.exists():
                raise FileNotFoundError(
                    f"{self._restore_dir / self.STATE} names {weights}, which is missing"
                )
        if self._broadcast is not None:
            received = self._share_chief_backup(state)
            if received is None:
                return
            weights, epoch = received
        elif state is None:
            return
        else:
            epoch = int(state["epoch"])
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(weights))
        start_fit_at_epoch(self.model, epoch)
        where = weights if self._chief else "the chief's backup"
        print(f"Resuming from {where} after epoch {epoch}.", file=sys.stderr, flush=True)

    def _share_chief_backup(self, state: dict | None) -> tuple[Path, int] | None:
        """(this process's copy of the chief's weights file, epoch), or None when it has none."""
        data = (self._restore_dir / state["weights"]).read_bytes() if state else b""
        epoch = int(state["epoch"]) if state else -1
        header = np.asarray([epoch, len(data) >> 30, len(data) & (2**30 - 1)], np.int32)
        epoch, high, low = (int(v) for v in self._broadcast([header])[0])
        if epoch < 0:
            return None
        size = (high << 30) + low
        buffer = np.zeros(-(-size // 4) * 4, np.uint8)
        buffer[: len(data)] = np.frombuffer(data, np.uint8)
        received = self._broadcast([buffer.view(np.int32)])[0].view(np.uint8)[:size]
        if self._chief:
            return self._restore_dir / state["weights"], epoch
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._dir / f"chief-epoch-{epoch:04d}.weights.h5"
        atomic_write_bytes(path, received.tobytes())
        return path, epoch

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._load_model()

    def _save_model(self) -> None:
        if not weights_are_finite(self.model):
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        epoch = int(self._current_epoch)
        name = f"epoch-{epoch:04d}.weights.h5"
        tmp = self._dir / f".tmp{os.getpid()}-{name}"  # Keras wants the .weights.h5 suffix
        self.model.save_weights(str(tmp), overwrite=True)
        os.replace(tmp, self._dir / name)
        atomic_write_text(self.state_path, json.dumps({"epoch": epoch, "weights": name}))
        for old in self._dir.glob("*epoch-*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.delete_checkpoint and self._dir.exists():
            for path in self._dir.iterdir():
                path.unlink(missing_ok=True)
            self._dir.rmdir()


class StopOnNaN(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is NaN or infinite, naming the step.

    The loss of a batch is read when the next batch ends (and at the epoch's end), so the host never
    waits for the step that is running: Keras keeps dispatching steps asynchronously. After the run,
    ``message`` holds the report (None if the loss stayed finite).
    """

    def __init__(self, steps_per_epoch: int | None = None) -> None:
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.message: str | None = None
        self._pending: tuple[int, dict] | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch
        self._pending = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._pending is not None:
            self._check(*self._pending)
        self._pending = (batch, dict(logs)) if logs and "loss" in logs else None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._pending is not None:
            self._check(*self._pending)
            self._pending = None

    def _check(self, batch: int, logs: dict) -> None:
        if self.message is not None:
            return
        loss = _scalar(logs["loss"])
        if math.isfinite(loss):
            return
        where = f"epoch {self.epoch + 1}, step {batch + 1}"
        if self.steps_per_epoch:
            where += f" (global step {self.epoch * self.steps_per_epoch + batch + 1})"
        bad = {k: _scalar(v) for k, v in logs.items() if k.endswith("loss")}
        detail = ", ".join(f"{k}={v}" for k, v in bad.items())
        self.message = f"loss became {loss} at {where} ({detail})"
        print(f"\nNaN stop: {self.message}", file=sys.stderr, flush=True)
        self.model.stop_training = True


def _scalar(value) -> float:
    return float(np.asarray(keras.ops.convert_to_numpy(value)).reshape(-1)[0])


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the pose network (``model.hourglass`` if present) whenever ``monitor`` improves.

    The best value so far is kept in ``state_path`` (JSON) so that a resumed run does not overwrite a
    better model with a worse one. Files are written under a temporary name and renamed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        state_path: str | os.PathLike,
        monitor: str = "val_pckh",
        mode: str = "max",
    ) -> None:
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.path = Path(path)
        self.state_path = Path(state_path)
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.state_path.exists() and self.path.exists():
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            if state.get("monitor") == self.monitor:
                self.best = float(state["best"])
                self.best_epoch = int(state["epoch"])

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not logs or self.monitor not in logs:
            return
        value = _scalar(logs[self.monitor])
        if not math.isfinite(value) or not self._better(value):
            return
        if not weights_are_finite(self.model):
            return
        self.best, self.best_epoch = value, epoch + 1
        save_model_atomic(getattr(self.model, "hourglass", self.model), self.path)
        write_json_atomic(
            self.state_path,
            {"monitor": self.monitor, "best": value, "epoch": epoch + 1, "path": self.path.name},
        )


class LastModelCheckpoint(keras.callbacks.Callback):
    """Save the pose network (``model.hourglass`` if present) at the end of every epoch, atomically."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if weights_are_finite(self.model):
            save_model_atomic(getattr(self.model, "hourglass", self.model), self.path)


class ResumableCSVLogger(keras.callbacks.Callback):
    """One CSV row per epoch (``epoch`` 1-based, then the logs), consistent across resumes.

    Unlike ``keras.callbacks.CSVLogger`` it keeps columns that first appear in later epochs (e.g.
    ``val_pckh`` with ``--val-every``), and on resume it drops rows of epochs that are run again,
    so the log reads as one uninterrupted run. The file is rewritten atomically each epoch.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        self.rows: list[dict[str, str]] = []
        self.columns: list[str] = ["epoch"]
        self._started = False

    def _read(self) -> None:
        self.rows, self.columns = [], ["epoch"]
        if not self.path.exists():
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            self.columns = list(reader.fieldnames or ["epoch"])
            self.rows = [dict(r) for r in reader]

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self._started:
            return
        self._started = True
        self._read()
        self.rows = [r for r in self.rows if int(r["epoch"]) <= epoch]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"epoch": str(epoch + 1)}
        for key, value in (logs or {}).items():
            array = np.asarray(keras.ops.convert_to_numpy(value))
            if array.size != 1:
                continue
            row[key] = repr(float(array.reshape(-1)[0]))
            if key not in self.columns:
                self.columns.append(key)
        self.rows.append(row)
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)


def read_csv_log(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a :class:`ResumableCSVLogger` file."""
    with open(path, newline="", encoding="utf-8") as f:
        return [dict(r) for r in csv.DictReader(f)]


class ScalarTensorBoard(keras.callbacks.Callback):
    """Write every scalar of the epoch logs (losses per stack, learning rate, PCKh) as TensorBoard scalars.

    Uses TensorFlow's core summary writer (``tf.summary.write`` with the ``scalars`` plugin tag), so it
    needs no ``tensorboard`` package and works under every Keras backend. Training values go to
    ``log_dir/train``, ``val_*`` values to ``log_dir/validation``; the step is the 1-based epoch.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, Any] = {}

    def _writer(self, name: str):
        import tensorflow as tf

        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.log_dir / name))
        return self._writers[name]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        groups: dict[str, dict[str, float]] = {}
        for key, value in (logs or {}).items():
            array = np.asarray(keras.ops.convert_to_numpy(value))
            if array.size != 1:
                continue
            group, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            groups.setdefault(group, {})[f"epoch_{tag}"] = float(array.reshape(-1)[0])
        with tf.device("/cpu:0"):
            for group, values in groups.items():
                writer = self._writer(group)
                with writer.as_default():
                    for tag, value in values.items():
                        tf.summary.write(
                            tag, tf.constant(value, tf.float32), step=epoch + 1, metadata=metadata
                        )
                writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def read_tensorboard_scalars(directory: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of the scalar summaries in a TensorBoard event directory."""
    import tensorflow as tf

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = (
                    float(tf.make_ndarray(value.tensor))
                    if value.HasField("tensor")
                    else value.simple_value
                )
                scalars.setdefault(value.tag, []).append((int(event.step), number))
    return scalars
