"""Train a Stacked Hourglass network: ``python train.py --help`` (flags in hgkeras.cli.commands.train,
the run in hgkeras.training.run)."""

import sys

from hgkeras.cli.commands.train import main

if __name__ == "__main__":
    sys.exit(main(prog="train.py"))
