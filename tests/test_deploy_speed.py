"""benchmarks/deploy_speed.py: the shipped people, their keypoints and the 0.1-head score it reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "deploy_speed.py"


def load_script():
    spec = importlib.util.spec_from_file_location("deploy_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_people_keypoints_noise_and_margins(real_data):
    bench = load_script()
    truth = bench.people((64, 64))
    assert truth["crops"].shape == (5, 64, 64, 3) and truth["visible"].sum() == 76
    assert truth["people"].crops.shape == (10, 64, 64, 3)  # the people, then their mirror images
    heatmaps = np.zeros((10, 16, 16, 16), np.float32)
    heatmaps[:, 8, 8] = 1.0  # every joint half a heatmap pixel right of and below the box centre
    heatmaps[:, 8, 9] = heatmaps[:, 9, 8] = 0.5  # and a quarter pixel further right and down
    keypoints = bench.image_keypoints(heatmaps, truth)
    assert keypoints.shape == (5, 16, 2)
    pixel = 200 * truth["scales"][:, None] / 16
    np.testing.assert_allclose(keypoints[:, 0], truth["centers"] + 0.75 * pixel, atol=0.5)
    scores = bench.noise_sensitivity(heatmaps, truth)
    assert list(scores) == [f"{s:g}" for s in bench.NOISE_SIGMAS]
    assert scores["0.001"] == 1.0  # noise far below the 0.5 margins moves nothing
    heatmaps[:, 9, 8] = 0.0  # a tie between the pixels above and below: noise picks the shift
    assert bench.noise_sensitivity(heatmaps, truth)["0.001"] < 1.0
    margins = bench.peak_margins(heatmaps, truth)
    assert margins["peak"]["50%"] == 1.0 and margins["argmax_margin"]["5%"] == 0.5
    assert margins["x_shift_margin"]["50%"] == 0.5 and margins["y_shift_margin"]["50%"] == 0.0
    heatmaps[:, 8, 8] = heatmaps[:, 8, 9] = 0.0
    heatmaps[:2, 0, 0] = 1.0  # two people's peaks on the border: no shift, so no shift margins
    heatmaps[2:, 8, 8] = 0.75
    margins = bench.peak_margins(heatmaps, truth)
    assert margins["peak"]["5%"] == 0.75 and margins["argmax_margin"]["5%"] == 0.75
