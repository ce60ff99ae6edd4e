"""``hgkeras prepare`` on the real FLIC and MPII files, and the MPII validation split assignment."""

from __future__ import annotations

import json
import runpy
import sys

import numpy as np
import pytest

from hgkeras.cli import main
from hgkeras.data import pose_dataset, read_annotations
from hgkeras.data.prepare import assign_validation_split
from hgkeras.data.records import PoseRecord
from hgkeras.vis.draw import SIDE_COLORS


def test_prepare_flic_real_images(tmp_path, real_data, capsys):
    out = tmp_path / "flic"
    code = main([
        "prepare", "flic", "--annotations", str(real_data / "flic" / "examples.mat"),
        "--images", str(real_data / "flic" / "images"), "--out", str(out), "--no-progress",
        "--observer-centric",
    ])  # fmt: skip
    assert code == 0
    assert "test: 8 records in 1 shard" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    shard = out / "train-00000-of-00001.tfrecord"
    assert manifest["complete"] is True
    assert manifest["splits"]["train"] == {
        "records": 3,
        "shards": [{"file": shard.name, "records": 3, "bytes": shard.stat().st_size}],
    }
    assert manifest["splits"]["test"]["records"] == 8
    assert len(manifest["skipped_images"]) == 5003 - 11
    assert manifest["observer_centric"] is True
    batch = next(iter(pose_dataset(out, 8, training=False, split="test")))
    assert batch["image"].shape == (8, 256, 256, 3)
    ids = batch["image_id"].numpy().tolist()
    assert ids == [140, 141, 142, 143, 144, 145, 146, 395]
    reference = {
        r.image_id: r
        for r in read_annotations(real_data / "flic" / "valid_observercentric.h5", "flic")
    }
    for i, image_id in enumerate(ids):
        np.testing.assert_allclose(batch["joints"][i], reference[image_id].joints, atol=1e-3)
        assert float(batch["normalizer"][i]) == pytest.approx(reference[image_id].normalizer, 1e-5)
        # docs/method.md's torso: left shoulder (0) to right hip (7)
        torso = np.linalg.norm(reference[image_id].joints[0] - reference[image_id].joints[7])
        assert float(batch["normalizer"][i]) == pytest.approx(torso, 1e-5)


def test_prepare_script_and_bad_annotations(tmp_path, repo_root, monkeypatch, capsys):
    out = tmp_path / "mpii"
    samples = repo_root / "hgkeras" / "data" / "samples" / "mpii"
    argv = ["prepare_mpii.py", "--annotations", str(samples / "samples.json"),
            "--images", str(samples / "images"), "--out", str(out), "--shards", "2", "--no-progress"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(repo_root / "datasets" / "prepare_mpii.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert len(list(out.glob("valid-*-of-00002.tfrecord"))) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    code = main(["prepare", "mpii", "--annotations", str(bad), "--images", str(samples / "images"),
                 "--out", str(tmp_path / "x")])  # fmt: skip
    assert code == 2
    assert "bad.json" in capsys.readouterr().err


def test_assign_validation_split():
    def rec(image, center, split="train"):
        return PoseRecord(image, np.zeros((16, 2)), np.zeros(16), center, 1.0, split=split)

    records = [rec("a.jpg", [10, 10]), rec("a.jpg", [100, 10]), rec("b.jpg", [10, 10])]
    valid = [rec("a.jpg", [11, 10.5], "valid")]
    assert assign_validation_split(records, valid) == 1
    assert [r.split for r in records] == ["valid", "train", "train"]


def test_preview_grid(tmp_path, repo_root):
    import cv2

    samples = repo_root / "hgkeras" / "data" / "samples" / "mpii"
    out = tmp_path / "tfr"
    assert main(["prepare", "mpii", "--annotations", str(samples / "samples.json"), "--images",
                 str(samples / "images"), "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    png = tmp_path / "grid.png"
    assert main(["preview", "--data", str(out), "--out", str(png), "--count", "5",
                 "--columns", "3"]) == 0  # fmt: skip
    grid = cv2.imread(str(png))
    assert grid.shape == (512, 768, 3)
    # Five tiles with image content, the sixth empty.
    assert grid[:256, :256].mean() > 10 and grid[256:, 512:].max() == 0
    # Side colours of hgkeras.vis.draw (left blue, right orange, BGR) appear on the tiles.
    for b, g, r in SIDE_COLORS["left"], SIDE_COLORS["right"]:
        drawn = np.abs(grid.astype(int) - (b, g, r)).max(axis=2) < 40
        assert drawn.sum() > 50


def test_preview_without_data_uses_the_shipped_samples(tmp_path):
    """The README's `hgkeras preview --split train` works out of the box."""
    import cv2

    png = tmp_path / "grid.png"
    assert main(["preview", "--split", "train", "--out", str(png), "--count", "2",
                 "--columns", "2"]) == 0  # fmt: skip
    assert cv2.imread(str(png)).shape == (256, 512, 3)
