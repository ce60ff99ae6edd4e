"""Evaluation plumbing: predict an evaluation set, score it, and read/write prediction files.

Coordinates inside hgkeras are 0-based pixel centres (:mod:`hgkeras.geometry`). Prediction files in the
layouts of the original Torch code, HRNet and the MPII benchmark are 1-based MATLAB pixels: the
readers here subtract :data:`~hgkeras.geometry.MATLAB_OFFSET` and the writers add it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hgkeras import io
from hgkeras.codec import HeatmapCodec, codec_of
from hgkeras.evaluation import metrics
from hgkeras.geometry import MATLAB_OFFSET
from hgkeras.spec import POSES, PoseSpec, get_pose, pose_of

PREDICTION_KEYS = ("preds", "pred", "predictions", "keypoints")
#: Suffixes of annotation files (anything else given as evaluation data is TFRecords).
ANNOTATION_SUFFIXES = (".h5", ".hdf5", ".mat", ".json")


# ------------------------------------------------------------------------------- coordinate helpers


def to_matlab(points) -> np.ndarray:
    """0-based pixel coordinates -> MATLAB 1-based pixels (NaN stays NaN)."""
    return np.asarray(points, np.float64) + MATLAB_OFFSET


def from_matlab(points) -> np.ndarray:
    """MATLAB 1-based pixel coordinates -> 0-based pixel centres (NaN stays NaN)."""
    return np.asarray(points, np.float64) - MATLAB_OFFSET


# ---------------------------------------------------------------------------------- prediction files


def _as_njc(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    """(N, J, 2), or MATLAB's column-major (2, J, N), -> (N, J, 2)."""
    array = np.asarray(array, np.float64)
    if array.ndim == 3 and array.shape[-1] == 2:
        return array
    if array.ndim == 3 and array.shape[0] == 2:
        return np.transpose(array, (2, 1, 0))
    raise ValueError(
        f"{path}: prediction array {key!r} must be (N, J, 2) or (2, J, N), got {array.shape}"
    )


def _pick_key(keys: Iterable[str], path: Path) -> str:
    keys = [k for k in keys if not k.startswith("__")]
    for key in PREDICTION_KEYS:
        if key in keys:
            return key
    if len(keys) == 1:
        return keys[0]
    raise ValueError(
        f"{path}: no prediction array (expected one of {PREDICTION_KEYS}, found {sorted(keys)})"
    )


