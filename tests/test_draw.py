"""Overlays: one drawing module for predictions and previews, per-person colours, bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from hgkeras import MPII
from hgkeras.vis.draw import PERSON_COLORS, SIDE_COLORS, draw_people, write_overlay


def _person(x0: float, y0: float, size: float) -> np.ndarray:
    """16 MPII joints spread over a ``size`` square at (x0, y0)."""
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 4), np.linspace(0, 1, 4)), -1).reshape(16, 2)
    return np.array([x0, y0]) + grid * size


def test_several_people_get_their_own_colour_and_index():
    image = np.zeros((300, 400, 3), np.uint8)
    first, second = _person(30, 60, 120), _person(230, 60, 120)
    people = [(first, np.ones(16), (20, 50, 160, 190)), (second, np.ones(16), (220, 50, 360, 190))]
    drawn = draw_people(image, people, MPII, thickness=3)
    assert image.max() == 0  # drawn on a copy
    # joint 2 (r_hip) is on the right side: the person's own colour, unlightened
    for keypoints, color in ((first, PERSON_COLORS[0]), (second, PERSON_COLORS[1])):
        x, y = np.round(keypoints[2]).astype(int)
        np.testing.assert_array_equal(drawn[y, x], color)
    # the index tag "#1" sits above the second box, in that person's colour
    tag = drawn[20:50, 220:260].reshape(-1, 3)
    assert np.any(np.all(tag == PERSON_COLORS[1], axis=1))
    # one person keeps the side colours, without a tag
    alone = draw_people(image, people[:1], MPII, thickness=3)
    x, y = np.round(first[2]).astype(int)
    np.testing.assert_array_equal(alone[y, x], SIDE_COLORS["right"])
    assert alone[20:50, 20:60].max() == 0


def test_hide_unannotated_leaves_joints_out_instead_of_fading():
    image = np.zeros((100, 100, 3), np.uint8)
    keypoints = np.full((16, 2), np.nan)
    keypoints[0], keypoints[9] = (30, 30), (70, 70)
    flags = np.zeros(16)
    flags[0] = 1.0  # only r_ankle annotated
    faded = draw_people(image, [(keypoints, flags, None)], MPII, min_score=0.5, thickness=2)
    hidden = draw_people(
        image, [(keypoints, flags, None)], MPII, min_score=0.5, thickness=2, hide_unannotated=True
    )
    assert 0 < faded[70, 70].max() < 100 and hidden[65:76, 65:76].max() == 0
    np.testing.assert_array_equal(hidden[30, 30], SIDE_COLORS["right"])


def _peak_bytes(function) -> int:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("max_side", [None, 2048])
def test_overlay_of_a_large_photo_stays_within_half_an_image_of_memory(max_side):
    image = np.full((4000, 6000, 3), 90, np.uint8)  # 24 MP, 72 MB
    rng = np.random.default_rng(0)
    people = []
    for k in range(3):  # big people over the whole picture, half their joints unsure (faded)
        scores = rng.uniform(0, 1, 16)
        people.append(
            (
                _person(200 + 1900 * k, 300, 3400),
                scores,
                (150 + 1900 * k, 250, 1900 * (k + 1), 3800),
            )
        )
    peak = _peak_bytes(lambda: draw_people(image, people, MPII, max_side=max_side))
    # the result itself is one image (full size) or a small copy; everything else is small
    budget = (1.0 if max_side is None else 0.0) * image.nbytes + 0.5 * image.nbytes
    assert peak < budget, f"peak {peak / 1e6:.0f} MB for a {image.nbytes / 1e6:.0f} MB image"
    small = draw_people(image, people, MPII, max_side=max_side)
    assert max(small.shape[:2]) == (6000 if max_side is None else 2048)


def test_write_overlay_reads_the_upright_image(tmp_path):
    import cv2

    from tests.test_images import encode, with_exif_orientation

    stored = np.zeros((40, 20, 3), np.uint8)
    path = tmp_path / "turned.jpg"
    path.write_bytes(with_exif_orientation(encode(stored), 6))
    out = write_overlay(tmp_path / "o.png", path, _person(2, 2, 10), None, MPII)
    assert cv2.imread(str(out)).shape == (20, 40, 3)
