"""Write a PNG grid of augmented training samples with skeletons: same as `hgkeras preview ...`.

Usage: python datasets/preview.py --data TFRECORD_DIR --out preview.png [--count 16]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hgkeras.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["preview", *sys.argv[1:]]))