def read_predictions(path: str | Path, one_based: bool = True) -> np.ndarray:
    """Joint predictions (N, J, 2) in 0-based pixels from an ``.h5`` or ``.mat`` file.

    Reads the array ``preds`` (the original Torch code's HDF5 layout and HRNet's ``pred.mat``; also
    ``pred``/``predictions``/``keypoints`` or a file's only array), (N, J, 2) or MATLAB's (2, J, N).
    ``one_based`` (default): the file holds 1-based MATLAB pixels, converted to 0-based.
    MATLAB v7.3 ``.mat`` files (HDF5 inside) are read with h5py.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    import h5py

    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as handle:
            key = _pick_key(list(handle.keys()), path)
            raw = handle[key][()]
    elif path.suffix.lower() == ".mat":
        import scipy.io

        try:
            contents = scipy.io.loadmat(path)
        except (ValueError, TypeError, OSError) as err:
            raise ValueError(f"{path}: not a readable .mat file: {err}") from None
        key = _pick_key(list(contents.keys()), path)
        raw = contents[key]
    else:
        raise ValueError(f"{path}: predictions must be an HDF5 (.h5) or MATLAB (.mat) file")
    preds = _as_njc(raw, path, key)
    return from_matlab(preds) if one_based else preds


def write_predictions(path: str | Path, preds, scores=None) -> None:
    """Write predictions (N, J, 2) (0-based) as 1-based ``preds`` (+ ``scores``) to ``.h5`` or ``.mat``.

    The ``.h5`` layout is the original Torch code's; ``.mat`` is HRNet's ``pred.mat`` (``preds`` N x J x 2).
    """
    path = Path(path)
    preds = np.asarray(preds, np.float64)
    if preds.ndim != 3 or preds.shape[-1] != 2:
        raise ValueError(f"preds must have shape (N, J, 2), got {preds.shape}")
    data = {"preds": to_matlab(preds)}
    if scores is not None:
        scores = np.asarray(scores, np.float64)
        if scores.shape != preds.shape[:2]:
            raise ValueError(f"scores must have shape {preds.shape[:2]}, got {scores.shape}")
        data["scores"] = scores
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        import h5py

        def write(tmp: str) -> None:
            with h5py.File(tmp, "w") as handle:
                for key, value in data.items():
                    handle.create_dataset(key, data=value)

    elif suffix == ".mat":
        import scipy.io

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                scipy.io.savemat(handle, data)

    else:
        raise ValueError(f"{path}: predictions are written as .h5 or .mat, not {suffix!r}")
    with io.atomic_path(path) as tmp:
        write(tmp)


def mpii_test_images(release_path: str | Path) -> tuple[np.ndarray, list[str]]:
    """0-based ``annolist`` indices and names of the MPII test images (``RELEASE.img_train == 0``)."""
    import scipy.io

    release_path = Path(release_path)
    try:
        release = scipy.io.loadmat(release_path, struct_as_record=False, squeeze_me=True)["RELEASE"]
    except (KeyError, ValueError, OSError, NotImplementedError) as err:
        raise ValueError(
            f"{release_path}: not an MPII release .mat with a RELEASE struct: {err}"
        ) from None
    img_train = np.asarray(release.img_train).reshape(-1)
    annolist = np.asarray(release.annolist).reshape(-1)
    indices = np.flatnonzero(img_train == 0)
    names = [str(annolist[i].image.name) for i in indices]
    return indices, names


def write_mpii_submission(
    path: str | Path,
    preds,
    image_index: Sequence[int],
    person_index: Sequence[int],
    test_images: Sequence[int] | None = None,
    image_names: Sequence[str] | None = None,
) -> None:
    """Write test-set predictions in the MPII benchmark's ``pred_keypoints_mpii.mat`` layout.

    The file holds one MATLAB struct array ``pred`` (1 x number of test images), like
    ``RELEASE.annolist(RELEASE.img_train == 0)``: ``pred(i).image.name`` and
    ``pred(i).annorect(r).annopoints.point(k)`` with fields ``x``, ``y`` (1-based pixels) and ``id``
    (0-based MPII joint id). ``annorect`` entries of people without a prediction have empty
    ``annopoints``.

    Args:
        preds: (N, 16, 2) 0-based predictions (written 1-based).
        image_index: (N,) 0-based ``RELEASE.annolist`` index of each person's image (annot ``index``).
        person_index: (N,) 0-based ``annorect`` index of each person (annot ``person``).
        test_images: 0-based annolist indices of all test images in order (see :func:`mpii_test_images`);
            None: the distinct ``image_index`` values in increasing order.
        image_names: names of ``test_images`` (optional).
    """
    path = Path(path)
    preds = np.asarray(preds, np.float64)
    if preds.ndim != 3 or preds.shape[1:] != (16, 2):
        raise ValueError(f"preds must have shape (N, 16, 2), got {preds.shape}")
    image_index = np.asarray(image_index).astype(np.int64).reshape(-1)
    person_index = np.asarray(person_index).astype(np.int64).reshape(-1)
    n = preds.shape[0]
    if image_index.shape != (n,) or person_index.shape != (n,):
        raise ValueError(
            f"image_index {image_index.shape} and person_index {person_index.shape} must have shape ({n},)"
        )
    if test_images is None:
        test_images = np.unique(image_index)
    test_images = np.asarray(test_images, np.int64).reshape(-1)
    if image_names is not None and len(image_names) != len(test_images):
        raise ValueError(
            f"image_names has {len(image_names)} entries for {len(test_images)} test images"
        )
    position = {int(idx): k for k, idx in enumerate(test_images)}
    missing = sorted({int(i) for i in image_index} - set(position))
    if missing:
        raise ValueError(
            f"image_index {missing[0]} is not one of the test images ({len(missing)} such)"
        )
    people: dict[int, dict[int, np.ndarray]] = {}
    for i in range(n):
        people.setdefault(position[int(image_index[i])], {})[int(person_index[i])] = to_matlab(
            preds[i]
        )

    point_dtype = [("x", object), ("y", object), ("id", object)]
    pred = np.empty((1, len(test_images)), dtype=[("image", object), ("annorect", object)])
    for k in range(len(test_images)):
        name = image_names[k] if image_names is not None else ""
        pred[0, k]["image"] = {"name": name}
        rects = people.get(k, {})
        annorect = np.empty((1, max(rects) + 1 if rects else 0), dtype=[("annopoints", object)])
        for r in range(annorect.shape[1]):
            if r in rects:
                points = np.empty((1, 16), dtype=point_dtype)
                for j in range(16):
                    points[0, j] = (float(rects[r][j, 0]), float(rects[r][j, 1]), float(j))
                annorect[0, r]["annopoints"] = {"point": points}
            else:
                annorect[0, r]["annopoints"] = np.zeros((0, 0))
        pred[0, k]["annorect"] = annorect
    import scipy.io

    with io.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        scipy.io.savemat(handle, {"pred": pred}, do_compression=True)


# ------------------------------------------------------------------------------------------ scoring


def score(
    pred,
    gt,
    visible,
    normalizer,
    pose: str | PoseSpec = "mpii",
    protocol: str = "official",
) -> dict[str, object]:
    """PCK of ``pose`` at its threshold (MPII PCKh@0.5 with ``protocol`` and the PCKh curve's AUC,
    FLIC PCK@0.2, PCK@0.2 of the box, ...) with each record's ``normalizer``, plus the errors in
    pixels (:func:`hgkeras.evaluation.metrics.pixel_errors`): ``mean_error_px``,
    ``median_error_px``, ``error_px`` (per group) and ``per_joint_error_px``."""
    spec = get_pose(pose)
    if protocol != "official" and spec.normalizer != "head":
        raise ValueError(f"protocol {protocol!r} is MPII's; pose {spec.name!r} has no head boxes")
    result = metrics.pck(pred, gt, visible, normalizer, spec, protocol=protocol)
    if spec.normalizer == "head":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # already warned above
            curve = metrics.pckh_curve(pred, gt, visible, normalizer, protocol=protocol, pose=spec)
        result["AUC"] = curve["AUC"]
        result["protocol"] = protocol
    result["threshold"] = spec.threshold
    result.update(_errors(pred, gt, visible, spec))
    return result


def _errors(pred, gt, visible, spec: PoseSpec) -> dict[str, object]:
    errors = metrics.pixel_errors(pred, gt, visible, spec)
    return {
        "mean_error_px": errors["mean"],
        "median_error_px": errors["median"],
        "error_px": errors["groups"],
        "per_joint_error_px": errors["per_joint"],
    }


def box_sides(boxes) -> np.ndarray:
    """The longer side of boxes (N, 4) (x1, y1, x2, y2); NaN where unknown."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def score_for_pose(out: dict[str, Any], pose: str | PoseSpec, protocol: str = "official"):
    """Score predictions ``out`` (``pred``, ``joints``, ``visible``, ``normalizer``; ``box``,
    ``image_id``, ``scores`` where the rule needs them) by the pose spec's rule.

    "head": PCKh with the records' head sizes; "torso": PCK with the ground truth's torso size (the
    spec's ``torso_joints``); "box": PCK with the records' box sides; "oks": OKS AP/AR (pycocotools,
    the spec's sigmas, the records' areas) and PCK of the box where the records have boxes. Every
    result also holds the errors in pixels, ``metric`` (the spec's metric name) and ``dataset``.
    """
    spec = get_pose(pose)
    joints = np.asarray(out["joints"], np.float64)
    if spec.normalizer == "oks":
        from hgkeras.evaluation.coco import oks_ap

        result: dict[str, Any] = oks_ap(out, spec)
        sides = box_sides(out["box"]) if "box" in out else np.array([np.nan])
        if np.all(np.isfinite(sides) & (sides > 0)):
            pck = metrics.pck(out["pred"], joints, out["visible"], sides, spec, name="box side")
            result.update({"PCK": pck["Mean"], "pck_per_joint": pck["per_joint"]})
            result["pck_threshold"] = spec.threshold
        result.update(_errors(out["pred"], joints, out["visible"], spec))
    else:
        if spec.normalizer == "torso":
            normalizer = spec.torso_size(joints)
        else:
            normalizer = np.asarray(out["normalizer"], np.float64)
        result = score(out["pred"], joints, out["visible"], normalizer, spec, protocol)
    result["metric"] = spec.metric
    result["dataset"] = spec.name
    return result


