"""``hgkeras export``: a ``.keras`` model -> TF Serving SavedModel (+ ONNX) and ``models.config``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a .keras model as a TF Serving SavedModel (and ONNX)",
        description="Write a SavedModel in TF Serving's layout OUT/NAME/VERSION/ (atomically) with the "
        "signatures serving_default (float32 images), serving_uint8 and predict_image (encoded image + "
        "person box -> keypoints in original pixels), update OUT/models.config and print the "
        "signatures. Models trained under jax or torch are re-loaded under TensorFlow.",
    )
    parser.add_argument("--model", required=True, help="the .keras file to export")
    parser.add_argument("--out", required=True, help="model base folder (OUT/NAME/VERSION)")
    parser.add_argument("--name", default="hourglass", help="served model name (hourglass)")
    parser.add_argument("--version", type=int, default=1, help="model version, an integer >= 1")
    parser.add_argument("--flip", action="store_true", help="bake the flip test into the graphs")
    parser.add_argument("--onnx", action="store_true", help="also write VERSION/model.onnx")
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
    import keras

    from hgkeras.deploy import export

    target = export.version_path(Path(args.out), args.name, args.version)
    if target.exists() and not args.force:
        raise FileExistsError(
            f"{target} already exists; choose another --version or pass --force to replace it"
        )
    positional = (args.model, args.out, args.name, args.version)
    options = dict(
        flip=args.flip, onnx=args.onnx, force=args.force, verify=not args.no_verify,
        models_config=not args.no_models_config, base_path=args.base_path, fold=not args.no_fold,
        max_pixels=int(args.max_pixels) if args.max_pixels > 0 else None,
    )  # fmt: skip
    if keras.backend.backend() != "tensorflow":
        # The .keras file is backend independent: export it from a TensorFlow process.
        argv = export.export_argv(*positional, **options)
        print(f"backend is {keras.backend.backend()}: exporting under TensorFlow", file=sys.stderr)
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        return subprocess.run([sys.executable, "-m", "hgkeras", *argv], env=env).returncode

    result = export.export_model(*positional, **options)
    print(f"SavedModel: {result.version_dir}")
    if result.onnx_path is not None:
        print(f"ONNX:       {result.onnx_path}")
    if result.models_config is not None:
        print(f"config:     {result.models_config}")
    for name, diff in result.checks.items():
        print(f"parity with Keras ({name}): max |heatmap difference| = {diff:.2e}, keypoints equal")
    print()
    print(export.format_signature_summary(result.signatures))
    return 0
