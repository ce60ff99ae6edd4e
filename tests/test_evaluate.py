"""``hgkeras evaluate`` on prediction files, on annotation files with images, and on TFRecords."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import scipy.io

from hgkeras.cli import main
from hgkeras.evaluation.evaluate import read_predictions, write_mpii_submission, write_predictions


@pytest.fixture(scope="module")
def valid_h5(real_data):
    path = real_data / "mpii" / "valid.h5"
    with h5py.File(path, "r") as f:
        return path, f["part"][:], f["normalize"][:], f["index"][:], f["person"][:]


def _torch_preds(path, preds_1based):
    with h5py.File(path, "w") as f:
        f.create_dataset("preds", data=preds_1based)


def test_ground_truth_predictions_score_100(valid_h5, tmp_path, capsys):
    data, part, *_ = valid_h5
    preds = tmp_path / "preds.h5"
    _torch_preds(preds, part)  # the Torch layout: (N, 16, 2), 1-based like the annotations
    out = tmp_path / "results.json"
    assert (
        main(["evaluate", "--data", str(data), "--predictions", str(preds), "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "Head    Sho    Elb    Wri    Hip   Knee    Ank  Total" in printed
    assert " 100.0" in printed
    result = json.loads(out.read_text())
    assert result["results"]["Total"] == 100.0 and result["results"]["AUC"] == 100.0
    assert result["num_people"] == 2958 and result["per_joint"][6] is None
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temp file left


def test_head_top_moved_one_head_size_scores_by_protocol(valid_h5, tmp_path):
    data, part, normalize, *_ = valid_h5
    preds = part.copy()
    preds[:, 9, 0] += normalize  # head top moved by 1.0 head size: a miss at 0.5
    path = tmp_path / "preds.h5"
    _torch_preds(path, preds)
    # the reader scores every joint but the Torch files' missing marker (0, 0)
    annotated = ~(part == 0).all(-1)
    n_scored = int(annotated[:, [j for j in range(16) if j not in (6, 7)]].sum())
    n_head_top = int(annotated[:, 9].sum())
    for protocol, head, key in (("official", 50.0, "Total"), ("hrnet", 0.0, "Mean")):
        out = tmp_path / f"{protocol}.json"
        argv = ["evaluate", "--data", str(data), "--predictions", str(path), "--protocol", protocol]
        assert main([*argv, "--out", str(out)]) == 0
        result = json.loads(out.read_text())["results"]
        assert result["Head"] == pytest.approx(head)
        assert result[key] == pytest.approx(100.0 * (n_scored - n_head_top) / n_scored)
        assert result["Shoulder"] == 100.0


def test_mat_predictions_hrnet_layout(valid_h5, tmp_path):
    data, part, *_ = valid_h5
    path = tmp_path / "pred.mat"
    scipy.io.savemat(path, {"preds": part})  # HRNet writes preds (N, 16, 2), 1-based
    np.testing.assert_allclose(read_predictions(path), part - 1)
    out = tmp_path / "r.json"
    assert (
        main(["evaluate", "--data", str(data), "--predictions", str(path), "--out", str(out)]) == 0
    )
    assert json.loads(out.read_text())["results"]["Total"] == 100.0


def test_bad_inputs_exit_2_with_one_line_error(valid_h5, tmp_path, capsys):
    data, part, *_ = valid_h5
    short = tmp_path / "short.h5"
    _torch_preds(short, part[:-1])
    assert main(["evaluate", "--data", str(data), "--predictions", str(short)]) == 2
    assert "predictions have 2957 people" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(data), "--predictions", str(tmp_path / "nope.h5")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(data)]) == 2
    assert "exactly one of --model or --predictions" in capsys.readouterr().err


def test_write_predictions_round_trip(tmp_path):
    preds = np.random.default_rng(0).uniform(0, 500, (3, 16, 2))
    for name in ("p.h5", "p.mat"):
        write_predictions(tmp_path / name, preds)
        np.testing.assert_allclose(read_predictions(tmp_path / name), preds)
    with h5py.File(tmp_path / "p.h5", "r") as f:
        np.testing.assert_allclose(f["preds"][:], preds + 1)  # stored 1-based


def test_mpii_submission_layout(tmp_path):
    preds = np.arange(3 * 16 * 2, dtype=np.float64).reshape(3, 16, 2)
    # people: image 17 rect 0, image 17 rect 2, image 5 rect 1; test images listed as [5, 9, 17]
    path = tmp_path / "pred_keypoints_mpii.mat"
    write_mpii_submission(path, preds, [17, 17, 5], [0, 2, 1], test_images=[5, 9, 17],
                          image_names=["a.jpg", "b.jpg", "c.jpg"])  # fmt: skip
    pred = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=False)["pred"]
    assert pred.shape == (1, 3)
    assert pred[0, 2].image[0, 0].name[0] == "c.jpg"
    rects = pred[0, 2].annorect
    assert rects.shape == (1, 3) and rects[0, 1].annopoints.size == 0
    points = rects[0, 2].annopoints[0, 0].point
    assert points.shape == (1, 16)
    # person 1, joint 4: 0-based (x, y) = (72 + 8, 72 + 9) -> 1-based +1; id is the 0-based joint id
    assert points[0, 4].x[0, 0] == preds[1, 4, 0] + 1 and points[0, 4].y[0, 0] == preds[1, 4, 1] + 1
    assert points[0, 4].id[0, 0] == 4
    assert pred[0, 1].annorect.size == 0  # test image without predictions
    assert pred[0, 0].annorect[0, 1].annopoints[0, 0].point[0, 15].x[0, 0] == preds[2, 15, 0] + 1


def _tiny_model(path):
    from hgkeras import StackedHourglass

    StackedHourglass(num_stacks=1, num_features=16, image_shape=(64, 64, 3)).save(path)


def test_model_on_annotation_file_with_images(real_data, repo_root, tmp_path, capsys, monkeypatch):
    import hgkeras.codec
    import hgkeras.evaluation.evaluate
    import hgkeras.models.loading

    model = tmp_path / "m.keras"
    _tiny_model(model)
    samples = repo_root / "hgkeras" / "data" / "samples" / "mpii" / "samples.json"
    out = tmp_path / "r.json"
    calls = {"load_model": 0, "pose_of": 0, "codec_of": 0}

    def counting(name, original):
        def counted(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        return counted

    for module, name in (
        (hgkeras.models.loading, "load_model"),
        (hgkeras.evaluation.evaluate, "pose_of"),
        (hgkeras.codec, "codec_of"),
    ):
        monkeypatch.setattr(module, name, counting(name, getattr(module, name)))
    argv = ["evaluate", "--model", str(model), "--data", str(samples),
            "--images", str(real_data / "mpii" / "images"), "--out", str(out),
            "--write-predictions", str(tmp_path / "p.h5"), "--protocol", "hrnet",
            "--decoder", "dark"]  # fmt: skip
    assert main(argv) == 0
    assert calls == {"load_model": 1, "pose_of": 1, "codec_of": 1}  # the model once, looked up once
    result = json.loads(out.read_text())
    assert result["num_people"] == 5 and 0.0 <= result["results"]["Mean"] <= 100.0
    assert result["codec"] == {"decoder": "dark", "sigma": 1.0}
    assert read_predictions(tmp_path / "p.h5").shape == (5, 16, 2)
    assert "Mean" in capsys.readouterr().out


def test_model_on_tfrecords(real_data, repo_root, tmp_path):
    from hgkeras.data import read_annotations
    from hgkeras.data.tfrecords import write_tfrecords

    records = read_annotations(
        repo_root / "hgkeras" / "data" / "samples" / "mpii" / "samples.json"
    )[:2]
    for r in records:
        r.split = "valid"
    write_tfrecords(records, real_data / "mpii" / "images", tmp_path / "tfr", progress=False)
    model = tmp_path / "m.keras"
    _tiny_model(model)
    out = tmp_path / "r.json"
    argv = ["evaluate", "--model", str(model), "--data", str(tmp_path / "tfr"), "--no-flip",
            "--out", str(out), "--batch-size", "2"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["num_people"] == 2 and 0.0 <= result["results"]["Total"] <= 100.0


def test_flic_predictions_score_pck_against_torso(real_data, tmp_path, capsys):
    data = real_data / "flic" / "valid_personcentric.h5"
    with h5py.File(data, "r") as f:
        part = f["part"][:]
    preds = part.copy()
    torso = np.linalg.norm(part[:, 0] - part[:, 7], axis=-1)  # left shoulder - right hip
    preds[:, 2, 1] += 0.3 * torso  # every left wrist misses at 0.2
    path = tmp_path / "flic.h5"
    _torch_preds(path, preds)
    out = tmp_path / "r.json"
    assert (
        main(["evaluate", "--data", str(data), "--predictions", str(path), "--out", str(out),
              "--pose", "flic"]) == 0
    )  # fmt: skip
    result = json.loads(out.read_text())["results"]
    assert result["Wrist"] == pytest.approx(50.0) and result["Elbow"] == 100.0
    assert result["Mean"] == pytest.approx(100.0 * 10 / 11)
    assert "FLIC PCK@0.2" in capsys.readouterr().out