def format_result(result: dict[str, Any], pose: str | PoseSpec) -> tuple[str, str]:
    """(title, table) of a :func:`score_for_pose` result: PCK per group (paper style for MPII and
    FLIC) and the errors in pixels, or the OKS AP/AR table."""
    spec = get_pose(pose)
    errors = ""
    if "mean_error_px" in result:
        errors = (
            f"\nerror in pixels: mean {result['mean_error_px']:.2f}, median "
            f"{result['median_error_px']:.2f}"
        )
        groups = result.get("error_px") or {}
        if groups:
            errors += "; mean per group: " + ", ".join(
                f"{name} {value:.1f}" for name, value in groups.items() if value == value
            )
    if spec.normalizer == "oks":
        from hgkeras.evaluation.coco import format_metrics

        pck = f"\nPCK@{spec.threshold:g} of the box: {result['PCK']:.1f}" if "PCK" in result else ""
        title = f"{spec.name} OKS AP/AR (pycocotools, the spec's sigmas)"
        return title, format_metrics(result) + pck + errors
    table = metrics.format_table(result, spec) + errors
    label = spec.name.upper() if POSES.get(spec.name) == spec else spec.name
    if spec.normalizer == "head":
        protocol = result.get("protocol", "official")
        key = metrics.headline_key(spec, protocol)
        head = metrics.head_group(spec, protocol)
        parts = [f"Head = {' + '.join(spec.joint_names[j] for j in head)}"] if head else []
        parts.append(f"{key} over {len(spec.scored)} joints")
        title = f"{label} PCKh@{spec.threshold:g}, {protocol} protocol ({'; '.join(parts)})"
        return title, table
    if spec.normalizer == "torso":
        a, b = (spec.joint_names[j] for j in spec.torso_joints)
        return f"{label} PCK@{spec.threshold:g} (torso = {a} to {b})", table
    return f"{label} PCK@{spec.threshold:g} of the box's longer side", table


