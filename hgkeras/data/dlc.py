"""DeepLabCut projects -> :class:`~hgkeras.data.records.PoseRecord` lists, and DeepLabCut's CSV layout out.

A project is a folder with ``config.yaml`` (``Task``, ``bodyparts``, ``skeleton``; multi-animal
projects: ``multianimalproject: true``, ``individuals``, ``multianimalbodyparts``,
``uniquebodyparts``) and ``labeled-data/<video>/CollectedData_<scorer>.csv`` (or ``.h5``) per
labelled video:

* The CSV has three header rows, ``scorer``, ``bodyparts``, ``coords`` (x/y), or four with an
  ``individuals`` row in multi-animal projects; then one row per frame, the image's relative path
  first (one cell, or three in newer projects: ``labeled-data``, video, file name). An empty cell is
  an unlabelled keypoint. Coordinates are 0-based pixel centres, hgkeras' convention: used unchanged.
* Where a video folder has no CSV, its ``.h5`` is read (the PyTables "table" layout pandas writes:
  ``<key>/table`` with ``index`` and ``values_block_0``, column names in plain-data attributes);
  other HDF5 layouts are refused with a message asking for the CSV, which DeepLabCut writes beside.

The spec: the keypoints are ``bodyparts`` (multi-animal: ``multianimalbodyparts``), the limbs the
``skeleton`` pairs, flip pairs found by name (:func:`hgkeras.spec.infer_flip_pairs`), the name the
project's ``Task``; it is scored by PCK of the box. A multi-animal project gives one instance per
individual and frame; its unique body parts (scene points) are not an animal's and are not read.

Boxes: DeepLabCut labels no box, so an instance's box is the extent of its labelled keypoints grown
by :data:`BOX_MARGIN` of its longer side on every side, and at least :data:`MIN_BOX_SIDE` pixels on
each side (about its centre). The crop box is that box widened to the model input's aspect ratio
and padded by :data:`hgkeras.data.records.BOX_PADDING`.
"""

from __future__ import annotations

import csv
import io
import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hgkeras.data.files import load_yaml_mapping
from hgkeras.data.records import BOX_PADDING, PoseRecord, record_from_box
from hgkeras.spec import PoseSpec, infer_flip_pairs

#: A box grows by this fraction of the labelled keypoints' extent (its longer side) on every side.
BOX_MARGIN = 0.1
#: ... and is at least this many pixels wide and high.
MIN_BOX_SIDE = 32.0
#: The header rows' first cells of DeepLabCut label tables.
_HEADER_ROWS = ("scorer", "individuals", "bodyparts", "coords")


def project_config(project: str | Path) -> tuple[Path, dict]:
    """(project folder, parsed ``config.yaml``) of a project folder or its ``config.yaml``."""
    path = Path(project)
    config_path = path / "config.yaml" if path.is_dir() else path
    return config_path.parent, load_yaml_mapping(config_path, "DeepLabCut config.yaml")


def _names(config: dict, key: str, path: Path) -> list[str]:
    value = config.get(key)
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list):
        raise ValueError(f"{path}: field {key!r} must be a list of names, got {value!r}")
    return [str(v) for v in value]


def is_multi_animal(config: dict) -> bool:
    """Whether a project config describes a multi-animal project."""
    return bool(config.get("multianimalproject")) or config.get("bodyparts") == "MULTI!"


def dlc_pose(
    project: str | Path, flip_pairs: Sequence[Sequence[int]] | None = None, name: str | None = None
) -> PoseSpec:
    """The pose spec of a DeepLabCut project (see the module docstring)."""
    folder, config = project_config(project)
    path = folder / "config.yaml"
    key = "multianimalbodyparts" if is_multi_animal(config) else "bodyparts"
    names = _names(config, key, path)
    if not names:
        raise ValueError(f"{path}: field {key!r} lists no body parts")
    limbs = []
    for k, limb in enumerate(config.get("skeleton") or []):
        if isinstance(limb, str) or not isinstance(limb, list) or len(limb) != 2:
            raise ValueError(f"{path}: skeleton[{k}] {limb!r} is not a pair of body parts")
        a, b = (str(v) for v in limb)
        if a in names and b in names:  # multi-animal skeletons may join unique body parts
            limbs.append((names.index(a), names.index(b)))
        elif not is_multi_animal(config):
            raise ValueError(f"{path}: skeleton[{k}] {limb!r} names a body part not in {key}")
    try:
        return PoseSpec(
            name=name or str(config.get("Task") or folder.name),
            joint_names=tuple(names),
            flip_pairs=tuple(flip_pairs) if flip_pairs is not None else infer_flip_pairs(names),
            limbs=tuple(limbs),
            normalizer="box",
        )
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


# ------------------------------------------------------------------------------------ label tables


