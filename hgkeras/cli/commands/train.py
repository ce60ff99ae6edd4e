"""``hgkeras train``: the training run of ``train.py`` (same flags)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from hgkeras.training.run import add_arguments

    parser = subparsers.add_parser(
        "train",
        help="train a Stacked Hourglass network (same flags as train.py)",
        description="Train a Stacked Hourglass pose network. With --dataset and --data-dir it uses "
        "the paper's settings; with no data argument it runs a short training on the shipped "
        "MPII samples. Re-running the same command resumes an interrupted run.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hgkeras.training.run import resolve_config, run_training

    return run_training(resolve_config(args), "hgkeras train")
