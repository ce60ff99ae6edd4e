"""Time of one person crop (:func:`hgkeras.crop.crop_numpy`, the host crop) on real images.

Crops every person of the shipped MPII samples (1280x720 / 854x480 JPEG, uint8 RGB) at box heights of
0.5, 1, 3 and 8 times the crop height (shrink factor 1, 1, 3, 8) into 64 and 256 px crops; each
figure is the best of ``--rounds`` rounds of ``--repeats`` calls per person. ``--compare FILE``
also times the ``crop_numpy`` of another version of ``hgkeras/crop.py`` (e.g. from
``git show REV:hgkeras/crop.py``), round by round in the same process, so that load from other
processes on a shared machine hits both alike. Prints a table and writes
``benchmarks/results/crop_speed.json`` (``--out``).

Usage: python benchmarks/crop_speed.py [--rounds 7] [--repeats 10] [--compare old_crop.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _workers import cpu_model  # noqa: E402

#: Box height / crop height.
BOX_FACTORS = (0.5, 1.0, 3.0, 8.0)
SIZES = (64, 256)


def load_crop(path: str):
    """``crop_numpy`` of the crop module at ``path``."""
    spec = importlib.util.spec_from_file_location("compared_crop", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.crop_numpy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=10, help="calls per round and person")
    parser.add_argument("--compare", help="another crop.py to time beside this tree's")
    parser.add_argument("--compare-label", default="compared")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "crop_speed.json"))
    args = parser.parse_args(argv)

    import cv2
    import numpy as np

    from hgkeras import geometry
    from hgkeras.crop import crop_numpy, shrink_factor
    from hgkeras.data import read_annotations
    from hgkeras.io import atomic_write_json

    samples = ROOT / "hgkeras" / "data" / "samples" / "mpii"
    people = read_annotations(samples / "samples.json")
    images = {
        p.image: cv2.imread(str(samples / "images" / p.image))[..., ::-1].copy() for p in people
    }
    versions = {"this tree": crop_numpy}
    if args.compare:
        versions[args.compare_label] = load_crop(args.compare)
    rows = []
    for size in SIZES:
        for factor in BOX_FACTORS:
            scale = factor * size / geometry.PIXELS_PER_SCALE
            best = dict.fromkeys(versions, float("inf"))
            for _ in range(args.rounds):
                for name, crop in versions.items():
                    start = time.perf_counter()
                    for _ in range(args.repeats):
                        for p in people:
                            crop(images[p.image], p.center, scale, size)
                    seconds = (time.perf_counter() - start) / (args.repeats * len(people))
                    best[name] = min(best[name], seconds)
            row = {"crop": size, "box_factor": factor, "shrink_factor": shrink_factor(scale, size)}
            row.update({f"ms_per_crop ({name})": round(1000 * s, 4) for name, s in best.items()})
            rows.append(row)
    names = list(versions)
    print(f"{'crop':>5s} {'box/crop':>9s} {'shrink':>7s} " + " ".join(f"{n:>14s}" for n in names))
    for row in rows:
        times = " ".join(f"{row[f'ms_per_crop ({n})']:11.3f} ms" for n in names)
        print(f"{row['crop']:5d} {row['box_factor']:9.1f} {row['shrink_factor']:7d} {times}")
    report = {
        "benchmark": "crop_speed",
        "compared": args.compare_label if args.compare else None,
        "runs": rows,
        "note": "best of --rounds rounds; one call crops one person of the 5 shipped MPII images "
        "(uint8 RGB) to a square crop; box_factor = box height / crop height",
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "machine": platform.platform(),
        "processor": cpu_model(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    print(f"({report['processor']}, {report['cpu_count']} CPUs, load {report['load_average'][0]})")
    atomic_write_json(Path(args.out), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