class _PlainData(pickle.Unpickler):
    """Unpickles plain data only (lists, tuples, strings, numbers): refuses every class."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def _plain(value: Any) -> Any:
    raw = value.tobytes() if isinstance(value, np.ndarray) else bytes(value)
    return _PlainData(io.BytesIO(raw)).load()


def _read_h5_table(path: Path) -> tuple[list[str], list[tuple[str, ...]], np.ndarray]:
    """(image paths, column tuples, values (N, C)) of a pandas "table" HDF5 label file."""
    import h5py

    refuse = f"{path}: not a label table hgkeras reads from HDF5; use the CSV DeepLabCut writes beside it"
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not a readable HDF5 file ({error})") from None
    with handle:
        groups = [g for g in handle.values() if isinstance(g, h5py.Group)]
        if len(groups) != 1 or "table" not in groups[0]:
            raise ValueError(refuse + " (no single pandas table)")
        group = groups[0]
        table = group["table"]
        names = table.dtype.names or ()
        if set(names) != {"index", "values_block_0"}:
            raise ValueError(refuse + f" (columns {list(names)})")
        try:
            axes = _plain(group.attrs["non_index_axes"])
            # the scorer level first, as the CSV's header rows
            columns = [tuple(str(c) for c in column)[1:] for column in axes[0][1]]
        except (KeyError, IndexError, TypeError, ValueError, pickle.UnpicklingError, EOFError):
            raise ValueError(refuse + " (its column names are not plain data)") from None
        rows = table[:]
    values = np.asarray(rows["values_block_0"], np.float64)
    if values.ndim != 2 or values.shape[1] != len(columns):
        raise ValueError(refuse + f" ({values.shape} values for {len(columns)} columns)")
    images = [v.decode() if isinstance(v, bytes) else str(v) for v in rows["index"]]
    return images, columns, values


def _read_csv_table(path: Path) -> tuple[list[str], list[tuple[str, ...]], np.ndarray]:
    """(image paths, column tuples, values (N, C)) of a DeepLabCut label CSV."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header = []
    while len(header) < len(rows) and rows[len(header)] and rows[len(header)][0] in _HEADER_ROWS:
        header.append(rows[len(header)])
    kinds = [row[0] for row in header]
    if not kinds or kinds[0] != "scorer" or kinds[-1] != "coords":
        raise ValueError(
            f"{path}: not a DeepLabCut label table: expected header rows scorer, [individuals,] "
            f"bodyparts, coords; found {kinds or [rows[0][:1] if rows else 'nothing']}"
        )
    coords = header[-1]
    first = next((c for c in range(1, len(coords)) if coords[c]), None)
    if first is None or any(len(row) != len(coords) for row in header):
        raise ValueError(f"{path}: the header rows disagree on their columns")
    columns = [tuple(row[c] for row in header[1:]) for c in range(first, len(coords))]
    images, values = [], []
    for number, row in enumerate(rows[len(header) :], start=len(header) + 1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(coords):
            raise ValueError(
                f"{path}: line {number} has {len(row)} cells, the header {len(coords)}"
            )
        images.append("/".join(cell for cell in row[:first] if cell))
        try:
            values.append([float(cell) if cell.strip() else math.nan for cell in row[first:]])
        except ValueError:
            raise ValueError(f"{path}: line {number} holds a cell that is not a number") from None
    return images, columns, np.asarray(values, np.float64).reshape(len(images), len(columns))


def label_files(folder: Path, scorer: str | None) -> list[Path]:
    """The label table of each video folder in ``labeled-data`` (CSV preferred over HDF5)."""
    labeled = folder / "labeled-data"
    if not labeled.is_dir():
        raise FileNotFoundError(f"{folder}: no labeled-data folder (is this a DeepLabCut project?)")
    files = []
    for video in sorted(p for p in labeled.iterdir() if p.is_dir()):
        for suffix in (".csv", ".h5"):
            found = sorted(video.glob(f"CollectedData_*{suffix}"))
            mine = [p for p in found if p.stem == f"CollectedData_{scorer}"]
            if mine or len(found) == 1:
                files.append((mine or found)[0])
                break
            if found:
                raise ValueError(
                    f"{video}: several label tables {[p.name for p in found]} and none of the "
                    f"project's scorer {scorer!r}"
                )
    if not files:
        raise FileNotFoundError(f"{labeled}: no CollectedData_*.csv or .h5 in any video folder")
    return files


def instance_box(joints: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """The box (x1, y1, x2, y2) of an instance's labelled keypoints, grown by :data:`BOX_MARGIN`
    and to at least :data:`MIN_BOX_SIDE` pixels a side."""
    points = np.asarray(joints, np.float64)[np.asarray(visible) > 0]
    low, high = points.min(axis=0), points.max(axis=0)
    margin = BOX_MARGIN * float(np.max(high - low))
    center = (low + high) / 2.0
    half = np.maximum((high - low) / 2.0 + margin, MIN_BOX_SIDE / 2.0)
    return np.concatenate([center - half, center + half])


def read_dlc_project(
    project: str | Path,
    pose: PoseSpec | None = None,
    skipped: list[str] | None = None,
    *,
    aspect_ratio: float = 1.0,
    padding: float = BOX_PADDING,
) -> list[PoseRecord]:
    """The labelled instances of a DeepLabCut project (see the module docstring), split "train".

    ``image`` is relative to the project folder (``labeled-data/<video>/<file>``), ``image_id``
    numbers the frames in order, ``person_id`` is the individual's index (0 in single-animal
    projects). Frames (or individuals) without a labelled keypoint are skipped with a reason.
    """
    folder, config = project_config(project)
    spec = pose or dlc_pose(folder)
    multi = is_multi_animal(config)
    individuals = _names(config, "individuals", folder / "config.yaml") if multi else [""]
    records: list[PoseRecord] = []
    image_id = 0
    for table in label_files(folder, config.get("scorer")):
        read = _read_csv_table if table.suffix == ".csv" else _read_h5_table
        images, columns, values = read(table)
        slots: dict[tuple[str, int, int], int] = {}  # (individual, joint, x/y) -> column
        for c, column in enumerate(columns):
            individual = column[0] if multi and len(column) == 3 else ""
            part, coord = column[-2], column[-1]
            if coord not in ("x", "y") or part not in spec.joint_names:
                continue  # likelihood columns, unique body parts of multi-animal projects
            slots[(individual, spec.joint_names.index(part), "xy".index(coord))] = c
        if not multi and not slots:
            raise ValueError(
                f"{table}: none of its body parts is one of {list(spec.joint_names)} (a "
                "multi-animal table with an individuals row? set multianimalproject: true)"
            )
        present = sorted(
            {k[0] for k in slots},
            key=lambda i: individuals.index(i) if i in individuals else len(individuals),
        )
        for row, name in enumerate(images):
            image = f"labeled-data/{table.parent.name}/{Path(name.replace(chr(92), '/')).name}"
            for person_id, individual in enumerate(present):
                joints = np.zeros((spec.num_joints, 2))
                for j in range(spec.num_joints):
                    for axis in (0, 1):
                        c = slots.get((individual, j, axis))
                        joints[j, axis] = values[row, c] if c is not None else math.nan
                visible = np.isfinite(joints).all(axis=1)
                label = f"{image}" + (f" ({individual})" if individual else "")
                if not visible.any():
                    if skipped is not None:
                        skipped.append(f"{label}: no labelled keypoints")
                    continue
                records.append(
                    record_from_box(
                        image, joints, visible, instance_box(joints, visible), spec,
                        aspect_ratio=aspect_ratio, padding=padding, split="train",
                        image_id=image_id, person_id=person_id,
                        extra={"individual": individual, "source": str(table)} if multi else {},
                    )
                )  # fmt: skip
            image_id += 1
    if multi and skipped is not None and _names(config, "uniquebodyparts", folder):
        skipped.append(
            f"{folder}: unique body parts {_names(config, 'uniquebodyparts', folder)} are scene "
            "points, not an animal's keypoints: not read"
        )
    return records


# ------------------------------------------------------------------------------------------- write


def write_dlc_csv(
    path: str | Path,
    images: Sequence[str],
    keypoints,
    pose: PoseSpec,
    scores=None,
    scorer: str = "hgkeras",
) -> Path:
    """Write keypoints (N, J, 2) of ``images`` (relative paths, one per row) in DeepLabCut's CSV
    layout: header rows scorer / bodyparts / coords, then one row per image; with ``scores`` (N, J)
    the coords are x, y, likelihood (DeepLabCut's prediction layout), else x, y (its label layout).
    Non-finite keypoints are written as empty cells. Written atomically."""
    from hgkeras.io import atomic_write_text

    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.shape != (len(images), pose.num_joints, 2):
        raise ValueError(
            f"keypoints must have shape ({len(images)}, {pose.num_joints}, 2) for {len(images)} "
            f"images of pose {pose.name!r}, got {keypoints.shape}"
        )
    coords = ("x", "y") if scores is None else ("x", "y", "likelihood")
    if scores is not None:
        scores = np.asarray(scores, np.float64)
        if scores.shape != keypoints.shape[:2]:
            raise ValueError(f"scores must have shape {keypoints.shape[:2]}, got {scores.shape}")
    header = [
        ["scorer"] + [scorer] * (pose.num_joints * len(coords)),
        ["bodyparts"] + [name for name in pose.joint_names for _ in coords],
        ["coords"] + list(coords) * pose.num_joints,
    ]
    rows = []
    for k, image in enumerate(images):
        cells = [str(image)]
        for j in range(pose.num_joints):
            values = list(keypoints[k, j]) + ([scores[k, j]] if scores is not None else [])
            finite = np.isfinite(keypoints[k, j]).all()
            cells += [repr(float(v)) if finite else "" for v in values]
        rows.append(cells)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(header + rows)
    atomic_write_text(path, buffer.getvalue())
    return Path(path)
