"""Device-side augmentation geometry on the real MPII images: targets and image content agree."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from keras import ops

from hgkeras.codec import render_heatmaps
from hgkeras.data import augment, pose_dataset, read_annotations
from hgkeras.data.pipeline import SOURCE_MARGIN
from hgkeras.data.tfrecords import write_tfrecords
from hgkeras.geometry import apply_matrix, crop_matrix
from hgkeras.spec import MPII

SAMPLES = "hgkeras/data/samples/mpii"
SOURCE = 512  # SOURCE_MARGIN box sides at the 256 input's resolution


def _params(rng: np.random.Generator, n: int) -> dict:
    return {
        "rotation": rng.uniform(-30, 30, n).astype("float32"),
        "scale": rng.uniform(0.75, 1.25, n).astype("float32"),
        "flip": (rng.uniform(size=n) < 0.5).astype("float32"),
        "color": np.ones((n, 3), "float32"),
    }


@pytest.fixture(scope="module")
def marked(tmp_path_factory, repo_root):
    """The 5 real images with a green disc painted on one joint each (re-encoded as JPEG)."""
    tmp = tmp_path_factory.mktemp("marked")
    images = tmp / "images"
    images.mkdir()
    records = read_annotations(repo_root / SAMPLES / "samples.json")
    marks = []
    for record in records:
        image = cv2.imread(str(repo_root / SAMPLES / "images" / record.image))
        joint = 12  # r_shoulder, annotated for all five people
        x, y = record.joints[joint]
        radius = max(3, int(round(record.scale * 3)))
        cv2.circle(image, (int(round(x)), int(round(y))), radius, (0, 255, 0), -1)
        cv2.imwrite(str(images / record.image), image, [cv2.IMWRITE_JPEG_QUALITY, 98])
        marks.append((joint, np.round(record.joints[joint])))
    write_tfrecords(records, images, tmp / "tfr", shards=1, progress=False)
    batch = next(iter(pose_dataset(tmp / "tfr", 5, training=False)))  # order check only
    assert batch["image"].shape[0] == 5
    source = next(
        iter(pose_dataset(tmp / "tfr", 5, training=True, shuffle_buffer=1, source_size=SOURCE))
    )
    return records, marks, {k: v.numpy() for k, v in source.items()}


def test_targets_and_marker_follow_the_joints(marked):
    records, marks, source = marked
    # Source elements come in file order (one shard, no shuffle buffer).
    rng = np.random.default_rng(0)
    for trial in range(3):
        params = _params(rng, 5)
        m_in = augment.augmentation_matrices(params, SOURCE, SOURCE_MARGIN, 256)
        m_hm = augment.augmentation_matrices(params, SOURCE, SOURCE_MARGIN, 64)
        images = ops.convert_to_numpy(augment.warp_images(source["image"], m_in, 256) / 255.0)
        joints, visible = augment.transform_joints(
            source["joints"], source["visible"], m_hm, params["flip"], MPII.flip_permutation
        )
        targets = ops.convert_to_numpy(render_heatmaps(joints, visible, 64, 1.0))
        visible = ops.convert_to_numpy(visible)
        for i, record in enumerate(records):
            flip = bool(params["flip"][i])
            # Independent expectation: crop the ORIGINAL image box directly with the same parameters.
            matrix = crop_matrix(
                record.center, record.scale * params["scale"][i], 64, params["rotation"][i], flip
            )
            expected = apply_matrix(matrix, record.joints)
            if flip:
                expected = expected[MPII.flip_permutation]
            exp_visible = record.visible[MPII.flip_permutation] if flip else record.visible
            for j in range(16):
                inside = np.all((expected[j] >= -0.5) & (expected[j] < 63.5))
                peak = targets[i, :, :, j].max()
                if exp_visible[j] and inside:
                    assert visible[i, j] == 1
                    yx = np.unravel_index(targets[i, :, :, j].argmax(), (64, 64))
                    assert abs(yx[1] - expected[j, 0]) <= 1.0 and abs(yx[0] - expected[j, 1]) <= 1.0
                    assert peak > 0.5
                else:
                    assert peak == 0.0, f"trial {trial} person {i} joint {j} should be all zeros"
            # The painted marker lands where the joint does, in the 256 input.
            joint, _ = marks[i]
            label = MPII.flip_permutation[joint] if flip else joint
            where = apply_matrix(
                crop_matrix(record.center, record.scale * params["scale"][i], 256,
                            params["rotation"][i], flip),
                record.joints[joint],
            )  # fmt: skip
            img = images[i]
            green = (img[..., 1] > 0.7) & (img[..., 0] < 0.35) & (img[..., 2] < 0.35)
            if not (0 <= where[0] < 256 and 0 <= where[1] < 256):
                continue
            ys, xs = np.nonzero(green)
            assert len(xs) > 3, f"marker of person {i} not found"
            near = np.hypot(xs - where[0], ys - where[1]) < 30
            assert abs(xs[near].mean() - where[0]) < 2.0 and abs(ys[near].mean() - where[1]) < 2.0
            # ... and on the target's peak of the (possibly relabelled) joint channel.
            yx = np.unravel_index(targets[i, :, :, label].argmax(), (64, 64))
            peak_in_input = (np.array([yx[1], yx[0]]) + 0.5) * 4 - 0.5
            assert np.hypot(*(peak_in_input - [xs[near].mean(), ys[near].mean()])) < 4 * 1.5


def _draw(n: int, law: augment.Augmentation | None = None, seed: int = 1) -> dict:
    import keras

    params = augment.sample_params(n, keras.random.SeedGenerator(seed), law)
    return {k: ops.convert_to_numpy(v) for k, v in params.items()}


def test_default_draws_follow_the_torch_law():
    """pose-hg-train src/util/pose.lua: rnd(x) = clamp(x N(0,1), -2x, 2x); rotation rnd(30) kept on
    40 %; scale 2^rnd(0.25); flip 0.5; colour U(0.6, 1.4) per channel."""
    p = _draw(20000)
    rotated = p["rotation"][p["rotation"] != 0]
    assert 0.38 < rotated.size / 20000 < 0.42
    assert np.abs(rotated).max() == pytest.approx(60.0)
    assert 0.295 < (np.abs(rotated) > 30).mean() < 0.34  # P(|N| > 1) = 0.317
    assert 0.035 < (np.abs(rotated) >= 60).mean() < 0.057  # P(|N| >= 2) = 0.046, clamped
    exponent = np.log2(p["scale"])
    assert exponent.min() == pytest.approx(-0.5) and exponent.max() == pytest.approx(0.5)
    assert abs(np.std(exponent) - 0.25 * 0.94) < 0.01  # a N(0, 0.25) clamped at 2 sigma
    assert 0.48 < p["flip"].mean() < 0.52
    assert p["color"].min() >= 0.6 and p["color"].max() <= 1.4
    assert abs(p["color"].mean() - 1.0) < 0.01


def test_other_laws_are_expressible():
    """COCO's clipped law (N(0, 40) clipped to 40 on 60 %, 1 + N(0, 0.3) clipped to +-0.3) and a
    uniform one (U(-30, 30) always, U(0.75, 1.25))."""
    coco = augment.Augmentation(rotation=40, rotation_limit=40, rotation_probability=0.6,
                                scale=0.3, scale_limit=0.3, scale_law="linear")  # fmt: skip
    p = _draw(8000, coco)
    rotated = p["rotation"][p["rotation"] != 0]
    assert 0.57 < rotated.size / 8000 < 0.63 and np.abs(rotated).max() == pytest.approx(40.0)
    assert 0.28 < (np.abs(rotated) >= 40).mean() < 0.36  # P(|N| >= 1), clipped
    assert p["scale"].min() == pytest.approx(0.7) and p["scale"].max() == pytest.approx(1.3)
    uniform = augment.Augmentation(rotation=30, rotation_limit=30, rotation_probability=1.0,
                                   scale=0.25, scale_limit=0.25, scale_law="linear",
                                   distribution="uniform")  # fmt: skip
    p = _draw(8000, uniform)
    assert np.abs(p["rotation"]).max() < 30 and 0.48 < (np.abs(p["rotation"]) < 15).mean() < 0.52
    assert 0.75 <= p["scale"].min() < 0.76 and 1.24 < p["scale"].max() <= 1.25
    assert uniform.scale_range == (0.75, 1.25) and uniform.largest_rotation == 30
    with pytest.raises(ValueError, match="scale_law"):
        augment.Augmentation(scale_law="log")
    with pytest.raises(ValueError, match="unknown augmentation settings"):
        augment.Augmentation.from_dict({"scale_sigma": 0.25})


def test_source_crop_holds_the_extreme_draw_as_the_full_image_does():
    """A person well inside the image, the Torch law's extreme draw (scale 1.414, turned 45 or 60
    degrees, flipped or not): Torch crops from the whole image and shows no empty border; the
    warp of the pipeline's source crop (SOURCE_MARGIN box sides) shows none either. A source crop
    of 1.5 box sides (the former margin) would."""
    from hgkeras.crop import crop_numpy

    law = augment.Augmentation()
    assert law.required_margin() == pytest.approx(2.0) and SOURCE_MARGIN >= 2.0
    image = np.full((900, 1000, 3), 200, np.uint8)
    center, scale, size = np.array([480.0, 430.0]), 1.1, 64
    largest = law.scale_range[1]
    params = {"rotation": np.array([45.0, 60.0, -45.0, -60.0], "float32"),
              "scale": np.full(4, largest, "float32"), "flip": np.array([0, 1, 0, 1], "float32"),
              "color": np.ones((4, 3), "float32")}  # fmt: skip
    for rotation, flip in zip(params["rotation"], params["flip"], strict=True):
        matrix = crop_matrix(center, scale * largest, size, float(rotation), bool(flip))
        full = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR)
        assert full.min() == 200  # the whole-image crop (Torch's) has no empty pixel
    minima = {}
    for margin in (SOURCE_MARGIN, 1.5):
        source_size = int(round(size * margin))
        source = crop_numpy(image, center, scale * margin, source_size)
        matrices = augment.augmentation_matrices(params, source_size, margin, size)
        warped = ops.convert_to_numpy(augment.warp_images(np.stack([source] * 4), matrices, size))
        minima[margin] = warped.min(axis=(1, 2, 3))
    assert np.all(minima[SOURCE_MARGIN] > 199.0), minima
    assert np.all(minima[1.5] < 100.0), minima  # empty corners with the former margin


def test_color_jitter_clips():
    images = np.full((1, 2, 2, 3), 0.8, "float32")
    out = ops.convert_to_numpy(augment.color_jitter(images, np.array([[1.4, 1.0, 0.5]], "float32")))
    np.testing.assert_allclose(out[0, 0, 0], [1.0, 0.8, 0.4], rtol=1e-6)


WARP_HLO_CODE = """
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from hgkeras.data import augment

assert len(jax.devices()) == 2
sharding = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), PartitionSpec("batch"))
images = jax.device_put(np.zeros((4, 96, 96, 3), "uint8"), sharding)
matrices = jax.device_put(np.tile(np.eye(2, 3, dtype="float32"), (4, 1, 1)), sharding)
warp = jax.jit(lambda i, m: augment.warp_images(i, m, 64))
hlo = warp.lower(images, matrices).compile().as_text()
print("collectives" if any(op in hlo for op in ("all-gather", "all-to-all", "all-reduce")) else "local")
"""


def test_warp_stays_local_to_each_device_under_data_parallelism(run_backend, monkeypatch):
    """JAX, batch sharded over 2 host devices: the compiled warp has no all-gather of the images."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert run_backend("jax", WARP_HLO_CODE).strip().splitlines()[-1] == "local"
