"""Fault injection on the data path: killed prepare runs, damaged shards, odd JPEGs, bad layouts.

Each test reproduces a failure of #15 and checks that readers refuse (or accept) correctly and that
errors name the file and what is wrong.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hgkeras import io
from hgkeras.cli import main
from hgkeras.data import pose_dataset, read_annotations
from hgkeras.data.images import check_encoded_image
from hgkeras.data.pipeline import resolve_shards
from hgkeras.data.tfrecords import IncompleteDataError, write_tfrecords

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "hgkeras" / "data" / "samples" / "mpii"

# Runs write_tfrecords on the first KEEP sample records in SHARDS shards (one writer) and SIGKILLs
# itself at POINT: "readN" = on reading the N-th image, "manifest" = before the final manifest.
_KILLED_PREPARE = """
import os, signal, sys
from pathlib import Path
from hgkeras import io
from hgkeras.data.readers import read_annotations
from hgkeras.data.tfrecords import write_tfrecords

samples, out, point, keep, shards = sys.argv[1:]
records = read_annotations(Path(samples) / "samples.json")[: int(keep)]
reads = 0

def reader(path):
    global reads
    reads += 1
    if point == f"read{reads}":
        os.kill(os.getpid(), signal.SIGKILL)
    return path.read_bytes()

original = io.atomic_write_json

def write_json(path, data):
    if point == "manifest" and data.get("complete"):
        os.kill(os.getpid(), signal.SIGKILL)
    original(path, data)

io.atomic_write_json = write_json
write_tfrecords(records, Path(samples) / "images", out, shards=int(shards), workers=1,
                progress=False, image_reader=reader)
"""


def _killed_prepare(out: Path, point: str, keep: int = 5, shards: int = 5) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_PREPARE), str(SAMPLES), str(out), point,
         str(keep), str(shards)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


def _prepare(out: Path, keep: int = 5, shards: int = 5, split: str = "valid") -> dict:
    records = read_annotations(SAMPLES / "samples.json")[:keep]
    for record in records:
        record.split = split
    return write_tfrecords(records, SAMPLES / "images", out, shards=shards, progress=False)


def _count(out, **kwargs) -> int:
    return sum(int(b["image"].shape[0]) for b in pose_dataset(out, 8, training=False, **kwargs))


@pytest.mark.parametrize("point", ["read1", "read3", "manifest"])
def test_killed_prepare_is_refused_then_rerun_completes(tmp_path, point):
    out = tmp_path / "tfr"
    _killed_prepare(out, point)
    shards = sorted(
        n for n in os.listdir(out) if n.endswith(".tfrecord") and not io.is_temporary(n)
    )
    assert len(shards) == {"read1": 0, "read3": 2, "manifest": 5}[point]
    if point != "manifest":
        assert [n for n in os.listdir(out) if io.is_temporary(n)]  # the shard being written
    for pattern in (out, str(out / "*.tfrecord"), [str(out / s) for s in shards] or [str(out)]):
        with pytest.raises((IncompleteDataError, FileNotFoundError)) as info:
            pose_dataset(pattern, 2, training=False)
        if shards or pattern == out:
            assert "did not finish" in str(info.value)
    png = tmp_path / "p.png"
    assert main(["preview", "--data", str(out), "--out", str(png), "--count", "2"]) == 2
    # Running again cleans the temporaries of the killed run and gives the whole split.
    _prepare(out)
    assert _count(out) == 5
    assert not [n for n in os.listdir(out) if io.is_temporary(n)]


def test_killed_rerun_with_changed_annotations_is_refused(tmp_path, capsys):
    from hgkeras import StackedHourglass

    out = tmp_path / "tfr"
    _prepare(out)  # 5 records in 5 shards
    _killed_prepare(out, "read2", keep=4, shards=2)  # the changed run dies in its first shard
    with pytest.raises(IncompleteDataError, match="did not finish"):
        pose_dataset(out, 2, training=False)
    model = tmp_path / "m.keras"
    StackedHourglass(num_stacks=1, num_features=16, image_shape=(64, 64, 3)).save(model)
    code = main(["evaluate", "--model", str(model), "--data", str(out), "--no-flip",
                 "--out", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 2 and "did not finish" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
    code = main(["train", "--dataset", "mpii", "--data-dir", str(out), "--out",
                 str(tmp_path / "run"), "--stacks", "1", "--features", "16", "--epochs", "1"])  # fmt: skip
    assert code == 2 and "did not finish" in capsys.readouterr().err
    assert not list(out.glob("*-of-00005.tfrecord"))  # the old run's shards are gone
    _prepare(out, keep=4, shards=2)
    assert sorted(p.name for p in out.glob("*.tfrecord")) == [
        "valid-00000-of-00002.tfrecord",
        "valid-00001-of-00002.tfrecord",
    ]
    assert _count(out) == 4


def test_partial_output_without_manifest_names_missing_shards(tmp_path):
    """What a prepare killed before this release left: some shards, no manifest."""
    out = tmp_path / "tfr"
    _prepare(out)
    (out / "manifest.json").unlink()
    for index in (3, 4):
        (out / f"valid-0000{index}-of-00005.tfrecord").unlink()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        pose_dataset(out, 2, training=False)
    with pytest.raises(FileNotFoundError, match=r"2 of the 5 shards.*valid-00003-of-00005"):
        pose_dataset(str(out / "*.tfrecord"), 2, training=False)


def test_cut_or_foreign_shard_is_refused(tmp_path):
    out = tmp_path / "tfr"
    _prepare(out, shards=2)
    shard = out / "valid-00001-of-00002.tfrecord"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"valid-00001-of-00002\.tfrecord: \d+ bytes, but"):
        pose_dataset(out, 2, training=False)
    shard.write_bytes(data)
    (out / "train-00000-of-00001.tfrecord").write_bytes(data)
    with pytest.raises(ValueError, match="not a shard of"):
        resolve_shards(str(out / "*.tfrecord"))
    assert resolve_shards(out) == [str(out / f"valid-0000{i}-of-00002.tfrecord") for i in (0, 1)]


def _flip_byte_in_record(path: Path, record: int) -> int:
    """Flip one byte inside record ``record`` of a TFRecord file; return the record's offset."""
    data = bytearray(path.read_bytes())
    offset = 0
    for _ in range(record):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        offset += 16 + length
    data[offset + 12 + 1000] ^= 0xFF
    path.write_bytes(bytes(data))
    return offset


