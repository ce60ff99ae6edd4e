"""Pose accuracy on numpy arrays: PCK of any pose spec (MPII PCKh, FLIC PCK, PCK of the box) and
errors in pixels.

All functions take predictions and ground truth in the same pixel convention (any consistent
offset cancels in the distances). PCK results are percentages. The groups a result reports, the joints
it leaves out and its threshold come from the :class:`~hgkeras.spec.PoseSpec`; see
``docs/evaluation.md`` for the exact rules and the reference implementations they follow.

Rules shared by every metric here:

* A joint is scored when its ``visible`` flag is non-zero (pass the *annotated* mask: the MPII
  toolkit scores every annotated joint, occluded or not) and the spec does not list it as unscored.
* A joint is correct when ``distance <= threshold * normalizer`` (inclusive). Distances are compared
  as ``distance / normalizer <= threshold`` like the references, with a relative tolerance of
  :data:`BOUNDARY_RTOL` so that a point moved by exactly ``threshold * normalizer`` is counted as correct
  despite floating-point rounding of its coordinates.
* Non-finite predictions (NaN, inf) of scored joints count as misses and raise a ``RuntimeWarning``.
* Shape mismatches, non-finite ground truth of scored joints, and non-positive or non-finite
  normalizers (head or torso size) raise ``ValueError`` naming the argument, the shape or the record.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from hgkeras.spec import FLIC, MPII, PoseSpec, get_pose

#: Relative tolerance on ``distance / normalizer <= threshold`` (absorbs rounding of exact-boundary points).
BOUNDARY_RTOL = 1e-9
#: PCKh thresholds of the MPII toolkit's curve (``range = 0:0.01:0.5``).
PCKH_CURVE_THRESHOLDS = np.round(np.arange(0, 51) * 0.01, 2)
#: The MPII protocols: the toolkit's ("official": Head = the spec's Head group, ``Total``) and
#: HRNet/mmpose's ("hrnet": Head = head top only, ``Mean`` and ``Mean@0.1``).
PROTOCOLS = ("official", "hrnet")


def _check_inputs(
    pred, gt, visible, normalizer, num_joints: int, normalizer_name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    visible = np.asarray(visible)
    normalizer = np.asarray(normalizer, dtype=np.float64)
    if gt.ndim != 3 or gt.shape[1:] != (num_joints, 2):
        raise ValueError(f"gt must have shape (N, {num_joints}, 2), got {gt.shape}")
    n = gt.shape[0]
    if pred.shape != gt.shape:
        raise ValueError(f"pred must have the shape of gt {gt.shape}, got {pred.shape}")
    if visible.shape != (n, num_joints):
        raise ValueError(f"visible must have shape ({n}, {num_joints}), got {visible.shape}")
    if normalizer.shape != (n,):
        raise ValueError(f"{normalizer_name} must have shape ({n},), got {normalizer.shape}")
    bad = np.flatnonzero(~np.isfinite(normalizer) | (normalizer <= 0))
    if bad.size:
        raise ValueError(
            f"{normalizer_name} must be positive and finite; record {int(bad[0])} has "
            f"{normalizer[bad[0]]!r} ({bad.size} bad record(s) of {n})"
        )
    visible = visible.astype(bool)
    bad_gt = np.argwhere(visible & ~np.isfinite(gt).all(axis=-1))
    if bad_gt.size:
        i, j = (int(v) for v in bad_gt[0])
        raise ValueError(f"gt of visible joint {j} of record {i} is not finite: {gt[i, j]}")
    return pred, gt, visible, normalizer


def normalized_distances(
    pred, gt, visible, normalizer, *, num_joints: int, name: str = "normalizer"
):
    """``distance / normalizer`` (N, J) after validating the inputs; ``inf`` where the prediction is not finite.

    Non-finite predictions of visible joints raise a ``RuntimeWarning`` (they count as misses).
    Returns (normalized distances, visible mask as bool).
    """
    pred, gt, visible, normalizer = _check_inputs(pred, gt, visible, normalizer, num_joints, name)
    finite = np.isfinite(pred).all(axis=-1)
    missing = visible & ~finite
    if missing.any():
        warnings.warn(
            f"{int(missing.sum())} prediction(s) of scored joints are not finite (NaN/inf); "
            "they count as misses",
            RuntimeWarning,
            stacklevel=3,
        )
    with np.errstate(invalid="ignore"):
        dist = np.linalg.norm(pred - np.where(np.isfinite(gt), gt, 0.0), axis=-1)
    dist = np.where(finite, dist, np.inf) / normalizer[:, None]
    return dist, visible


def _hits(dist: np.ndarray, visible: np.ndarray, threshold: float) -> np.ndarray:
    return visible & (dist <= threshold * (1.0 + BOUNDARY_RTOL))


def _per_joint(hits: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = visible.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pck = np.where(counts > 0, 100.0 * hits.sum(axis=0) / np.maximum(counts, 1), np.nan)
    return pck, counts


def _group_mean(per_joint: np.ndarray, joints: Sequence[int]) -> float:
    values = per_joint[list(joints)]
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def _pooled(hits: np.ndarray, visible: np.ndarray, joints: Sequence[int]) -> float:
    joints = list(joints)
    count = int(visible[:, joints].sum())
    return 100.0 * float(hits[:, joints].sum()) / count if count else float("nan")


def _groups(spec: PoseSpec, protocol: str) -> dict[str, tuple[int, ...]]:
    """The spec's groups; HRNet's protocol takes Head = the head top only (MPII)."""
    groups = spec.group_table
    if protocol == "hrnet":
        if spec.normalizer != "head" or "head_top" not in spec.joint_names:
            raise ValueError(f"the hrnet protocol is MPII's; pose {spec.name!r} has no head_top")
        groups["Head"] = (spec.index("head_top"),)
    return groups


def head_group(spec: PoseSpec, protocol: str = "official") -> tuple[int, ...]:
    """The joints of the spec's "Head" group under ``protocol`` (empty without such a group)."""
    return _groups(spec, protocol).get("Head", ())


