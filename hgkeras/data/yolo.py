"""Ultralytics YOLO-pose datasets -> :class:`~hgkeras.data.records.PoseRecord` lists.

A dataset is a ``data.yaml``: ``path`` (the root, relative to the YAML's folder; default that
folder), ``train``/``val``/``test`` (each a folder of images, a ``.txt`` listing image paths, or a
list of those, relative to the root), ``kpt_shape: [K, D]`` (D = 2: x, y; D = 3: x, y, visibility),
``flip_idx`` (the keypoint each one becomes in a mirrored image), ``names`` (class names) and
optionally ``kpt_names`` (keypoint names per class: ``{0: [...]}``, a list of lists, or one list).
Each image ``.../images/.../NAME.ext`` has its labels in ``.../labels/.../NAME.txt``: one line per
instance, ``class cx cy w h`` then K x D keypoint values, all normalised to [0, 1] by the image's
width and height.

Conventions: a box's normalised centre and size are continuous (the image spans [0, 1]), so its
pixel-centre corners are ``cx * W - w * W / 2 - 0.5`` ...; keypoints are ``x * W``, ``y * H`` as
Ultralytics' own COCO converter writes them (COCO keypoints divided by the image size). A keypoint
is unlabelled when its visibility is 0 (D = 3) or, for D = 2, when it lies at (0, 0) or has a
negative coordinate. Splits: ``train``, ``val`` -> "valid", ``test``. Images whose EXIF orientation
turns them are skipped (labels refer to the upright image; hgkeras reads stored pixels).

The spec: ``kpt_names`` (else ``kpt_0``, ``kpt_1``, ...), flip pairs from ``flip_idx`` (else found
by name), no limbs (YOLO-pose lists none), named after the class, scored by PCK of the box.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hgkeras.data.files import load_yaml_mapping
from hgkeras.data.records import BOX_PADDING, PoseRecord, record_from_box
from hgkeras.spec import PoseSpec, infer_flip_pairs

#: Image file suffixes listed from image folders.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: data.yaml split keys -> hgkeras splits.
SPLITS = {"train": "train", "val": "valid", "test": "test"}


def load_data_yaml(path: str | Path) -> tuple[Path, dict]:
    """(dataset root, parsed ``data.yaml``), with ``kpt_shape`` checked."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.yaml"))
        if len(candidates) != 1:
            raise FileNotFoundError(
                f"{path}: expected one data .yaml, found {[p.name for p in candidates]}"
            )
        path = candidates[0]
    data = load_yaml_mapping(path, "YOLO data.yaml")
    shape = data.get("kpt_shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(v, int) for v in shape)
        or shape[0] < 1
        or shape[1] not in (2, 3)
    ):
        raise ValueError(f"{path}: field 'kpt_shape' must be [keypoints, 2 or 3], got {shape!r}")
    root = Path(data["path"]) if data.get("path") else path.parent
    if not root.is_absolute():
        root = path.parent / root
    data["_file"] = str(path)
    return root, data


def _class_names(data: dict) -> dict[int, str]:
    names = data.get("names")
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, list):
        return dict(enumerate(str(v) for v in names))
    return {k: f"class_{k}" for k in range(int(data.get("nc", 1)))}


def choose_class(data: dict, category: int | str | None = None) -> int:
    """The class index to read (``category``: its index or name; None: the only class)."""
    classes = _class_names(data)
    if category is None:
        if len(classes) != 1:
            raise ValueError(
                f"{data['_file']}: {len(classes)} classes {classes}; choose one (--category)"
            )
        return next(iter(classes))
    for k, name in classes.items():
        if str(category) in (str(k), name):
            return k
    raise ValueError(f"{data['_file']}: no class {category!r} (classes: {classes})")


def yolo_pose(
    data_yaml: str | Path,
    flip_pairs: Sequence[Sequence[int]] | None = None,
    category: int | str | None = None,
    name: str | None = None,
) -> PoseSpec:
    """The pose spec of a YOLO-pose dataset (see the module docstring)."""
    _, data = load_data_yaml(data_yaml)
    where = data["_file"]
    count = data["kpt_shape"][0]
    cls = choose_class(data, category)
    names = data.get("kpt_names")
    if isinstance(names, dict):
        names = names.get(cls, names.get(str(cls)))
    elif isinstance(names, list) and names and all(isinstance(n, list) for n in names):
        names = names[cls] if cls < len(names) else None
    if names is None:
        names = [f"kpt_{j}" for j in range(count)]
    if not isinstance(names, list) or len(names) != count:
        raise ValueError(
            f"{where}: field 'kpt_names' must list {count} names (kpt_shape), got {names!r}"
        )
    if flip_pairs is None and data.get("flip_idx") is not None:
        flip_pairs = pairs_from_flip_idx(data["flip_idx"], count, where)
    try:
        return PoseSpec(
            name=name or _class_names(data).get(cls) or Path(where).stem,
            joint_names=tuple(str(n) for n in names),
            flip_pairs=tuple(flip_pairs) if flip_pairs is not None else infer_flip_pairs(names),
            normalizer="box",
        )
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def pairs_from_flip_idx(
    flip_idx: Any, count: int, where: Any = "flip_idx"
) -> tuple[tuple[int, int], ...]:
    """Ultralytics' ``flip_idx`` (keypoint j becomes ``flip_idx[j]`` in a mirror) -> index pairs."""
    if not isinstance(flip_idx, list) or sorted(flip_idx) != list(range(count)):
        raise ValueError(
            f"{where}: field 'flip_idx' must be a permutation of 0..{count - 1}, got {flip_idx!r}"
        )
    if any(flip_idx[flip_idx[j]] != j for j in range(count)):
        raise ValueError(f"{where}: field 'flip_idx' must swap keypoints in pairs, got {flip_idx}")
    return tuple((j, flip_idx[j]) for j in range(count) if flip_idx[j] > j)


