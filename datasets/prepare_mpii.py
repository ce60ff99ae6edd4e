"""Convert MPII annotations and images to sharded TFRecords: same as `hgkeras prepare mpii ...`.

Usage: python datasets/prepare_mpii.py --annotations FILE --images DIR --out DIR [--shards N] [--workers N]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hgkeras.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["prepare", "mpii", *sys.argv[1:]]))
