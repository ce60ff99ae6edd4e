"""MPII PCKh and FLIC PCK on the real validation annotations and on hand-made predictions.

Expected numbers are worked out by hand in the comments, not by running the code under test.
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from hgkeras.evaluation.metrics import (
    flic_pck,
    flic_torso_size,
    format_table,
    head_size_from_boxes,
    mpii_pckh,
    pckh_curve,
)

MPII_GROUPS = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle")
FLIC_KEYS = ("Shoulder", "Elbow", "Wrist", "Hip", "Head", "Mean")


@pytest.fixture(scope="module")
def mpii_valid(real_data):
    with h5py.File(real_data / "mpii" / "valid.h5", "r") as f:
        part = f["part"][:]
        head = f["normalize"][:]
    annotated = (part != 0).any(axis=-1)  # missing joints are (0, 0) in the Torch annot file
    return part, annotated, head


@pytest.fixture(scope="module")
def flic_valid(real_data):
    with h5py.File(real_data / "flic" / "valid_personcentric.h5", "r") as f:
        return f["part"][:], f["visible"][:]


def _directions(n: int, j: int) -> np.ndarray:
    """Unit vectors cycling through +x, +y, -x, -y and (0.6, 0.8)."""
    units = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [0.6, 0.8]], np.float64)
    return units[np.arange(n * j).reshape(n, j) % len(units)]


def test_mpii_ground_truth_scores_100_on_real_validation_set(mpii_valid):
    part, annotated, head = mpii_valid
    assert part.shape == (2958, 16, 2)
    for protocol, total in (("official", "Total"), ("hrnet", "Mean")):
        result = mpii_pckh(part, part, annotated, head, protocol=protocol)
        for key in (*MPII_GROUPS, total):
            assert result[key] == 100.0, (protocol, key)
        per_joint = np.array(result["per_joint"])
        assert np.isnan(per_joint[[6, 7]]).all()  # pelvis, thorax not scored
        assert (np.delete(per_joint, [6, 7]) == 100.0).all()
    assert mpii_pckh(part, part, annotated, head, protocol="hrnet")["Mean@0.1"] == 100.0


@pytest.mark.parametrize("threshold", [0.5, 0.1])
def test_mpii_points_at_exactly_threshold_count_and_beyond_miss(mpii_valid, threshold):
    part, annotated, head = mpii_valid
    offset = _directions(*part.shape[:2]) * head[:, None, None]
    on_boundary = part + threshold * offset
    result = mpii_pckh(on_boundary, part, annotated, head, threshold=threshold)
    assert result["Total"] == 100.0  # distance == threshold * head size counts (inclusive)
    beyond = part + threshold * (1 + 1e-6) * offset
    result = mpii_pckh(beyond, part, annotated, head, threshold=threshold)
    assert result["Total"] == 0.0 and all(result[g] == 0.0 for g in MPII_GROUPS)


def _hand_made():
    """4 people, every joint moved by 0.3 (hit at 0.5) or 0.7 (miss) head sizes along +x.

    Upper necks are moved by only 0.05 head sizes (hits at 0.1 as well). Ankles of person 3 are
    not annotated. Hits per joint (of 4 people unless noted):
      r_ankle 2/3, l_ankle 1/3, r_knee 4, l_knee 4, r_hip 3, l_hip 1, pelvis 0, thorax 0,
      upper_neck 4, head_top 2, r_wrist 1, r_elbow 0, r_sho 4, l_sho 4, l_elb 4, l_wri 3.
    """
    hits = np.zeros((4, 16), bool)
    hits[[0, 1], 0] = True
    hits[0, 5] = True
    hits[:, [1, 4, 8, 12, 13, 14]] = True
    hits[:3, 2] = True
    hits[0, 3] = True
    hits[:2, 9] = True
    hits[0, 10] = True
    hits[:3, 15] = True
    visible = np.ones((4, 16))
    visible[3, [0, 5]] = 0
    head = np.array([10.0, 20.0, 10.0, 40.0])
    gt = np.random.default_rng(0).uniform(100, 500, (4, 16, 2))
    move = np.where(hits, 0.3, 0.7)
    move[:, 8] = 0.05
    pred = gt.copy()
    pred[..., 0] += move * head[:, None]
    return pred, gt, visible, head


def test_mpii_groups_match_hand_computation():
    pred, gt, visible, head = _hand_made()
    r = mpii_pckh(pred, gt, visible, head)
    # group = mean of its joints' PCKh
    assert r["Ankle"] == pytest.approx((200 / 3 + 100 / 3) / 2)  # 50
    assert r["Knee"] == pytest.approx(100.0)
    assert r["Hip"] == pytest.approx((75 + 25) / 2)
    assert r["Head"] == pytest.approx((100 + 50) / 2)  # upper neck + head top
    assert r["Wrist"] == pytest.approx((25 + 75) / 2)
    assert r["Elbow"] == pytest.approx((0 + 100) / 2)
    assert r["Shoulder"] == pytest.approx(100.0)
    # 54 scored joints (14 x 4 - 2 ankles); hits 2+1+4+4+3+1+4+2+1+0+4+4+4+3 = 37
    assert r["Total"] == pytest.approx(100 * 37 / 54)
    per_joint = r["per_joint"]
    assert per_joint[0] == pytest.approx(200 / 3) and per_joint[9] == pytest.approx(50.0)
    assert math.isnan(per_joint[6]) and math.isnan(per_joint[7])


def test_mpii_hrnet_protocol_matches_hand_computation():
    pred, gt, visible, head = _hand_made()
    r = mpii_pckh(pred, gt, visible, head, protocol="hrnet")
    assert r["Head"] == pytest.approx(50.0)  # head top only
    assert r["Hip"] == pytest.approx(50.0)
    assert r["Mean"] == pytest.approx(100 * 37 / 54)  # count-weighted over the 14 joints
    assert "Total" not in r
    # HRNet's Mean@0.1 is pckAll[11] of arange(0, 0.51, 0.01), i.e. threshold 0.11: only the 4 necks
    assert r["Mean@0.1"] == pytest.approx(100 * 4 / 54)


def test_pckh_curve_and_auc():
    gt = np.zeros((2, 16, 2))
    head = np.array([8.0, 16.0])
    pred = gt + np.array([0.25, 0.0]) * head[:, None, None]  # every joint at 0.25 head sizes
    curve = pckh_curve(pred, gt, np.ones((2, 16)), head)
    assert len(curve["thresholds"]) == 51 and curve["thresholds"][-1] == 0.5
    assert curve["Total"][24] == 0.0 and curve["Total"][25] == 100.0
    # area: triangle 0.24..0.25 (0.5 * 0.01 * 100) + rectangle 0.25..0.5 (0.25 * 100), over 0.5
    assert curve["AUC"] == pytest.approx((0.5 + 25.0) / 0.5)
    perfect = pckh_curve(gt, gt, np.ones((2, 16)), head, protocol="hrnet")
    assert perfect["AUC"] == pytest.approx(100.0) and perfect["Mean"][0] == 100.0


def test_nan_predictions_count_as_misses_with_warning():
    pred, gt, visible, head = _hand_made()
    pred[0, 12] = np.nan  # r_shoulder of person 0 was a hit
    with pytest.warns(RuntimeWarning, match="not finite"):
        r = mpii_pckh(pred, gt, visible, head)
    assert r["Shoulder"] == pytest.approx((75 + 100) / 2)
    assert r["Total"] == pytest.approx(100 * 36 / 54)


def test_bad_input_raises_value_error_naming_the_argument():
    pred, gt, visible, head = _hand_made()
    with pytest.raises(
        ValueError, match=r"pred must have the shape of gt \(4, 16, 2\), got \(4, 15, 2\)"
    ):
        mpii_pckh(pred[:, :15], gt, visible, head)
    with pytest.raises(ValueError, match=r"visible must have shape \(4, 16\)"):
        mpii_pckh(pred, gt, visible[:3], head)
    with pytest.raises(ValueError, match=r"head_size must have shape \(4,\)"):
        mpii_pckh(pred, gt, visible, head[:2])
    for bad in (0.0, -3.0, np.nan):
        sizes = head.copy()
        sizes[2] = bad
        with pytest.raises(ValueError, match="head_size must be positive.*record 2"):
            mpii_pckh(pred, gt, visible, sizes)
    with pytest.raises(ValueError, match="protocol"):
        mpii_pckh(pred, gt, visible, head, protocol="coco")
    with pytest.raises(ValueError, match="torso_size must be positive"):
        flic_pck(gt[:, :11], gt[:, :11], visible[:, :11], np.zeros(4))


def test_head_size_from_boxes_is_0_6_diagonal():
    # samples README: 005808361 head box [914,79,1031,237]: 0.6 * hypot(117, 158)
    assert head_size_from_boxes([[914, 79, 1031, 237]])[0] == pytest.approx(
        0.6 * (117**2 + 158**2) ** 0.5
    )


def test_flic_ground_truth_scores_100_and_boundary(flic_valid):
    part, visible = flic_valid
    assert part.shape == (1016, 11, 2)
    torso = flic_torso_size(part)
    result = flic_pck(part, part, visible, torso)
    assert all(result[k] == 100.0 for k in FLIC_KEYS)
    offset = _directions(*part.shape[:2]) * torso[:, None, None]
    assert flic_pck(part + 0.2 * offset, part, visible, torso)["Mean"] == 100.0
    assert flic_pck(part + 0.2 * (1 + 1e-6) * offset, part, visible, torso)["Mean"] == 0.0


def test_flic_torso_and_groups_match_hand_computation():
    gt = np.zeros((2, 11, 2))
    gt[:, 7] = [30.0, 40.0]  # right hip; left shoulder at the origin -> torso 50
    np.testing.assert_allclose(flic_torso_size(gt), [50.0, 50.0])
    pred = gt.copy()
    pred[0, 1] += [0, 10.0]  # left elbow: 10 <= 0.2 * 50 -> hit (on the boundary)
    pred[1, 1] += [0, 11.0]  # miss
    pred[:, 2] += [20.0, 0]  # both left wrists miss
    pred[0, 8] += [0, 30.0]  # one left eye miss
    r = flic_pck(pred, gt, np.ones((2, 11)), flic_torso_size(gt))
    assert r["Elbow"] == pytest.approx((50 + 100) / 2)
    assert r["Wrist"] == pytest.approx((0 + 100) / 2)
    assert r["Head"] == pytest.approx((50 + 100 + 100) / 3)
    assert r["Shoulder"] == 100.0 and r["Hip"] == 100.0
    assert r["Mean"] == pytest.approx(100 * (22 - 4) / 22)
    assert r["per_joint"][2] == 0.0


def test_format_table_has_paper_columns():
    pred, gt, visible, head = _hand_made()
    text = format_table(mpii_pckh(pred, gt, visible, head))
    assert text.split("\n")[0].split() == [
        "Head",
        "Sho",
        "Elb",
        "Wri",
        "Hip",
        "Knee",
        "Ank",
        "Total",
    ]
    assert text.split("\n")[1].split()[0] == "75.0"
