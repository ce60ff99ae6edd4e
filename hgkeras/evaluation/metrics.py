"""Pose accuracy on numpy arrays: MPII PCKh (official and HRNet/mmpose protocols) and FLIC PCK.

All functions take predictions and ground truth in the same pixel convention (any consistent
offset cancels in the distances). Results are percentages. See ``docs/evaluation.md`` for the exact
rules and the reference implementations they follow.

Rules shared by every metric here:

* A joint is scored when its ``visible`` flag is non-zero (pass the *annotated* mask: the MPII
  toolkit scores every annotated joint, occluded or not).
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

#: Relative tolerance on ``distance / normalizer <= threshold`` (absorbs rounding of exact-boundary points).
BOUNDARY_RTOL = 1e-9

#: MPII joint groups of the paper's table (ids of :data:`hgkeras.spec.MPII`), official protocol.
MPII_GROUPS_OFFICIAL: dict[str, tuple[int, ...]] = {
    "Head": (8, 9),
    "Shoulder": (12, 13),
    "Elbow": (11, 14),
    "Wrist": (10, 15),
    "Hip": (2, 3),
    "Knee": (1, 4),
    "Ankle": (0, 5),
}
#: HRNet / mmpose groups: the same, except Head = head top only.
MPII_GROUPS_HRNET: dict[str, tuple[int, ...]] = {**MPII_GROUPS_OFFICIAL, "Head": (9,)}
#: MPII joints that are never scored: pelvis and thorax.
MPII_UNSCORED: tuple[int, ...] = (6, 7)
#: The 14 scored MPII joints.
MPII_SCORED: tuple[int, ...] = tuple(j for j in range(16) if j not in MPII_UNSCORED)
#: PCKh thresholds of the MPII toolkit's curve (``range = 0:0.01:0.5``).
PCKH_CURVE_THRESHOLDS = np.round(np.arange(0, 51) * 0.01, 2)

#: FLIC joint groups (ids of :data:`hgkeras.spec.FLIC`): the 11 joints are all scored.
FLIC_GROUPS: dict[str, tuple[int, ...]] = {
    "Shoulder": (0, 3),
    "Elbow": (1, 4),
    "Wrist": (2, 5),
    "Hip": (6, 7),
    "Head": (8, 9, 10),
}
#: FLIC torso: left shoulder (0) to right hip (7).
FLIC_TORSO_JOINTS: tuple[int, int] = (0, 7)

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


def _mpii_summary(
    dist: np.ndarray, visible: np.ndarray, threshold: float, protocol: str
) -> dict[str, object]:
    hits = _hits(dist, visible, threshold)
    per_joint, _ = _per_joint(hits, visible)
    per_joint[list(MPII_UNSCORED)] = np.nan
    groups = MPII_GROUPS_OFFICIAL if protocol == "official" else MPII_GROUPS_HRNET
    result: dict[str, object] = {name: _group_mean(per_joint, ids) for name, ids in groups.items()}
    total = _pooled(hits, visible, MPII_SCORED)
    if protocol == "official":
        result["Total"] = total
    else:
        result["Mean"] = total
        hits_01 = _hits(dist, visible, PCKH_CURVE_THRESHOLDS[11])
        result["Mean@0.1"] = _pooled(hits_01, visible, MPII_SCORED)
    result["per_joint"] = [float(v) for v in per_joint]
    return result


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def mpii_pckh(
    pred, gt, visible, head_size, threshold: float = 0.5, protocol: str = "official"
) -> dict[str, object]:
    """MPII PCKh in percent.

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
    _check_protocol(protocol)
    dist, visible = normalized_distances(
        pred, gt, visible, head_size, num_joints=16, name="head_size"
    )
    return _mpii_summary(dist, visible, float(threshold), protocol)


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
) -> dict[str, object]:
    """MPII PCKh at each threshold (default 0, 0.01, ..., 0.5) and the area under the total curve.

    Returns ``{"thresholds": [...], <group>: [...], "Total" or "Mean": [...], "AUC": float}``; AUC is in
    percent with thresholds rescaled to [0, 1], as the MPII toolkit's ``area_under_curve(scale01(range), ...)``.
    """
    _check_protocol(protocol)
    thresholds = PCKH_CURVE_THRESHOLDS if thresholds is None else np.asarray(thresholds, np.float64)
    dist, visible = normalized_distances(
        pred, gt, visible, head_size, num_joints=16, name="head_size"
    )
    total_key = "Total" if protocol == "official" else "Mean"
    curve: dict[str, object] = {"thresholds": [float(t) for t in thresholds]}
    rows = [_mpii_summary(dist, visible, float(t), protocol) for t in thresholds]
    groups = MPII_GROUPS_OFFICIAL if protocol == "official" else MPII_GROUPS_HRNET
    for key in [*groups, total_key]:
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
    """FLIC torso size (N,): distance from the left shoulder (0) to the right hip (7) of ``gt`` (N, 11, 2)."""
    gt = np.asarray(gt, np.float64)
    if gt.ndim != 3 or gt.shape[1:] != (11, 2):
        raise ValueError(f"gt must have shape (N, 11, 2), got {gt.shape}")
    a, b = FLIC_TORSO_JOINTS
    return np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)


