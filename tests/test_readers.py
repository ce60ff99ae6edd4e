"""Annotation readers on the real MPII/FLIC files and on a synthetic MPII release .mat."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.io

from hgkeras.data.readers import (
    detect_layout,
    read_annotations,
)

SAMPLES = "hgkeras/data/samples/mpii/samples.json"


def test_mpii_valid_h5_reads_all_records(real_data):
    records = read_annotations(real_data / "mpii" / "valid.h5")
    assert len(records) == 2958
    first = records[0]
    assert first.image == "005808361.jpg" and first.split == "valid" and first.pose == "mpii"
    # 1-based source -> 0-based: part (804, 711) -> (803, 710); centre x 966 -> 965.
    np.testing.assert_allclose(first.joints[0], [803.0, 710.0])
    np.testing.assert_allclose(first.center, [965.0, 409.7773184], rtol=1e-6)
    assert math.isclose(first.scale, 5.898109866728492, rel_tol=1e-6)
    assert math.isclose(first.normalizer, 117.96219733, rel_tol=1e-6)
    # Missing joints are exactly (0, 0) in the file -> not annotated; annotated joints just outside
    # the image (y <= 0: 45 of them in the validation split) stay annotated, as MPII's toolkit scores them.
    import h5py

    with h5py.File(real_data / "mpii" / "valid.h5") as f:
        part = f["part"][:]
    missing = (part[..., 0] == 0) & (part[..., 1] == 0)
    visible = np.stack([r.visible for r in records])
    np.testing.assert_array_equal(visible, (~missing).astype(np.uint8))
    outside = (~missing) & ((part[..., 0] <= 0) | (part[..., 1] <= 0))
    assert outside.sum() == 45 and visible[outside].all()


def test_samples_json_matches_valid_h5(real_data, repo_root):
    """Raw JSON centre/scale get the Torch adjustment once and agree with the adjusted .h5."""
    h5 = read_annotations(real_data / "mpii" / "valid.h5")[:5]
    for path in (real_data / "mpii" / "samples.json", repo_root / SAMPLES):
        js = read_annotations(path)
        assert len(js) == 5
        for a, b in zip(js, h5, strict=True):
            assert a.image == b.image
            np.testing.assert_allclose(a.center, b.center, atol=1e-3)
            assert math.isclose(a.scale, b.scale, rel_tol=1e-5)
            np.testing.assert_array_equal(a.visible, b.visible)
            # valid.h5 rounds head joints to integers; the JSON keeps the fraction.
            np.testing.assert_allclose(a.joints, b.joints, atol=1.0)
    shipped = read_annotations(repo_root / SAMPLES)
    np.testing.assert_allclose(
        [r.normalizer for r in shipped], [r.normalizer for r in h5], rtol=1e-6
    )


def _mpii_release(tmp_path, train_points=None):
    """A tiny file with the MATLAB struct layout of mpii_human_pose_v1_u12_1.mat."""
    point_dtype = [("x", "O"), ("y", "O"), ("id", "O"), ("is_visible", "O")]
    if train_points is None:
        train_points = [(101.0, 201.0, 0, 1), (111.0, 211.0, 9, 0), (121.0, 221.0, 15, "1")]
    points = np.array(train_points, dtype=point_dtype)
    rect_dtype = [
        ("x1", "O"), ("y1", "O"), ("x2", "O"), ("y2", "O"), ("annopoints", "O"),
        ("scale", "O"), ("objpos", "O"),
    ]  # fmt: skip
    annopoints = np.array([(points,)], dtype=[("point", "O")])
    objpos = np.array([(150.0, 250.0)], dtype=[("x", "O"), ("y", "O")])
    rect_train = np.array([(10.0, 20.0, 40.0, 60.0, annopoints, 2.0, objpos)], dtype=rect_dtype)
    rect_test = np.array(
        [(np.nan, np.nan, np.nan, np.nan, np.array([]), 1.5, objpos)], dtype=rect_dtype
    )
    image_dtype = [("name", "O")]
    anno_dtype = [("image", "O"), ("annorect", "O"), ("frame_sec", "O"), ("vididx", "O")]
    annolist = np.zeros((1, 2), dtype=anno_dtype)
    annolist[0, 0] = (np.array([("a.jpg",)], dtype=image_dtype), rect_train, [], [])
    annolist[0, 1] = (np.array([("b.jpg",)], dtype=image_dtype), rect_test, [], [])
    release = {
        "annolist": annolist,
        "img_train": np.array([[1, 0]]),
        "single_person": np.array([[np.array([1.0])], [np.array([1.0])]], dtype=object),
        "version": "12",
    }
    path = tmp_path / "mpii_human_pose_v1_u12_1.mat"
    scipy.io.savemat(str(path), {"RELEASE": release})
    return path


def test_mpii_release_mat_layout(tmp_path):
    path = _mpii_release(tmp_path)
    assert detect_layout(path) == "mpii_mat"
    records = read_annotations(path)
    assert [r.split for r in records] == ["train", "test"]
    train = records[0]
    assert train.image == "a.jpg" and train.image_id == 0 and train.person_id == 0
    # Raw objpos (150, 250), scale 2 -> centre y + 15 * 2, scale * 1.25, then 1-based -> 0-based.
    np.testing.assert_allclose(train.center, [149.0, 279.0])
    assert train.scale == pytest.approx(2.5)
    np.testing.assert_allclose(train.joints[0], [100.0, 200.0])
    np.testing.assert_allclose(train.joints[15], [120.0, 220.0])
    assert train.visible.tolist() == [1] + [0] * 8 + [1] + [0] * 5 + [1]
    assert train.extra["is_visible"][9] == 0 and train.extra["is_visible"][15] == 1
    assert train.normalizer == pytest.approx(0.6 * 50.0)
    assert records[1].visible.sum() == 0 and math.isnan(records[1].normalizer)
    assert len(read_annotations(path, split="test")) == 1


def test_mpii_release_nan_and_negative_coordinates(tmp_path):
    path = _mpii_release(tmp_path, [(np.nan, 201.0, 0, 1), (-5.0, 30.0, 1, 1), (50.0, 60.0, 2, 1)])
    record = read_annotations(path)[0]
    # NaN -> not annotated; an annotated point left of the image stays annotated (MPII scores it),
    # 1-based -5 -> 0-based -6; the crop/target code zeroes joints that fall outside the crop.
    assert record.visible[:3].tolist() == [0, 1, 1]
    assert np.isfinite(record.joints).all()
    np.testing.assert_allclose(record.joints[1], [-6.0, 29.0])


def test_flic_examples_mat_matches_torch_annot(real_data):
    flic = read_annotations(real_data / "flic" / "examples.mat")
    assert len(flic) == 5003
    assert flic[0].image == "12-oclock-high-special-edition-00006361.jpg"
    assert flic[0].split == "train" and flic[140].split == "test"
    h5 = read_annotations(real_data / "flic" / "valid_personcentric.h5", "flic")
    assert len(h5) == 1016 and all(r.split == "test" for r in h5)
    for r in h5:
        m = flic[r.image_id]
        assert m.image == r.image and m.split == "test"
        np.testing.assert_allclose(m.joints, r.joints, atol=1e-3)
        np.testing.assert_allclose(m.center, r.center, atol=1e-3)
        assert m.scale == pytest.approx(r.scale)
        assert m.normalizer == pytest.approx(r.normalizer, rel=1e-5)


def test_flic_observer_centric(real_data):
    person = read_annotations(real_data / "flic" / "examples.mat", split="test")
    observer = read_annotations(
        real_data / "flic" / "examples.mat", split="test", observer_centric=True
    )
    reference = read_annotations(real_data / "flic" / "valid_observercentric.h5", "flic")
    by_id = {r.image_id: r for r in observer}
    for r in reference:
        np.testing.assert_allclose(by_id[r.image_id].joints, r.joints, atol=1e-3)
    p395 = next(r for r in person if r.image_id == 395)
    o395 = by_id[395]
    assert o395.extra["observer_swapped"]
    assert not np.allclose(p395.joints, o395.joints)
    np.testing.assert_allclose(o395.joints[0], p395.joints[3])


def test_wrong_layouts_name_file_and_field(tmp_path, real_data):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps([{"image": "x.jpg", "centre": [1, 2], "scale": 1.0}]))
    with pytest.raises(ValueError, match=r"bad\.json.*'center'"):
        read_annotations(bad_json)
    bad_mat = tmp_path / "bad.mat"
    scipy.io.savemat(str(bad_mat), {"something": np.zeros(3)})
    with pytest.raises(ValueError, match=r"bad\.mat.*'RELEASE'"):
        read_annotations(bad_mat)
    import h5py

    bad_h5 = tmp_path / "bad.h5"
    with h5py.File(bad_h5, "w") as f:
        f["imgname"] = np.array([b"a.jpg"])
        f["part"] = np.zeros((1, 16, 2))
    with pytest.raises(ValueError, match=r"bad\.h5.*'center'"):
        read_annotations(bad_h5)
    with pytest.raises(ValueError, match=r"has 16 joints; expected 11 \(flic\)"):
        read_annotations(real_data / "mpii" / "valid.h5", pose="flic")
    with pytest.raises(FileNotFoundError):
        read_annotations(tmp_path / "nope.json")


def test_json_record_with_nan_scale_is_skipped(tmp_path):
    path = tmp_path / "valid.json"
    good = {"image": "a.jpg", "center": [100, 100], "scale": 1.0, "joints": [[-1, -1]] * 16,
            "joints_vis": [0] * 16}  # fmt: skip
    bad = dict(good, scale=float("nan"))
    path.write_text(json.dumps([good, bad]))
    skipped: list[str] = []
    records = read_annotations(path, skipped=skipped)
    assert len(records) == 1 and records[0].visible.sum() == 0
    assert len(skipped) == 1 and "scale" in skipped[0]


def test_release_mat_layout_errors_name_record_and_field(tmp_path):
    path = _mpii_release(tmp_path, [(101.0, 201.0, 0, 1), ("abc", 211.0, 9, 0)])
    with pytest.raises(
        ValueError,
        match=r"mpii_human_pose_v1_u12_1\.mat: a\.jpg \(annolist 0, person 0\) annopoints\.point\[1\] "
        r"field 'x': expected numbers, got 'abc'",
    ):
        read_annotations(path)
    path = _mpii_release(tmp_path, [(101.0, 201.0, 16, 1)])
    with pytest.raises(ValueError, match=r"point\[0\] field 'id': joint id 16.0 outside 0\.\.15"):
        read_annotations(path)


def test_torch_h5_layout_errors_name_the_dataset(tmp_path):
    import h5py

    path = tmp_path / "valid.h5"
    with h5py.File(path, "w") as f:
        f["imgname"] = np.array([b"a.jpg", b"b.jpg"])
        f["part"] = np.zeros((2, 15, 2))
        f["center"] = np.zeros((2, 2))
        f["scale"] = np.ones(2)
    with pytest.raises(ValueError, match=r"valid\.h5: dataset 'part' has 15 joints; expected 16"):
        read_annotations(path)
    with h5py.File(path, "r+") as f:
        del f["part"]
        f["part"] = np.zeros((2, 16, 2))
        f["normalize"] = np.array([b"x", b"y"])
    with pytest.raises(
        ValueError, match=r"valid\.h5: dataset 'normalize' field 'normalize': expected"
    ):
        read_annotations(path)


def test_flic_mat_layout_errors_name_record_and_field(tmp_path):
    example = {"coords": np.zeros((2, 29)), "filepath": "a.jpg", "torsobox": ["a", "b", "c", "d"],
               "imgdims": [480, 720, 3], "istrain": 1, "istest": 0}  # fmt: skip
    path = tmp_path / "examples.mat"
    scipy.io.savemat(str(path), {"examples": np.array([example, example])})
    with pytest.raises(
        ValueError, match=r"examples\.mat: examples\[0\] field 'torsobox': expected"
    ):
        read_annotations(path)