def _split_images(root: Path, entry: Any, where: str) -> list[Path]:
    """The image files of one split entry (folder, .txt list, or a list of those)."""
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in entries:
        path = Path(str(item))
        path = path if path.is_absolute() else root / path
        if path.is_dir():
            images += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.suffix == ".txt" and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    listed = Path(line.strip())
                    images.append(listed if listed.is_absolute() else root / listed)
        else:
            raise FileNotFoundError(
                f"{where}: split entry {item!r}: {path} is neither a folder nor a .txt list"
            )
    return images


def label_path(image: Path) -> Path:
    """The label file of an image: its last ``images`` folder replaced by ``labels``, suffix .txt."""
    parts = list(image.parts)
    if "images" not in parts:
        raise ValueError(
            f"{image}: a YOLO image lies under an 'images' folder (labels under 'labels')"
        )
    k = len(parts) - 1 - parts[::-1].index("images")
    parts[k] = "labels"
    return Path(*parts).with_suffix(".txt")


def _image_size(path: Path) -> tuple[int, int, int]:
    """(height, width, EXIF orientation) from an image file's header."""
    from hgkeras.data.images import inspect_encoded_image

    info = inspect_encoded_image(path.read_bytes())
    if not info.height or not info.width:
        raise ValueError(f"{path}: cannot read the image size from its header ({info.format})")
    return int(info.height), int(info.width), int(info.orientation)


def read_yolo_dataset(
    data_yaml: str | Path,
    pose: PoseSpec | None = None,
    skipped: list[str] | None = None,
    *,
    category: int | str | None = None,
    aspect_ratio: float = 1.0,
    padding: float = BOX_PADDING,
) -> list[PoseRecord]:
    """The labelled instances of the chosen class in every split of a YOLO-pose dataset.

    ``image`` is relative to the dataset root, ``image_id`` numbers the images in split order,
    ``person_id`` is the instance's line in its label file. Images without a label file or without
    an instance of the class, instances without a labelled keypoint, and EXIF-turned images are
    skipped with a reason; malformed label lines are errors naming the file and line.
    """
    root, data = load_data_yaml(data_yaml)
    spec = pose or yolo_pose(data_yaml, category=category)
    count, dims = data["kpt_shape"]
    if spec.num_joints != count:
        raise ValueError(
            f"{data['_file']}: kpt_shape has {count} keypoints, pose {spec.name!r} {spec.num_joints}"
        )
    cls = choose_class(data, category)
    records: list[PoseRecord] = []
    image_id = 0
    for key, split in SPLITS.items():
        if not data.get(key):
            continue
        for image in _split_images(root, data[key], data["_file"]):
            labels = label_path(image)
            name = image.relative_to(root).as_posix() if image.is_relative_to(root) else str(image)
            image_id += 1
            if not labels.is_file():
                if skipped is not None:
                    skipped.append(f"{name}: no label file {labels.name}")
                continue
            lines = [line.split() for line in labels.read_text(encoding="utf-8").splitlines()]
            instances = [(k, v) for k, v in enumerate(lines) if v and v[0] == str(cls)]
            if not instances:
                if skipped is not None:
                    skipped.append(f"{name}: no instance of class {cls}")
                continue
            height, width, orientation = _image_size(image)
            if orientation != 1:
                if skipped is not None:
                    skipped.append(
                        f"{name}: EXIF orientation {orientation} turns the image; save it upright"
                    )
                continue
            for line, values in instances:
                where = f"{labels}: line {line + 1}"
                if len(values) != 5 + count * dims:
                    raise ValueError(
                        f"{where}: {len(values)} values; class, box (4) and {count} x {dims} "
                        f"keypoint values make {5 + count * dims}"
                    )
                try:
                    numbers = np.array([float(v) for v in values[1:]], np.float64)
                except ValueError:
                    raise ValueError(f"{where}: a value is not a number") from None
                if not np.all(np.isfinite(numbers)):
                    raise ValueError(f"{where}: a value is not finite")
                cx, cy, w, h = numbers[:4] * (width, height, width, height)
                points = numbers[4:].reshape(count, dims)
                joints = points[:, :2] * (width, height)
                if dims == 3:
                    visible = points[:, 2] > 0
                else:
                    visible = ~(np.all(points == 0, axis=1) | np.any(points < 0, axis=1))
                if not visible.any() or w <= 0 or h <= 0:
                    if skipped is not None:
                        reason = "no labelled keypoints" if not visible.any() else "empty box"
                        skipped.append(f"{name} (line {line + 1}): {reason}")
                    continue
                box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) - 0.5
                records.append(
                    record_from_box(
                        name, joints, visible, box, spec, aspect_ratio=aspect_ratio,
                        padding=padding, split=split, image_id=image_id - 1, person_id=line,
                    )
                )  # fmt: skip
    return records
