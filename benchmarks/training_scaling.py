"""Training and validation speed on one device against two (TensorFlow, logical CPU devices).

The CPU stands in for accelerators: it is split into two logical devices
(``tf.config.set_logical_device_configuration``) and ``PoseTrainer.fit`` runs on one of them, then
under ``MirroredStrategy`` over both, with the same global batch, so the table shows the overhead of
the replicated step (on a real multi-GPU machine each replica has its own chip; here they share the
cores, so two replicas cannot be faster). It measures:

* training steps/s and images/s of ``fit`` (augmentation and targets on the device, as in
  ``train.py``) for 1 and 2 replicas (and ``steps_per_execution`` 4 on one device), and whether
  ``jit_compile=True`` and ``steps_per_execution`` > 1 work under ``MirroredStrategy``;
* forward+backward step time of a 1-stack hourglass in float32 and ``mixed_bfloat16`` under
  TensorFlow, JAX and PyTorch (one thread each, the policies interleaved; ``--only precision``
  re-measures just this part): the fused BatchNorm/convolution paths must keep reduced precision
  faster than float32;
* validation images/s with the flip test (``hgkeras.codec.HeatmapCodec.heatmap_function``): the
  eager call that ``PosePredictor`` makes against the compiled one-batch predictor that the PCKh
  callback and ``hgkeras evaluate`` use (``compiled=True``). (The committed figures' eager rows
  were measured with the earlier eager path, two forward passes per batch.)

Usage::

    python benchmarks/training_scaling.py            # prints a table, writes results/training_scaling.json
    python benchmarks/training_scaling.py --quick
    python benchmarks/training_scaling.py --only precision   # updates that part of the results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _workers import emit, spawn_worker, timed  # noqa: E402

from hgkeras.io import atomic_write_json  # noqa: E402


def _network(args):
    from hgkeras.models.hourglass import StackedHourglass

    return StackedHourglass(
        num_stacks=args.stacks,
        num_features=args.features,
        num_joints=16,
        depth=4,
        image_shape=(args.input_size, args.input_size, 3),
        pose="mpii",
    )


def _train_rate(args, strategy, steps_per_execution: int, jit_compile) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from hgkeras.training.trainer import PoseTrainer

    source = int(args.input_size * 1.5)
    rng = np.random.default_rng(0)
    data = {
        "image": rng.integers(0, 255, (args.batch, source, source, 3)).astype("uint8"),
        "joints": rng.uniform(source * 0.3, source * 0.7, (args.batch, 16, 2)).astype("float32"),
        "visible": np.ones((args.batch, 16), "float32"),
    }
    dataset = tf.data.Dataset.from_tensors(data).repeat()
    with strategy.scope():
        trainer = PoseTrainer(_network(args), seed=0)
        trainer.compile(jit_compile=jit_compile, steps_per_execution=steps_per_execution)
    steps = args.steps - args.steps % steps_per_execution
    trainer.fit(dataset, steps_per_epoch=steps_per_execution * 2, epochs=1, verbose=0)  # warm-up
    start = time.perf_counter()
    trainer.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = (time.perf_counter() - start) / steps
    keras.backend.clear_session()
    return {"steps_per_s": round(1 / seconds, 3), "images_per_s": round(args.batch / seconds, 2)}


def _validation_rates(args) -> list[dict]:
    import keras
    import numpy as np

    from hgkeras.codec import codec_of
    from hgkeras.spec import pose_of

    network = _network(args)
    perm = pose_of(network).flip_permutation
    rows = []
    for batch in args.val_batches:
        images = np.random.default_rng(1).random((batch, args.input_size, args.input_size, 3))
        images = images.astype("float32")
        codec = codec_of(network)
        predictor = codec.heatmap_function(network, perm, flip=True, compiled=True)
        eager = codec.heatmap_function(network, perm, flip=True)
        ways = {
            "eager, one batch (predictor)": lambda x=images, e=eager: keras.ops.convert_to_numpy(
                e(x)
            ),
            "compiled, one batch (now)": lambda x=images, p=predictor: np.asarray(p(x)),
        }
        for name, step in ways.items():
            seconds, _ = timed(step, args.min_time, 2, 1)
            rows.append({"path": name, "batch": batch, "images_per_s": round(batch / seconds, 2)})
    return rows


def _precision_worker(args) -> None:
    """Median forward+backward step (ms) of float32 and mixed_bfloat16 networks, interleaved."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    x = np.random.default_rng(0).uniform(size=(args.batch, args.input_size, args.input_size, 3))
    x = keras.ops.convert_to_tensor(x.astype("float32"))
    steps = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(0)
        network = _network(argparse.Namespace(**{**vars(args), "stacks": 1}))
        steps[policy] = _gradient_step(network, x)
    keras.mixed_precision.set_global_policy("float32")
    times: dict[str, list[float]] = {policy: [] for policy in steps}
    for repeat in range(args.steps + 2):
        for policy, step in steps.items():
            start = time.perf_counter()
            step()
            if repeat >= 2:  # two warm-up rounds
                times[policy].append(time.perf_counter() - start)
    emit({"backend": backend, **{p: round(float(np.median(t)) * 1e3, 1) for p, t in times.items()}})


