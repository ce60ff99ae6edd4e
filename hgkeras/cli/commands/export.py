"""``hgkeras export``: a ``.keras`` model -> SavedModel, ONNX, LiteRT, OpenVINO files and ``models.config``."""

from __future__ import annotations

import argparse
import sys

from hgkeras.codec import DECODERS
from hgkeras.deploy.formats import FORMATS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a .keras model for TF Serving, ONNX Runtime, LiteRT and OpenVINO",
        description="Write the chosen formats into OUT/NAME/VERSION/ (atomically): a SavedModel in "
        "TF Serving's layout with the signatures serving_default (float32 images), serving_uint8 and "
        "predict_image (encoded image + person box -> keypoints in original pixels) and a warm-up "
        "file, and/or the bare network (images -> heatmaps) as ONNX, LiteRT or OpenVINO files, "
        "float32, float16 or int8 (calibrated on real person crops). Every file is checked against "
        "Keras on real crops; OUT/models.config is updated (labels kept). Models trained under jax "
        "or torch are re-loaded under TensorFlow.",
    )
    parser.add_argument("--model", required=True, help="the .keras file to export")
    parser.add_argument("--out", required=True, help="model base folder (OUT/NAME/VERSION)")
    parser.add_argument("--name", default="hourglass", help="served model name (hourglass)")
    parser.add_argument("--version", type=int, default=1, help="model version, an integer >= 1")
    parser.add_argument("--flip", action="store_true", help="bake the flip test into the graphs")
    parser.add_argument(
        "--decoder",
        choices=DECODERS,
        help="how the SavedModel decodes heatmaps and pose.json tells the host to decode the other "
        "formats' (default: the codec the model was trained with; docs/evaluation.md)",
    )
    parser.add_argument(
        "--formats",
        default="saved_model",
        help="comma-separated formats: " + ", ".join(FORMATS) + " (saved_model). Files: "
        "model.onnx, model_int8.onnx, model.tflite, model_fp16.tflite, model_int8.tflite, "
        "model.xml/.bin",
    )
    parser.add_argument("--onnx", action="store_true", help="add onnx to --formats")
    parser.add_argument(
        "--calibration",
        help="real people for int8 calibration and the checks: a TFRecords folder of `hgkeras "
        "prepare` or an annotation file (default: the shipped MPII samples)",
    )
    parser.add_argument(
        "--calibration-images", help="image folder of --calibration annotations (FILE's images/)"
    )
    parser.add_argument(
        "--no-warmup", action="store_true", help="no TF Serving warm-up file in the SavedModel"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing version")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the parity check against Keras"
    )
    parser.add_argument(
        "--no-models-config", action="store_true", help="do not (re)write OUT/models.config"
    )
    parser.add_argument(
        "--no-fold",
        action="store_true",
        help="export the graph as trained, without folding each conv -> BatchNorm pair into one conv",
    )
    parser.add_argument(
        "--max-pixels",
        type=float,
        default=100e6,
        help="predict_image refuses images larger than this many pixels, read from the header "
        "before decoding (default 100e6; 0 = no limit)",
    )
    parser.add_argument(
        "--base-path",
        default="/models",
        help="where OUT is mounted inside the server, for models.config (/models)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hgkeras.deploy import export
    from hgkeras.deploy.formats import parse_formats

    formats = list(parse_formats(args.formats))
    if args.onnx and "onnx" not in formats:
        formats.append("onnx")
    options = export.ExportOptions(
        name=args.name, version=args.version, formats=formats, flip=args.flip,
        decoder=args.decoder, calibration=args.calibration,
        calibration_images=args.calibration_images, force=args.force, verify=not args.no_verify,
        models_config=not args.no_models_config, base_path=args.base_path, fold=not args.no_fold,
        max_pixels=int(args.max_pixels) if args.max_pixels > 0 else None,
        warmup=not args.no_warmup,
    )  # fmt: skip
    # Under jax or torch the export re-runs in a TensorFlow process (the .keras file is backend
    # independent); its progress lines come back through log.
    result = export.export_model(args.model, args.out, options, log=print)
    print(f"version folder: {result.version_dir}")
    for fmt, path in result.files.items():
        print(f"  {fmt:12s} {path.relative_to(result.version_dir.parent)}")
    if result.models_config is not None:
        print(f"config:         {result.models_config}")
    for name, check in result.checks.items():
        if name == "saved_model":
            print(f"check saved_model  max |heatmap - Keras| = {check:.2e}, decoding = host's")
        else:
            print(f"check {check.describe()}")
    warnings = [c.warning for c in result.checks.values() if getattr(c, "warning", None)]
    for warning in warnings:
        print(warning, file=sys.stderr)
    if result.signatures:
        print()
        print(export.format_signature_summary(result.signatures))
    return 0
