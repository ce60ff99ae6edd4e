"""Export a trained ``.keras`` pose model for TF Serving (same as ``hgkeras export``).

python serving/export.py --model M.keras --out models --name hourglass --version 1 [--onnx] [--flip]
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from hgkeras.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
