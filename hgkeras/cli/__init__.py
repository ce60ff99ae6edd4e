"""The ``hgkeras`` console script: one subcommand per module in :mod:`hgkeras.cli.commands`.

Building the parser imports only the standard library: each subcommand imports Keras, TensorFlow
or OpenCV inside its ``run`` function, so ``--help``, ``--version`` and the scoring of a
predictions file start in well under a second.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from hgkeras import __version__, _env


def command_modules() -> list[str]:
    """Every module of :mod:`hgkeras.cli.commands`, sorted by name (each registers one subcommand)."""
    import hgkeras.cli.commands as package

    return sorted(f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hgkeras",
        description="Stacked Hourglass human pose estimation with Keras 3 "
        "(set KERAS_BACKEND=tensorflow|jax|torch to choose the backend).",
    )
    parser.add_argument("--version", action="version", version=f"hgkeras {__version__}")
    parser.add_argument(
        "--verbose",
        dest="startup_logs",
        action="store_true",
        help="show TensorFlow's C++/absl/CUDA start-up log lines, hidden by default "
        f"(the same as {_env.DEBUG_VARIABLE}=1)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in command_modules():
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if vars(args).pop("startup_logs"):  # a top-level option: not a setting of the subcommand
        _env.show_startup_logs()
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError) as error:
        # Clear one-line message for bad input; the traceback is not the user's problem.
        print(f"hgkeras {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
