"""``hgkeras predict`` on images, folders and videos: JSON content, overlays, montages, errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from hgkeras import MPII, StackedHourglass
from hgkeras.cli import main


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    StackedHourglass(num_stacks=1, num_features=16, depth=2, image_shape=(64, 64, 3)).save(path)
    return path


def _no_partial_files(folder) -> bool:
    return not [p for p in folder.iterdir() if "partial" in p.name or p.name.startswith(".")]


def test_image_gives_json_and_overlay_png(model_path, real_data, tmp_path, capsys):
    image = real_data / "mpii" / "images" / "052475643.jpg"
    out = tmp_path / "out"
    code = main(
        ["predict", str(image), "--model", str(model_path), "--out", str(out), "--heatmaps"]
    )
    assert code == 0
    record = json.loads((out / "052475643.json").read_text())
    assert (record["width"], record["height"]) == (854, 480)
    assert record["flip"] is True
    (person,) = record["people"]
    assert person["joint_names"] == list(MPII.joint_names)
    assert np.asarray(person["keypoints"]).shape == (16, 2) and len(person["scores"]) == 16
    assert person["center"] == [426.5, 239.5] and person["scale"] == pytest.approx(854 / 200)
    overlay = cv2.imread(str(out / "052475643.png"))
    assert overlay.shape == (480, 854, 3)
    assert np.any(overlay != cv2.imread(str(image)))  # something was drawn
    montage = cv2.imread(str(out / "052475643_heatmaps.png"))
    assert montage.shape == (4 * 128, 4 * 128, 3)
    assert _no_partial_files(out)
    assert "wrote" in capsys.readouterr().out


def test_boxes_folder_and_no_flip(model_path, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.jpg"):
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    args = ["predict", str(folder), "--model", str(model_path), "--out", str(out), "--no-flip"]
    args += ["--box", "0", "0", "40", "60", "--box", "40", "0", "80", "60", "--quiet"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png", "b.json", "b.png"]
    record = json.loads((out / "a.json").read_text())
    assert record["flip"] is False
    assert [p["box"] for p in record["people"]] == [[0, 0, 40, 60], [40, 0, 80, 60]]


def test_video_gives_frames_json_and_overlay_mp4(model_path, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(3):
        frame = np.full((48, 64, 3), 40 * i, np.uint8)
        cv2.circle(frame, (20 + 10 * i, 24), 6, (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    out = tmp_path / "out"
    args = ["predict", str(video), "--model", str(model_path), "--out", str(out), "--no-flip"]
    assert main(args) == 0
    record = json.loads((out / "clip.json").read_text())
    assert record["num_frames"] == 3 and [f["frame"] for f in record["frames"]] == [0, 1, 2]
    assert record["fps"] == pytest.approx(10.0)
    assert all(len(f["people"]) == 1 for f in record["frames"])
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 3
    assert _no_partial_files(out)
    # --jsonl: one JSON line per frame
    assert main(args + ["--jsonl", "--no-overlay", "--quiet"]) == 0
    lines = (out / "clip.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 1, 2]


def test_bad_inputs_give_one_line_errors(model_path, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    out = str(tmp_path / "out")
    assert main(["predict", str(broken), "--model", str(model_path), "--out", out]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert (
        main(["predict", str(tmp_path / "missing.jpg"), "--model", str(model_path), "--out", out])
        == 2
    )
    assert "missing.jpg" in capsys.readouterr().err
    args = ["predict", str(broken), "--model", str(model_path), "--out", out, "--detect"]
    assert main(args + ["--box", "0", "0", "1", "1"]) == 2
    assert "--detect" in capsys.readouterr().err
    assert main(["predict", str(broken), "--model", str(tmp_path / "m.keras"), "--out", out]) == 2
    assert "m.keras" in capsys.readouterr().err
