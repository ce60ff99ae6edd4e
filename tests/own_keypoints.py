"""COCO-format and YOLO-pose fixtures derived at test time from the real DeepLabCut project
``tests/data/dlc_reaching`` (its CSV parsed here with the csv module, independently of hgkeras).

Each instance's box is its labelled keypoints' extent grown by ``MARGIN`` pixels on every side; it is
written as COCO's continuous ``bbox`` [x, y, w, h] (pixel-centre corners (x - 0.5, y - 0.5) and
(x + w - 0.5, y + h - 0.5)) and as YOLO's normalised centre and size. Images are linked, not copied.
"""

from __future__ import annotations

import csv
import json
import os
import struct
from pathlib import Path

import numpy as np
import yaml

MARGIN = 10.0


def dlc_labels(project: Path) -> dict:
    """The project's body parts, skeleton and labels: ``images`` (relative paths), ``joints``
    (N, J, 2) with NaN for unlabelled keypoints."""
    config = yaml.safe_load((project / "config.yaml").read_text())
    names = list(config["bodyparts"])
    (table,) = sorted(project.glob("labeled-data/*/CollectedData_*.csv"))
    with open(table, newline="") as handle:
        rows = list(csv.reader(handle))
    parts, coords = rows[1], rows[2]
    images, joints = [], []
    for row in rows[3:]:
        points = np.full((len(names), 2), np.nan)
        for c in range(1, len(row)):
            if row[c]:
                points[names.index(parts[c]), "xy".index(coords[c])] = float(row[c])
        images.append(row[0])
        joints.append(points)
    return {"names": names, "skeleton": config["skeleton"], "images": images,
            "joints": np.array(joints)}  # fmt: skip


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG header."""
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def extent_box(points: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) pixel-centre box: the labelled points' extent grown by MARGIN."""
    seen = points[np.isfinite(points).all(axis=1)]
    return np.concatenate([seen.min(axis=0) - MARGIN, seen.max(axis=0) + MARGIN])


def coco_from_dlc(project: Path, out: Path, valid: set[str] = frozenset()) -> tuple[Path, Path]:
    """A COCO keypoint file of the project's frames (``valid`` frames in a second file,
    ``*_val.json``); returns (train file, valid file). Image file names are relative to the project."""
    labels = dlc_labels(project)
    category = {"id": 3, "name": "mouse", "supercategory": "animal", "keypoints": labels["names"],
                "skeleton": [[labels["names"].index(a) + 1, labels["names"].index(b) + 1]
                             for a, b in labels["skeleton"]]}  # fmt: skip
    files = {}
    for split in ("train", "val"):
        images, annotations = [], []
        for k, (name, points) in enumerate(zip(labels["images"], labels["joints"], strict=True)):
            if (name in valid) != (split == "val"):
                continue
            width, height = png_size(project / name)
            images.append({"id": 100 + k, "file_name": name, "width": width, "height": height})
            seen = np.isfinite(points).all(axis=1)
            x1, y1, x2, y2 = extent_box(points)
            values = np.concatenate([np.where(seen[:, None], points, 0.0), 2.0 * seen[:, None]], 1)
            annotations.append({
                "id": 1000 + k, "image_id": 100 + k, "category_id": 3, "iscrowd": 0,
                "keypoints": values.reshape(-1).tolist(), "num_keypoints": int(seen.sum()),
                "bbox": [x1 + 0.5, y1 + 0.5, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
            })  # fmt: skip
        files[split] = out / f"reaching_keypoints_{split}.json"
        files[split].write_text(json.dumps({"images": images, "annotations": annotations,
                                            "categories": [category]}))  # fmt: skip
    return files["train"], files["val"]


def yolo_from_dlc(project: Path, out: Path, valid: set[str] = frozenset(), dims: int = 3) -> Path:
    """A YOLO-pose dataset of the project's frames (``valid`` ones in ``val``); returns data.yaml."""
    labels = dlc_labels(project)
    for name, points in zip(labels["images"], labels["joints"], strict=True):
        split = "val" if name in valid else "train"
        image = out / "images" / split / Path(name).name
        image.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((project / name).resolve(), image)
        width, height = png_size(project / name)
        seen = np.isfinite(points).all(axis=1)
        x1, y1, x2, y2 = extent_box(points) + 0.5  # continuous corners
        box = [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
        keypoints = np.where(seen[:, None], points / (width, height), 0.0)
        if dims == 3:
            keypoints = np.concatenate([keypoints, 2.0 * seen[:, None]], axis=1)
        values = [0, *box, *keypoints.reshape(-1)]
        label = out / "labels" / split / f"{Path(name).stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(" ".join(f"{v:.9g}" for v in values) + "\n")
    data = {"path": ".", "train": "images/train", "val": "images/val" if valid else None,
            "kpt_shape": [len(labels["names"]), dims], "flip_idx": list(range(len(labels["names"]))),
            "names": {0: "mouse"}, "kpt_names": {0: labels["names"]}}  # fmt: skip
    path = out / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
