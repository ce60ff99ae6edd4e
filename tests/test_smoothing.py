"""Keypoint smoothing in video: the One-Euro filter, person tracks, the measures, ``--smooth``."""

from __future__ import annotations

import dataclasses
import json
from fractions import Fraction

import cv2
import numpy as np
import pytest

from hgkeras.inference.boxes import box_iou
from hgkeras.inference.smoothing import (
    OneEuroFilter,
    PoseSmoother,
    SmoothingOptions,
    jitter,
    lag,
)

FPS = 25.0


def _person(keypoints, box=(0.0, 0.0, 100.0, 100.0), scores=None, scale=2.0):
    from hgkeras.inference.predictor import PersonPose

    keypoints = np.asarray(keypoints, np.float32)
    scores = np.ones(len(keypoints), np.float32) if scores is None else np.asarray(scores)
    names = tuple(f"j{i}" for i in range(len(keypoints)))
    return PersonPose(keypoints, scores, names, box, np.zeros(2), scale)


def _smooth(track: np.ndarray, size: float, options: SmoothingOptions | None = None) -> np.ndarray:
    options = options or SmoothingOptions()
    one_euro = OneEuroFilter(options.min_cutoff, options.beta, options.d_cutoff)
    return np.stack([one_euro(points, t / FPS, size) for t, points in enumerate(track)])


@pytest.mark.parametrize("speed", [0.0, 1.0, 2.0, 4.0])
def test_default_filter_halves_jitter_with_under_a_frame_of_lag(speed):
    # 16 joints of a person whose crop is 400 px high, moving at `speed` px/frame at 25 fps, seen
    # through noise like the hourglass decoder's (a heatmap pixel is 400 / 64 = 6 px: sigma 1.5 px)
    rng = np.random.default_rng(0)
    frames = np.arange(120)
    truth = (
        rng.uniform(0, 400, (1, 16, 2))
        + speed * np.stack([frames, 0.5 * frames], axis=1)[:, None, :]
    )
    noisy = truth + rng.normal(0.0, 1.5, truth.shape)
    smoothed = _smooth(noisy, size=400.0)
    assert jitter(smoothed) <= 0.5 * jitter(noisy)
    if speed > 0:
        assert 0.0 <= lag(smoothed, truth) <= 1.0
        assert abs(lag(noisy, truth)) <= 0.1


def test_jitter_and_lag_measure_what_they_say():
    frames = np.arange(40, dtype=np.float64)
    line = np.stack([3.0 * frames, -frames], axis=1)[:, None, :]
    assert jitter(line) == pytest.approx(0.0, abs=1e-12)  # constant velocity: no jitter
    zigzag = np.zeros((40, 1, 2))
    zigzag[::2, 0, 0] = 1.0
    assert jitter(zigzag) == pytest.approx(2.0)  # |0 - 2*1 + 0|, |1 - 2*0 + 1|
    delayed = np.stack([3.0 * (frames - 2.5), -(frames - 2.5)], axis=1)[:, None, :]
    assert lag(delayed, line) == pytest.approx(2.5, abs=0.011)
    assert lag(line, delayed) == pytest.approx(-2.5, abs=0.011)
    with pytest.raises(ValueError, match="shape"):
        lag(line, line[:, :, :1])


def test_parameters_are_in_person_sizes_so_resolution_does_not_matter():
    rng = np.random.default_rng(1)
    track = np.cumsum(rng.normal(0, 2.0, (30, 5, 2)), axis=0)
    small = _smooth(track, size=300.0)
    large = _smooth(4.0 * track, size=1200.0)  # the same video at 4x the resolution
    np.testing.assert_allclose(large, 4.0 * small, rtol=1e-9, atol=1e-9)
    # frames arriving irregularly: the filter uses the times it is given
    one_euro = OneEuroFilter(1.0, 0.0, 1.0)
    one_euro(np.zeros((1, 2)), 0.0)
    quick = one_euro(np.ones((1, 2)), 0.01)[0, 0]
    one_euro = OneEuroFilter(1.0, 0.0, 1.0)
    one_euro(np.zeros((1, 2)), 0.0)
    slow = one_euro(np.ones((1, 2)), 1.0)[0, 0]
    assert 0 < quick < slow < 1  # a longer step lets the value move further


