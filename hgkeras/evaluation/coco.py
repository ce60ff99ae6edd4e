"""COCO keypoint evaluation: OKS AP/AR through pycocotools, results files, top-down prediction.

Any keypoint category, not only people: the ground truth's category (chosen as
:func:`hgkeras.data.coco.choose_category` does) gives the keypoint count, and the pose spec's
``oks_sigmas`` (COCO's for people, :data:`hgkeras.spec.DEFAULT_OKS_SIGMA` by default for others)
are pycocotools' ``kpt_oks_sigmas``.

* :func:`evaluate_results` scores a COCO keypoint results list (``image_id``, ``category_id``,
  ``keypoints`` [3 K], ``score``) against a COCO keypoint file with ``pycocotools.cocoeval``
  (``iouType="keypoints"``) and returns AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl.
* :func:`predict_people` runs a model on person boxes (ground truth or detections): crop box = box
  widened to the input's aspect ratio and padded 1.25 (:func:`hgkeras.data.coco.coco_box_to_center_scale`),
  flip test, decode to image pixels; :func:`results_from_predictions` rescores (box score x mean
  confidence of the keypoints above 0.2) and :func:`oks_nms` optionally removes duplicates.
* :func:`oks_ap` scores arrays of predictions and ground truth (an evaluation set), and
  :class:`hgkeras.training.validation.ValidationCallback` logs ``val_ap`` ... for OKS-scored sets.

Keypoints in results files are 0-based pixel indices, the convention of the annotations.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from hgkeras.codec import HeatmapCodec, codec_for, codec_of
from hgkeras.data.coco import (
    PERSON_CATEGORY,
    choose_category,
    coco_box_to_center_scale,
    coco_pose,
    load_coco_annotations,
)
from hgkeras.io import load_json
from hgkeras.spec import COCO, PoseSpec, get_pose, pose_of

logger = logging.getLogger(__name__)

#: The summary numbers, in the order of ``COCOeval.stats`` for keypoints.
METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
#: Keypoints above this confidence count in the rescoring mean (HRNet / mmpose ``in_vis_thre``).
RESCORE_THRESHOLD = 0.2
#: Default OKS above which OKS-NMS drops the lower-scored of two poses (HRNet / mmpose).
OKS_NMS_THRESHOLD = 0.9


def _checked_number(value: Any, source: str, where: str, key: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {where} field {key!r} is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{source}: {where} field {key!r} is not finite: {value!r}")
    return number


def check_results(
    results: Any, source: str = "results", num_keypoints: int = COCO.num_joints
) -> list[dict]:
    """A COCO keypoint results list, checked: every entry has ``image_id``, ``category_id``,
    ``keypoints`` (3 x ``num_keypoints`` finite numbers) and a finite ``score``; errors name
    ``source`` and the index."""
    count = 3 * num_keypoints
    if not isinstance(results, list):
        raise ValueError(
            f"{source}: a COCO results file is a JSON list of objects, got {type(results).__name__}"
        )
    checked = []
    for i, entry in enumerate(results):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: {where} is not a JSON object")
        for key in ("image_id", "category_id", "keypoints", "score"):
            if key not in entry:
                raise ValueError(f"{source}: {where} has no field {key!r}")
        keypoints = entry["keypoints"]
        if not isinstance(keypoints, list) or len(keypoints) != count:
            size = len(keypoints) if isinstance(keypoints, list) else type(keypoints).__name__
            raise ValueError(
                f"{source}: {where} field 'keypoints' has {size} values, expected {count} "
                f"({num_keypoints} x [x, y, score])"
            )
        values = [_checked_number(v, source, where, "keypoints") for v in keypoints]
        checked.append(
            {
                "image_id": entry["image_id"],
                "category_id": entry["category_id"],
                "keypoints": values,
                "score": _checked_number(entry["score"], source, where, "score"),
            }
        )
    return checked


def load_results(path: str | Path, num_keypoints: int = COCO.num_joints) -> list[dict]:
    """Read and check a COCO keypoint results file (see :func:`check_results`)."""
    path = Path(path)
    return check_results(load_json(path), str(path), num_keypoints)


def load_detections(path: str | Path, category_id: int = PERSON_CATEGORY) -> list[dict]:
    """Detections (COCO results layout: ``image_id``, ``bbox`` [x, y, w, h], ``score``, optional
    ``category_id``; only ``category_id``'s are kept), checked, with clear errors."""
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: a detections file is a JSON list of objects")
    detections = []
    for i, entry in enumerate(data):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {where} is not a JSON object")
        for key in ("image_id", "bbox", "score"):
            if key not in entry:
                raise ValueError(f"{path}: {where} has no field {key!r}")
        box = entry["bbox"]
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError(f"{path}: {where} field 'bbox' must be [x, y, w, h]")
        box = [_checked_number(v, str(path), where, "bbox") for v in box]
        if entry.get("category_id", category_id) != category_id:
            continue
        detections.append(
            {
                "image_id": entry["image_id"],
                "bbox": box,
                "score": _checked_number(entry["score"], str(path), where, "score"),
            }
        )
    return detections


def _ground_truth(data: dict):
    from pycocotools.coco import COCO as CocoApi

    api = CocoApi()
    api.dataset = copy.deepcopy(data)
    for ann in api.dataset["annotations"]:  # pycocotools needs num_keypoints; files may omit it
        if "keypoints" in ann and "num_keypoints" not in ann:
            ann["num_keypoints"] = int(np.count_nonzero(np.asarray(ann["keypoints"])[2::3]))
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def evaluate_results(
    ground_truth: dict | str | Path,
    results: list | str | Path,
    *,
    category: int | str | None = None,
    pose: str | PoseSpec | None = None,
) -> dict:
    """OKS AP/AR of keypoint ``results`` against ``ground_truth`` with pycocotools' COCOeval.

    ``ground_truth`` is a COCO keypoint file's path or its parsed object; ``results`` a results
    file path or list. ``category`` (id or name; None: the only keypoint category) is scored with the
    OKS sigmas of ``pose`` (default: the category's spec, :func:`hgkeras.data.coco.coco_pose`).
    Every image of the ground truth is evaluated (pycocotools' default). Returns the
    :data:`METRIC_NAMES` as floats in [0, 1] (-1 where pycocotools has nothing to average, e.g. APm
    without medium instances) plus ``num_results``.
    """
    from pycocotools.cocoeval import COCOeval

    source = str(results) if isinstance(results, (str, Path)) else "results"
    if isinstance(ground_truth, (str, Path)):
        ground_truth = load_coco_annotations(ground_truth, category)
    chosen = choose_category(ground_truth, category)
    spec = get_pose(pose) if pose is not None else coco_pose(chosen)
    if spec.num_joints != len(chosen["keypoints"]):
        raise ValueError(
            f"pose {spec.name!r} has {spec.num_joints} keypoints, the ground truth's category "
            f"{chosen['id']} {len(chosen['keypoints'])}"
        )
    count = spec.num_joints
    if isinstance(results, (str, Path)):
        results = load_results(results, count)
    else:
        results = check_results(results, num_keypoints=count)
    if not results:
        raise ValueError(f"{source}: holds no results to score")
    known = {image["id"] for image in ground_truth["images"]}
    for i, entry in enumerate(results):
        if entry["image_id"] not in known:
            raise ValueError(
                f"{source}: entry {i} has image_id {entry['image_id']!r}, which is not an image of "
                "the ground truth"
            )
    gt = _ground_truth(ground_truth)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(gt, dt, "keypoints")
        evaluator.params.catIds = [chosen["id"]]
        evaluator.params.kpt_oks_sigmas = spec.sigmas
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats, strict=True)}
    metrics["num_results"] = len(results)
    return metrics


