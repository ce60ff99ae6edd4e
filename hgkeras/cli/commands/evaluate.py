"""``hgkeras evaluate``: MPII PCKh / FLIC PCK of a model or of an existing predictions file."""

from __future__ import annotations

import argparse
from pathlib import Path

ANNOTATION_SUFFIXES = (".h5", ".hdf5", ".mat", ".json")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model or a predictions file with MPII PCKh@0.5 / FLIC PCK@0.2",
        description="Evaluate pose predictions on MPII (PCKh@0.5, official or HRNet protocol) or FLIC "
        "(PCK@0.2). Predictions come from a model (--model, run on --data) or from an existing file "
        "(--predictions, scored against the annotation file --data). Prints the paper-style table "
        "(Head Sho Elb Wri Hip Knee Ank Total) and writes JSON with --out.",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="evaluation data: an annotation file (Torch annot .h5, MPII release .mat, FLIC "
        "examples.mat, HRNet .json) or TFRecords (a directory written by 'hgkeras prepare', or a "
        "glob of shards)",
    )
    parser.add_argument(
        "--model",
        help="a saved .keras model (StackedHourglass or a training wrapper) or an exported one "
        "(SavedModel folder, .onnx, .tflite, OpenVINO .xml)",
    )
    parser.add_argument(
        "--predictions",
        help="score this file instead of running a model: .h5 with 'preds' (N, J, 2), 1-based "
        "(the original Torch code's layout) or .mat with 'preds' (HRNet's pred.mat)",
    )
    parser.add_argument("--images", help="image directory for an annotation file (with --model)")
    parser.add_argument("--split", help="split to evaluate (train/valid/test) for multi-split data")
    parser.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=True,
        help="flip test: average with the mirrored image's heatmaps (default on)",
    )  # fmt: skip
    parser.add_argument(
        "--protocol", choices=("official", "hrnet"), default="official",
        help="MPII protocol: official (Head = neck + head top, Total) or hrnet (Head = head top, Mean)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16, help="people per batch (default 16)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--write-predictions",
        help="also write the predictions (1-based 'preds', N x J x 2) to this .h5 or .mat file",
    )
    parser.add_argument(
        "--write-mpii-submission",
        help="write predictions in the MPII benchmark layout (pred_keypoints_mpii.mat: struct 'pred')",
    )
    parser.add_argument(
        "--mpii-release",
        help="MPII release .mat (mpii_human_pose_v1_u12_1.mat): gives the full test image list and "
        "names for --write-mpii-submission",
    )
    parser.set_defaults(func=run)


def _is_annotation_file(path: str) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() in ANNOTATION_SUFFIXES


def _load_model(path: str):
    import keras

    if not Path(path).exists():
        raise FileNotFoundError(f"model not found: {path}")
    from hgkeras.inference.runtimes import load_runtime, runtime_kind

    if runtime_kind(path) != "keras":  # SavedModel folder, .onnx, .tflite, OpenVINO .xml
        return load_runtime(path)
    try:
        import hgkeras.training.trainer  # noqa: F401  (registers training wrappers, if present)
    except ImportError:
        pass
    from hgkeras.models.fold import fold_batch_norms

    model = keras.models.load_model(path, compile=False)
    return fold_batch_norms(getattr(model, "hourglass", model))


def _read_image(path: Path):
    import cv2

    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _predict_records(model, records, images_dir: Path, flip: bool, batch_size: int):
    """Crop every record from its image, predict and decode to original 0-based pixels."""
    import cv2
    import numpy as np
    from tqdm import tqdm

    from hgkeras.codec import predict_keypoints
    from hgkeras.geometry import crop_matrix

    size = model.inputs[0].shape[1] or 256
    preds, cache = [], {}
    for start in tqdm(range(0, len(records), batch_size), desc="evaluate", leave=False):
        batch = records[start : start + batch_size]
        crops = []
        for record in batch:
            if record.image not in cache:
                cache.clear()  # records of one image are adjacent; keep one decoded image
                cache[record.image] = _read_image(images_dir / record.image)
            matrix = crop_matrix(record.center, record.scale, size)
            crop = cv2.warpAffine(cache[record.image], matrix, (size, size), flags=cv2.INTER_LINEAR)
            crops.append(crop.astype(np.float32) / 255.0)
        keypoints, _ = predict_keypoints(
            model,
            np.stack(crops),
            np.stack([r.center for r in batch]),
            np.array([r.scale for r in batch]),
            flip=flip,
            batch_size=batch_size,
        )
        preds.append(keypoints)
    return np.concatenate(preds)


