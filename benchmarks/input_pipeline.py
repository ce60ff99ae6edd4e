"""Input pipeline throughput on the CPU: read + decode + crop (tf.data) and + augment + targets.

Writes TFRecords of the shipped MPII samples (repeated to ``--records`` people), then times batches of
``--batch-size`` from ``pose_dataset(training=True)`` alone, and with the device-side augmentation and
target rendering of ``PoseTrainer.prepare`` run on the CPU under the active Keras backend.
Prints a table and writes ``benchmarks/results/input_pipeline.json``.

Usage: python benchmarks/input_pipeline.py [--batch-size 32] [--batches 20] [--records 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _workers import cpu_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--records", type=int, default=256, help="people written to the shards")
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "input_pipeline.json")
    )
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from hgkeras.data import pose_dataset, read_annotations
    from hgkeras.data.pipeline import SOURCE_SIZE
    from hgkeras.data.tfrecords import write_tfrecords
    from hgkeras.models.hourglass import StackedHourglass
    from hgkeras.training.trainer import PoseTrainer

    samples = ROOT / "hgkeras" / "data" / "samples" / "mpii"
    base = read_annotations(samples / "samples.json")
    records = [base[i % len(base)] for i in range(args.records)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_tfrecords(records, samples / "images", tmp, shards=4, progress=False)
        dataset = pose_dataset(tmp, args.batch_size, training=True, repeat=True, seed=0)
        hourglass = StackedHourglass(
            num_stacks=1, num_features=16, depth=1, image_shape=(256, 256, 3)
        )
        trainer = PoseTrainer(hourglass, seed=0)

        def timed(step) -> float:
            iterator = iter(dataset)
            for _ in range(args.warmup):
                step(next(iterator))
            start = time.perf_counter()
            for _ in range(args.batches):
                step(next(iterator))
            return args.batches * args.batch_size / (time.perf_counter() - start)

        def read_only(batch):
            return batch["image"].numpy()

        prepare = trainer.prepare
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # As inside model.fit: one compiled graph (XLA) per batch shape.
            prepare = tf.function(trainer.prepare, jit_compile=True)

        def full(batch):
            x, targets = prepare(batch, training=True)
            return keras.ops.convert_to_numpy(targets), keras.ops.convert_to_numpy(x)

        results["read_decode_crop"] = timed(read_only)
        results["read_decode_crop_augment_targets"] = timed(full)
    report = {
        "images_per_second": {k: round(v, 1) for k, v in results.items()},
        "batch_size": args.batch_size,
        "batches": args.batches,
        "backend": keras.backend.backend(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "machine": platform.platform(),
        "source_images": "5 MPII samples (1280x720 / 854x480 JPEG), source crop "
        f"{SOURCE_SIZE}, input 256, heatmaps 64",
        "cpu": cpu_model(),
        "numpy": np.__version__,
        "keras": keras.__version__,
    }
    print(f"{'stage':40s} {'images/s':>10s}")
    for name, value in results.items():
        print(f"{name:40s} {value:10.1f}")
    print(f"(batch {args.batch_size}, backend {report['backend']}, {report['cpu_count']} CPUs, "
          f"load {report['load_average'][0]})")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(report, indent=2))
    os.replace(tmp_out, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