def headline_key(spec: PoseSpec, protocol: str = "official") -> str:
    """The headline key of a PCK result: ``Total`` (MPII's official protocol), else ``Mean``."""
    return "Total" if spec.normalizer == "head" and protocol == "official" else "Mean"


def _summary(
    dist: np.ndarray, visible: np.ndarray, threshold: float, spec: PoseSpec, protocol: str
) -> dict[str, object]:
    hits = _hits(dist, visible, threshold)
    per_joint, _ = _per_joint(hits, visible)
    per_joint[list(spec.unscored)] = np.nan
    groups = _groups(spec, protocol)
    result: dict[str, object] = {name: _group_mean(per_joint, ids) for name, ids in groups.items()}
    result[headline_key(spec, protocol)] = _pooled(hits, visible, spec.scored)
    if protocol == "hrnet":
        hits_01 = _hits(dist, visible, PCKH_CURVE_THRESHOLDS[11])
        result["Mean@0.1"] = _pooled(hits_01, visible, spec.scored)
    result["per_joint"] = [float(v) for v in per_joint]
    return result


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def pck(
    pred,
    gt,
    visible,
    normalizer,
    pose: str | PoseSpec,
    threshold: float | None = None,
    protocol: str = "official",
    name: str = "normalizer",
) -> dict[str, object]:
    """PCK in percent of pose ``pose``: a joint is correct when its distance is at most ``threshold``
    (default the spec's) times its record's ``normalizer``.

    Args:
        pred, gt: (N, J, 2) joints in the spec's order.
        visible: (N, J) joints to score (non-zero = annotated); the spec's unscored joints never are.
        normalizer: (N,) the spec's normaliser per record (head size, torso size, box side).
        protocol: "official", or "hrnet" (MPII only: Head = head top, plus ``Mean@0.1``).
        name: the normaliser's name in error messages.

    Returns a dict: one key per group of the spec (the mean of its joints' PCK), the headline
    (``Total`` for MPII's official protocol, else ``Mean``: pooled over the scored joints), and
    ``per_joint`` (J values, NaN for unscored joints and joints never visible).
    """
    spec = get_pose(pose)
    _check_protocol(protocol)
    dist, visible = normalized_distances(
        pred, gt, visible, normalizer, num_joints=spec.num_joints, name=name
    )
    threshold = spec.threshold if threshold is None else float(threshold)
    return _summary(dist, visible, threshold, spec, protocol)


