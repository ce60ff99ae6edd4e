"""How a training run is spread over devices, processes and machines, and each process's role.

:func:`select_distribution` picks data parallelism for the active backend and the visible devices
(``docs/training.md`` "Several GPUs and machines"); :class:`Distribution` carries the strategy and this
process's role, and broadcasts the chief's state to the other processes (resuming needs no shared
file system). :func:`check_distribution_settings` refuses, up front, settings Keras cannot run there.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hgkeras.training.recipes import TrainConfig


@dataclass
class Distribution:
    """How the run is spread: a description, the TF strategy (or None) and this process's role.

    ``num_inputs`` input pipelines (workers or processes) each read shard ``input_index`` of the
    records; ``is_chief`` is the one process whose files are the run's result.
    """

    description: str
    strategy: Any = None
    num_replicas: int = 1
    is_chief: bool = True
    worker_index: int = 0
    num_inputs: int = 1
    jax_multi_process: bool = False

    def scope(self):
        import contextlib

        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def broadcast_from_chief(self, arrays: list) -> list:
        """``arrays`` (numpy) as the chief holds them, on every process; each must call it with
        arrays of the same shapes and dtypes. The identity with one input pipeline."""
        import numpy as np

        arrays = [np.asarray(a) for a in arrays]
        if self.num_inputs == 1:
            return arrays
        if self.jax_multi_process:
            from jax.experimental import multihost_utils

            shared = multihost_utils.broadcast_one_to_all(arrays)
        else:
            shared = _tf_broadcast_from_chief(self.strategy, arrays)
        return [
            np.asarray(s).astype(a.dtype).reshape(a.shape)
            for s, a in zip(shared, arrays, strict=True)
        ]


def _tf_broadcast_from_chief(strategy, arrays: list) -> list:
    """Broadcast from global replica 0 (the chief's first device) to every worker: one all-reduce
    (``ReplicaContext.all_reduce``) to which the other replicas contribute zeros.

    Floating arrays travel as they are; integer arrays of up to 32 bits as float32 pairs of 16-bit
    halves (exact, and float32 all-reduces exist on every device, integer ones not everywhere).
    """
    import numpy as np
    import tensorflow as tf

    wire = []
    for a in arrays:
        if a.dtype.kind == "f":
            wire.append(a.astype(np.float64 if a.dtype == np.float64 else np.float32))
        elif a.dtype.kind in "iub" and a.dtype.itemsize <= 4:
            bits = a.astype(np.int64) & 0xFFFFFFFF
            wire.append(np.stack([bits & 0xFFFF, bits >> 16]).astype(np.float32))
        else:
            raise ValueError(f"cannot broadcast {a.dtype} arrays")

    def replica_fn(*values):
        context = tf.distribute.get_replica_context()
        keep = tf.equal(context.replica_id_in_sync_group, 0)
        return context.all_reduce(
            tf.distribute.ReduceOp.SUM, [tf.where(keep, v, tf.zeros_like(v)) for v in values]
        )

    shared = tf.function(lambda *values: strategy.run(replica_fn, args=values))(
        *[tf.constant(w) for w in wire]
    )
    results = []
    for a, value in zip(arrays, shared, strict=True):
        value = strategy.experimental_local_results(value)[0].numpy()
        if a.dtype.kind != "f":
            low, high = value.astype(np.int64)
            bits = (low + (high << 16)).astype(np.uint32)
            value = bits.view(np.int32) if a.dtype.kind == "i" else bits
        results.append(value)
    return results


def check_distribution_settings(config: TrainConfig, dist: Distribution) -> None:
    """Refuse, at the start and in one line, settings that Keras cannot run under ``dist``."""
    import keras

    if dist.strategy is None:
        return
    if config.jit_compile is True:
        # Keras compiles the whole cross-replica step (strategy.run and the all-reduce) as one XLA
        # function, which XLA places on a single device: it fails on several GPUs as on logical CPU
        # devices ("tf.Variable on a different device"; keras-team/keras#18145), and Keras' own
        # jit_compile="auto" turns XLA off under tf.distribute.
        raise ValueError(
            f"--jit-compile does not work under {dist.description} with Keras "
            f"{keras.__version__} (Keras compiles the whole multi-device step as one XLA function, "
            "which XLA cannot place on several devices); leave --jit-compile at its default (Keras "
            "then runs tf.distribute without XLA) or use KERAS_BACKEND=jax, whose DataParallel "
            "step is XLA-compiled"
        )
    if config.steps_per_execution > 1:
        # Keras runs the steps in a tf.while_loop whose tf.cond around the step calls the
        # optimizer's merge_call: "You must feed a value for placeholder tensor ..." even for a
        # Dense model (keras-team/keras#19246, open; benchmarks/training_scaling.py).
        raise ValueError(
            f"--steps-per-execution {config.steps_per_execution} does not work under "
            f"{dist.description} with Keras {keras.__version__} (its multi-step loop fails under "
            "tf.distribute, keras-team/keras#19246); use --steps-per-execution 1 there, or N > 1 "
            "on one device or with KERAS_BACKEND=jax"
        )


def _tf_config_role() -> tuple[bool, int]:
    """(is_chief, worker index) from ``TF_CONFIG``."""
    try:
        tf_config = json.loads(os.environ["TF_CONFIG"])
        task = tf_config.get("task", {})
        task_type, index = task.get("type", "worker"), int(task.get("index", 0))
        cluster = tf_config.get("cluster", {})
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"TF_CONFIG is not valid JSON with cluster and task: {error}") from None
    if not cluster or task_type not in cluster:
        raise ValueError(f"TF_CONFIG: task type {task_type!r} is not in its cluster {cluster}")
    if "chief" in cluster:
        return task_type == "chief", index
    return task_type == "worker" and index == 0, index


#: What the message for an unsupported multi-device request names.
MULTI_DEVICE_BACKENDS = (
    "several devices or machines are supported by KERAS_BACKEND=tensorflow (tf.distribute: all "
    "local GPUs, TF_CONFIG for machines) and KERAS_BACKEND=jax (keras.distribution: all local "
    "devices, KERAS_DISTRIBUTION_* for processes)"
)


def select_distribution(batch_size: int) -> Distribution:
    """Pick data parallelism for the active backend and the visible devices.

    TensorFlow: ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` is set, ``MirroredStrategy`` over
    all GPUs when there are several, else none. JAX: ``keras.distribution.initialize`` when
    ``KERAS_DISTRIBUTION_NUM_PROCESSES`` > 1 (with ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` and
    ``KERAS_DISTRIBUTION_PROCESS_ID``), then ``DataParallel`` over all devices of all processes
    when there are several. Torch: one device (a multi-process request is refused). Must run before
    any model or dataset is created.
    """
    import keras

    backend = keras.backend.backend()
    processes = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1") or 1)
    if backend == "tensorflow":
        import tensorflow as tf

        if os.environ.get("TF_CONFIG"):
            is_chief, index = _tf_config_role()
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            spec = strategy.cluster_resolver.cluster_spec()
            workers = sum(spec.num_tasks(job) for job in spec.jobs if job in ("chief", "worker"))
            return Distribution(
                f"MultiWorkerMirroredStrategy ({workers} workers, "
                f"{strategy.num_replicas_in_sync} replicas)",
                strategy,
                strategy.num_replicas_in_sync,
                is_chief,
                index,
                num_inputs=workers,
            )
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1:
            strategy = tf.distribute.MirroredStrategy()
            return Distribution(
                f"MirroredStrategy ({strategy.num_replicas_in_sync} GPUs)",
                strategy,
                strategy.num_replicas_in_sync,
            )
        return Distribution("single device (" + (gpus[0].name if gpus else "CPU") + ")")
    if backend == "jax":
        import jax

        from hgkeras.data.pipeline import keep_tensorflow_off_accelerators

        keep_tensorflow_off_accelerators()
        if processes > 1:
            keras.distribution.initialize()
        devices = jax.devices()
        process, count = jax.process_index(), jax.process_count()
        if len(devices) > 1:
            if batch_size % len(devices):
                raise ValueError(
                    f"--batch-size {batch_size} must be divisible by the {len(devices)} JAX devices"
                )
            # The records are sharded per process by pose_dataset (before decoding), not by Keras.
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
            )
            where = f", {count} processes" if count > 1 else ""
            return Distribution(
                f"keras DataParallel ({len(devices)} JAX devices{where})",
                None,
                len(devices),
                is_chief=process == 0,
                worker_index=process,
                num_inputs=count,
                jax_multi_process=count > 1,
            )
        return Distribution(f"single device ({devices[0]})")
    if processes > 1 or os.environ.get("TF_CONFIG") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            f"the {backend} backend of Keras trains on one device only; {MULTI_DEVICE_BACKENDS}"
        )
    if backend == "torch":
        import torch

        if torch.cuda.device_count() > 1:
            print(
                f"note: training on one of {torch.cuda.device_count()} GPUs; "
                + MULTI_DEVICE_BACKENDS,
                file=sys.stderr,
                flush=True,
            )
    return Distribution(f"single device ({backend})")


def scratch_dir(out: Path, worker_index: int) -> Path:
    """The temporary output folder of non-chief worker ``worker_index`` of the run into ``out``."""
    key = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"hgkeras-{key}-worker{worker_index}"
