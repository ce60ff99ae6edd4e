"""Model speed per backend against the machine's matrix-multiply limit.

For each backend (each in its own process, since Keras reads KERAS_BACKEND at import) and for
2 and 8 stacks at batch 1 and 8 (256x256 input, f=256, J=16) this measures:

* inference images/s through ``predict_on_batch`` (the compiled Keras predict step) of the network as
  ``PosePredictor``, ``hgkeras evaluate`` and the exports run it: ``fold_batch_norms(model)``, each
  conv -> BatchNorm pair folded into one conv; and of the model as trained (``unfolded`` columns);
* training images/s through ``model.train_on_batch`` (RMSprop, one MSE loss per stack);
* ONNX Runtime inference images/s of the folded network converted with tf2onnx (as exported).

It also measures the float32 matrix-multiply rate of the machine (the best of numpy and each
framework on a large square matmul) and reports every result as a fraction of the limit it implies:
``MACs x 2 x images/s / matmul FLOP/s`` (forward MACs for inference, 3x forward for training:
forward + gradients with respect to activations and weights).

Usage::

    python benchmarks/model_speed.py                       # CPU, all backends, prints a table, writes JSON
    python benchmarks/model_speed.py --backends tensorflow --stacks 2 --quick
    python benchmarks/model_speed.py --gpu                 # 8-stack training, mixed precision + XLA, TF and JAX
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _workers import emit, spawn_worker, timed  # noqa: E402

# ----------------------------------------------------------------------------- worker side


def _sync(backend: str, value) -> None:
    """Block until ``value`` is computed (JAX dispatches asynchronously)."""
    if backend == "jax":
        import jax

        jax.block_until_ready(value)


def _framework_matmul_flops(backend: str, size: int, dtype: str, min_time: float) -> float:
    import keras
    import numpy as np
    from keras import ops

    a = ops.convert_to_tensor(np.random.default_rng(0).random((size, size)), dtype=dtype)
    b = ops.convert_to_tensor(np.random.default_rng(1).random((size, size)), dtype=dtype)
    if backend == "jax":
        import jax

        fn = jax.jit(lambda x, y: x @ y)
    elif backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda x, y: tf.matmul(x, y), jit_compile=False)
    else:
        fn = ops.matmul
    seconds, _ = timed(lambda: _sync(backend, fn(a, b)), min_time, 3, 2)
    del keras
    return 2.0 * size**3 / seconds


def _onnx_rates(model, batches: list[int], min_time: float, threads: int) -> dict[int, float]:
    import numpy as np
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="images"),)

    @tf.function(input_signature=spec)
    def forward(images):
        return {"heatmaps": model(images, training=False)[-1]}

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rates = {}
    for batch in batches:
        x = np.random.default_rng(0).random((batch, *model.input_shape[1:]), dtype=np.float32)
        seconds, _ = timed(lambda x=x: session.run(None, {"images": x}), min_time, 3, 2)
        rates[batch] = batch / seconds
    return rates


def run_worker(args: argparse.Namespace) -> None:
    """Measure one Keras backend; stream JSON lines (header, rows, done) on stdout."""
    import keras
    import numpy as np

    sys.path.insert(0, str(REPO))
    from hgkeras import StackedHourglass, compile_model, count_macs
    from hgkeras.models.fold import fold_batch_norms

    backend = keras.backend.backend()
    if args.gpu:
        keras.mixed_precision.set_global_policy(
            "mixed_bfloat16" if backend == "jax" else "mixed_float16"
        )
    jit_modes = {"tensorflow": [True, False], "jax": [True], "torch": [False]}[backend]
    if args.torch_compile and backend == "torch":
        jit_modes = [False, True]
    matmul_dtype = (
        "float16" if args.gpu and backend != "jax" else ("bfloat16" if args.gpu else "float32")
    )
    emit({
        "backend": backend,
        "devices": _device_names(backend),
        "matmul_flops": _framework_matmul_flops(backend, args.matmul_size, matmul_dtype, args.min_time),
        "matmul_dtype": matmul_dtype,
    })  # fmt: skip
    for stacks in args.stacks:
        model = StackedHourglass(num_stacks=stacks)
        folded = None if args.gpu else fold_batch_norms(model)
        macs = count_macs(model)
        for batch in args.batches:
            rng = np.random.default_rng(0)
            x = rng.random((batch, 256, 256, 3), dtype=np.float32)
            y = [rng.random((batch, 64, 64, 16), dtype=np.float32)] * stacks
            for jit in jit_modes:
                row = {"stacks": stacks, "batch": batch, "jit_compile": jit, "macs": macs}
                if not args.gpu:
                    for key, network in (
                        ("inference_images_per_s", folded),
                        ("inference_unfolded_images_per_s", model),
                    ):
                        network.compile(jit_compile=jit)  # inference only: no optimizer needed
                        seconds, calls = timed(
                            lambda x=x, net=network: _sync(backend, net.predict_on_batch(x)),
                            args.min_time, args.min_steps, args.warmup,
                        )  # fmt: skip
                        row[key] = batch / seconds
                compile_model(model, jit_compile=jit)
                seconds, calls = timed(
                    lambda x=x, y=y, model=model: _sync(backend, model.train_on_batch(x, y)),
                    args.min_time, args.min_steps, args.warmup,
                )  # fmt: skip
                row["training_images_per_s"] = batch / seconds
                row["training_steps_timed"] = calls
                emit({"row": row})
                print(f"[{backend}] {row}", file=sys.stderr, flush=True)
    emit({"done": True})


def run_onnx_worker(args: argparse.Namespace) -> None:
    """ONNX Runtime inference per stack count, in its own process (tf2onnx needs much memory)."""
    import keras

    sys.path.insert(0, str(REPO))
    from hgkeras import StackedHourglass, count_macs
    from hgkeras.models.fold import fold_batch_norms

    emit({"backend": "onnx", "devices": ["cpu"]})
    for stacks in args.stacks:
        keras.backend.clear_session()
        model = StackedHourglass(num_stacks=stacks)
        rates = _onnx_rates(
            fold_batch_norms(model), args.batches, args.min_time, os.cpu_count() or 1
        )
        for batch, rate in rates.items():
            row = {"stacks": stacks, "batch": batch, "runtime": "onnxruntime",
                   "macs": count_macs(model), "inference_images_per_s": rate}  # fmt: skip
            emit({"row": row})
            print(f"[onnxruntime] {row}", file=sys.stderr, flush=True)
    emit({"done": True})


def _device_names(backend: str) -> list[str]:
    if backend == "tensorflow":
        import tensorflow as tf

        names = []
        for device in tf.config.list_physical_devices():
            details = (
                tf.config.experimental.get_device_details(device)
                if device.device_type == "GPU"
                else {}
            )
            names.append(details.get("device_name", device.name))
        return names
    if backend == "jax":
        import jax

        return [getattr(d, "device_kind", str(d)) for d in jax.devices()]
    import torch

    return [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else ["cpu"]


# ----------------------------------------------------------------------------- parent side


def numpy_matmul_flops(size: int, min_time: float) -> float:
    import numpy as np

    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = np.random.default_rng(1).random((size, size), dtype=np.float32)
    seconds, _ = timed(lambda: a @ b, min_time, 3, 1)
    return 2.0 * size**3 / seconds


def cpu_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--stacks", default="2,8", help="comma-separated stack counts")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--min-time", type=float, default=4.0, help="seconds timed per measurement")
    parser.add_argument("--min-steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--no-onnx", dest="onnx", action="store_false")
    parser.add_argument(
        "--torch-compile", action="store_true", help="also time jit_compile=True (torch.compile)"
    )
    parser.add_argument(
        "--gpu", action="store_true", help="8-stack training with mixed precision + XLA on a GPU"
    )
    parser.add_argument("--quick", action="store_true", help="short timings (smoke run)")
    parser.add_argument(
        "--out", type=Path, help="JSON output (default benchmarks/results/model_speed[_gpu].json)"
    )
    parser.add_argument(
        "--update", action="store_true", help="keep rows of runtimes not re-run from --out"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.stacks = [int(s) for s in str(args.stacks).split(",")]
    args.batches = [int(b) for b in str(args.batches).split(",")]
    if args.quick:
        args.min_time, args.min_steps, args.warmup, args.matmul_size = 1.0, 1, 1, 2048
    if args.gpu:
        args.stacks = [8] if args.stacks == [2, 8] else args.stacks
        args.batches = [16] if args.batches == [1, 8] else args.batches
        if args.backends == "tensorflow,jax,torch":
            args.backends = "tensorflow,jax"
    if args.worker == "onnx":
        run_onnx_worker(args)
        return
    if args.worker:
        run_worker(args)
        return

    numpy_flops = None if args.gpu else numpy_matmul_flops(args.matmul_size, args.min_time)
    out = args.out or RESULTS / ("model_speed_gpu.json" if args.gpu else "model_speed.json")
    names = args.backends.split(",")
    if args.onnx and not args.gpu and "onnx" not in names:
        names.append("onnx")
    workers = []
    for name in names:
        backend = "tensorflow" if name == "onnx" else name
        print(f"running {name} ...", file=sys.stderr, flush=True)
        code, messages = spawn_worker(
            __file__, backend, ["--worker", name, *sys.argv[1:]], cpu_only=not args.gpu
        )
        worker: dict = {"backend": name, "results": [], "matmul_flops": None, "complete": False}
        for message in messages:
            if "row" in message:
                worker["results"].append(message["row"])
            elif message.get("done"):
                worker["complete"] = True
            else:
                worker.update(message)
        if code != 0 or not worker["complete"]:
            print(
                f"{name} worker stopped early (exit code {code}); keeping its "
                f"{len(worker['results'])} measured rows",
                file=sys.stderr,
            )
        workers.append(worker)

    previous = []
    if args.update and out.exists():
        # keep the rows of runtimes not re-measured now (their fractions are recomputed below)
        old = json.loads(out.read_text())
        rerun = {w["backend"] for w in workers}
        previous = [r for r in old.get("raw_rows", []) if r["_worker"] not in rerun]
        numpy_flops = (
            max(numpy_flops or 0.0, old.get("matmul_flops", {}).get("numpy") or 0.0) or None
        )
        for backend, flops in old.get("matmul_flops", {}).items():
            if backend != "numpy" and backend not in rerun and flops:
                workers.append({"backend": backend, "results": [], "matmul_flops": flops})
    flops_seen = [w["matmul_flops"] for w in workers if w.get("matmul_flops")]
    limit = max(flops_seen + ([numpy_flops] if numpy_flops else []))
    raw_rows = previous + [dict(r, _worker=w["backend"]) for w in workers for r in w["results"]]
    rows = []
    for r in sorted(raw_rows, key=lambda r: (r["_worker"], r["stacks"], r["batch"])):
        runtime = r.get(
            "runtime", f"keras/{r['_worker']}" + ("+jit" if r.get("jit_compile") else "")
        )
        row = {"runtime": runtime, "stacks": r["stacks"], "batch": r["batch"]}
        for kind in ("inference", "inference_unfolded"):
            if f"{kind}_images_per_s" in r:
                ips = r[f"{kind}_images_per_s"]
                row[f"{kind}_images_per_s"] = round(ips, 3)
                row[f"{kind}_fraction_of_limit"] = round(r["macs"] * 2 * ips / limit, 3)
        if "training_images_per_s" in r:
            ips = r["training_images_per_s"]
            row["training_images_per_s"] = round(ips, 3)
            row["training_fraction_of_limit"] = round(3 * r["macs"] * 2 * ips / limit, 3)
        rows.append(row)
    result = {
        "benchmark": "model_speed",
        "date": time.strftime("%Y-%m-%d"),
        "machine": cpu_description()
        if not args.gpu
        else ", ".join(workers[0].get("devices", ["?"]) if workers else ["?"]),
        "device": "gpu" if args.gpu else "cpu",
        "precision": "mixed (float16 TF / bfloat16 JAX)" if args.gpu else "float32",
        "matmul_flops_limit": limit,
        "matmul_flops": {
            "numpy": numpy_flops,
            **{w["backend"]: w["matmul_flops"] for w in workers},
        },
        "macs_per_image": {"2": 8.33e9, "8": 27.44e9},
        "rows": rows,
        "raw_rows": raw_rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)

    print(
        f"\nmachine: {result['machine']}; matmul limit {limit / 1e9:.1f} GFLOP/s ({result['precision']})"
    )
    header = (
        f"{'runtime':22s} {'stacks':>6s} {'batch':>5s} {'infer img/s':>11s} {'of limit':>8s} "
        f"{'unfolded':>8s} {'train img/s':>11s} {'of limit':>8s}"
    )
    print(header)
    print("-" * len(header))
    print(f"{'':36s}(infer: BatchNorms folded, as exported; unfolded: the model as trained)")
    for r in rows:
        inf = (
            f"{r['inference_images_per_s']:11.2f} {r['inference_fraction_of_limit']:8.0%}"
            if "inference_images_per_s" in r
            else f"{'-':>11s} {'-':>8s}"
        )
        unfolded = (
            f"{r['inference_unfolded_fraction_of_limit']:8.0%}"
            if "inference_unfolded_images_per_s" in r
            else f"{'-':>8s}"
        )
        tr = (
            f"{r['training_images_per_s']:11.2f} {r['training_fraction_of_limit']:8.0%}"
            if "training_images_per_s" in r
            else f"{'-':>11s} {'-':>8s}"
        )
        print(f"{r['runtime']:22s} {r['stacks']:6d} {r['batch']:5d} {inf} {unfolded} {tr}")
    print(f"\nwrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


if __name__ == "__main__":
    main()