def _stacks(outputs) -> list:
    """The heatmaps of every stack as a list (a 1-stack network returns one tensor)."""
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _gradient_step(network, x):
    """A callable running one forward and backward pass of ``network`` on ``x`` (loss: mean square)."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":

        def step():
            for weight in network.trainable_weights:
                weight.value.grad = None
            outputs = _stacks(network(x, training=True))
            sum(keras.ops.mean(keras.ops.cast(o, "float32") ** 2) for o in outputs).backward()

        return step
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def tf_step():
            with tf.GradientTape() as tape:
                outputs = _stacks(network(x, training=True))
                loss = tf.add_n([tf.reduce_mean(tf.cast(o, tf.float32) ** 2) for o in outputs])
            return tape.gradient(loss, network.trainable_weights)

        return lambda: [g.numpy() for g in tf_step()]
    import jax

    trainable = [v.value for v in network.trainable_variables]
    frozen = [v.value for v in network.non_trainable_variables]

    def loss(trainable):
        outputs, _ = network.stateless_call(trainable, frozen, x, training=True)
        return sum(jax.numpy.mean(o.astype("float32") ** 2) for o in _stacks(outputs))

    gradient = jax.jit(jax.grad(loss))
    return lambda: jax.block_until_ready(gradient(trainable))


def _precision_rates(args) -> list[dict]:
    rows = []
    flags = ["--batch", str(args.batch), "--input-size", str(args.input_size),
             "--features", str(args.features), "--steps", str(args.steps)]  # fmt: skip
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
    for backend in ("tensorflow", "jax", "torch"):
        code, messages = spawn_worker(__file__, backend, ["--precision-worker", *flags])
        row = messages[-1] if messages else {"backend": backend, "error": f"exit {code}"}
        rows.append(row)
        print(f"step   {row}", flush=True)
    return rows


def _precision_section(args) -> dict:
    """The results' ``reduced_precision_step_ms``: the measured model and its step times."""
    model = {"stacks": 1, "features": args.features, "input_size": args.input_size,
             "batch": args.batch, "threads": 1}  # fmt: skip
    return {"model": model, "steps": _precision_rates(args)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, default=2)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="global training batch")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps")
    parser.add_argument("--val-batches", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--min-time", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "training_scaling.json")
    parser.add_argument("--only", choices=["precision"], help="re-measure one part of the results")
    parser.add_argument("--precision-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.min_time, args.val_batches = 4, 0.5, [16]
    if args.precision_worker:
        _precision_worker(args)
        return 0
    if args.only == "precision":
        result = json.loads(args.out.read_text()) if args.out.exists() else {}
        result["reduced_precision_step_ms"] = _precision_section(args)
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")
        return 0

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    strategies = {
        "1 device": tf.distribute.OneDeviceStrategy("/cpu:0"),
        "2 logical devices (MirroredStrategy)": tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"]
        ),
    }
    mirrored = strategies["2 logical devices (MirroredStrategy)"]
    training = []
    for name, strategy, steps_per_execution in (
        ("1 device", strategies["1 device"], 1),
        ("1 device", strategies["1 device"], 4),
        ("2 logical devices (MirroredStrategy)", mirrored, 1),
    ):
        rate = _train_rate(args, strategy, steps_per_execution, False)
        training.append({"devices": name, "steps_per_execution": steps_per_execution, **rate})
        print(f"train  {name:38s} spe {steps_per_execution}: {rate}", flush=True)
    checks = {}
    for check, (steps_per_execution, jit_compile) in {
        "jit_compile=True under MirroredStrategy": (1, True),
        "steps_per_execution=4 under MirroredStrategy": (4, False),
    }.items():
        try:
            checks[check] = {"works": True, **_train_rate(args, mirrored, steps_per_execution,
                                                          jit_compile)}  # fmt: skip
        except Exception as error:  # recorded: whether Keras supports it under the strategy
            message = " ".join(str(error).split())  # the cause is at the end of TF's message
            checks[check] = {
                "works": False,
                "error": f"{type(error).__name__}: ...{message[-400:]}",
            }
        print(f"train  {check}: {checks[check]}", flush=True)
    validation = _validation_rates(args)
    for row in validation:
        print(f"valid  {row['path']:28s} batch {row['batch']:3d}: {row['images_per_s']} images/s")
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
        "model": {k: getattr(args, k) for k in ("stacks", "features", "input_size", "batch")},
        "note": "2-core CPU shared with other jobs: two logical devices share the same cores",
        "training": training,
        "under_mirrored_strategy": checks,
        "validation_flip_test": validation,
        "reduced_precision_step_ms": _precision_section(args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
