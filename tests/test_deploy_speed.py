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


def test_people_keypoints_and_the_tenth_head_score(real_data):
    bench = load_script()
    truth = bench.people((64, 64))
    assert truth["crops"].shape == (5, 64, 64, 3) and truth["visible"].sum() == 76
    heatmaps = np.zeros((5, 16, 16, 16), np.float32)
    heatmaps[:, 8, 8] = 1.0  # every joint half a heatmap pixel right of and below the box centre
    keypoints = bench.image_keypoints(heatmaps, truth)
    assert keypoints.shape == (5, 16, 2)
    half_pixel = 0.5 * 200 * truth["scales"][:, None] / 16
    np.testing.assert_allclose(keypoints[:, 0], truth["centers"] + half_pixel, atol=0.5)
    assert bench.within_tenth_head(keypoints, keypoints, truth) == 1.0
    far = keypoints + truth["head"][:, None, None] * 0.2  # 0.28 head sizes away
    assert bench.within_tenth_head(far, keypoints, truth) == 0.0
    scores = bench.noise_sensitivity(heatmaps, keypoints, truth)
    assert list(scores) == [f"{s:g}" for s in bench.NOISE_SIGMAS]
    assert all(0.0 <= v <= 1.0 for v in scores.values())
