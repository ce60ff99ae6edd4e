"""``hgkeras import-weights``: a pytorch_stacked_hourglass checkpoint -> a Keras ``.keras`` model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-weights",
        help="convert a pytorch_stacked_hourglass checkpoint (.pt/.pth) into a .keras model",
        description="Convert a PyTorch checkpoint of princeton-vl/pytorch_stacked_hourglass (or any "
        "state dict with its module names) into a Keras StackedHourglass saved as .keras. Stacks, "
        "features and joints are read from the checkpoint's tensor shapes. Needs torch "
        "(pip install 'hgkeras[torch]') unless the checkpoint is an .npz of numpy arrays.",
    )
    parser.add_argument("checkpoint", help="the torch.save checkpoint (or a state-dict .npz)")
    parser.add_argument("--out", required=True, help="the .keras file to write")
    parser.add_argument(
        "--stacks",
        type=int,
        help="keep only the first N stacks (default: all of the checkpoint's); the Nth stack's "
        "output is then the final prediction",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=256,
        help="square input size of the Keras model (default 256, as the checkpoints were trained)",
    )
    parser.add_argument(
        "--unsafe-load",
        action="store_true",
        help="torch.load(weights_only=False): allow arbitrary pickled objects. Only for files "
        "from a source you trust",
    )
    parser.add_argument(
        "--pose",
        default="mpii",
        help="joint set of the checkpoint (mpii or flic; default mpii, as the published ones)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".keras":
        raise ValueError(f"--out must end in .keras, got {str(out)!r}")
    if out.exists() and not args.force:
        raise ValueError(f"--out {str(out)!r} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out directory {str(out.parent)!r} does not exist")
    if args.stacks is not None and args.stacks < 1:
        raise ValueError(f"--stacks must be >= 1, got {args.stacks}")

    from hgkeras.models.torch_import import (
        checkpoint_architecture,
        load_torch_checkpoint,
        read_torch_state_dict,
    )

    try:
        state = read_torch_state_dict(args.checkpoint, weights_only=not args.unsafe_load)
    except ImportError as error:
        raise ValueError(str(error)) from None
    arch = checkpoint_architecture(state)
    num_stacks = arch["num_stacks"] if args.stacks is None else args.stacks
    if num_stacks > arch["num_stacks"]:
        raise ValueError(
            f"--stacks {num_stacks} asks for more stacks than the checkpoint has "
            f"({arch['num_stacks']})"
        )
    if arch["depth"] < 1:
        raise ValueError(
            f"checkpoint {args.checkpoint!r} has no hourglass (no hgs.0.0.up1 tensors)"
        )

    import keras

    from hgkeras.models.hourglass import StackedHourglass, count_params

    model = StackedHourglass(
        num_stacks=num_stacks,
        num_features=arch["num_features"],
        num_modules=1,
        num_joints=arch["num_joints"],
        pose=args.pose,
        depth=arch["depth"],
        image_shape=(args.image_size, args.image_size, 3),
        name="stacked_hourglass",
    )
    report = load_torch_checkpoint(model, state, strict=True, allow_fewer_stacks=True)
    report.source = f"checkpoint {args.checkpoint!r}"
    print(report.summary())

    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.keras")
    try:
        keras.saving.save_model(model, tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    trainable, _ = count_params(model)
    print(
        f"wrote {out}: {num_stacks} stacks, {arch['num_features']} features, "
        f"{arch['num_joints']} joints, {trainable:,} trainable parameters, "
        f"input {args.image_size}x{args.image_size} RGB in [0, 1]"
    )
    return 0