def test_tracks_follow_boxes_and_low_scores_and_gaps_are_handled():
    options = SmoothingOptions(min_score=0.3, max_gap=0.2)
    smoother = PoseSmoother(options)
    a, b = (0.0, 0.0, 100.0, 200.0), (300.0, 0.0, 400.0, 200.0)
    first = smoother([_person([[10, 10]], a), _person([[310, 10]], b)], 0.0)
    assert [k for k, _ in first] == [0, 1]
    np.testing.assert_array_equal(first[1][1].keypoints, [[310, 10]])  # a new track starts raw
    # the detector lists them the other way round: each keeps its track
    second = smoother([_person([[320, 10]], b), _person([[20, 10]], a)], 0.04)
    assert [k for k, _ in second] == [1, 0]
    assert 310 < second[0][1].keypoints[0, 0] < 320 and 10 < second[1][1].keypoints[0, 0] < 20
    assert second[0][1].scores is not None and second[0][1].box == b
    # a low-score keypoint passes through raw and leaves the filter where it was
    low = smoother([_person([[90, 90]], a, scores=[0.1])], 0.08)
    np.testing.assert_array_equal(low[0][1].keypoints, [[90, 90]])
    back = smoother([_person([[20, 10]], a)], 0.12)
    assert back[0][0] == 0 and back[0][1].keypoints[0, 0] < 21  # not dragged towards (90, 90)
    # person b, unseen for longer than max_gap, comes back as a new track
    later = smoother([_person([[20, 10]], a), _person([[320, 10]], b)], 0.4)
    assert later[0][0] == 2 and later[1][0] == 3  # a was also unseen for 0.28 s
    with pytest.raises(ValueError, match="time must increase"):
        smoother([_person([[20, 10]], a)], 0.4)


def test_options_and_overlap_checks():
    assert SmoothingOptions().to_dict()["filter"] == "one_euro"
    for bad in ({"min_cutoff": 0.0}, {"beta": -1.0}, {"d_cutoff": float("nan")}, {"min_iou": 2}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SmoothingOptions(**bad)
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


def _write_clip(path, image, shifts):
    import av

    height, width = image.shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(int(FPS)))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "10"}
        for shift in shifts:
            matrix = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
            frame = cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_predict_smooth_on_a_video_writes_the_smoothed_keypoints(
    overfit_mpii_trainer, tmp_path, capsys
):
    from hgkeras.cli import main

    model, _, samples = overfit_mpii_trainer
    image = cv2.imread(str(samples / "images" / "052475643.jpg"))[60:440, 120:520]  # 400x380
    video = tmp_path / "clip.mp4"
    _write_clip(video, image, np.random.default_rng(0).normal(0.0, 1.5, (5, 2)))
    out = tmp_path / "out"
    args = ["predict", str(video), "--model", str(model), "--box", "19", "9", "371", "362"]
    args += ["--no-flip", "--quiet", "--out", str(out), "--smooth", "--smooth-beta", "10"]
    assert main(args) == 0
    record = json.loads((out / "clip.json").read_text())
    options = SmoothingOptions(beta=10.0)
    assert record["smoothing"] == {"filter": "one_euro", **dataclasses.asdict(options)}
    times = [entry["time"] for entry in record["frames"]]
    np.testing.assert_allclose(times, np.arange(5) / FPS, atol=1e-6)  # the video's timestamps
    # the keypoints are what the library's smoother makes of the network's, at those times
    smoother = PoseSmoother(options)
    for entry in record["frames"]:
        (person,) = entry["people"]
        assert person["smoothed"] is True and person["track_id"] == 0
        raw = _person(person["keypoints_raw"], tuple(person["box"]), person["scores"],
                      person["scale"])  # fmt: skip
        ((track, expected),) = smoother([raw], entry["time"])
        np.testing.assert_allclose(person["keypoints"], expected.keypoints, atol=1e-4)
    raw = np.array([entry["people"][0]["keypoints_raw"] for entry in record["frames"]])
    smoothed = np.array([entry["people"][0]["keypoints"] for entry in record["frames"]])
    np.testing.assert_array_equal(smoothed[0], raw[0])  # a track starts at its first keypoints
    assert np.abs(smoothed[1:] - raw[1:]).max() > 0.5  # and then the smoothing shows
    assert (out / "clip.mp4").stat().st_size > 0
    bad = ["predict", str(video), "--model", str(model), "--out", str(tmp_path / "x")]
    assert main(bad + ["--smooth-beta", "3"]) == 2
    assert "--smooth-beta need(s) --smooth" in capsys.readouterr().err
    assert main(bad + ["--smooth", "--smooth-min-cutoff", "0"]) == 2
    assert "min_cutoff must be a positive number" in capsys.readouterr().err
