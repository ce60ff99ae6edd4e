"""``python -m hgkeras`` runs the console script."""

import sys

from hgkeras.cli import main

sys.exit(main())
