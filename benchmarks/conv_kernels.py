"""Why the backends differ: the hourglass' convolutions, one at a time, per backend.

Times the two convolutions that make most of the hourglass' MACs (batch 8, at the 64x64 resolution
of the stacks) forward, and as a training step (forward + gradients with respect to input and
kernel, counted as 3x the forward FLOPs like ``model_speed.py``), each backend in its own process:

* ``conv3x3``: 3x3, 128 -> 128 channels (a residual module's ``conv2``);
* ``conv1x1``: 1x1, 256 -> 128 channels (a residual module's ``conv1``).

Variants per backend: ``keras`` (Keras' stock ``Conv2D``), ``hgkeras`` (``hgkeras.models.layers.Conv2D``,
the layer the model uses) and, under JAX, the 1x1 convolution written as a matrix product. Also the
float32 matmul rate of the framework, so every figure reads as a fraction of the machine's limit.

Usage::

    python benchmarks/conv_kernels.py            # prints a table, writes benchmarks/results/conv_kernels.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _workers import emit, spawn_worker, timed  # noqa: E402

SHAPES = {  # name: (batch, size, in channels, out channels, kernel)
    "conv3x3": (8, 64, 128, 128, 3),
    "conv1x1": (8, 64, 256, 128, 1),
}


def run_worker(min_time: float) -> None:
    """Measure every shape and variant under this process' KERAS_BACKEND; print JSON rows."""
    import keras
    import numpy as np
    from keras import layers, ops

    sys.path.insert(0, str(REPO))
    from hgkeras.models.layers import Conv2D

    backend = keras.backend.backend()
    rng = np.random.default_rng(0)

    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def forward_backward(layer, x, g):
            """``layer`` is a Keras layer, or ``(function of (x, params), params)``."""
            if isinstance(layer, tuple):
                call, params = layer
            else:
                params = [v.value for v in layer.trainable_variables]

                def call(v, p, layer=layer):
                    return layer.stateless_call(p, [], v)[0]

            fwd = jax.jit(call)
            step = jax.jit(jax.value_and_grad(lambda v, p: jnp.sum(call(v, p) * g), argnums=(0, 1)))
            return (
                lambda: jax.block_until_ready(fwd(x, params)),
                lambda: jax.block_until_ready(step(x, params)),
            )

    elif backend == "tensorflow":
        import tensorflow as tf

        def forward_backward(layer_call, x, g):
            x = tf.constant(x)

            @tf.function
            def step(v):
                with tf.GradientTape() as tape:
                    tape.watch(v)
                    loss = tf.reduce_sum(layer_call(v) * g)
                return [loss, *tape.gradient(loss, [v, *layer_call.trainable_variables])]

            fwd = tf.function(layer_call)
            return (lambda: fwd(x).numpy(), lambda: [t.numpy() for t in step(x)])

    else:
        import torch

        def forward_backward(layer_call, x, g):
            g = torch.tensor(g)

            def fwd():
                with torch.no_grad():
                    layer_call(torch.tensor(x))

            def step():
                v = torch.tensor(x, requires_grad=True)
                (layer_call(v) * g).sum().backward()

            return fwd, step

    size = 4096
    a = ops.convert_to_tensor(rng.random((size, size), dtype=np.float32))
    matmul = {
        "jax": lambda: __import__("jax").block_until_ready(ops.matmul(a, a)),
        "tensorflow": lambda: ops.convert_to_numpy(ops.matmul(a, a)),
        "torch": lambda: ops.matmul(a, a),
    }[backend]
    emit({"matmul_flops": 2 * size**3 / timed(matmul, min_time, 3, 2)[0]})

    for name, (batch, hw, cin, cout, k) in SHAPES.items():
        x = rng.random((batch, hw, hw, cin), dtype=np.float32)
        g = rng.random((batch, hw, hw, cout), dtype=np.float32)
        flops = 2.0 * batch * hw * hw * k * k * cin * cout
        variants = {}
        for label, cls in (("keras", layers.Conv2D), ("hgkeras", Conv2D)):
            layer = cls(cout, k, padding="same")
            layer.build(x.shape)
            variants[label] = layer
        if backend == "jax" and k == 1:

            def as_matmul(v, p, cin=cin, cout=cout, hw=hw):
                outputs = ops.matmul(ops.reshape(v, (-1, cin)), ops.reshape(p[0], (cin, cout)))
                return ops.reshape(outputs + p[1], (-1, hw, hw, cout))

            params = [v.value for v in variants["keras"].trainable_variables]
            variants["matmul (1x1 as matrix product)"] = (as_matmul, params)
        for label, layer in variants.items():
            fwd, step = forward_backward(layer, x, g)
            t_fwd, t_step = timed(fwd, min_time, 3, 2)[0], timed(step, min_time, 3, 2)[0]
            # a training step: forward + gradients w.r.t. input and kernel = 3x the forward FLOPs
            row = {"conv": name, "variant": label, "forward_flops": flops / t_fwd,
                   "training_flops": 3 * flops / t_step}  # fmt: skip
            emit({"row": row})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--min-time", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "conv_kernels.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.min_time)
        return
    rows, limits = [], {}
    for backend in args.backends.split(","):
        print(f"running {backend} ...", file=sys.stderr, flush=True)
        code, messages = spawn_worker(
            __file__, backend, ["--worker", "--min-time", str(args.min_time)]
        )
        if code != 0:
            print(f"{backend} worker failed (exit {code})", file=sys.stderr)
        for message in messages:
            if "row" in message:
                rows.append(dict(message["row"], backend=backend))
            else:
                limits[backend] = message["matmul_flops"]
    limit = max(limits.values())
    for row in rows:
        row["forward_fraction_of_limit"] = round(row["forward_flops"] / limit, 3)
        row["training_fraction_of_limit"] = round(row["training_flops"] / limit, 3)
    result = {
        "benchmark": "conv_kernels",
        "date": time.strftime("%Y-%m-%d"),
        "shapes": {
            k: dict(zip(("batch", "size", "in", "out", "kernel"), v, strict=True))
            for k, v in SHAPES.items()
        },
        "matmul_flops": limits,
        "matmul_flops_limit": limit,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(f"\nmatmul limit {limit / 1e9:.1f} GFLOP/s")
    print(
        f"{'backend':11s} {'conv':8s} {'variant':32s} {'forward':>8s} {'training':>8s}  (of limit)"
    )
    for r in rows:
        print(
            f"{r['backend']:11s} {r['conv']:8s} {r['variant']:32s} "
            f"{r['forward_fraction_of_limit']:8.0%} {r['training_fraction_of_limit']:8.0%}"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