def test_corrupted_shard_error_names_shard_and_record(tmp_path, capsys, caplog):
    out = tmp_path / "tfr"
    _prepare(out, shards=2)  # 2 + 3 records
    shard = out / "valid-00001-of-00002.tfrecord"
    offset = _flip_byte_in_record(shard, 1)
    with pytest.raises(
        ValueError, match=rf"{shard.name}: record 1 \(starting at byte offset {offset}\)"
    ):
        pose_dataset(out, 2, training=False)
    assert main(["preview", "--data", str(out), "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert shard.name in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with caplog.at_level(logging.WARNING):
        assert _count(out, skip_corrupt=True) == 2
    assert shard.name in caplog.text
    # Training on it (once an abort with exit 134) stops at once with the same one line.
    train = tmp_path / "train"
    _prepare(train, shards=2, split="train")
    _flip_byte_in_record(train / "train-00001-of-00002.tfrecord", 2)
    code = main(["train", "--dataset", "mpii", "--data-dir", str(train), "--out",
                 str(tmp_path / "run"), "--stacks", "1", "--features", "16", "--epochs", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "train-00001-of-00002.tfrecord: record 2" in err, err


def test_motion_photo_jpeg_kept_truncated_jpeg_skipped(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(SAMPLES / "images", images)
    records = read_annotations(SAMPLES / "samples.json")
    motion, truncated = images / records[0].image, images / records[1].image
    clean = motion.read_bytes()
    trailer = b"MotionPhoto_Data" + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
    motion.write_bytes(clean + trailer)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    assert check_encoded_image(clean + trailer) is None
    assert "truncated JPEG" in check_encoded_image(truncated.read_bytes())
    manifest = write_tfrecords(records, images, tmp_path / "tfr", shards=1, progress=False)
    assert manifest["splits"]["valid"]["records"] == 4
    assert [(s["image"], s["reason"][:30]) for s in manifest["skipped_images"]] == [
        (records[1].image, "unreadable image: truncated JP")
    ]
    batch = next(iter(pose_dataset(tmp_path / "tfr", 1, training=False)))
    reference = _prepare(tmp_path / "clean", keep=1, shards=1)
    assert reference["splits"]["valid"]["records"] == 1
    expected = next(iter(pose_dataset(tmp_path / "clean", 1, training=False)))
    np.testing.assert_array_equal(batch["image"].numpy(), expected["image"].numpy())


def test_prepare_without_usable_image_fails(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    args = ["prepare", "mpii", "--annotations", str(SAMPLES / "samples.json"), "--images",
            str(images), "--out", str(tmp_path / "tfr"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    assert "none of the 5 images" in capsys.readouterr().err
    for path in (SAMPLES / "images").iterdir():
        (images / path.name).write_bytes(path.read_bytes()[:5000])  # every image truncated
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no usable record" in err and "truncated JPEG" in err
    with pytest.raises(IncompleteDataError):
        pose_dataset(tmp_path / "tfr", 2, training=False)


def _json_records(tmp_path, **change):
    records = json.loads((SAMPLES / "samples.json").read_text())
    index, field, value = change["index"], change["field"], change["value"]
    records[index][field] = value
    path = tmp_path / "people.json"
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("center", [966.0, "abc"], r"record 2 field 'center': expected numbers, got \[966.0, 'abc'\]"),
        ("scale", "big", r"record 2 field 'scale': expected numbers, got 'big'"),
        ("head_box", [1, 2, 3], r"record 2 field 'head_box': expected shape \(4\), got \(3,\)"),
        ("joints", [[1.0, 2.0]] * 15, r"record 2 field 'joints': 15 joints; expected 16 \(mpii\)"),
        ("joints", [[1.0, 2.0, 3.0]] * 16, r"record 2 field 'joints': expected shape \(N, 2\)"),
        ("joints_vis", [1] * 15, r"record 2 field 'joints_vis': expected shape \(16\)"),
        ("split", "training", r"record 2 field 'split': 'training' is not one of"),
    ],
)  # fmt: skip
def test_json_layout_errors_name_file_record_and_field(tmp_path, capsys, field, value, message):
    path = _json_records(tmp_path, index=2, field=field, value=value)
    with pytest.raises(ValueError, match=r"people\.json: " + message):
        read_annotations(path, "mpii")
    code = main(["prepare", "mpii", "--annotations", str(path), "--images",
                 str(SAMPLES / "images"), "--out", str(tmp_path / "tfr")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "people.json: record 2" in err and "Traceback" not in err


def test_check_encoded_image_formats():
    import cv2

    image = cv2.imread(str(next((SAMPLES / "images").iterdir())))
    for ext, params in ((".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
                        (".jpg", [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]), (".png", [])):  # fmt: skip
        data = cv2.imencode(ext, image, params)[1].tobytes()
        assert check_encoded_image(data) is None and check_encoded_image(data + b"\0" * 99) is None
        assert "truncated" in check_encoded_image(data[: len(data) - 20])
    assert check_encoded_image(b"") == "empty file"
    assert check_encoded_image(b"GIF89a....") == "not a JPEG or PNG file"
