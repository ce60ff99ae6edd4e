"""``hgkeras evaluate``: the keypoint set's own score (MPII PCKh, FLIC PCK, COCO OKS AP, PCK of the box
for other sets, errors in pixels) of a model or of a predictions file."""

from __future__ import annotations

import argparse
from pathlib import Path

from hgkeras.codec import DECODERS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model or a predictions file by its keypoint set's metric (MPII PCKh@0.5, FLIC "
        "PCK@0.2, COCO OKS AP, PCK@0.2 of the box for other sets; errors in pixels)",
        description="Evaluate pose predictions on MPII (PCKh@0.5, official or HRNet protocol), FLIC "
        "(PCK@0.2 of the torso), any prepared keypoint set (TFRecords of `hgkeras prepare`: PCK of "
        "its normaliser, mean and median error in image pixels per keypoint group) or COCO-format "
        "keypoints (OKS AP/AR with pycocotools: --data a COCO keypoint file, "
        "--predictions a COCO results file, or --model with --images [--detections]). "
        "Predictions come from a model (--model, run on --data) or from an existing file "
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
        "--pose",
        help="the keypoint set of an annotation file whose layout does not name it (Torch annot "
        ".h5, HRNet .json): mpii (default, or the model's), flic, or a pose spec .json",
    )
    parser.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=True,
        help="flip test: average with the mirrored image's heatmaps (default on)",
    )  # fmt: skip
    parser.add_argument(
        "--decoder", choices=DECODERS,
        help="heatmap decoder (--model): paper (argmax + quarter pixel), dark (Taylor step on the "
        "blurred log-heatmap) or udp (for udp-trained models); default: the model's own codec",
    )  # fmt: skip
    parser.add_argument(
        "--protocol", choices=("official", "hrnet"), default="official",
        help="MPII protocol: official (Head = neck + head top, Total) or hrnet (Head = head top, Mean)",
    )  # fmt: skip
    parser.add_argument(
        "--detections",
        help="COCO: person detections (results layout: image_id, bbox, score) to run --model on "
        "instead of the ground-truth boxes",
    )
    parser.add_argument(
        "--oks-nms", action=argparse.BooleanOptionalAction, default=None,
        help="COCO: drop poses with OKS > 0.9 to a higher-scored one (default: on with --detections)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=16, help="people per batch (default 16)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--write-predictions",
        help="also write the predictions, the layout by suffix: .csv DeepLabCut's prediction CSV "
        "(one row per image), .json COCO keypoint results, .h5/.mat 1-based 'preds' (N x J x 2, "
        "the Torch code's / HRNet's MPII layouts)",
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


def _is_coco_file(path: str) -> bool:
    from hgkeras.data.coco import is_coco_json
    from hgkeras.evaluation.evaluate import is_annotation_file

    return is_annotation_file(path) and path.lower().endswith(".json") and is_coco_json(path)


def _run_coco(args: argparse.Namespace) -> int:
    """COCO OKS AP/AR (pycocotools) of a results file, or of --model on ground-truth/detected boxes."""
    import json

    from hgkeras.evaluation import coco
    from hgkeras.models.loading import load_model

    if args.predictions:
        metrics = coco.evaluate_results(args.data, args.predictions)
    else:
        if not args.images:
            raise ValueError("--images DIR is needed to run --model on a COCO annotation file")
        metrics, results = coco.evaluate_model(
            load_model(args.model, fold_batch_norms=True), args.data, args.images, args.detections, flip=args.flip,
            batch_size=args.batch_size, nms=args.oks_nms, decoder=args.decoder,
        )  # fmt: skip
        if args.write_predictions:
            coco.write_results(args.write_predictions, [
                {k: v for k, v in r.items() if k != "box"} for r in results
            ])  # fmt: skip
            print(f"wrote COCO results to {args.write_predictions}")
    boxes = "detections" if args.detections else "ground-truth boxes"
    source = args.predictions or f"{args.model} on {boxes}"
    print(f"COCO keypoints OKS AP/AR (pycocotools), {metrics['num_results']} results from {source}")
    print(coco.format_metrics(metrics))
    if args.out:
        from hgkeras.io import atomic_write_text

        document = {"dataset": "coco", "data": str(args.data), "model": args.model,
                    "predictions": args.predictions, "detections": args.detections, **metrics}  # fmt: skip
        atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _no_nan(value):
    """``value`` with every NaN float (in nested dicts and lists too) made None, for JSON."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from hgkeras import io
    from hgkeras.evaluation.evaluate import (
        format_result,
        gather_predictions,
        is_annotation_file,
        mpii_test_images,
        score_for_pose,
        summary_key,
        write_mpii_submission,
    )

    if bool(args.model) == bool(args.predictions):
        raise ValueError("give exactly one of --model or --predictions")
    if args.decoder and not args.model:
        raise ValueError("--decoder applies to --model (a predictions file is already decoded)")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if _is_coco_file(args.data):
        return _run_coco(args)
    if args.predictions and not is_annotation_file(args.data):
        raise ValueError("--predictions needs --data to be an annotation file (the ground truth)")
    if args.model and is_annotation_file(args.data) and not args.images:
        raise ValueError("--images DIR is needed to run --model on an annotation file")
    model = args.model
    if model is not None:
        from hgkeras.inference.runtimes import load_runtime, runtime_kind

        if runtime_kind(model) != "keras":  # SavedModel folder, .onnx, .tflite, OpenVINO .xml
            model = load_runtime(model)
            # a SavedModel exported with --flip already averages the mirrored pass in its graph
            args.flip = args.flip and not model.flip_in_graph
    out = gather_predictions(
        args.data,
        model=model,
        predictions=args.predictions,
        images=args.images,
        split=args.split,
        flip=args.flip,
        batch_size=args.batch_size,
        pose=args.pose,
        decoder=args.decoder,
    )
    pred, pose = out["pred"], out["pose"]

    if args.write_predictions:
        from hgkeras.evaluation.prediction_files import write_prediction_file

        category_id = 1
        if not is_annotation_file(args.data) and Path(args.data).is_dir():
            from hgkeras.data.tfrecords import read_manifest

            category_id = int(read_manifest(args.data).get("category_id", 1))
        layout = write_prediction_file(args.write_predictions, out, pose, category_id)
        print(f"wrote predictions ({layout}) to {args.write_predictions}")
    if args.write_mpii_submission:
        if pose.name != "mpii":
            raise ValueError(f"--write-mpii-submission needs MPII predictions, not {pose.name!r}")
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
    result = score_for_pose(dict(out, visible=visible), pose, protocol=args.protocol)
    title, table = format_result(result, pose)
    decoded = "" if out["codec"] is None else f", {out['codec'].decoder} decoder"
    print(f"{title}, {pred.shape[0]} people, {int(visible.sum())} annotated joints{decoded}")
    print(table)
    if "AUC" in result:
        print(f"AUC (PCKh 0..{result['threshold']:g}): {result['AUC']:.1f}")
    if args.out:
        document = {
            "dataset": pose.name,
            "data": str(args.data),
            "model": args.model,
            "predictions": args.predictions,
            "flip": bool(args.flip) if args.model else None,
            "codec": None if out["codec"] is None else out["codec"].to_config(),
            "num_people": int(pred.shape[0]),
            "num_joints_scored": int(visible.sum()),
            "summary": summary_key(result),
            "results": _no_nan({k: v for k, v in result.items() if k != "per_joint"}),
            "per_joint": _no_nan(result.get("per_joint", [])),
        }
        io.atomic_write_text(args.out, json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0