def _gather(args: argparse.Namespace) -> dict:
    """Predictions and ground truth as numpy arrays (keys pred, joints, visible, normalizer, ids)."""
    import numpy as np

    if _is_annotation_file(args.data):
        from hgkeras.data import read_annotations

        records = read_annotations(args.data, split=args.split)
        if not records:
            raise ValueError(
                f"{args.data}: no records" + (f" in split {args.split!r}" if args.split else "")
            )
        if args.predictions:
            from hgkeras.evaluation.evaluate import read_predictions

            pred = read_predictions(args.predictions)
        else:
            if not args.images:
                raise ValueError("--images DIR is needed to run --model on an annotation file")
            pred = _predict_records(
                _load_model(args.model), records, Path(args.images), args.flip, args.batch_size
            )
        if pred.shape[0] != len(records):
            raise ValueError(
                f"predictions have {pred.shape[0]} people but {args.data} has {len(records)} records "
                f"(shape {pred.shape})"
            )
        return {
            "pred": pred,
            "joints": np.stack([r.joints for r in records]).astype(np.float64),
            "visible": np.stack([r.visible for r in records]),
            "normalizer": np.array([r.normalizer for r in records]),
            "image_id": np.array([r.image_id for r in records]),
            "person_id": np.array([r.person_id for r in records]),
        }
    if args.predictions:
        raise ValueError("--predictions needs --data to be an annotation file (the ground truth)")
    from hgkeras.data import pose_dataset
    from hgkeras.evaluation.evaluate import predict_eval_dataset

    model = _load_model(args.model)
    size = model.inputs[0].shape[1] or 256
    dataset = pose_dataset(
        args.data, args.batch_size, training=False, split=args.split, input_size=int(size)
    )
    return predict_eval_dataset(model, dataset, flip=args.flip)


def run(args: argparse.Namespace) -> int:
    import json
    import math

    import numpy as np

    from hgkeras.evaluation import metrics
    from hgkeras.evaluation.evaluate import (
        atomic_write_text,
        mpii_test_images,
        score,
        summary_key,
        write_mpii_submission,
        write_predictions,
    )

    if bool(args.model) == bool(args.predictions):
        raise ValueError("give exactly one of --model or --predictions")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = _gather(args)
    pred = out["pred"]
    num_joints = pred.shape[1]
    if num_joints not in (16, 11):
        raise ValueError(f"predictions have {num_joints} joints; expected 16 (MPII) or 11 (FLIC)")
    dataset = "mpii" if num_joints == 16 else "flic"
    if out["joints"].shape != pred.shape:
        raise ValueError(
            f"predictions {pred.shape} and ground truth {out['joints'].shape} of {args.data} differ"
        )

    if args.write_predictions:
        write_predictions(args.write_predictions, pred)
        print(f"wrote predictions to {args.write_predictions}")
    if args.write_mpii_submission:
        if dataset != "mpii":
            raise ValueError("--write-mpii-submission needs MPII (16-joint) predictions")
        test_images, names = (None, None)
        if args.mpii_release:
            test_images, names = mpii_test_images(args.mpii_release)
        write_mpii_submission(
            args.write_mpii_submission, pred, out["image_id"], out["person_id"], test_images, names
        )
        print(f"wrote MPII submission to {args.write_mpii_submission}")

    visible = np.asarray(out["visible"]) > 0
    if not visible.any():
        print(f"{args.data}: no annotated joints (a test set?): nothing to score")
        return 0
    if dataset == "flic":
        normalizer = metrics.flic_torso_size(out["joints"])
        result = score(pred, out["joints"], visible, normalizer, "flic")
        table = metrics.format_flic_table(result)
        title = "FLIC PCK@0.2 (torso = left shoulder to right hip)"
    else:
        normalizer = np.asarray(out["normalizer"], np.float64)
        result = score(pred, out["joints"], visible, normalizer, "mpii", protocol=args.protocol)
        table = metrics.format_table(result)
        title = f"MPII PCKh@0.5, {args.protocol} protocol" + (
            " (Head = upper neck + head top; Total over 14 joints)"
            if args.protocol == "official"
            else " (Head = head top; Mean over 14 joints, count-weighted)"
        )
    print(f"{title}, {pred.shape[0]} people, {int(visible.sum())} annotated joints")
    print(table)
    if "AUC" in result:
        print(f"AUC (PCKh 0..0.5): {result['AUC']:.1f}")
    if args.out:
        document = {
            "dataset": dataset,
            "data": str(args.data),
            "model": args.model,
            "predictions": args.predictions,
            "flip": bool(args.flip) if args.model else None,
            "num_people": int(pred.shape[0]),
            "num_joints_scored": int(visible.sum()),
            "summary": summary_key(result),
            "results": {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in result.items()
                if k != "per_joint"
            },
            "per_joint": [None if math.isnan(v) else v for v in result["per_joint"]],
        }
        atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0
