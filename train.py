"""Train a Stacked Hourglass network: ``python train.py --help`` (the logic is in hgkeras.training.run)."""

import sys

from hgkeras.training.run import main

if __name__ == "__main__":
    sys.exit(main(prog="train.py"))
