"""A keypoint set of one's own: train on the real DeepLabCut Reaching frames, score the held-out ones.

    python benchmarks/own_keypoints.py [--project tests/data/dlc_reaching] [--encodings paper udp]

The project (55 labelled frames of a mouse reaching for a joystick, 5 keypoints, the tongue often
unlabelled) is prepared as a user would (``hgkeras prepare dlc --valid-fraction 0.2``: 11 frames held
out by the SHA-1 of their names, so the split is fixed), then a network is trained on the other 44
with ``hgkeras train --data-dir`` settings: the set's own recipe (``small``: Torch's RMSprop at
1e-3, the Torch augmentation law, no flip since the set has no left/right pairs, sigma 2) made
CPU-sized (2 stacks, 64 features, 128-pixel input, batch 8, 1,200 steps, x0.1 after 1,000), once
per ``--encodings`` (``paper``: the paper's targets, decoded with ``paper`` and ``dark``; ``udp``:
UDP's targets and decoder). The network after the last step (``last.keras``, not the best by
validation, which would pick on the held-out frames) predicts the held-out frames through
:func:`hgkeras.evaluation.evaluate.gather_predictions` (the path of ``hgkeras evaluate``, no flip
test), scored by :func:`hgkeras.evaluation.evaluate.score_for_pose`: PCK at 0.2, 0.1 and 0.05 of
the box's longer side and the mean and median error in original image pixels.

Beside it, a trivial baseline: each keypoint at its mean position relative to the box (centre and
longer side) over the training frames. Target (issue #25): the trained model's held-out mean error
under a fifth of the baseline's, in at most 15 minutes of training on the 2-core CPU machine.
Prints a table and writes ``benchmarks/results/own_keypoints.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from _workers import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VALID_FRACTION = 0.2
#: The CPU-sized network and length (each a ``python train.py`` flag).
TRAINING = {
    "stacks": 2,
    "features": 64,
    "input_size": 128,
    "batch_size": 8,
    "epochs": 12,
    "steps_per_epoch": 100,
    "lr_drops": [10],
    "val_every": 4,
    "seed": 0,
}
THRESHOLDS = (0.2, 0.1, 0.05)
#: Target: the model's held-out mean error times this is below the baseline's.
TARGET_FACTOR = 5.0
MAX_TRAIN_MINUTES = 15.0


def scores(out: dict, spec) -> dict:
    """PCK at :data:`THRESHOLDS` of the box side, mean and median error (px), per keypoint."""
    import dataclasses

    from hgkeras.evaluation.evaluate import score_for_pose

    row: dict = {}
    for threshold in THRESHOLDS:
        result = score_for_pose(out, dataclasses.replace(spec, pck_threshold=threshold))
        row[f"pck@{threshold:g}"] = float(result["Mean"])
    row["mean_error_px"] = float(result["mean_error_px"])
    row["median_error_px"] = float(result["median_error_px"])
    row["per_keypoint_error_px"] = dict(
        zip(spec.joint_names, (float(v) for v in result["per_joint_error_px"]), strict=True)
    )
    row["keypoints_scored"] = int(np.sum(np.asarray(out["visible"]) > 0))
    return row


def baseline(records_dir: Path, spec) -> dict:
    """Each keypoint at its mean training position relative to the box, on the held-out frames."""
    from hgkeras.data import pose_dataset

    def arrays(split: str) -> dict:
        batches = list(pose_dataset(records_dir, 64, training=False, split=split, input_size=64))
        return {
            key: np.concatenate([np.asarray(b[key]) for b in batches]).astype(np.float64)
            for key in ("joints", "visible", "box", "normalizer")
        }

    def frame(data: dict) -> tuple[np.ndarray, np.ndarray]:
        box = data["box"]
        centre = np.stack([box[:, 0] + box[:, 2], box[:, 1] + box[:, 3]], axis=1) / 2
        side = np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
        return centre, side

    train, valid = arrays("train"), arrays("valid")
    centre, side = frame(train)
    relative = (train["joints"] - centre[:, None]) / side[:, None, None]
    seen = train["visible"] > 0
    mean = np.stack(
        [relative[seen[:, j], j].mean(axis=0) for j in range(spec.num_joints)]
    )  # (J, 2)
    centre, side = frame(valid)
    pred = centre[:, None] + mean[None] * side[:, None, None]
    return scores({**valid, "pred": pred}, spec)


def train_and_score(records_dir: Path, work: Path, encoding: str, spec) -> dict:
    from hgkeras.codec import DECODERS, HeatmapCodec
    from hgkeras.evaluation.evaluate import gather_predictions
    from hgkeras.training.recipes import resolve_config
    from hgkeras.training.run import train

    out = work / f"run_{encoding}"
    config = resolve_config(
        {"data_dir": str(records_dir), "out": str(out), "decoder": encoding, "export": False,
         "verbose": 2, **TRAINING}
    )  # fmt: skip
    start = time.time()
    summary = train(config)
    seconds = time.time() - start
    decoders = {}
    for decoder in DECODERS:
        if HeatmapCodec(decoder).encoding != HeatmapCodec(encoding).encoding:
            continue
        predicted = gather_predictions(
            records_dir, model=out / "last.keras", split="valid", flip=False, decoder=decoder
        )
        decoders[decoder] = scores(predicted, spec)
    return {
        "encoding": encoding,
        "recipe": config.recipe,
        "settings": {
            k: getattr(config, k)
            for k in (*TRAINING, "lr", "optimizer", "sigma", "augment", "init", "decoder")
        },  # fmt: skip
        "augmentation": config.augmentation,
        "train_seconds": round(seconds, 1),
        "steps": summary["optimizer_iterations"],
        "final_loss": summary["history"]["loss"][-1],
        "decoders": decoders,
    }


def table(report: dict) -> str:
    lines = [
        "| model | decoder | mean px | median px | PCK@0.2 | PCK@0.1 | PCK@0.05 | train min |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, decoder: str, r: dict, minutes: str) -> str:
        return (
            f"| {name} | {decoder} | {r['mean_error_px']:.1f} | {r['median_error_px']:.1f} | "
            f"{r['pck@0.2']:.1f} | {r['pck@0.1']:.1f} | {r['pck@0.05']:.1f} | {minutes} |"
        )

    lines.append(row("baseline (mean position in the box)", "-", report["baseline"], "-"))
    for model in report["models"]:
        for decoder, r in model["decoders"].items():
            name = f"2-stack, {model['encoding']} targets"
            lines.append(row(name, decoder, r, f"{model['train_seconds'] / 60:.1f}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=str(REPO / "tests" / "data" / "dlc_reaching"))
    parser.add_argument(
        "--encodings", nargs="+", default=["paper", "udp"], choices=("paper", "udp"),
        help="train one network per target encoding (default both)",
    )  # fmt: skip
    parser.add_argument(
        "--steps-per-epoch", type=int, default=TRAINING["steps_per_epoch"],
        help="shorter runs to try the script (the committed figures use the default)",
    )  # fmt: skip
    parser.add_argument(
        "--optimizer", choices=("rmsprop", "keras_rmsprop", "adam"),
        help="train with this optimiser instead of the recipe's (Torch's RMSprop), for comparison",
    )  # fmt: skip
    parser.add_argument("--work", help="keep the records and runs here (default: a temporary one)")
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "own_keypoints.json")
    )
    args = parser.parse_args(argv)
    TRAINING["steps_per_epoch"] = args.steps_per_epoch
    if args.optimizer:
        TRAINING["optimizer"] = args.optimizer

    import keras

    from hgkeras.data.pipeline import read_pose
    from hgkeras.data.prepare import prepare_dataset
    from hgkeras.io import atomic_write_json

    report = {
        "benchmark": "own_keypoints",
        "machine": machine(),
        "versions": {p: md.version(p) for p in ("keras", "tensorflow", "numpy")},
        "backend": keras.backend.backend(),
        "note": args.note,
        "project": str(Path(args.project).resolve().relative_to(REPO))
        if Path(args.project).resolve().is_relative_to(REPO)
        else args.project,
        "valid_fraction": VALID_FRACTION,
        "targets": {
            "error_factor_below_baseline": TARGET_FACTOR,
            "max_train_minutes": MAX_TRAIN_MINUTES,
        },  # fmt: skip
    }
    with tempfile.TemporaryDirectory(prefix="hgkeras-own-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        records = work / "records"
        manifest = prepare_dataset(
            "dlc", args.project, None, records, valid_fraction=VALID_FRACTION, progress=False
        )
        spec = read_pose(records, "valid")
        report["pose"] = spec.to_config()
        report["frames"] = {s: v["records"] for s, v in manifest["splits"].items()}
        report["baseline"] = baseline(records, spec)
        print(f"baseline: mean error {report['baseline']['mean_error_px']:.1f} px", flush=True)
        report["models"] = [train_and_score(records, work, e, spec) for e in args.encodings]
    base = report["baseline"]["mean_error_px"]
    for model in report["models"]:
        best = min(r["mean_error_px"] for r in model["decoders"].values())
        model["baseline_over_model_error"] = base / best
        model["meets_targets"] = bool(
            base / best > TARGET_FACTOR and model["train_seconds"] <= 60 * MAX_TRAIN_MINUTES
        )
    report["table"] = table(report)
    print(report["table"])
    for model in report["models"]:
        print(f"{model['encoding']}: baseline / model mean error {model['baseline_over_model_error']:.1f}"
              f" (target > {TARGET_FACTOR:g}), training {model['train_seconds'] / 60:.1f} min "
              f"-> targets {'met' if model['meets_targets'] else 'MISSED'}")  # fmt: skip
    print(f"({report['machine']['cpu']}, {report['machine']['cpu_count']} CPUs, load at start "
          f"{report['machine']['load_average_at_start'][0]:.2f})")  # fmt: skip
    atomic_write_json(Path(args.out), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