def flic_pck(pred, gt, visible, torso_size, threshold: float = 0.2) -> dict[str, object]:
    """FLIC PCK in percent: a joint is correct when its distance is <= ``threshold`` x torso size.

    Args:
        pred, gt: (N, 11, 2) joints in FLIC order (lsho, lelb, lwri, rsho, relb, rwri, lhip, rhip,
            leye, reye, nose).
        visible: (N, 11) joints to score.
        torso_size: (N,) left shoulder to right hip distance (see :func:`flic_torso_size`).

    Returns Shoulder, Elbow, Wrist, Hip, Head (eyes and nose) (each the mean of its joints' PCK),
    ``Mean`` pooled over all scored joints, and ``per_joint`` (11 values).
    """
    dist, visible = normalized_distances(
        pred, gt, visible, torso_size, num_joints=11, name="torso_size"
    )
    hits = _hits(dist, visible, float(threshold))
    per_joint, _ = _per_joint(hits, visible)
    result: dict[str, object] = {
        name: _group_mean(per_joint, ids) for name, ids in FLIC_GROUPS.items()
    }
    result["Mean"] = _pooled(hits, visible, range(11))
    result["per_joint"] = [float(v) for v in per_joint]
    return result


def format_table(result: dict[str, object]) -> str:
    """The paper-style one-row table (Head Sho Elb Wri Hip Knee Ank Total/Mean) of an MPII result."""
    total_key = "Total" if "Total" in result else "Mean"
    columns = [
        ("Head", "Head"), ("Sho", "Shoulder"), ("Elb", "Elbow"), ("Wri", "Wrist"),
        ("Hip", "Hip"), ("Knee", "Knee"), ("Ank", "Ankle"), (total_key, total_key),
    ]  # fmt: skip
    header = " ".join(f"{label:>6s}" for label, _ in columns)
    row = " ".join(f"{float(result[key]):6.1f}" for _, key in columns)
    return f"{header}\n{row}"


def format_flic_table(result: dict[str, object]) -> str:
    """One-row table (Sho Elb Wri Hip Head Mean) of a FLIC result."""
    columns = [("Sho", "Shoulder"), ("Elb", "Elbow"), ("Wri", "Wrist"), ("Hip", "Hip"),
               ("Head", "Head"), ("Mean", "Mean")]  # fmt: skip
    header = " ".join(f"{label:>6s}" for label, _ in columns)
    row = " ".join(f"{float(result[key]):6.1f}" for _, key in columns)
    return f"{header}\n{row}"
