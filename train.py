"""Train a Stacked Hourglass network: ``python train.py --help`` (the logic is in hgkeras.train)."""

import sys

from hgkeras.train import main

if __name__ == "__main__":
    sys.exit(main(prog="train.py"))
