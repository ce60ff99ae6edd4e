"""CPU speed of every deployment format, and how close int8/float16 stay to the float model.

    python benchmarks/deploy_speed.py --trained best.keras [--stacks 2 8] [--features 256]

For each model (the ``--trained`` ones, then a paper-sized StackedHourglass per ``--stacks`` with
random weights: speed does not depend on them), exports every format with
:func:`hgkeras.deploy.export.export_model` (int8 calibrated on the shipped MPII people) into a
temporary folder, then times each runtime of :mod:`hgkeras.inference.runtimes` on real person crops:
latency at batch 1 and throughput at batch 8, the median of ``--rounds`` calls taken round robin
over the engines (so load from other processes on a shared machine hits all of them alike), after
one untimed call each. Keras is timed twice:
``model.predict`` and a direct call. OpenVINO also runs ``model_int8.onnx`` (its QDQ graph becomes
int8 kernels). For the trained model it also measures, per format, the share of annotated joints of
the 5 shipped people within 0.1 head sizes of the float Keras keypoints (no flip test, as the
embedded training run evaluates). Prints a table and writes ``benchmarks/results/deploy_speed.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from _workers import cpu_model, timed  # noqa: E402

#: (engine, format whose file it runs, runtime) in table order.
ENGINES = (
    ("keras predict", "keras", "keras"),
    ("keras call", "keras", "keras"),
    ("SavedModel", "saved_model", "saved_model"),
    ("ORT fp32", "onnx", "onnx"),
    ("ORT int8", "onnx-int8", "onnx"),
    ("LiteRT fp32", "tflite", "tflite"),
    ("LiteRT fp16", "tflite-fp16", "tflite"),
    ("LiteRT int8", "tflite-int8", "tflite"),
    ("OpenVINO fp32", "openvino", "openvino"),
    ("OpenVINO int8", "onnx-int8", "openvino"),
)
#: Standard deviations of the noise that :func:`noise_sensitivity` adds to float heatmaps.
NOISE_SIGMAS = (0.001, 0.003, 0.01)
FORMATS = ("saved_model", "onnx", "onnx-int8", "tflite", "tflite-fp16", "tflite-int8", "openvino")


def people(size: tuple[int, int]):
    """The shipped MPII people as the export check sees them (:func:`calibration_people`: crops and
    their mirror images, 0.1 head sizes, annotated joints), with their centres, scales, joints,
    annotated flags and head sizes for PCKh in original image pixels."""
    from hgkeras.data.readers import read_annotations
    from hgkeras.deploy.formats import calibration_people, default_calibration

    records = read_annotations(default_calibration())
    shipped = calibration_people(None, size)
    return {
        "people": shipped,
        "crops": shipped.crops[: len(records)],  # the people as annotated (no mirror images)
        "centers": np.stack([r.center for r in records]),
        "scales": np.array([r.scale for r in records]),
        "joints": np.stack([r.joints for r in records]),
        "visible": np.stack([r.visible for r in records]) > 0,
        "head": np.array([r.normalizer for r in records]),
    }


def image_keypoints(heatmaps: np.ndarray, truth: dict) -> np.ndarray:
    """Keypoints (N, J, 2) in original image pixels of the people's heatmaps (no flip test)."""
    from keras import ops

    from hgkeras.codec import HeatmapCodec

    count = len(truth["centers"])
    centers = truth["centers"].astype(np.float32)
    size = truth["people"].crops.shape[1:3]
    keypoints, _ = HeatmapCodec().decode_to_image(
        heatmaps[:count], centers, truth["scales"].astype(np.float32), size
    )
    return ops.convert_to_numpy(keypoints)


def noise_sensitivity(heatmaps: np.ndarray, truth: dict) -> dict:
    """How tight the 0.1 head criterion is: the float heatmaps of the people (and their mirror
    images) plus Gaussian noise of each standard deviation (seed 0), scored like an export."""
    from hgkeras.deploy.formats import head_agreement

    rng = np.random.default_rng(0)
    return {
        f"{sigma:g}": head_agreement(
            heatmaps + rng.normal(0, sigma, heatmaps.shape).astype(np.float32),
            heatmaps,
            truth["people"],
        )
        for sigma in NOISE_SIGMAS
    }


