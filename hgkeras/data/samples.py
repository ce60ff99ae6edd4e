"""The real MPII people shipped inside the package (``hgkeras/data/samples/mpii``, see its README).

They are the embedded training run's data (``python train.py`` with no data argument), the default
of ``hgkeras preview`` and the default calibration people of the int8 exports.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

#: The folder of the shipped samples: ``samples.json`` (annotations) and ``images/``.
SAMPLES_DIR = Path(__file__).resolve().parent / "samples" / "mpii"
#: Their annotations (HRNet/mmpose JSON layout with head boxes).
SAMPLES_JSON = SAMPLES_DIR / "samples.json"


def write_sample_records(out_dir: Path, samples_dir: Path = SAMPLES_DIR) -> Path:
    """TFRecords of the samples in ``samples_dir`` in ``out_dir``: every person in both the train
    and the valid split (kept when ``out_dir`` already holds them). Returns ``out_dir``.

    The embedded run trains and measures PCKh on the same few real people (a learning
    demonstration, not a generalisation result).
    """
    from hgkeras.data.readers import read_annotations
    from hgkeras.data.tfrecords import read_manifest, write_tfrecords

    samples_dir, out_dir = Path(samples_dir), Path(out_dir)
    annotations = samples_dir / "samples.json"
    if not annotations.is_file():
        raise FileNotFoundError(f"embedded run: {annotations} not found (see --samples-dir)")
    try:
        manifest = read_manifest(out_dir)
        if manifest.get("source") == str(annotations) and set(manifest["splits"]) == {
            "train",
            "valid",
        }:
            return out_dir
    except (FileNotFoundError, ValueError, KeyError):
        pass
    people = read_annotations(annotations, "mpii")
    records = [dataclasses.replace(r, split="train") for r in people]
    records += [dataclasses.replace(r, split="valid") for r in people]
    write_tfrecords(
        records, samples_dir / "images", out_dir, source=str(annotations), progress=False
    )
    return out_dir