def summary_key(result: dict[str, object]) -> str:
    """The headline key of a result: ``AP`` (OKS), ``Total`` (official MPII) or ``Mean``."""
    if result.get("metric") == "ap":
        return "AP"
    return "Total" if "Total" in result else "Mean"


# -------------------------------------------------------------------------------------- prediction


def predict_eval_dataset(
    network,
    dataset,
    flip: bool = True,
    pose: str | PoseSpec | None = None,
    codec: HeatmapCodec | None = None,
) -> dict[str, np.ndarray]:
    """Predict every batch of an evaluation dataset and decode to original image pixels.

    ``dataset`` yields the evaluation dict of :func:`hgkeras.data.pose_dataset` (``training=False``):
    ``image`` (B, H, W, 3) model input crops in [0, 1], ``center`` (B, 2), ``scale`` (B,),
    ``joints`` (B, J, 2) original 0-based pixels, ``visible`` (B, J), ``normalizer`` (B,), and optional
    ``image_id``/``person_id``. ``network`` is a loaded model (a Keras model, run as one compiled
    step, or an exported runtime; :func:`hgkeras.models.loading.load_model`); ``pose`` and
    ``codec`` default to the network's. Returns numpy arrays ``pred``, ``scores``, ``joints``,
    ``visible``, ``normalizer`` (+ ids and image ``filename`` where the dataset has them).
    """
    from keras import ops

    spec = get_pose(pose) if pose is not None else pose_of(network)
    codec = codec if codec is not None else codec_of(network)
    # The flip test needs a set trained with mirrored samples: one with left/right pairs.
    predict = codec.heatmap_function(network, spec.flip_permutation, flip and spec.flip, True)
    input_size = _input_size(network)
    out: dict[str, list] = {}
    for batch in dataset:
        if not isinstance(batch, dict):
            raise ValueError(
                f"evaluation dataset elements must be dicts with image/center/scale/joints/visible/"
                f"normalizer, got {type(batch).__name__}"
            )
        for key in ("image", "center", "scale", "joints", "visible", "normalizer"):
            if key not in batch:
                raise ValueError(
                    f"evaluation dataset element has no {key!r} (keys: {sorted(batch)})"
                )
        images = np.asarray(batch["image"], np.float32)
        heatmaps = ops.convert_to_tensor(predict(images))
        center = np.asarray(batch["center"], np.float32).reshape(-1, 2)
        scale = np.asarray(batch["scale"], np.float32).reshape(-1)
        keypoints, scores = codec.decode_to_image(heatmaps, center, scale, input_size)
        out.setdefault("pred", []).append(ops.convert_to_numpy(keypoints))
        out.setdefault("scores", []).append(ops.convert_to_numpy(scores))
        for key in ("joints", "visible", "normalizer", "box", "image_id", "person_id"):
            if key in batch:
                out.setdefault(key, []).append(np.asarray(batch[key]))
        if "filename" in batch:
            names = np.asarray(batch["filename"]).reshape(-1)
            out.setdefault("filename", []).append(
                np.array([n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names])
            )
    if not out:
        raise ValueError("the evaluation dataset is empty")
    return {key: np.concatenate(values) for key, values in out.items()}


