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


def _synthetic_video(path, frames: int = 6, size=(64, 48)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 30 * i, np.uint8)
        cv2.circle(frame, (10 + 8 * i, 24), 6, (255, 255, 255), -1)
        writer.write(frame)
    writer.release()


def test_video_overlay_is_h264_and_max_frames_stops_early(model_path, tmp_path):
    av = pytest.importorskip("av", reason="PyAV is the 'video' extra (installed in CI by [all])")
    video = tmp_path / "odd.avi"
    _synthetic_video(video, frames=6)
    out = tmp_path / "out"
    args = ["predict", str(video), "--model", str(model_path), "--out", str(out), "--no-flip"]
    assert main(args + ["--max-frames", "4", "--quiet"]) == 0
    record = json.loads((out / "odd.json").read_text())
    assert record["num_frames"] == 4 and record["video_codec"] == "h264"
    with av.open(str(out / "odd.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"  # what browsers play (mp4v is not)
        assert (stream.width, stream.height) == (64, 48)
        assert sum(1 for _ in container.decode(stream)) == 4
    assert main(args + ["--max-frames", "0"]) == 2
    # odd frame sizes are padded by one pixel (H.264 4:2:0 needs even ones)
    from hgkeras.inference.video import VideoWriter

    writer = VideoWriter(tmp_path / "odd.mp4", fps=5)
    for i in range(3):
        writer.write(np.full((47, 63, 3), 60 * i, np.uint8))
    writer.close()
    with av.open(str(tmp_path / "odd.mp4")) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3)
    assert abs(int(frames[2][10, 10, 0]) - 120) <= 8  # YUV 4:2:0 round trip


def test_stream_url_and_missing_camera(model_path, tmp_path, capsys):
    import functools
    import http.server
    import threading

    _synthetic_video(tmp_path / "live.avi", frames=5)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/live.avi"
        out = tmp_path / "out"
        args = ["predict", url, "--model", str(model_path), "--out", str(out), "--quiet"]
        assert main(args + ["--max-frames", "3", "--jsonl", "--no-overlay"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    lines = (out / "live.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 1, 2]
    capsys.readouterr()
    args = ["predict", "57", "--model", str(model_path), "--out", str(out), "--max-frames", "2"]
    assert main(args) == 2
    assert "cannot open camera 57 (no such camera" in capsys.readouterr().err
    assert not (out / "camera57.json").exists() and _no_partial_files(out)


def test_rotated_and_truncated_photos(model_path, real_data, tmp_path, capsys):
    from tests.test_images import encode, with_exif_orientation

    upright = cv2.imread(str(real_data / "mpii" / "images" / "052475643.jpg"))
    folder = tmp_path / "in"
    folder.mkdir()
    turned = encode(cv2.rotate(upright, cv2.ROTATE_90_COUNTERCLOCKWISE))
    (folder / "turned.jpg").write_bytes(with_exif_orientation(turned, 6))
    out = tmp_path / "out"
    args = ["predict", str(folder), "--model", str(model_path), "--out", str(out), "--quiet"]
    assert main(args) == 0
    record = json.loads((out / "turned.json").read_text())
    assert (record["width"], record["height"]) == (854, 480)
    assert record["people"][0]["center"] == [426.5, 239.5]
    assert cv2.imread(str(out / "turned.png")).shape == (480, 854, 3)
    data = (real_data / "mpii" / "images" / "052475643.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    capsys.readouterr()
    assert main(args) == 2
    assert "cut.jpg: truncated JPEG" in capsys.readouterr().err
    assert main(args + ["--allow-truncated"]) == 0
    assert json.loads((out / "cut.json").read_text())["height"] == 480
    capsys.readouterr()
    assert main(args + ["--allow-truncated", "--max-pixels", "400000"]) == 2  # 854x480: 0.41 MP
    assert "above the decoded-size limit" in capsys.readouterr().err


def test_large_photo_overlay_is_downscaled(model_path, tmp_path):
    image = tmp_path / "big.png"
    cv2.imwrite(str(image), np.full((3000, 5000, 3), 70, np.uint8))
    out = tmp_path / "out"
    args = ["predict", str(image), "--model", str(model_path), "--out", str(out), "--quiet"]
    assert main(args + ["--box", "100", "100", "2000", "2900", "--overlay-max-side", "1000"]) == 0
    assert cv2.imread(str(out / "big.png")).shape == (600, 1000, 3)
    record = json.loads((out / "big.json").read_text())
    assert (record["width"], record["height"]) == (5000, 3000)  # keypoints in full-size pixels


def test_ctrl_c_on_a_camera_closes_the_outputs_cleanly(model_path, tmp_path, monkeypatch):
    from hgkeras.inference import video
    from hgkeras.inference.predictor import PosePredictor

    class Camera:  # three frames, then the user presses Ctrl-C
        def __init__(self):
            self.frames = 0

        def read(self):
            if self.frames == 3:
                raise KeyboardInterrupt
            self.frames += 1
            return True, np.full((48, 64, 3), 50 * self.frames, np.uint8)

        def get(self, prop):  # no timestamps, like many webcams
            return 0.0

        def release(self):
            pass

    def open_camera(source):
        return video.VideoSource(Camera(), "0", "camera", "camera0", "camera 0", 25.0, None)

    monkeypatch.setattr(video, "open_source", open_camera)
    predictor = PosePredictor(model_path, flip=False)
    written = video.predict_video(
        predictor, 0, tmp_path, predict_options={"boxes": [(0, 0, 40, 40)]}
    )
    assert [p.name for p in written] == ["camera0.json", "camera0.mp4"]
    record = json.loads((tmp_path / "camera0.json").read_text())
    assert record["num_frames"] == 3 and record["source_kind"] == "camera"
    assert [entry["time"] for entry in record["frames"]] == [0.0, 0.04, 0.08]  # 1 / fps steps
    assert _no_partial_files(tmp_path)