def mpii_pckh(
    pred, gt, visible, head_size, threshold: float = 0.5, protocol: str = "official"
) -> dict[str, object]:
    """MPII PCKh in percent (:func:`pck` of :data:`hgkeras.spec.MPII`).

    Args:
        pred: (N, 16, 2) predicted joints.
        gt: (N, 16, 2) ground truth, same pixel convention as ``pred``.
        visible: (N, 16) joints to score (non-zero = annotated).
        head_size: (N,) PCKh normalizer, 0.6 x head box diagonal (the annot files' ``normalize``).
        threshold: fraction of the head size.
        protocol: ``"official"`` (MPII toolkit: Head = mean of upper neck and head top, ``Total`` pooled
            over the 14 scored joints) or ``"hrnet"`` (HRNet/mmpose: Head = head top only, ``Mean``
            pooled over the 14 joints, plus ``Mean@0.1``).

    Returns a dict: group keys Head, Shoulder, Elbow, Wrist, Hip, Knee, Ankle (each the mean of its
    joints' PCKh), ``Total`` (official) or ``Mean`` and ``Mean@0.1`` (hrnet), and ``per_joint`` (16 values,
    NaN for pelvis, thorax and joints never visible).
    """
    return pck(pred, gt, visible, head_size, MPII, threshold, protocol, name="head_size")


def area_under_curve(thresholds: Sequence[float], values: Sequence[float]) -> float:
    """Area under a PCK curve with thresholds rescaled to [0, 1] (trapezoids), in the curve's units."""
    x = np.asarray(thresholds, np.float64)
    y = np.asarray(values, np.float64)
    span = x[-1] - x[0]
    if x.size < 2 or span <= 0:
        raise ValueError(f"thresholds must increase over at least two values, got {x.tolist()}")
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / span)


def pckh_curve(
    pred,
    gt,
    visible,
    head_size,
    thresholds: Sequence[float] | None = None,
    protocol: str = "official",
    pose: str | PoseSpec = MPII,
) -> dict[str, object]:
    """PCK of ``pose`` (default MPII PCKh) at each threshold (default 0, 0.01, ..., 0.5) and the area
    under the headline curve.

    Returns ``{"thresholds": [...], <group>: [...], "Total" or "Mean": [...], "AUC": float}``; AUC is in
    percent with thresholds rescaled to [0, 1], as the MPII toolkit's ``area_under_curve(scale01(range), ...)``.
    """
    spec = get_pose(pose)
    _check_protocol(protocol)
    thresholds = PCKH_CURVE_THRESHOLDS if thresholds is None else np.asarray(thresholds, np.float64)
    dist, visible = normalized_distances(
        pred, gt, visible, head_size, num_joints=spec.num_joints, name="head_size"
    )
    total_key = headline_key(spec, protocol)
    curve: dict[str, object] = {"thresholds": [float(t) for t in thresholds]}
    rows = [_summary(dist, visible, float(t), spec, protocol) for t in thresholds]
    for key in [*_groups(spec, protocol), total_key]:
        curve[key] = [row[key] for row in rows]
    curve["AUC"] = area_under_curve(thresholds, curve[total_key])
    return curve


