"""Prediction files of an evaluation, in the layout of the data's own tools.

:func:`write_prediction_file` picks the layout by the file's suffix:

* ``.csv``: DeepLabCut's prediction CSV (scorer / bodyparts / coords rows, then one row per image
  with ``x, y, likelihood`` per keypoint), for single-animal projects: one person per image.
* ``.json``: a COCO keypoint results list (``image_id``, ``category_id``, ``keypoints`` as
  ``x, y, confidence`` triplets, ``score``), which ``pycocotools`` and ``hgkeras evaluate
  --predictions`` score.
* ``.h5`` / ``.mat``: the Torch code's and HRNet's MPII layouts (1-based ``preds``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from hgkeras.spec import PoseSpec, get_pose

#: Suffixes :func:`write_prediction_file` writes, and their layouts.
PREDICTION_FORMATS = {
    ".csv": "DeepLabCut CSV",
    ".json": "COCO keypoint results",
    ".h5": "Torch pose-hg-train .h5",
    ".hdf5": "Torch pose-hg-train .h5",
    ".mat": "HRNet pred.mat",
}


def write_prediction_file(
    path: str | Path, out: dict[str, Any], pose: str | PoseSpec, category_id: int = 1
) -> str:
    """Write the predictions ``out`` of :func:`hgkeras.evaluation.evaluate.gather_predictions`
    (``pred`` in original image pixels, ``scores``, ``filename``, ``image_id``) to ``path`` in the
    layout its suffix names (:data:`PREDICTION_FORMATS`), atomically; returns the layout's name.

    ``category_id`` is the COCO category of ``.json`` results. ValueError for an unknown suffix, and
    for a ``.csv`` of several people in one image (DeepLabCut's single-animal layout has one row per
    image).
    """
    from hgkeras.evaluation.evaluate import write_predictions

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PREDICTION_FORMATS:
        raise ValueError(
            f"{path}: predictions are written as {', '.join(sorted(PREDICTION_FORMATS))}, "
            f"not {suffix or 'a file without suffix'!r}"
        )
    spec = get_pose(pose)
    pred = np.asarray(out["pred"], np.float64)
    scores = out.get("scores")
    if suffix in (".h5", ".hdf5", ".mat"):
        write_predictions(path, pred, scores)
    elif suffix == ".csv":
        from hgkeras.data.dlc import write_dlc_csv

        names = _names(out, path)
        repeated = [name for name, count in Counter(names).items() if count > 1]
        if repeated:
            raise ValueError(
                f"{path}: DeepLabCut's CSV has one row per image, but {len(repeated)} images hold "
                f"several people (e.g. {repeated[0]}); write .json (COCO results) instead"
            )
        if scores is None:
            raise ValueError(f"{path}: DeepLabCut's prediction CSV needs the keypoint confidences")
        write_dlc_csv(path, names, pred, spec, scores=scores)
    else:
        from hgkeras.evaluation.coco import results_from_predictions, write_results

        if scores is None:
            raise ValueError(f"{path}: COCO results need the keypoint confidences")
        image_ids = out.get("image_id")
        if image_ids is None:
            raise ValueError(f"{path}: COCO results need the records' image ids")
        results = results_from_predictions(
            [int(i) for i in np.asarray(image_ids).reshape(-1)],
            pred,
            np.asarray(scores, np.float64),
            category_id=int(category_id),
        )
        write_results(path, results)
    return PREDICTION_FORMATS[suffix]


def _names(out: dict[str, Any], path: Path) -> list[str]:
    if out.get("filename") is None:
        raise ValueError(f"{path}: the predictions carry no image names")
    return [str(name) for name in np.asarray(out["filename"]).reshape(-1)]
