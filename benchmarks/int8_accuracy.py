"""int8 accuracy against ground truth: each int8 format's PCK and mean pixel error beside float's.

    python benchmarks/int8_accuracy.py --model best.keras [--data ANNOTATIONS --images DIR]
        [--calibration DATA --calibration-images DIR] [--thresholds 0.5] [--flip]
    python benchmarks/int8_accuracy.py --model best.keras --data RECORDS --split valid
        --calibration RECORDS --thresholds 0.2 0.1        # a prepared set of one's own

Exports the model's float and int8 files with the export's own writer
(:func:`hgkeras.deploy.formats.write_formats`, int8 calibrated on ``--calibration`` as
``hgkeras export --calibration`` is; default the shipped MPII people) into a temporary folder, then
predicts every labelled person of ``--data`` (any annotation file :func:`hgkeras.data.read_annotations`
reads, images in ``--images``, default ``images/`` beside it; or the ``--split`` of TFRecords that
``hgkeras prepare`` wrote, calibrated then on their training people; default the shipped MPII
samples) through each runtime exactly as ``hgkeras evaluate --model FILE`` does (the one crop, the
runtime, decoding to image pixels). Scores against the annotations: PCK at each ``--thresholds`` of the records' normaliser
(MPII: head size, so 0.5 is PCKh@0.5) and the mean distance in original image pixels over the
annotated joints. Targets (issue #26): each int8 engine within 2 PCK points of float and its mean
pixel error within 10 % of float's. OpenVINO int8 runs ``model_int8.onnx``, as in deploy_speed.
Prints a table and writes ``benchmarks/results/int8_accuracy.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from _workers import cpu_model  # noqa: E402

#: (engine, format whose file it runs, runtime); the first is the float reference.
ENGINES = (
    ("Keras float32", "keras", "keras"),
    ("ORT fp32", "onnx", "onnx"),
    ("ORT int8", "onnx-int8", "onnx"),
    ("OpenVINO int8", "onnx-int8", "openvino"),
    ("LiteRT fp32", "tflite", "tflite"),
    ("LiteRT int8", "tflite-int8", "tflite"),
)
FORMATS = ("onnx", "onnx-int8", "tflite", "tflite-int8")
#: Targets: PCK points an int8 engine may lose, and its mean pixel error as a multiple of float's.
MAX_PCK_DROP = 2.0
MAX_ERROR_RATIO = 1.1


def load_engine(fmt: str, kind: str, folder: Path, keras_path: Path):
    """The runtime of one engine (a callable crops -> heatmaps with ``run``, ``pose``, ``input_size``)."""
    from hgkeras.deploy.formats import FILENAMES
    from hgkeras.inference import runtimes

    if kind == "keras":
        return runtimes.KerasRuntime(keras_path)
    path = folder / FILENAMES[fmt]
    return runtimes.OpenVINORuntime(path) if kind == "openvino" else runtimes.load_runtime(path)


def score(pred: np.ndarray, truth: dict, thresholds) -> dict:
    """PCK (%) at each threshold of the people's normalisers and the mean pixel error, over the
    annotated joints (``truth``: ``joints``, ``visible``, ``normalizer``)."""
    from hgkeras.deploy.formats import pck_and_error

    joints = np.asarray(truth["joints"], np.float64)
    annotated = np.asarray(truth["visible"]) > 0
    normalizer = np.asarray(truth["normalizer"], np.float64)
    distance = np.linalg.norm(pred - joints, axis=-1)
    result = {}
    for t in thresholds:
        result[f"pck_{t:g}"], result["mean_px_error"] = pck_and_error(
            distance, normalizer, annotated, t
        )
    result["joints"] = int(annotated.sum())
    return result


def people(data: Path, images: Path | None, split: str | None, size) -> tuple[dict, Callable]:
    """(ground truth, predict(runtime, flip, pose) -> keypoints) of an annotation file (people in
    ``images``) or of TFRecords (``split``), each predicted as ``hgkeras evaluate`` does."""
    from hgkeras.evaluation.evaluate import (
        is_annotation_file,
        predict_eval_dataset,
        predict_records,
    )

    if is_annotation_file(data):
        from hgkeras.data import read_annotations

        records = read_annotations(data, split=split)
        folder = images if images is not None else data.parent / "images"
        truth = {
            "joints": np.stack([r.joints for r in records]),
            "visible": np.stack([r.visible for r in records]),
            "normalizer": np.array([r.normalizer for r in records]),
        }

        def predict(runtime, flip, pose):
            return predict_records(runtime, records, folder, flip=flip, pose=pose)["pred"]

        return truth, predict
    from hgkeras.data import pose_dataset

    def dataset():
        return pose_dataset(data, 16, training=False, split=split, input_size=size[0])

    truth = {"joints": [], "visible": [], "normalizer": []}
    for batch in dataset():
        for key in truth:
            truth[key].append(np.asarray(batch[key]))
    truth = {key: np.concatenate(values) for key, values in truth.items()}

    def predict(runtime, flip, pose):
        return predict_eval_dataset(runtime, dataset(), flip, pose)["pred"]

    return truth, predict


def shown(path) -> str:
    """``path`` relative to the repository when inside it (for the committed JSON)."""
    root = Path(__file__).resolve().parents[1]
    path = Path(path).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def measure(args) -> dict:
    from hgkeras.deploy.formats import calibration_people, default_calibration, write_formats
    from hgkeras.inference.runtimes import heatmap_model
    from hgkeras.models.loading import load_model
    from hgkeras.spec import pose_of

    keras_path = Path(args.model)
    model = load_model(keras_path)
    pose = pose_of(model)
    size = tuple(int(d) for d in model.inputs[0].shape[1:3])
    data = Path(args.data) if args.data else default_calibration()
    images = Path(args.images) if args.images else None
    truth, predict = people(data, images, args.split, size)
    calibration = calibration_people(args.calibration, size, args.calibration_images)
    count = len(truth["joints"])
    print(f"{count} labelled people from {data}; calibration: {len(calibration.crops)} "
          f"crops from {args.calibration or default_calibration()}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hgkeras-int8-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        network = heatmap_model(load_model(keras_path, fold_batch_norms=True))
        write_formats(network, folder, FORMATS, calibration.crops)
        export_seconds = time.perf_counter() - start
        rows, reference = [], None
        for engine, fmt, kind in ENGINES:
            runtime = load_engine(fmt, kind, folder, keras_path)
            pred = predict(runtime, args.flip, pose)
            row = {"engine": engine, "format": fmt, "runtime": kind, **score(pred, truth,
                   args.thresholds)}  # fmt: skip
            if reference is None:  # Keras float32
                reference = (row, pred)
            float_row, float_pred = reference
            moved = np.linalg.norm(pred - float_pred, axis=-1)
            annotated = np.asarray(truth["visible"]) > 0
            row["joints_moved_from_float"] = int(np.sum(moved[annotated] > 1e-3))
            row["pck_drop"] = {
                key: float_row[key] - row[key] for key in row if key.startswith("pck_")
            }
            row["error_ratio"] = row["mean_px_error"] / float_row["mean_px_error"]
            row["meets_targets"] = bool(
                max(row["pck_drop"].values()) <= MAX_PCK_DROP
                and row["error_ratio"] <= MAX_ERROR_RATIO
            )
            rows.append(row)
            print(f"  {line(row, args.thresholds)}", flush=True)
    return {
        "benchmark": "int8_accuracy",
        "model": shown(keras_path),
        "input_size": list(size),
        "pose": pose.name,
        "data": shown(data),
        "split": args.split,
        "people": count,
        "calibration": shown(args.calibration or default_calibration()),
        "calibration_crops": len(calibration.crops),
        "flip_test": bool(args.flip),
        "thresholds": list(args.thresholds),
        "targets": {"max_pck_drop_points": MAX_PCK_DROP, "max_error_ratio": MAX_ERROR_RATIO},
        "export_seconds": export_seconds,
        "results": rows,
    }


def line(row: dict, thresholds) -> str:
    pcks = " ".join(f"PCK@{t:g} {row[f'pck_{t:g}']:5.1f}" for t in thresholds)
    return (
        f"{row['engine']:14s} {pcks}  mean error {row['mean_px_error']:6.2f} px "
        f"({row['error_ratio']:.2f}x float), {row['joints_moved_from_float']:3d}/{row['joints']} "
        f"joints moved, targets {'met' if row['meets_targets'] else 'MISSED'}"
    )


def markdown(report: dict) -> str:
    keys = [f"pck_{t:g}" for t in report["thresholds"]]
    head = "| engine | " + " | ".join(f"PCK@{k[4:]}" for k in keys) + " | mean px error | "
    head += "vs float | joints moved | targets |"
    lines = [head, "|---|" + "---:|" * (len(keys) + 3) + "---|"]
    for r in report["results"]:
        cells = " | ".join(f"{r[k]:.1f}" for k in keys)
        lines.append(
            f"| {r['engine']} | {cells} | {r['mean_px_error']:.2f} | {r['error_ratio']:.2f}x | "
            f"{r['joints_moved_from_float']}/{r['joints']} | "
            f"{'met' if r['meets_targets'] else 'missed'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="trained .keras file")
    parser.add_argument(
        "--data",
        help="labelled people: an annotation file or TFRecords (hgkeras prepare); default: the "
        "shipped MPII people",
    )
    parser.add_argument("--split", help="split of --data (e.g. valid: the held-out people)")
    parser.add_argument("--images", help="image folder of --data (default: images/ beside it)")
    parser.add_argument("--calibration", help="int8 calibration data, as hgkeras export takes it")
    parser.add_argument("--calibration-images", help="image folder of --calibration")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5])
    parser.add_argument("--flip", action="store_true", help="with the flip test")
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "int8_accuracy.json")
    )
    args = parser.parse_args(argv)

    import keras

    from hgkeras.io import atomic_write_json

    report = measure(args)
    versions = {}
    for package in ("onnxruntime", "openvino", "ai-edge-litert", "tensorflow"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    report.update(
        note=args.note,
        cpu=cpu_model(),
        cpu_count=os.cpu_count(),
        platform=platform.platform(),
        keras=keras.__version__,
        versions=versions,
    )
    print(markdown(report))
    print(f"({report['cpu']}, {report['cpu_count']} CPUs)")
    atomic_write_json(Path(args.out), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