def head_size_from_boxes(boxes) -> np.ndarray:
    """PCKh head size (N,) = 0.6 x diagonal of head boxes (N, 4) as (x1, y1, x2, y2)."""
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"head boxes must have shape (N, 4), got {boxes.shape}")
    return 0.6 * np.hypot(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def flic_torso_size(gt) -> np.ndarray:
    """FLIC torso size (N,): :meth:`hgkeras.spec.PoseSpec.torso_size` of :data:`hgkeras.spec.FLIC`
    (left shoulder to right hip) of ``gt`` (N, 11, 2)."""
    gt = np.asarray(gt, np.float64)
    if gt.ndim != 3 or gt.shape[1:] != (11, 2):
        raise ValueError(f"gt must have shape (N, 11, 2), got {gt.shape}")
    return FLIC.torso_size(gt)


def flic_pck(pred, gt, visible, torso_size, threshold: float = 0.2) -> dict[str, object]:
    """FLIC PCK in percent (:func:`pck` of :data:`hgkeras.spec.FLIC`): a joint is correct when its
    distance is <= ``threshold`` x torso size.

    Args:
        pred, gt: (N, 11, 2) joints in FLIC order (lsho, lelb, lwri, rsho, relb, rwri, lhip, rhip,
            leye, reye, nose).
        visible: (N, 11) joints to score.
        torso_size: (N,) left shoulder to right hip distance (see :func:`flic_torso_size`).

    Returns Shoulder, Elbow, Wrist, Hip, Head (eyes and nose) (each the mean of its joints' PCK),
    ``Mean`` pooled over all scored joints, and ``per_joint`` (11 values).
    """
    return pck(pred, gt, visible, torso_size, FLIC, threshold, name="torso_size")


def pixel_errors(pred, gt, visible, pose: str | PoseSpec) -> dict[str, object]:
    """Distances in pixels between predictions and ground truth of the scored, visible joints.

    Returns ``mean`` and ``median`` over all of them, ``groups`` (the mean per group of the spec)
    and ``per_joint`` (the mean per joint; NaN where none is scored). Non-finite predictions are
    left out of the errors (PCK counts them as misses).
    """
    spec = get_pose(pose)
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    mask = np.asarray(visible) > 0
    if pred.shape != gt.shape or gt.shape[1:] != (spec.num_joints, 2) or mask.shape != gt.shape[:2]:
        raise ValueError(
            f"pred {pred.shape}, gt {gt.shape} and visible {mask.shape} must be (N, "
            f"{spec.num_joints}, 2), (N, {spec.num_joints}, 2) and (N, {spec.num_joints})"
        )
    mask[:, list(spec.unscored)] = False
    with np.errstate(invalid="ignore"):
        dist = np.linalg.norm(pred - gt, axis=-1)
    mask &= np.isfinite(dist)

    def mean(joints) -> float:
        values = dist[:, list(joints)][mask[:, list(joints)]]
        return float(values.mean()) if values.size else float("nan")

    values = dist[mask]
    return {
        "mean": float(values.mean()) if values.size else float("nan"),
        "median": float(np.median(values)) if values.size else float("nan"),
        "groups": {name: mean(ids) for name, ids in spec.group_table.items()},
        "per_joint": [mean([j]) for j in range(spec.num_joints)],
    }


def _labels(names: Sequence[str]) -> list[str]:
    """Table column labels: names over four letters shortened to three when that keeps them apart."""
    short = [n if len(n) <= 4 else n[:3] for n in names]
    return short if len(set(short)) == len(short) else list(names)


def format_table(result: dict[str, object], pose: str | PoseSpec = MPII) -> str:
    """A one-row table of a PCK result: the pose's groups, then the headline (``Total``/``Mean``),
    e.g. the paper's Head Sho Elb Wri Hip Knee Ank Total for MPII. Group names longer than four
    letters are cut to three where they stay distinct (else written whole)."""
    groups = list(get_pose(pose).group_table)
    keys = [*groups, "Total" if "Total" in result else "Mean"]
    labels = [*_labels(groups), keys[-1]]
    widths = [max(6, len(label)) for label in labels]
    header = " ".join(f"{label:>{w}s}" for label, w in zip(labels, widths, strict=True))
    row = " ".join(f"{float(result[k]):{w}.1f}" for k, w in zip(keys, widths, strict=True))
    return f"{header}\n{row}"
