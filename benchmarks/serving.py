"""CPU latency and throughput: Keras predict vs the exported SavedModel vs ONNX Runtime.

    KERAS_BACKEND=tensorflow python benchmarks/serving.py [--stacks 2] [--features 256] [--batches 1 8]

Builds a StackedHourglass (random weights: speed does not depend on them), exports it with
:func:`hgkeras.deploy.export.export_model` (SavedModel + ONNX, no flip test) to a temporary folder, then times
each engine on random 256x256 images: ``--warmup`` untimed calls, then ``--repeats`` timed calls per
batch size. Prints a table and writes ``benchmarks/results/serving.json``.
Keras predict returns the stacks' heatmaps; the SavedModel's ``serving_default`` also decodes
keypoints; the ONNX file holds the bare network (final heatmaps only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def time_calls(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, default=2)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "serving.json")
    )
    parser.add_argument("--note", default="", help="free text stored with the results")
    args = parser.parse_args(argv)

    import keras
    import onnxruntime
    import tensorflow as tf

    from hgkeras import StackedHourglass
    from hgkeras.deploy.export import ONNX_FILENAME, SERVING_DEFAULT, export_model

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("run with KERAS_BACKEND=tensorflow (the SavedModel engine needs it)")
    size = args.image_size
    model = StackedHourglass(
        num_stacks=args.stacks, num_features=args.features, image_shape=(size, size, 3)
    )
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory(prefix="hgkeras-bench-") as tmp:
        start = time.perf_counter()
        exported = export_model(
            model, tmp, formats="saved_model,onnx", verify=False, models_config=False
        )
        export_seconds = time.perf_counter() - start
        saved = tf.saved_model.load(str(exported.version_dir)).signatures[SERVING_DEFAULT]
        session = onnxruntime.InferenceSession(
            str(exported.version_dir / ONNX_FILENAME), providers=["CPUExecutionProvider"]
        )
        for batch in args.batches:
            images = rng.random((batch, size, size, 3), dtype=np.float32)
            tensor = tf.constant(images)
            engines = {
                "keras_predict": lambda images=images, b=batch: model.predict(
                    images, batch_size=b, verbose=0
                ),
                "saved_model": lambda tensor=tensor: saved(images=tensor),
                "onnxruntime": lambda images=images: session.run(None, {"images": images}),
            }
            for engine, fn in engines.items():
                times = time_calls(fn, args.warmup, args.repeats)
                median = statistics.median(times)
                results.append(
                    {
                        "engine": engine,
                        "batch": batch,
                        "latency_ms_median": 1000 * median,
                        "latency_ms_min": 1000 * min(times),
                        "throughput_images_per_s": batch / median,
                        "repeats": len(times),
                    }
                )
                print(f"  {engine:14s} batch {batch}: {1000 * median:9.1f} ms", flush=True)

    print()
    print(f"{'engine':14s} {'batch':>5s} {'median ms':>10s} {'min ms':>9s} {'images/s':>9s}")
    for r in results:
        print(
            f"{r['engine']:14s} {r['batch']:5d} {r['latency_ms_median']:10.1f} "
            f"{r['latency_ms_min']:9.1f} {r['throughput_images_per_s']:9.2f}"
        )
    import importlib.metadata as md

    report = {
        "model": {"stacks": args.stacks, "features": args.features, "image_size": size},
        "results": results,
        "export_seconds": export_seconds,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "load_average_at_end": os.getloadavg(),
        },
        "versions": {
            p: md.version(p) for p in ("keras", "tensorflow", "onnxruntime", "tf2onnx", "onnx")
        },
        "settings": {"warmup": args.warmup, "repeats": args.repeats},
        "note": args.note,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
