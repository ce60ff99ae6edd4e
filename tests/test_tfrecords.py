"""TFRecord writing (manifest, atomic shards, bad images) and the evaluation pipeline on real images."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from hgkeras import MPII
from hgkeras.crop import crop_numpy
from hgkeras.data import pose_dataset, read_annotations
from hgkeras.data.pipeline import SOURCE_MARGIN, read_pose
from hgkeras.data.tfrecords import read_manifest, write_tfrecords
from hgkeras.geometry import apply_matrix, crop_matrix

SAMPLES = "hgkeras/data/samples/mpii"


@pytest.fixture(scope="module")
def mpii_shards(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("mpii_tfr")
    records = read_annotations(repo_root / SAMPLES / "samples.json")
    write_tfrecords(records, repo_root / SAMPLES / "images", out, shards=2, progress=False)
    return out, records


def test_manifest_and_shards(mpii_shards):
    out, records = mpii_shards
    manifest = read_manifest(out)
    assert manifest["schema_version"] == 1 and manifest["num_joints"] == 16
    assert manifest["pose"] == MPII.to_config() and read_pose(out, "valid") is MPII
    assert manifest["splits"]["valid"]["records"] == 5
    assert [s["records"] for s in manifest["splits"]["valid"]["shards"]] == [2, 3]
    assert manifest["skipped_images"] == []
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize("use_opencv", [True, False])
def test_eval_dataset_order_metadata_and_crop(mpii_shards, repo_root, use_opencv):
    out, records = mpii_shards
    batches = list(pose_dataset(out, 2, training=False, use_opencv=use_opencv))
    assert [int(b["image"].shape[0]) for b in batches] == [2, 2, 1]
    batch = {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}
    assert batch["image"].shape == (5, 256, 256, 3) and batch["image"].dtype == np.float32
    for i, record in enumerate(records):
        np.testing.assert_allclose(batch["center"][i], record.center, rtol=1e-6)
        np.testing.assert_allclose(batch["joints"][i], record.joints)
        assert batch["person_id"][i] == record.person_id
        assert batch["image_id"][i] == record.image_id
        assert batch["normalizer"][i] == pytest.approx(record.normalizer, rel=1e-6)
        # The one crop policy: the same pixels as the predictor's crop of the image file.
        image = cv2.imread(str(repo_root / SAMPLES / "images" / record.image))[:, :, ::-1]
        ref = crop_numpy(image, record.center, record.scale, 256) / 255.0
        assert np.abs(batch["image"][i] - ref).mean() < 0.5 / 255
        matrix = crop_matrix(record.center, record.scale, 256)
        # A misplaced crop (2 px shift) would differ much more than the resampling does.
        shifted = cv2.warpAffine(
            image, matrix + [[0, 0, 2], [0, 0, 0]], (256, 256), flags=cv2.INTER_AREA
        )
        assert np.abs(batch["image"][i] - ref).mean() < np.abs(shifted / 255.0 - ref).mean()


def test_training_elements(mpii_shards):
    out, records = mpii_shards
    batch = next(iter(pose_dataset(out, 4, training=True, seed=0, source_size=128)))
    assert batch["image"].shape == (4, 128, 128, 3) and batch["image"].dtype.name == "uint8"
    assert batch["joints"].shape == (4, 16, 2) and batch["visible"].shape == (4, 16)
    # Every element maps its joints by the source-crop matrix of one of the records.
    for joints in batch["joints"].numpy():
        expected = [
            apply_matrix(crop_matrix(r.center, r.scale * SOURCE_MARGIN, 128), r.joints)
            for r in records
        ]
        assert min(np.abs(joints - e).max() for e in expected) < 1e-2


def test_bad_images_are_skipped_and_listed(tmp_path, repo_root):
    images = tmp_path / "images"
    images.mkdir()
    records = read_annotations(repo_root / SAMPLES / "samples.json")
    names = [r.image for r in records]
    for name in names[:3]:
        shutil.copy(repo_root / SAMPLES / "images" / name, images / name)
    data = (repo_root / SAMPLES / "images" / names[3]).read_bytes()
    (images / names[3]).write_bytes(data[: len(data) // 2])  # truncated JPEG
    # names[4] is missing.
    out = tmp_path / "out"
    manifest = write_tfrecords(records, images, out, shards=1, progress=False)
    assert manifest["splits"]["valid"]["records"] == 3
    reasons = {s["image"]: s["reason"] for s in manifest["skipped_images"]}
    assert "truncated JPEG" in reasons[names[3]]
    assert reasons[names[4]] == "missing image file"
    assert len(list(pose_dataset(out, 8, training=False).unbatch())) == 3
    # Re-running with another shard count replaces the shards and leaves no stale ones.
    (out / "valid-00000-of-00001.tfrecord.tmp").write_bytes(b"half a shard")
    shutil.copy(repo_root / SAMPLES / "images" / names[4], images / names[4])
    manifest = write_tfrecords(records, images, out, shards=2, progress=False)
    files = sorted(p.name for p in out.glob("*.tfrecord"))
    assert files == ["valid-00000-of-00002.tfrecord", "valid-00001-of-00002.tfrecord"]
    assert json.loads((out / "manifest.json").read_text())["splits"]["valid"]["records"] == 4
    assert not list(out.glob("*.tmp"))
    # Half-written shards (and the manifest) are never read, even through a broad glob.
    (out / "valid-00000-of-00003.tfrecord.tmp").write_bytes(b"half a shard")
    assert len(list(pose_dataset(str(out / "*"), 8, training=False).unbatch())) == 4


def test_missing_shards_and_split_errors(tmp_path, mpii_shards):
    with pytest.raises(FileNotFoundError, match="no TFRecord shards"):
        pose_dataset(str(tmp_path / "nothing-*.tfrecord"), 2)
    out, _ = mpii_shards
    with pytest.raises(ValueError, match="no split 'train'"):
        pose_dataset(out, 2, split="train")


def test_records_with_nan_values(tmp_path, repo_root):
    """NaN joints become not visible; a NaN centre or negative scale skips the record with a reason."""
    records = read_annotations(repo_root / SAMPLES / "samples.json")[:3]
    records[0].joints[2] = [np.nan, 5.0]
    records[1].center[:] = [np.nan, 1.0]
    records[2].scale = -1.0
    out = tmp_path / "out"
    manifest = write_tfrecords(records, repo_root / SAMPLES / "images", out, progress=False)
    reasons = [s["reason"] for s in manifest["skipped_images"]]
    assert len(reasons) == 2 and "centre" in reasons[0] and "scale" in reasons[1]
    batch = next(iter(pose_dataset(out, 4, training=False)))
    assert batch["visible"].shape == (1, 16) and float(batch["visible"][0, 2]) == 0.0
    assert np.isfinite(batch["joints"].numpy()).all()
