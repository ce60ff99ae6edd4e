"""Ask a TF Serving pose model for one person's keypoints, print them and write an overlay PNG.

python serving/client.py IMAGE --box X1 Y1 X2 Y2 [--target localhost:8500 | --rest http://localhost:8501]
python serving/client.py IMAGE --center X Y --scale S [--out overlay.png]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from hgkeras.deploy.client import client_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(client_main())