def _input_size(network) -> tuple[int, int]:
    """(height, width) of a loaded network's input crops."""
    height, width = (int(v) for v in network.inputs[0].shape[1:3])
    return height, width


def predict_records(
    network,
    records: Sequence,
    images_dir: str | Path,
    flip: bool = True,
    batch_size: int = 16,
    pose: str | PoseSpec | None = None,
    codec: HeatmapCodec | None = None,
) -> dict[str, np.ndarray]:
    """Crop every record's person box from its image file (:func:`hgkeras.crop.crop_numpy`), predict
    and decode to original 0-based pixels. ``network`` is a loaded model (as in
    :func:`predict_eval_dataset`); ``pose`` and ``codec`` default to its own. Returns ``pred``
    (N, J, 2) and ``scores`` (N, J)."""
    from tqdm import tqdm

    from hgkeras.crop import crop_numpy
    from hgkeras.data.images import read_image_rgb

    spec = get_pose(pose) if pose is not None else pose_of(network)
    codec = codec if codec is not None else codec_of(network)
    height, width = _input_size(network)
    images_dir = Path(images_dir)
    keypoints, scores, cache = [], [], {}
    for start in tqdm(range(0, len(records), batch_size), desc="evaluate", leave=False):
        batch = records[start : start + batch_size]
        crops = []
        for record in batch:
            if record.image not in cache:
                cache.clear()  # records of one image are adjacent; keep one decoded image
                cache[record.image] = read_image_rgb(images_dir / record.image)
            crop = crop_numpy(cache[record.image], record.center, record.scale, (height, width))
            crops.append(crop.astype(np.float32) / 255.0)
        predicted = codec.predict_keypoints(
            network,
            np.stack(crops),
            np.stack([r.center for r in batch]),
            np.array([r.scale for r in batch]),
            spec.flip_permutation,
            flip and spec.flip,
            batch_size,
            compiled=True,
        )
        keypoints.append(predicted["keypoints"])
        scores.append(predicted["scores"])
    return {"pred": np.concatenate(keypoints), "scores": np.concatenate(scores)}