def peak_margins(heatmaps: np.ndarray, truth: dict) -> dict:
    """Quantiles (5, 10, 25, 50 %) over the annotated joints of how far the float heatmaps are from a
    different decoding: the peak value, the peak minus its highest 8-neighbour (argmax) and the
    |right - left| and |below - above| neighbour differences (quarter-pixel shift directions).
    Peaks on the grid's border (which the decoder does not shift) count for the peak value only."""
    count = len(truth["centers"])
    maps = np.moveaxis(np.asarray(heatmaps[:count], np.float64), -1, 1)  # (N, J, H, W)
    n, j, height, width = maps.shape
    flat = maps.reshape(n, j, -1)
    index = flat.argmax(-1)
    y, x = index // width, index % width
    inner = (x > 0) & (x < width - 1) & (y > 0) & (y < height - 1)
    y, x = np.clip(y, 1, height - 2), np.clip(x, 1, width - 2)  # read in range; border peaks masked
    rows, cols = np.arange(n)[:, None], np.arange(j)[None, :]

    def at(dy: int, dx: int) -> np.ndarray:
        return maps[rows, cols, y + dy, x + dx]

    peak = flat.max(-1)
    neighbours = [at(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    values = {
        "peak": peak,
        "argmax_margin": peak - np.max(neighbours, axis=0),
        "x_shift_margin": np.abs(at(0, 1) - at(0, -1)),
        "y_shift_margin": np.abs(at(1, 0) - at(-1, 0)),
    }
    quantiles = (0.05, 0.1, 0.25, 0.5)
    scored = {key: truth["visible"] & (inner | (key == "peak")) for key in values}
    return {
        key: {f"{q:.0%}": float(np.quantile(v[scored[key]], q)) for q in quantiles}
        for key, v in values.items()
    }


def load_engine(engine: str, fmt: str, kind: str, version_dir: Path, keras_path: Path):
    """A callable crops -> heatmaps for one engine."""
    from hgkeras.deploy.formats import FILENAMES
    from hgkeras.inference import runtimes

    if kind == "keras":
        runtime = runtimes.KerasRuntime(keras_path)
        if engine == "keras predict":
            model = runtime.model
            return runtime, lambda x: model.predict(x, batch_size=len(x), verbose=0)
        return runtime, runtime.run
    path = version_dir if fmt == "saved_model" else version_dir / FILENAMES[fmt]
    runtime = runtimes.OpenVINORuntime(path) if kind == "openvino" else runtimes.load_runtime(path)
    return runtime, runtime.run


def measure(name: str, model, out_root: Path, args, truth=None) -> dict:
    from hgkeras.deploy.export import export_model
    from hgkeras.deploy.formats import head_agreement

    keras_path = out_root / f"{name}.keras"
    model.save(keras_path)
    size = tuple(int(d) for d in model.inputs[0].shape[1:3])
    start = time.perf_counter()
    # random-weight models are for speed only: their activations grow through the stacks far beyond a
    # trained model's [0, 1] heatmaps, so the absolute 1e-4 export check is for trained models
    result = export_model(
        keras_path, out_root / "models", name=name, formats=FORMATS, models_config=False,
        verify=truth is not None, log=print,
    )  # fmt: skip
    export_seconds = time.perf_counter() - start
    checks = {
        fmt: {
            "max_abs": c.max_abs,
            "agreement": c.agreement,
            "within_0.1_head": c.within_tenth_head,
        }
        for fmt, c in result.checks.items()
        if fmt != "saved_model"
    }
    crops = (truth if truth is not None else people(size))["crops"]  # read the images once
    batch8 = np.concatenate([crops, crops[:, :, ::-1]])[:8]
    engines = [(e, *load_engine(e, f, k, result.version_dir, keras_path)) for e, f, k in ENGINES]
    times: dict[tuple[str, int], list[float]] = {}
    for index in range(args.rounds):  # round robin: load on a shared machine hits every engine
        for engine, _, run in engines:
            for batch, images in ((1, batch8[:1]), (8, batch8)):
                step = lambda images=images, run=run: run(images)  # noqa: E731
                seconds, _ = timed(step, 0.0, 1, warmup=1 if index == 0 else 0)
                times.setdefault((engine, batch), []).append(seconds)
    rows, reference, extra = [], None, {}
    for (engine, fmt, kind), (_, runtime, _) in zip(ENGINES, engines, strict=True):
        row = {"engine": engine, "format": fmt, "runtime": kind}
        for batch in (1, 8):
            median = float(np.median(times[engine, batch]))
            row[f"batch{batch}_ms"] = 1000 * median
            row[f"batch{batch}_ms_min"] = 1000 * min(times[engine, batch])
            row[f"batch{batch}_images_per_s"] = batch / median
        if truth is not None:
            heatmaps = runtime.run(truth["people"].crops)
            keypoints = image_keypoints(heatmaps, truth)
            if reference is None:  # the first engine is Keras (float)
                reference = heatmaps
                extra = {
                    "float_plus_noise_within_0.1_head": noise_sensitivity(heatmaps, truth),
                    "float_heatmap_margins": peak_margins(heatmaps, truth),
                }
            row["within_0.1_head_of_float"] = head_agreement(heatmaps, reference, truth["people"])
            error = np.linalg.norm(keypoints - truth["joints"], axis=-1) / truth["head"][:, None]
            row["pckh_0.5"] = 100.0 * float(np.mean(error[truth["visible"]] <= 0.5))
        print(
            f"  {name:10s} {engine:14s} batch 1 {row['batch1_ms']:8.1f} ms, batch 8 "
            f"{row['batch8_images_per_s']:7.2f} images/s", flush=True,
        )  # fmt: skip
        rows.append(row)
    return {
        "model": name,
        "stacks": len(model.outputs),
        "input_size": list(size),
        "parameters": int(model.count_params()),
        "export_seconds": export_seconds,
        "export_checks": checks,
        "results": rows,
        **extra,
    }


def summary(report: dict) -> list[str]:
    lines = []
    for entry in report["models"]:
        rows = {r["engine"]: r for r in entry["results"]}
        ort = rows["ORT fp32"]["batch8_images_per_s"]
        best = max(("ORT int8", "OpenVINO int8"), key=lambda e: rows[e]["batch8_images_per_s"])
        speedup = rows[best]["batch8_images_per_s"] / ort
        keras1 = rows["keras predict"]["batch1_ms"]
        slower = [  # the float export formats (Keras itself is the reference)
            e
            for e, r in rows.items()
            if "int8" not in e and not e.startswith("keras") and r["batch1_ms"] > keras1
        ]
        line = (
            f"{entry['model']}: {best} {speedup:.2f}x ORT fp32 throughput at batch 8 "
            f"(target >= 2x: {'met' if speedup >= 2 else 'MISSED'}); float formats slower than "
            f"keras predict at batch 1: {slower or 'none'}"
        )
        if "within_0.1_head_of_float" in rows[best]:
            share = rows[best]["within_0.1_head_of_float"]
            line += (
                f"; {best} joints within 0.1 head of float: {share:.1%} "
                f"(target >= 90%: {'met' if share >= 0.9 else 'MISSED'})"
            )
        entry["targets"] = {"int8_engine": best, "int8_speedup_batch8": speedup,
                            "float_slower_than_keras_predict_batch1": slower}  # fmt: skip
        lines.append(line)
    return lines


def markdown(report: dict) -> str:
    lines = []
    for entry in report["models"]:
        accuracy = "within_0.1_head_of_float" in entry["results"][0]
        head = "| engine | batch 1 ms | batch 8 images/s |" + (
            " joints within 0.1 head of float | PCKh@0.5 |" if accuracy else ""
        )
        lines += [f"**{entry['model']}** ({entry['stacks']} stacks, input "
                  f"{entry['input_size'][0]}x{entry['input_size'][1]}, "
                  f"{entry['parameters'] / 1e6:.1f} M parameters)", "", head,
                  "|---|---:|---:|" + ("---:|---:|" if accuracy else "")]  # fmt: skip
        for r in entry["results"]:
            line = f"| {r['engine']} | {r['batch1_ms']:.1f} | {r['batch8_images_per_s']:.2f} |"
            if accuracy:
                line += f" {r['within_0.1_head_of_float']:.1%} | {r['pckh_0.5']:.1f} |"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trained", nargs="*", default=[], help="trained .keras files (python train.py)"
    )
    parser.add_argument("--stacks", type=int, nargs="*", default=[2, 8])
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed calls per engine and batch (medians reported)"
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "deploy_speed.json")
    )
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument(
        "--summarize",
        action="store_true",
        help="no measuring: recompute and print the table and targets of --out",
    )
    args = parser.parse_args(argv)
    if args.summarize:
        import json

        report = json.loads(Path(args.out).read_text())
        report["summary"] = summary(report)
        print(markdown(report))
        print("\n".join(report["summary"]))
        from hgkeras import io

        io.atomic_write_json(args.out, report)
        return 0

    import keras

    from hgkeras import StackedHourglass, io

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("run with KERAS_BACKEND=tensorflow (the export needs it)")
    report = {
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
        "versions": {
            p: md.version(p)
            for p in (
                "keras",
                "tensorflow",
                "onnxruntime",
                "onnx",
                "tf2onnx",
                "openvino",
                "ai-edge-litert",
            )  # fmt: skip
        },
        "settings": {"rounds": args.rounds, "warmup_calls": 1},
        "note": args.note,
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="hgkeras-deploy-bench-") as tmp:
        for index, path in enumerate(args.trained):
            model = keras.models.load_model(path, compile=False)
            model = getattr(model, "hourglass", model)
            size = tuple(int(d) for d in model.inputs[0].shape[1:3])
            name = "trained" if index == 0 else f"trained-{index + 1}"
            entry = measure(name, model, Path(tmp), args, people(size))
            report["models"].append({**entry, "source": str(path)})
        for stacks in args.stacks:
            model = StackedHourglass(
                num_stacks=stacks, num_features=args.features,
                image_shape=(args.image_size, args.image_size, 3),
            )  # fmt: skip
            report["models"].append(measure(f"{stacks}-stack", model, Path(tmp), args))
    report["machine"]["load_average_at_end"] = os.getloadavg()
    lines = summary(report)
    print()
    print(markdown(report))
    print("\n".join(lines))
    report["summary"] = lines
    io.atomic_write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