def format_metrics(metrics: dict) -> str:
    """A two-line table of the summary numbers (in [0, 1], as pycocotools prints them)."""
    header = " ".join(f"{name:>6}" for name in METRIC_NAMES)
    values = " ".join(f"{metrics[name]:6.3f}" for name in METRIC_NAMES)
    return header + "\n" + values


# ------------------------------------------------------------------------------ top-down prediction


def person_boxes(
    data: dict, detections: Sequence[dict] | None = None, category_id: int = PERSON_CATEGORY
) -> list[dict]:
    """Boxes to run the model on: ``{"image_id", "bbox", "score"}`` per instance.

    Without ``detections``: the ground-truth boxes of ``category_id``'s instances with keypoints
    that are not crowd (score 1). With them: every detection of an image of ``data`` (others are
    ignored).
    """
    if detections is None:
        return [
            {"image_id": ann["image_id"], "bbox": list(ann["bbox"]), "score": 1.0}
            for ann in data["annotations"]
            if not ann.get("iscrowd", 0)
            and ann.get("category_id", category_id) == category_id
            and any(v > 0 for v in ann["keypoints"][2::3])
            and ann["bbox"][2] > 0
            and ann["bbox"][3] > 0
        ]
    known = {image["id"] for image in data["images"]}
    return [
        d for d in detections if d["image_id"] in known and d["bbox"][2] > 0 and d["bbox"][3] > 0
    ]


