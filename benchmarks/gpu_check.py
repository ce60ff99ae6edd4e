"""GPU check: one command that measures training, inference and the custom layers on a device.

On whatever devices JAX and PyTorch find (a GPU, or the CPU when there is none, which is said in
the output and the JSON), and with TensorFlow unimportable (the GPU machine has none), this records:

* ``device``: device names, versions, and the bfloat16 and float32 matmul rates (the ceiling);
* ``equivalence``: hgkeras' custom layers (BatchNorm, Conv2D, MaxPooling2D,
  NearestUpsample2x + UpsampleAdd) against the stock Keras layers, on the device, in float32 and
  mixed_bfloat16: outputs, gradients (inputs and weights) and BatchNorm's moving statistics;
* ``train``: the ``PoseTrainer`` training step (augmentation and targets on the device, synthetic
  uint8 source crops and joints, ``mixed_bfloat16``) per batch size: first-step (compile) seconds,
  images/s, peak device memory, and ``3 x 2 x MACs x images/s`` as a fraction of the bf16 rate;
* ``inference``: images/s of the folded network (as PosePredictor and the exports run it) per batch;
* ``validation``: predict + flip + decode images/s (``predict_eval_dataset``, as ValidationCallback runs it);
* ``host_syncs``: host synchronisations per training step (torch on CUDA:
  ``torch.cuda.set_sync_debug_mode``; elsewhere recorded as not available);
* ``host_decode``: JPEG decode (OpenCV) + person crop (``crop_person``) images/s on all cores.

Each stage runs in its own process (``KERAS_BACKEND`` set) under its own time limit, and within a
total budget; the JSON is rewritten after every stage, so a stage that fails or runs out of time
keeps the others and records its error. ``--tiny`` runs the same stages with 1 stack, 32 features,
a 64x64 input and batch 2 (a few minutes on a CPU).

``--recipe NAME`` (``docs/training.md`` "Recipes", e.g. ``newell2016``, the paper's Torch code) trains
with that recipe's initialisation, optimiser, learning rate, sigma and augmentation law, at its batch
size first (full sizes: also its network), and records the recipe and, for its batch size, the hours
its full length (epochs x steps per epoch) would take on the device at the measured step time.

Usage::

    python benchmarks/gpu_check.py                  # full sizes, writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --tiny --cpu     # the same stages, tiny, on the CPU
    python benchmarks/gpu_check.py --recipe newell2016 --stages device,train   # the paper's recipe
    bash benchmarks/gpu_check.sh OUTDIR             # on the GPU machine (installs the carried wheels)
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SAMPLES = REPO / "hgkeras" / "data" / "samples" / "mpii"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _workers import TIMED_OUT, emit, spawn_worker, timed  # noqa: E402

SCHEMA_VERSION = 1
BACKENDS = ("jax", "torch")
POLICY = "mixed_bfloat16"
#: Sizes per mode. The source crop is SOURCE_MARGIN (2) input sides (pose_dataset's 512 for 256); the
#: layer checks run on (layer_batch, layer_size, layer_size, layer_channels) maps (full: the hourglass'
#: 64x64x128 maps and its 7x7/2 stem convolution of a 256x256 image to 64 channels).
SIZES = {
    "full": {
        "stacks": 8, "features": 256, "input_size": 256, "train_batches": [32, 64, 128],
        "infer_batches": [1, 64], "validation_batch": 64, "validation_batches": 3,
        "timed_steps": 10, "warmup_steps": 2, "min_time": 1.0, "matmul_size": 8192,
        "host_images_per_process": 40, "layer_batch": 4, "layer_size": 64, "layer_channels": 128,
    },
    "tiny": {
        "stacks": 1, "features": 32, "input_size": 64, "train_batches": [2],
        "infer_batches": [1, 2], "validation_batch": 2, "validation_batches": 2,
        "timed_steps": 2, "warmup_steps": 0, "min_time": 0.2, "matmul_size": 512,
        "host_images_per_process": 4, "layer_batch": 2, "layer_size": 32, "layer_channels": 32,
    },
}  # fmt: skip
#: Seconds each stage may take (its worker is killed after that), per mode.
LIMITS = {
    "full": {"device": 90, "equivalence": 150, "train": 240, "inference": 150, "validation": 150,
             "host_syncs": 120, "host_decode": 90},
    "tiny": {"device": 90, "equivalence": 120, "train": 180, "inference": 120, "validation": 120,
             "host_syncs": 90, "host_decode": 90},
}  # fmt: skip
#: Seconds for the whole check, per mode (the stages' limits are cut to what is left).
BUDGETS = {"full": 500.0, "tiny": 290.0}
#: A stage is skipped when less than this is left of the budget.
MIN_STAGE_SECONDS = 15.0
#: Relative error (||ours - stock|| / ||stock||) allowed per compute dtype (see stage_equivalence).
#: float32 allows for TF32 (the default of JAX's float32 products and cuDNN's float32 convolutions
#: on GPUs).
TOLERANCES = {"float32": 2e-3, POLICY: 2e-2}


def block_tensorflow() -> None:
    """Make ``import tensorflow`` fail as if it were not installed (the GPU machine has none).

    ``sys.modules["tensorflow"] = None`` is Python's own "not importable" marker: ``import`` raises
    ModuleNotFoundError and ``importlib.util.find_spec`` returns None (torch's dynamo probes it).
    """
    if sys.modules.get("tensorflow") is not None:
        raise RuntimeError("tensorflow is already imported; block it before importing keras")
    sys.modules["tensorflow"] = None


# ----------------------------------------------------------------------------- worker side


def _backend() -> str:
    import keras

    return keras.backend.backend()


def _on_gpu() -> bool:
    if _backend() == "jax":
        import jax

        return jax.devices()[0].platform != "cpu"
    import torch

    return torch.cuda.is_available()


def _sync(value=None) -> None:
    """Block until the device has computed ``value`` (and everything queued before it)."""
    if _backend() == "jax":
        import jax

        jax.block_until_ready(value)
    else:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def _peak_memory() -> dict:
    """Peak device memory of this process (None where the backend does not report it)."""
    import resource

    device = None
    if _backend() == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        device = stats.get("peak_bytes_in_use")
    else:
        import torch

        if torch.cuda.is_available():
            device = int(torch.cuda.max_memory_allocated())
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_device_memory_bytes": device, "peak_host_rss_bytes": host}


def _versions() -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("numpy", "keras", "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin",
                 "torch", "opencv-python-headless", "opencv-python", "ml-dtypes", "optree"):  # fmt: skip
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import hgkeras

    versions["hgkeras"] = hgkeras.__version__
    versions["tensorflow"] = "blocked (not importable in the check)"
    if _backend() == "torch":
        import torch

        versions["torch_cuda"] = torch.version.cuda
        versions["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    return versions


def _matmul_rates(size: int, min_time: float) -> dict:
    """FLOP/s of an n x n x n product in bfloat16 and float32 (random data, framework defaults)."""
    rates = {}
    for dtype in ("bfloat16", "float32"):
        if _backend() == "jax":
            import jax
            import jax.numpy as jnp

            keys = jax.random.split(jax.random.PRNGKey(0))
            a, b = (jax.random.normal(k, (size, size), getattr(jnp, dtype)) for k in keys)
            product = jax.jit(jnp.matmul)

            def step(a=a, b=b, product=product):
                return product(a, b).block_until_ready()

        else:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
            generator = torch.Generator(device=device).manual_seed(0)
            a, b = (
                torch.randn(size, size, device=device, dtype=getattr(torch, dtype),
                            generator=generator)
                for _ in range(2)
            )  # fmt: skip

            def step(a=a, b=b):
                result = a @ b
                _sync()
                return result

        seconds, _ = timed(step, min_time=min_time, min_steps=10, warmup=3)
        rates[f"{dtype}_flops"] = 2.0 * size**3 / seconds
    return rates


def stage_device(config: dict) -> None:
    """Device names, versions and the matmul ceiling of this backend (a smaller product on a CPU)."""
    backend = _backend()
    size = config["matmul_size"] if _on_gpu() else min(config["matmul_size"], 2048)
    if backend == "jax":
        import jax

        devices = jax.devices()
        names = [getattr(d, "device_kind", str(d)) for d in devices]
        platform_name = devices[0].platform
        precision = f"jax_default_matmul_precision={jax.config.jax_default_matmul_precision}"
    else:
        import torch

        gpu = torch.cuda.is_available()
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        names = names if gpu else ["cpu"]
        platform_name = "gpu" if gpu else "cpu"
        precision = (
            f"float32_matmul_precision={torch.get_float32_matmul_precision()}, "
            f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"
        )
    emit({"row": {
        "kind": "device", "platform": platform_name, "devices": names,
        "versions": _versions(), "float32_precision": precision,
        "matmul_size": size, **_matmul_rates(size, config["min_time"]),
    }})  # fmt: skip


def _relative_error(got, want) -> float:
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape or not (np.isfinite(got).all() and np.isfinite(want).all()):
        return float("inf")
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def _equivalence_cases(
    config: dict, dtype: str
) -> list[tuple[str, object, object, list[tuple], bool]]:
    """(name, stock model, our model, input shapes, uses training) for one compute dtype."""
    import keras
    from keras import layers

    from hgkeras.models import layers as ours

    def pair(build, shapes):
        models = []
        for module in (layers, ours):
            inputs = [keras.Input(shape[1:], batch_size=shape[0]) for shape in shapes]
            outputs = build(module, inputs)
            models.append(keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs))
        return models

    def conv(**kwargs):
        return lambda m, x: m.Conv2D(dtype=dtype, **kwargs)(x[0])

    def upsample_add(m, x):
        if m is layers:
            return layers.Add(dtype=dtype)([x[0], layers.UpSampling2D(2, dtype=dtype)(x[1])])
        return m.UpsampleAdd(dtype=dtype)([x[0], m.NearestUpsample2x(dtype=dtype)(x[1])])

    def batch_norm(m, x):
        cls = m.BatchNormalization if m is layers else m.BatchNorm
        return cls(epsilon=1e-5, momentum=0.9, dtype=dtype)(x[0])

    n, size, c = config["layer_batch"], config["layer_size"], config["layer_channels"]
    feature, half = (n, size, size, c), (n, size // 2, size // 2, c)
    specs = [
        ("Conv2D 7x7/2 valid (stem)", conv(filters=c // 2, kernel_size=7, strides=2),
         [(n, 4 * size + 6, 4 * size + 6, 3)], False),
        ("Conv2D 3x3 same", conv(filters=c, kernel_size=3, padding="same"), [feature], False),
        ("Conv2D 1x1", conv(filters=2 * c, kernel_size=1), [feature], False),
        ("Conv2D 1x1 relu, no bias", conv(filters=c // 2, kernel_size=1, activation="relu",
                                          use_bias=False), [feature], False),
        ("MaxPooling2D 2x2/2", lambda m, x: m.MaxPooling2D(2, strides=2, dtype=dtype)(x[0]),
         [feature], False),
        ("NearestUpsample2x + UpsampleAdd", upsample_add, [feature, half], False),
        ("BatchNorm", batch_norm, [feature], True),
    ]  # fmt: skip
    return [
        (name, *pair(build, shapes), shapes, training) for name, build, shapes, training in specs
    ]


def _value_and_gradients(model, inputs: list, cotangent, training: bool):
    """(output, input gradients, weight gradients) of ``sum(model(inputs) * cotangent)``."""
    import numpy as np
    from keras import ops

    if _backend() == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]

        def loss(weights, xs):
            out, _ = model.stateless_call(
                weights, frozen, xs if len(inputs) > 1 else xs[0], training=training
            )
            return jnp.sum(out.astype("float32") * cotangent), out

        (_, out), (weight_grads, input_grads) = jax.value_and_grad(
            loss, argnums=(0, 1), has_aux=True
        )([*trainable], [jnp.asarray(x) for x in inputs])
    else:
        import torch

        xs = [ops.convert_to_tensor(x).requires_grad_(True) for x in inputs]
        out = model(xs if len(inputs) > 1 else xs[0], training=training)
        weights = [v.value for v in model.trainable_variables]
        total = (out.float() * ops.convert_to_tensor(cotangent)).sum()
        grads = torch.autograd.grad(total, xs + weights)
        input_grads, weight_grads = grads[: len(xs)], grads[len(xs) :]
    convert = ops.convert_to_numpy
    return (
        convert(ops.cast(out, "float32")),
        [convert(g) for g in input_grads],
        [np.asarray(convert(g), np.float32) for g in weight_grads],
    )


def _errors(got: tuple, want: tuple) -> dict:
    """Relative errors of (output, input gradients, weight gradients) against ``want``."""
    errors = {
        "forward": _relative_error(got[0], want[0]),
        "input_gradients": max(_relative_error(g, h) for g, h in zip(got[1], want[1], strict=True)),
    }
    if want[2]:
        errors["weight_gradients"] = max(
            _relative_error(g, h) for g, h in zip(got[2], want[2], strict=True)
        )
    return errors


def _batch_norm_errors(got, want, inputs: list) -> dict:
    """Moving statistics after three training calls, then the inference output, against ``want``."""
    from keras import ops

    for step in range(3):  # eager training calls update the moving statistics
        got(inputs[0] * (step + 1), training=True)
        want(inputs[0] * (step + 1), training=True)
    return {
        "moving_statistics": max(
            _relative_error(ops.convert_to_numpy(v), ops.convert_to_numpy(w))
            for v, w in zip(got.non_trainable_variables, want.non_trainable_variables, strict=True)
        ),
        "inference": _relative_error(
            ops.convert_to_numpy(ops.cast(got(inputs[0], training=False), "float32")),
            ops.convert_to_numpy(ops.cast(want(inputs[0], training=False), "float32")),
        ),
    }


def stage_equivalence(config: dict) -> None:
    """Each custom layer against the stock one, on the device, in float32 and mixed_bfloat16.

    float32: ours against stock, within ``TOLERANCES["float32"]``. mixed_bfloat16: bf16 rounding
    makes both differ from the exact result (a bias gradient sums thousands of bf16 products), so
    ours and stock are each compared with the stock layer in float32, and ours passes when its error
    is within ``TOLERANCES[POLICY]`` or no more than 1.25x the stock layer's own.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    references = _equivalence_cases(config, "float32")
    for dtype in ("float32", POLICY):
        cases = references if dtype == "float32" else _equivalence_cases(config, dtype)
        for (name, stock, ours, shapes, training), (_, reference, *_) in zip(
            cases, references, strict=True
        ):
            values = []
            for weight in stock.weights:
                low = 0.5 if "variance" in weight.path or "gamma" in weight.path else -0.5
                values.append(rng.uniform(low, low + 1.0, weight.shape).astype("float32"))
            models = (stock, ours) if dtype == "float32" else (stock, ours, reference)
            for model in models:
                model.set_weights(values)
            inputs = [rng.normal(1.0, 2.0, shape).astype("float32") for shape in shapes]
            cotangent = rng.normal(size=tuple(stock.output.shape)).astype("float32")
            results = [_value_and_gradients(m, inputs, cotangent, training) for m in models]
            errors = _errors(results[1], results[0])
            if training:
                errors.update(_batch_norm_errors(ours, stock, inputs))
            tolerance = TOLERANCES[dtype]
            row = {"kind": "equivalence", "layer": name, "dtype": dtype, "errors": errors,
                   "tolerance": tolerance}  # fmt: skip
            if dtype == "float32":
                row["passed"] = all(e <= tolerance for e in errors.values())
            else:
                vs_float32 = {"ours": _errors(results[1], results[2]),
                              "stock": _errors(results[0], results[2])}  # fmt: skip
                row["errors_vs_float32"] = vs_float32
                row["passed"] = all(
                    e <= max(tolerance, 1.25 * vs_float32["stock"][key])
                    for key, e in vs_float32["ours"].items()
                ) and all(
                    e <= tolerance for key, e in errors.items() if key not in vs_float32["ours"]
                )
            emit({"row": row})


def _hourglass(config: dict):
    import keras

    from hgkeras import StackedHourglass

    keras.mixed_precision.set_global_policy(POLICY)
    size = config["input_size"]
    recipe = config.get("recipe") or {}
    return StackedHourglass(
        num_stacks=config["stacks"], num_features=config["features"], image_shape=(size, size, 3),
        init=recipe.get("init", "keras"),
    )  # fmt: skip


def _trainer(config: dict):
    """(hourglass, compiled PoseTrainer): the recipe's sigma, augmentation law, optimiser and rate
    with ``--recipe``, the trainer's defaults otherwise."""
    from hgkeras import PoseTrainer
    from hgkeras.optimizers import make_optimizer

    model = _hourglass(config)
    recipe = config.get("recipe")
    if recipe is None:
        trainer = PoseTrainer(model, seed=0)
        trainer.compile()
        return model, trainer
    trainer = PoseTrainer(model, sigma=recipe["sigma"], seed=0, **recipe["augmentation"])
    trainer.compile(optimizer=make_optimizer(recipe["optimizer"], recipe["lr"]))
    return model, trainer


def _source_batch(batch: int, config: dict, seed: int = 0) -> dict:
    """Synthetic training elements as pose_dataset gives them: uint8 source crops, joints, visible."""
    import numpy as np
    from keras import ops

    from hgkeras.data.pipeline import SOURCE_MARGIN

    rng = np.random.default_rng(seed)
    side = int(round(config["input_size"] * SOURCE_MARGIN))
    visible = (rng.random((batch, 16)) < 0.9).astype("float32")
    elements = {
        "image": rng.integers(0, 256, (batch, side, side, 3), dtype=np.uint8),
        "joints": rng.uniform(0.25 * side, 0.75 * side, (batch, 16, 2)).astype("float32"),
        "visible": visible,
    }
    return {key: ops.convert_to_tensor(value) for key, value in elements.items()}


def stage_train(config: dict, batch: int) -> None:
    """Seconds of the first (compiling) step, then images/s of PoseTrainer.train_on_batch."""
    import math

    from hgkeras import count_macs

    model, trainer = _trainer(config)
    data = _source_batch(batch, config)
    start = time.perf_counter()
    logs = trainer.train_on_batch(data, return_dict=True)  # returns floats: a host sync
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(config["warmup_steps"]):
        trainer.train_on_batch(data, return_dict=True)
    warmup = time.perf_counter() - start
    steps = config["timed_steps"]
    start = time.perf_counter()
    for _ in range(steps):
        logs = trainer.train_on_batch(data, return_dict=True)
    step_seconds = (time.perf_counter() - start) / steps
    loss = float(logs["loss"])
    emit({"row": {
        "kind": "train", "batch": batch, "policy": POLICY, "macs": count_macs(model),
        "first_step_s": first, "warmup_s": warmup, "steps_timed": steps, "step_s": step_seconds,
        "images_per_s": batch / step_seconds, "loss": loss, "loss_finite": math.isfinite(loss),
        **_peak_memory(),
    }})  # fmt: skip


def stage_inference(config: dict) -> None:
    """images/s of the folded network's compiled predict step per batch size."""
    import numpy as np
    from keras import ops

    from hgkeras import count_macs
    from hgkeras.models.fold import fold_batch_norms

    model = _hourglass(config)
    network = fold_batch_norms(model)
    network.compile()
    size = config["input_size"]
    rng = np.random.default_rng(0)
    for batch in config["infer_batches"]:
        x = ops.convert_to_tensor(rng.random((batch, size, size, 3), dtype=np.float32))
        start = time.perf_counter()
        _sync(network.predict_on_batch(x))
        first = time.perf_counter() - start
        seconds, calls = timed(
            lambda x=x: _sync(network.predict_on_batch(x)),
            min_time=config["min_time"], min_steps=config["timed_steps"],
            warmup=config["warmup_steps"],
        )  # fmt: skip
        emit({"row": {
            "kind": "inference", "batch": batch, "policy": POLICY, "network": "folded",
            "macs": count_macs(model), "first_call_s": first, "calls_timed": calls,
            "images_per_s": batch / seconds, **_peak_memory(),
        }})  # fmt: skip


def stage_validation(config: dict) -> None:
    """images/s of predict + flip + decode to image pixels (predict_eval_dataset, as ValidationCallback)."""
    import numpy as np

    from hgkeras.evaluation.evaluate import predict_eval_dataset

    model = _hourglass(config)
    batch, size = config["validation_batch"], config["input_size"]
    rng = np.random.default_rng(0)

    def element():
        return {
            "image": rng.random((batch, size, size, 3), dtype=np.float32),
            "center": rng.uniform(100, 300, (batch, 2)).astype("float32"),
            "scale": rng.uniform(1.0, 3.0, batch).astype("float32"),
            "joints": rng.uniform(0, 400, (batch, 16, 2)).astype("float32"),
            "visible": np.ones((batch, 16), "float32"),
            "normalizer": np.full(batch, 30.0, "float32"),
        }

    start = time.perf_counter()
    predict_eval_dataset(model, [element()], flip=True)
    first = time.perf_counter() - start
    elements = [element() for _ in range(config["validation_batches"])]
    start = time.perf_counter()
    out = predict_eval_dataset(model, elements, flip=True)
    seconds = time.perf_counter() - start
    emit({"row": {
        "kind": "validation", "batch": batch, "policy": POLICY, "flip": True,
        "network": "hourglass as trained (ValidationCallback)", "first_batch_s": first,
        "batches_timed": len(elements), "images_per_s": len(out["pred"]) / seconds,
        "predictions_finite": bool(np.isfinite(out["pred"]).all()),
    }})  # fmt: skip


def stage_host_syncs(config: dict) -> None:
    """Host synchronisations in one training step and one predict call (torch on CUDA only)."""
    if _backend() != "torch" or not _on_gpu():
        reason = (
            "not available: torch.cuda.set_sync_debug_mode needs CUDA"
            if _backend() == "torch"
            else "not available: JAX exposes no per-step synchronisation count"
        )
        emit({"row": {"kind": "host_syncs", "available": False, "reason": reason}})
        return
    import collections
    import warnings

    import torch

    model, trainer = _trainer(config)
    data = _source_batch(config["train_batches"][0], config)
    images = torch.rand(
        (config["infer_batches"][0], config["input_size"], config["input_size"], 3), device="cuda"
    )
    for _ in range(2):
        trainer.train_on_batch(data)
        model.predict_on_batch(images)
    torch.cuda.synchronize()
    counts, places = {}, collections.Counter()
    for name, call in (
        ("train_step", lambda: trainer.train_on_batch(data, return_dict=True)),
        ("predict", lambda: model.predict_on_batch(images)),
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                call()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        counts[name] = len(syncs)
        places.update(f"{name}: {Path(w.filename).name}:{w.lineno}" for w in syncs)
    emit({"row": {
        "kind": "host_syncs", "available": True, "train_step_syncs": counts["train_step"],
        "predict_syncs": counts["predict"], "where": dict(places.most_common(10)),
    }})  # fmt: skip


_HOST_JOBS: list = []


def _init_host_worker(jobs: list) -> None:
    import cv2

    cv2.setNumThreads(1)
    _HOST_JOBS[:] = jobs


def _decode_and_crop(index: int) -> int:
    import cv2
    import numpy as np

    from hgkeras.crop import crop_numpy as crop_person
    from hgkeras.inference.predictor import BOX_PADDING

    jpeg, center, scale, size = _HOST_JOBS[index % len(_HOST_JOBS)]
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return int(crop_person(image, center, scale * BOX_PADDING, size).shape[0])


def stage_host_decode(config: dict) -> None:
    """images/s of JPEG decode + person crop from memory, in one process and on all cores."""
    import multiprocessing

    records = json.loads((SAMPLES / "samples.json").read_text())
    jobs = [
        ((SAMPLES / "images" / r["image"]).read_bytes(), [c - 1.0 for c in r["center"]],
         float(r["scale"]), config["input_size"])
        for r in records
    ]  # fmt: skip
    per_process = config["host_images_per_process"]
    _init_host_worker(jobs)
    _decode_and_crop(0)
    start = time.perf_counter()
    for i in range(per_process):
        _decode_and_crop(i)
    single = per_process / (time.perf_counter() - start)
    processes = os.cpu_count() or 1
    with multiprocessing.Pool(processes, _init_host_worker, (jobs,)) as pool:
        pool.map(_decode_and_crop, range(processes))  # start-up and imports, not timed
        count = per_process * processes
        start = time.perf_counter()
        pool.map(_decode_and_crop, range(count), chunksize=max(1, per_process // 4))
        seconds = time.perf_counter() - start
    emit({"row": {
        "kind": "host_decode", "processes": processes, "images": count,
        "images_per_s": count / seconds, "single_process_images_per_s": single,
        "crop_size": config["input_size"],
        "source": f"{len(jobs)} shipped MPII JPEGs decoded from memory (cv2.imdecode) + crop_person",
    }})  # fmt: skip


STAGES = {
    "device": stage_device,
    "equivalence": stage_equivalence,
    "train": stage_train,
    "inference": stage_inference,
    "validation": stage_validation,
    "host_syncs": stage_host_syncs,
    "host_decode": stage_host_decode,
}


def run_worker(spec: dict) -> int:
    """Run one stage; stream its rows, then ``done`` or its error, as JSON lines."""
    block_tensorflow()
    if spec.get("timeout"):  # a stack dump in the log just before the parent kills this process
        faulthandler.dump_traceback_later(max(1.0, spec["timeout"] - 2.0), exit=False)
    sys.path.insert(0, str(REPO))
    try:
        STAGES[spec["stage"]](spec["config"], **spec["params"])
    except Exception as error:  # recorded in the JSON; the other stages go on
        traceback.print_exc()
        emit({"error": f"{type(error).__name__}: {error}"[:2000]})
        return 1
    emit({"done": True})
    return 0


# ----------------------------------------------------------------------------- parent side


def plan(backends: list[str], config: dict, only: set[str] | None) -> list[tuple]:
    """(stage, backend, params) in run order: cheap and first-batch stages before the rest."""
    first, *rest = config["train_batches"]
    order = [("device", {}), ("equivalence", {}), ("train", {"batch": first}), ("inference", {}),
             ("validation", {}), ("host_syncs", {})]  # fmt: skip
    stages = [(name, backend, params) for name, params in order for backend in backends]
    stages.append(("host_decode", backends[0], {}))
    stages += [("train", backend, {"batch": batch}) for batch in rest for backend in backends]
    return [stage for stage in stages if only is None or stage[0] in only]


def derive(result: dict) -> None:
    """The ceiling (best matmul rates), GPU presence and each row's fraction of the bf16 rate."""
    devices = [r for s in result["stages"] for r in s["rows"] if r["kind"] == "device"]
    if devices:
        result["gpu_found"] = any(r["platform"] != "cpu" for r in devices)
        names = sorted({n for r in devices if r["platform"] != "cpu" for n in r["devices"]})
        result["device"] = ", ".join(names) if names else "cpu (no GPU found)"
    ceiling = {}
    for dtype in ("bfloat16", "float32"):
        rates = [(r[f"{dtype}_flops"], s["backend"]) for s in result["stages"] for r in s["rows"]
                 if r["kind"] == "device"]  # fmt: skip
        if rates:
            flops, backend = max(rates)
            ceiling[f"{dtype}_flops"] = flops
            ceiling[f"{dtype}_from"] = backend
    result["ceiling"] = ceiling
    limit = ceiling.get("bfloat16_flops")
    recipe = result["config"].get("recipe")
    for stage in result["stages"]:
        for row in stage["rows"]:
            passes = {"train": 3, "inference": 1}.get(row["kind"])
            if passes and limit:
                row["fraction_of_bf16_matmul"] = (
                    passes * 2 * row["macs"] * row["images_per_s"] / limit
                )
            if recipe and row["kind"] == "train" and row["batch"] == recipe["batch_size"]:
                steps = recipe["steps_per_epoch"] and recipe["epochs"] * recipe["steps_per_epoch"]
                row["recipe_steps"] = steps or None  # None: one pass per epoch, data-dependent
                row["recipe_hours"] = steps * row["step_s"] / 3600 if steps else None


def _run_stage(name: str, backend: str, params: dict, config: dict, timeout: float, cpu: bool):
    spec = {"stage": name, "params": params, "config": config, "timeout": timeout}
    start = time.perf_counter()
    code, messages = spawn_worker(
        __file__, backend, ["--worker-spec", json.dumps(spec)], cpu_only=cpu, timeout=timeout
    )
    entry = {"stage": name, "backend": backend, "params": params, "limit_s": round(timeout, 1),
             "seconds": round(time.perf_counter() - start, 2), "exit_code": code, "rows": [],
             "error": None}  # fmt: skip
    done = False
    for message in messages:
        if "row" in message:
            entry["rows"].append(dict(message["row"], backend=backend))
        elif "error" in message:
            entry["error"] = message["error"]
        done = done or bool(message.get("done"))
    if code == TIMED_OUT:
        entry["status"] = "timeout"
        entry["error"] = f"stopped at its time limit of {timeout:.0f} s"
    elif done and code == 0:
        entry["status"] = "ok"
    else:
        entry["status"] = "error"
        entry["error"] = entry["error"] or f"worker exited with code {code} (see the log)"
    return entry


def _summary(row: dict) -> str:
    kind = row["kind"]
    memory = row.get("peak_device_memory_bytes")
    memory = f", peak {memory / 2**30:.1f} GiB" if memory else ""
    fraction = row.get("fraction_of_bf16_matmul")
    fraction = f", {fraction:.2%} of bf16 matmul" if fraction is not None else ""
    if kind == "device":
        return (f"{row['platform']} {', '.join(row['devices'])}: bf16 "
                f"{row['bfloat16_flops'] / 1e12:.2f} TFLOP/s, f32 {row['float32_flops'] / 1e12:.2f}")  # fmt: skip
    if kind == "equivalence":
        vs_stock = max(row["errors"].values())
        text = f"{row['layer']} [{row['dtype']}]: rel. error vs stock {vs_stock:.1e}"
        if "errors_vs_float32" in row:
            ours, stock = (max(row["errors_vs_float32"][k].values()) for k in ("ours", "stock"))
            text += f"; vs float32: ours {ours:.1e}, stock {stock:.1e}"
        return text + (" ok" if row["passed"] else f" FAILED (tolerance {row['tolerance']:.0e})")
    if kind == "train":
        hours = row.get("recipe_hours")
        hours = f", the recipe's {row['recipe_steps']} steps: {hours:.1f} h" if hours else ""
        return (f"batch {row['batch']}: first step {row['first_step_s']:.1f} s, "
                f"{row['images_per_s']:.1f} img/s{fraction}{memory}{hours}")  # fmt: skip
    if kind == "inference":
        return f"batch {row['batch']}: {row['images_per_s']:.1f} img/s{fraction}{memory}"
    if kind == "validation":
        return f"batch {row['batch']} with flip + decode: {row['images_per_s']:.1f} img/s"
    if kind == "host_syncs":
        if not row["available"]:
            return row["reason"]
        return f"{row['train_step_syncs']} per training step, {row['predict_syncs']} per predict"
    return (f"{row['processes']} processes: {row['images_per_s']:.1f} img/s "
            f"({row['single_process_images_per_s']:.1f} in one)")  # fmt: skip


def print_table(result: dict) -> None:
    print(f"\nGPU check ({result['mode']}) on {result['device']}; host {result['host']}")
    if result.get("gpu_found") is False:
        print("NO GPU FOUND: every figure below was measured on the CPU")
    for stage in result["stages"]:
        head = f"{stage['stage']:12s} {stage['backend']:6s} {stage['status']:8s}"
        if stage["status"] != "ok":
            print(f"{head} {stage['error']}")
        for row in stage["rows"]:
            print(f"{head} {_summary(row)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="1 stack, 32 features, 64x64, batch 2")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: jax,torch")
    parser.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--cpu", action="store_true", help="hide GPUs from the workers")
    parser.add_argument("--budget", type=float, help="seconds for the whole check")
    parser.add_argument(
        "--limit", action="append", default=[], metavar="STAGE=SECONDS",
        help="a stage's time limit (repeatable)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="JSON output")
    parser.add_argument(
        "--recipe",
        help="train with a training recipe's settings (docs/training.md 'Recipes'), e.g. newell2016",
    )
    parser.add_argument("--worker-spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_spec:
        return run_worker(json.loads(args.worker_spec))

    mode = "tiny" if args.tiny else "full"
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    only = set(args.stages.split(",")) if args.stages else None
    limits = dict(LIMITS[mode])
    for item in args.limit:
        stage, _, seconds = item.partition("=")
        if stage not in limits or not seconds.replace(".", "", 1).isdigit():
            parser.error(
                f"--limit takes STAGE=SECONDS with STAGE in {sorted(limits)}, got {item!r}"
            )
        limits[stage] = float(seconds)
    if unknown or not backends:
        parser.error(f"--backends: choose from {','.join(BACKENDS)} (TensorFlow is not measured)")
    if only and only - set(STAGES):
        parser.error(f"--stages: unknown {sorted(only - set(STAGES))}; choose from {list(STAGES)}")
    os.environ["KERAS_BACKEND"] = backends[0]  # hgkeras.io imports keras; each worker sets its own
    block_tensorflow()
    sys.path.insert(0, str(REPO))
    from model_speed import cpu_description

    from hgkeras.io import atomic_write_json

    config = dict(SIZES[mode])
    if args.recipe:
        from hgkeras.training.recipes import RECIPES

        if args.recipe not in RECIPES:
            parser.error(f"--recipe: choose from {', '.join(RECIPES)}, got {args.recipe!r}")
        recipe = RECIPES[args.recipe]
        config["recipe"] = {"name": recipe.name, **recipe.settings()}
        if mode == "full":  # the recipe's network, its batch size measured first
            config.update(stacks=recipe.stacks, features=recipe.features,
                          input_size=recipe.input_size)  # fmt: skip
            others = [b for b in config["train_batches"] if b != recipe.batch_size]
            config["train_batches"] = [recipe.batch_size, *others]
    budget = args.budget if args.budget is not None else BUDGETS[mode]
    out = args.out or RESULTS / ("gpu_check_tiny.json" if args.tiny else "gpu_check.json")
    result = {
        "benchmark": "gpu_check", "schema": SCHEMA_VERSION, "mode": mode, "policy": POLICY,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "finished": None,
        "host": cpu_description(), "backends": backends, "config": config,
        "recipe": args.recipe,
        "budget_s": budget, "limits_s": limits, "tolerances": TOLERANCES,
        "gpu_found": None, "device": "unknown (no device stage finished)", "ceiling": {},
        "stages": [],
    }  # fmt: skip
    atomic_write_json(out, result)
    deadline = time.monotonic() + budget
    stages = plan(backends, config, only)
    for index, (name, backend, params) in enumerate(stages, 1):
        left = deadline - time.monotonic()
        label = f"[{index}/{len(stages)}] {name} {backend} {params or ''}"
        if left < MIN_STAGE_SECONDS:
            entry = {"stage": name, "backend": backend, "params": params, "status": "skipped",
                     "rows": [], "error": f"the {budget:.0f} s budget was spent"}  # fmt: skip
        else:
            timeout = min(limits[name], left)
            print(f"{label} (limit {timeout:.0f} s) ...", file=sys.stderr, flush=True)
            entry = _run_stage(name, backend, params, config, timeout, args.cpu)
        result["stages"].append(entry)
        derive(result)
        atomic_write_json(out, result)
        for row in entry["rows"]:
            print(f"{label}: {_summary(row)}", file=sys.stderr, flush=True)
        if entry["status"] != "ok":
            print(f"{label}: {entry['status']}: {entry['error']}", file=sys.stderr, flush=True)
        if name == "device" and result.get("gpu_found") is False and backend == backends[-1]:
            hint = (
                "" if args.tiny else " (full sizes: most stages will run out of time; try --tiny)"
            )
            print(f"no GPU found: running on the CPU{hint}", file=sys.stderr, flush=True)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_json(out, result)
    print_table(result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
