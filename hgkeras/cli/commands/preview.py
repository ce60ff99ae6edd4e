"""``hgkeras preview``: a PNG grid of augmented training samples with skeletons drawn."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preview",
        help="write a PNG grid of augmented samples from TFRecords, skeletons drawn over them",
        description="Read TFRecords written by `hgkeras prepare`, apply the training augmentation "
        "and write a PNG grid with the augmented joints drawn (left side blue, right side orange, "
        "centre green).",
    )
    parser.add_argument("--data", required=True, help="TFRecord directory or shard glob")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--split", help="split to read (directories with several splits)")
    parser.add_argument("--count", type=int, default=16, help="samples (default 16)")
    parser.add_argument("--columns", type=int, default=4, help="tiles per row (default 4)")
    parser.add_argument("--no-augment", action="store_true", help="show the plain crops")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hgkeras.vis.preview import preview_grid

    path = preview_grid(
        args.data, args.out, count=args.count, columns=args.columns, split=args.split,
        augment=not args.no_augment, seed=args.seed,
    )  # fmt: skip
    print(f"wrote {path}")
    return 0
