"""``hgkeras preview``: a PNG grid of augmented training samples with skeletons drawn."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preview",
        help="write a PNG grid of augmented samples from TFRecords, skeletons drawn over them",
        description="Read TFRecords written by `hgkeras prepare` (default: the shipped MPII samples, "
        "in a train and a valid split as the embedded training run uses them), apply the training "
        "augmentation and write a PNG grid with the augmented joints and limbs drawn, coloured by "
        "the person's body side (left, right, centre); flipped samples have their labels swapped, so "
        "a colour stays with the person's side.",
    )
    parser.add_argument(
        "--data", help="TFRecord directory or shard glob (default: the shipped MPII samples)"
    )
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--split", help="split to read (directories with several splits)")
    parser.add_argument("--count", type=int, default=16, help="samples (default 16)")
    parser.add_argument("--columns", type=int, default=4, help="tiles per row (default 4)")
    parser.add_argument("--no-augment", action="store_true", help="show the plain crops")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from hgkeras.vis.preview import preview_grid

    with tempfile.TemporaryDirectory(prefix="hgkeras-preview-") as temp:
        data = args.data
        if data is None:
            from hgkeras.data.samples import write_sample_records

            data = str(write_sample_records(Path(temp)))
        path = preview_grid(
            data, args.out, count=args.count, columns=args.columns, split=args.split,
            augment=not args.no_augment, seed=args.seed,
        )  # fmt: skip
    print(f"wrote {path}")
    return 0