def is_annotation_file(path: str | Path) -> bool:
    """Whether evaluation data ``path`` is an annotation file (else it names TFRecords)."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in ANNOTATION_SUFFIXES


def _check_same_pose(model_pose: PoseSpec, data_pose: PoseSpec, data) -> None:
    if model_pose.joint_names != data_pose.joint_names:
        raise ValueError(
            f"the model predicts pose {model_pose.name!r} ({model_pose.num_joints} joints) but "
            f"{data} holds {data_pose.name!r} ({data_pose.num_joints} joints)"
        )


def gather_predictions(
    data: str | Path,
    *,
    model: Any = None,
    predictions: str | Path | None = None,
    images: str | Path | None = None,
    split: str | None = None,
    flip: bool = True,
    batch_size: int = 16,
    pose: str | PoseSpec | None = None,
    decoder: str | None = None,
) -> dict[str, Any]:
    """Predictions and ground truth of an evaluation set, ready for :func:`score_for_pose`.

    ``data`` is an annotation file (then ``predictions`` is read from a file, or ``model`` runs on
    the records' crops of the image files in ``images``) or TFRecords (``model`` runs on
    :func:`hgkeras.data.pose_dataset` evaluation crops). ``model`` is anything
    :func:`hgkeras.models.loading.load_model` takes (loaded once, its pose spec and codec looked up
    once); ``decoder`` decodes its heatmaps (default: the codec it was trained with,
    :func:`hgkeras.codec.codec_for`). ``pose`` names the set an annotation file holds where its
    layout does not say (Torch ``.h5``, HRNet ``.json``: default the model's, else MPII). Returns
    numpy ``pred``, ``joints``, ``visible``, ``normalizer``, ``box``, ``image_id``, ``person_id``,
    the data's ``pose`` spec and the ``codec`` used (None for a predictions file).
    """
    if (model is None) == (predictions is None):
        raise ValueError("give exactly one of a model or a predictions file")
    network = model_pose = codec = None
    if model is not None:  # keras (and its backend) only when a model runs
        from hgkeras.codec import codec_for
        from hgkeras.models.loading import load_model

        network = load_model(model, fold_batch_norms=True)
        model_pose = pose_of(network)
        codec = codec_for(network, decoder)
    if is_annotation_file(data):
        from hgkeras.data import read_annotations

        if pose is None:
            pose = model_pose
        records = read_annotations(data, pose, split=split)
        if not records:
            raise ValueError(f"{data}: no records" + (f" in split {split!r}" if split else ""))
        data_pose = get_pose(pose) if pose is not None else get_pose(records[0].pose)
        scores = None
        if predictions is not None:
            pred = read_predictions(predictions)
        else:
            if images is None:
                raise ValueError(
                    "an image directory is needed to run a model on an annotation file"
                )
            _check_same_pose(model_pose, data_pose, data)
            predicted = predict_records(
                network, records, images, flip, batch_size, model_pose, codec
            )
            pred, scores = predicted["pred"], predicted["scores"]
        if pred.shape[0] != len(records):
            raise ValueError(
                f"predictions have {pred.shape[0]} people but {data} has {len(records)} records "
                f"(shape {pred.shape})"
            )
        out = {
            "pred": pred,
            "joints": np.stack([r.joints for r in records]).astype(np.float64),
            "visible": np.stack([r.visible for r in records]),
            "normalizer": np.array([r.normalizer for r in records]),
            "box": np.stack([r.box for r in records]).astype(np.float64),
            "image_id": np.array([r.image_id for r in records]),
            "person_id": np.array([r.person_id for r in records]),
            "filename": np.array([r.image for r in records]),
        }
        if scores is not None:
            out["scores"] = scores
    else:
        if predictions is not None:
            raise ValueError(
                "a predictions file is scored against an annotation file, not TFRecords"
            )
        from hgkeras.data import pose_dataset
        from hgkeras.data.pipeline import read_pose

        data_pose = read_pose(data, split)
        _check_same_pose(model_pose, data_pose, data)
        dataset = pose_dataset(
            data, batch_size, training=False, split=split, input_size=_input_size(network)
        )
        out = predict_eval_dataset(network, dataset, flip, model_pose, codec)
    if out["joints"].shape != out["pred"].shape:
        raise ValueError(
            f"predictions {out['pred'].shape} and ground truth {out['joints'].shape} of {data} differ"
        )
    out["pose"] = data_pose
    out["codec"] = codec
    return out