def predict_people(
    model: keras.Model,
    data: dict,
    images_dir: str | Path,
    boxes: Sequence[dict],
    *,
    flip: bool = True,
    batch_size: int = 16,
    pose: str | PoseSpec | None = None,
    codec: HeatmapCodec | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N, K, 2) in image pixels and confidences (N, K) for every box of ``boxes``.

    Each box is cropped as top-down COCO methods do (aspect ratio of the model input, 1.25 padding),
    run with the flip test (where ``pose``, default the model's, has pairs) and decoded by ``codec``
    (default the model's own) through the inverse crop transform.
    """
    from hgkeras.crop import crop_numpy
    from hgkeras.data.images import read_image_rgb

    spec = get_pose(pose) if pose is not None else pose_of(model)
    height, width = (int(v) for v in model.inputs[0].shape[1:3])
    joints = int(model.outputs[-1].shape[-1])
    if joints != spec.num_joints:
        raise ValueError(
            f"the model predicts {joints} keypoints; pose {spec.name!r} has {spec.num_joints}"
        )
    codec = codec if codec is not None else codec_of(model)
    files = {image["id"]: image["file_name"] for image in data["images"]}
    images_dir = Path(images_dir)
    order = sorted(range(len(boxes)), key=lambda k: str(boxes[k]["image_id"]))
    keypoints = np.zeros((len(boxes), joints, 2), np.float32)
    scores = np.zeros((len(boxes), joints), np.float32)
    cached: tuple[Any, np.ndarray] | None = None
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        crops, centers, scales = [], [], []
        for k in chunk:
            image_id = boxes[k]["image_id"]
            if cached is None or cached[0] != image_id:
                cached = (image_id, read_image_rgb(images_dir / files[image_id]))
            center, scale = coco_box_to_center_scale(boxes[k]["bbox"], width / height)
            crop = crop_numpy(cached[1], center, scale, (height, width))  # the one crop policy
            crops.append(crop.astype(np.float32) / 255.0)
            centers.append(center)
            scales.append(scale)
        predicted = codec.predict_keypoints(
            model, np.stack(crops), np.stack(centers), np.array(scales), spec.flip_permutation,
            flip and spec.flip, batch_size, compiled=True,
        )  # fmt: skip
        keypoints[chunk], scores[chunk] = predicted["keypoints"], predicted["scores"]
    return keypoints, scores


def rescore(box_score: float, keypoint_scores: np.ndarray, threshold: float = RESCORE_THRESHOLD):
    """Box score x mean confidence of the keypoints above ``threshold`` (0 when none is)."""
    confident = np.asarray(keypoint_scores, np.float64)
    confident = confident[confident > threshold]
    return float(box_score) * (float(confident.mean()) if confident.size else 0.0)


def results_from_predictions(
    image_ids: Sequence[Any],
    keypoints: np.ndarray,
    scores: np.ndarray,
    box_scores: Sequence[float] | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    threshold: float = RESCORE_THRESHOLD,
    category_id: int = PERSON_CATEGORY,
) -> list[dict]:
    """COCO results entries of ``category_id`` for predictions (N, K, 2) with confidences (N, K),
    rescored (:func:`rescore`, box scores default 1). ``boxes`` [x, y, w, h] are kept as ``box``
    (for :func:`oks_nms`; COCO tools ignore the field)."""
    results = []
    for k, image_id in enumerate(image_ids):
        values = np.concatenate([keypoints[k], scores[k][:, None]], axis=1).reshape(-1)
        box_score = 1.0 if box_scores is None else box_scores[k]
        entry = {
            "image_id": image_id if isinstance(image_id, str) else int(image_id),
            "category_id": int(category_id),
            "keypoints": [round(float(v), 3) for v in values],
            "score": rescore(box_score, scores[k], threshold),
        }
        if boxes is not None:
            entry["box"] = [float(v) for v in boxes[k]]
        results.append(entry)
    return results


def image_id_from_name(path: str | Path) -> int:
    """The COCO image id of a COCO image file (``000000000785.jpg`` -> 785), or a ValueError."""
    stem = Path(path).stem
    digits = stem.rsplit("_", 1)[-1]  # also COCO 2014 names: COCO_val2014_000000000785
    if not digits.isdigit():
        raise ValueError(
            f"{path}: COCO results need the image id; name the image by its COCO id "
            "(e.g. 000000000785.jpg)"
        )
    return int(digits)


def results_from_people(
    image_id: int,
    people: Sequence[Any],
    pose: str | PoseSpec = COCO,
    category_id: int = PERSON_CATEGORY,
) -> list[dict]:
    """COCO results entries of :class:`~hgkeras.inference.predictor.PersonPose` objects of one image
    (keypoints of ``pose``; box score = the detection score, 1 for given boxes)."""
    spec = get_pose(pose)
    count = spec.num_joints
    if people and len(people[0].keypoints) != count:
        raise ValueError(
            f"COCO results of pose {spec.name!r} need {count} keypoints; this model predicts "
            f"{len(people[0].keypoints)}"
        )
    return results_from_predictions(
        [image_id] * len(people),
        np.array([p.keypoints for p in people]).reshape(-1, count, 2),
        np.array([p.scores for p in people]).reshape(-1, count),
        [1.0 if p.detection_score is None else p.detection_score for p in people],
        category_id=category_id,
    )


def oks_matrix(keypoints: np.ndarray, areas: np.ndarray, confidences: np.ndarray | None = None,
               threshold: float = RESCORE_THRESHOLD, sigmas=None) -> np.ndarray:  # fmt: skip
    """Pairwise OKS (N, N) of poses (N, K, 2) with object areas (N,) (the mean of each pair's areas)
    and per-keypoint ``sigmas`` (default COCO's).

    With ``confidences`` (N, K), only keypoints above ``threshold`` in both poses count (as HRNet's
    ``oks_iou``).
    """
    variances = (2.0 * (COCO.sigmas if sigmas is None else np.asarray(sigmas, np.float64))) ** 2
    d2 = np.sum((keypoints[:, None] - keypoints[None, :]) ** 2, axis=-1)  # (N, N, 17)
    scale = (areas[:, None] + areas[None, :]) / 2.0 + np.spacing(1)
    similarity = np.exp(-d2 / variances / scale[..., None] / 2.0)
    if confidences is None:
        return similarity.mean(axis=-1)
    mask = (confidences[:, None] > threshold) & (confidences[None, :] > threshold)
    counts = mask.sum(axis=-1)
    return np.where(counts > 0, (similarity * mask).sum(axis=-1) / np.maximum(counts, 1), 0.0)


def oks_nms(
    results: Sequence[dict], threshold: float = OKS_NMS_THRESHOLD, sigmas=None
) -> list[dict]:
    """Per image, drop every pose whose OKS (``sigmas``, default COCO's) with a higher-scored kept
    pose exceeds ``threshold``.

    The object area of a pose is that of its input ``box`` (w x h), as HRNet / mmpose do.
    """
    by_image: dict[Any, list[int]] = {}
    for k, entry in enumerate(results):
        by_image.setdefault(entry["image_id"], []).append(k)
    kept = []
    for members in by_image.values():
        values = np.array([results[k]["keypoints"] for k in members]).reshape(len(members), -1, 3)
        areas = np.array([results[k]["box"][2] * results[k]["box"][3] for k in members])
        overlap = oks_matrix(values[..., :2], areas, values[..., 2], sigmas=sigmas)
        order = list(np.argsort([-results[k]["score"] for k in members], kind="stable"))
        while order:
            best = order.pop(0)
            kept.append(members[best])
            order = [j for j in order if overlap[best, j] <= threshold]
    return [results[k] for k in sorted(kept)]


def evaluate_model(
    model: keras.Model,
    annotations: str | Path,
    images_dir: str | Path,
    detections: str | Path | None = None,
    *,
    flip: bool = True,
    batch_size: int = 16,
    nms: bool | None = None,
    nms_threshold: float = OKS_NMS_THRESHOLD,
    category: int | str | None = None,
    decoder: str | None = None,
) -> tuple[dict, list[dict]]:
    """Run ``model`` on ground-truth boxes (or ``detections``) of the keypoint ``category`` (None:
    the file's only one) and score it; (metrics, results). The model's pose spec gives the flip
    pairs and OKS sigmas and must have the category's keypoints.

    ``nms`` (default: on with detections) applies :func:`oks_nms`. Results carry ``box``.
    ``decoder`` decodes the heatmaps (default: the model's codec, :func:`hgkeras.codec.codec_for`).
    """

    data = load_coco_annotations(annotations, category)
    chosen = choose_category(data, category, annotations)
    spec = pose_of(model)
    if tuple(spec.joint_names) != tuple(str(n) for n in chosen["keypoints"]):
        raise ValueError(
            f"the model predicts pose {spec.name!r} {list(spec.joint_names)}; {annotations} "
            f"category {chosen['id']} has keypoints {chosen['keypoints']}"
        )
    found = load_detections(detections, chosen["id"]) if detections else None
    boxes = person_boxes(data, found, chosen["id"])
    if not boxes:
        raise ValueError(f"{detections or annotations}: no boxes on the images of {annotations}")
    keypoints, scores = predict_people(
        model, data, images_dir, boxes, flip=flip, batch_size=batch_size, pose=spec,
        codec=codec_for(model, decoder),
    )  # fmt: skip
    results = results_from_predictions(
        [b["image_id"] for b in boxes], keypoints, scores, [b["score"] for b in boxes],
        [b["bbox"] for b in boxes], category_id=chosen["id"],
    )  # fmt: skip
    if nms if nms is not None else detections is not None:
        results = oks_nms(results, nms_threshold, spec.sigmas)
    return evaluate_results(data, results, category=chosen["id"], pose=spec), results


def write_results(path: str | Path, results: Sequence[dict]) -> None:
    """Write a COCO keypoint results file (a JSON list, one entry per line) atomically."""
    from hgkeras.io import atomic_write_text

    lines = ",\n".join(json.dumps(entry) for entry in results)
    atomic_write_text(path, "[\n" + lines + "\n]\n")


# -------------------------------------------------------------------------------- training callback


def ground_truth_from_arrays(
    joints: np.ndarray,
    visible: np.ndarray,
    areas: np.ndarray,
    image_ids: np.ndarray,
    pose: str | PoseSpec = COCO,
    category_id: int = PERSON_CATEGORY,
) -> dict:
    """A COCO ground-truth object of ``pose``'s instances given as arrays (N, K, 2), (N, K), (N,),
    (N,), all of category ``category_id``.

    Annotation ids are 1..N in order; boxes are the annotated keypoints' extent (pycocotools uses the
    box only for instances without keypoints, which this object does not hold).
    """
    spec = get_pose(pose)
    annotations = []
    for k in range(len(joints)):
        seen = np.asarray(visible[k]) > 0
        points = np.asarray(joints[k], np.float64)
        flags = np.where(seen, 2, 0)
        values = np.concatenate([np.where(seen[:, None], points, 0.0), flags[:, None]], axis=1)
        low, high = points[seen].min(axis=0), points[seen].max(axis=0)
        annotations.append(
            {
                "id": k + 1,
                "image_id": int(image_ids[k]),
                "category_id": int(category_id),
                "keypoints": [float(v) for v in values.reshape(-1)],
                "num_keypoints": int(seen.sum()),
                "area": float(areas[k]),
                "bbox": [float(low[0]), float(low[1]), *(float(v) for v in high - low)],
                "iscrowd": 0,
            }
        )
    return {
        "images": [{"id": int(i)} for i in sorted({int(i) for i in image_ids})],
        "annotations": annotations,
        "categories": [
            {"id": int(category_id), "name": spec.name, "keypoints": list(spec.joint_names)}
        ],
    }


def oks_ap(out: dict, pose: str | PoseSpec) -> dict:
    """OKS AP/AR (:func:`evaluate_results`) of an evaluation set's predictions ``out``: ``pred``,
    ``scores``, ``joints``, ``visible``, ``normalizer`` (the instances' areas) and ``image_id``
    (:func:`hgkeras.evaluation.evaluate.predict_eval_dataset`), with ``pose``'s sigmas."""
    spec = get_pose(pose)
    if out["pred"].shape[1] != spec.num_joints or "image_id" not in out:
        raise ValueError(
            f"OKS AP needs {spec.num_joints}-keypoint predictions of pose {spec.name!r} and "
            "records with image_id"
        )
    truth = ground_truth_from_arrays(
        out["joints"], out["visible"], out["normalizer"], out["image_id"], spec
    )
    scores = out.get("scores")
    if scores is None:
        scores = np.ones(out["pred"].shape[:2])
    results = results_from_predictions(out["image_id"], out["pred"], scores)
    return evaluate_results(truth, results, pose=spec)
