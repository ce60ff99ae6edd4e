"""The atomic-write helper: complete files or the old ones, never partial; leftovers are found."""

from __future__ import annotations

import json

import pytest

from hgkeras import io


def test_atomic_write_replaces_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "manifest.json"
    io.atomic_write_json(target, {"a": 1})
    io.atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["manifest.json"]


def test_failed_write_keeps_old_file_and_removes_temporary(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as temp:
            assert temp.endswith(".keras") and io.is_temporary(temp)
            with open(temp, "w") as handle:
                handle.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_atomic_folder_replaces_existing_folder(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "old.txt").write_text("x")
    with io.atomic_path(target) as temp:
        import os

        os.makedirs(temp, exist_ok=True)
        with open(os.path.join(temp, "new.txt"), "w") as handle:
            handle.write("y")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_remove_temporaries_lists_leftovers_only(tmp_path):
    (tmp_path / "keep.json").write_text("{}")
    leftover = io.temporary_name(tmp_path / "shard-00000-of-00002.tfrecord")
    with open(leftover, "w") as handle:
        handle.write("partial")
    assert io.remove_temporaries(tmp_path) == [leftover.rsplit("/", 1)[1]]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]
