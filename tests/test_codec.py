"""The heatmap codec object: decoders on synthetic heatmaps with known sub-pixel centres, UDP's grid,
configuration round trips, the trainer's targets, and every entry point decoding as the codec does."""

from __future__ import annotations

import json

import numpy as np
import pytest
from keras import ops

from hgkeras import MPII, geometry
from hgkeras.codec import DECODERS, HeatmapCodec, codec_for, codec_of, get_codec, render_heatmaps


def _synthetic(sigma: float, count: int = 64, noise: float = 0.0, seed: int = 0):
    """(heatmaps (count, 64, 64, 2), centres (count, 2, 2)): Gaussians at random sub-pixel centres."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(4.0, 59.0, (count, 2, 2)).astype(np.float32)
    maps = ops.convert_to_numpy(render_heatmaps(centres, np.ones((count, 2)), 64, sigma))
    maps = maps + noise * rng.standard_normal(maps.shape).astype(np.float32)
    return maps, centres


def _errors(decoder: str, sigma: float, maps, centres) -> np.ndarray:
    coords, _ = HeatmapCodec(decoder, sigma).locate(maps)
    return np.abs(ops.convert_to_numpy(coords) - centres)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_decoders_recover_known_sub_pixel_centres(sigma):
    maps, centres = _synthetic(sigma)
    # the paper's decoder lands on a pixel or a quarter off it: within a quarter pixel per axis
    paper = _errors("paper", sigma, maps, centres)
    assert paper.max() <= 0.25 + 1e-5 and paper.mean() > 0.05
    for decoder in ("dark", "udp"):  # the Taylor step recovers a Gaussian's centre
        assert _errors(decoder, sigma, maps, centres).max() < 0.01, decoder


def test_taylor_decoders_beat_the_quarter_pixel_on_noisy_heatmaps():
    maps, centres = _synthetic(2.0, noise=0.05, seed=1)
    paper = _errors("paper", 2.0, maps, centres).mean()
    for decoder in ("dark", "udp"):
        assert _errors(decoder, 2.0, maps, centres).mean() < 0.5 * paper, decoder


def test_taylor_step_on_flat_maps_and_border_peaks():
    flat = np.zeros((1, 16, 16, 1), np.float32)
    for decoder in DECODERS:  # no maximum to fit: the argmax, no NaN
        coords, scores = HeatmapCodec(decoder).locate(flat)
        np.testing.assert_array_equal(ops.convert_to_numpy(coords), [[[0.0, 0.0]]])
    # a peak one pixel from the border: DARK's stencil (+-2 pixels) leaves it alone, UDP's (+-1,
    # the border value repeated outside) refines it
    border = render_heatmaps(np.array([[[1.2, 8.4]]]), np.ones((1, 1)), 16, 1.0)
    dark = ops.convert_to_numpy(HeatmapCodec("dark").locate(border)[0])[0, 0]
    udp = ops.convert_to_numpy(HeatmapCodec("udp").locate(border)[0])[0, 0]
    np.testing.assert_array_equal(dark, [1.0, 8.0])
    np.testing.assert_allclose(udp, [1.2, 8.4], atol=0.05)


def test_codec_configs_round_trip_and_refuse_bad_values():
    for decoder in DECODERS:
        codec = HeatmapCodec(decoder, 2.0)
        assert HeatmapCodec.from_config(json.loads(json.dumps(codec.to_config()))) == codec
        assert get_codec(codec.to_config()) == get_codec(codec) == codec
    assert get_codec(None) == HeatmapCodec("paper", 1.0) and get_codec("udp").decoder == "udp"
    with pytest.raises(ValueError, match="decoder must be one of paper, dark, udp"):
        HeatmapCodec("argmax")
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        HeatmapCodec("dark", 0.0)
    with pytest.raises(ValueError, match="codec config"):
        HeatmapCodec.from_config({"decoder": "dark", "blur": 11})
    # a paper-trained model decodes with dark, not with udp (another grid), and vice versa
    assert HeatmapCodec("paper", 2.0).with_decoder("dark") == HeatmapCodec("dark", 2.0)
    with pytest.raises(ValueError, match="trained with the 'paper' encoding.*choose paper or dark"):
        HeatmapCodec().with_decoder("udp")
    with pytest.raises(ValueError, match="trained with the 'udp' encoding.*choose udp"):
        HeatmapCodec("udp").with_decoder("dark")


def _udp_warp(center, box: float, size: int) -> np.ndarray:
    """UDP's crop (Huang et al.): the box's edges on the grid's outer pixel centres, scale (S-1)/box."""
    k = (size - 1) / box
    return np.array([[k, 0.0, k * (box / 2 - center[0])], [0.0, k, k * (box / 2 - center[1])]])


def test_udp_grid_is_udps_crop_relative_to_the_input_crop():
    center, scale = np.array([310.0, 205.0]), 1.7
    box = geometry.PIXELS_PER_SCALE * scale
    # UDP's crop of a box is hgkeras' crop (box edges on the outer pixel edges) of a box S/(S-1)
    # as large: the one crop policy serves it
    for size in (256, 64):
        np.testing.assert_allclose(
            _udp_warp(center, box, size),
            geometry.crop_matrix(center, scale * size / (size - 1), size),
        )
    # relative to the input crop, the udp codec's heatmap grid is UDP's: image -> UDP input crop
    # -> UDP heatmap warp, for the box that fills the input crop UDP's way
    points = np.array([[[250.0, 180.0], [371.3, 96.2], [310.0, 205.0]]])
    in_crop = geometry.apply_matrix(geometry.crop_matrix(center, scale, 256), points)
    udp_box = box * 255 / 256  # UDP's box whose edge pixel centres are hgkeras' crop's
    want = geometry.apply_matrix(_udp_warp(center, udp_box, 64), points)
    got = ops.convert_to_numpy(HeatmapCodec("udp").to_heatmap(in_crop, 256, 64))
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("decoder", ["paper", "udp"])
def test_flip_is_unbiased_on_both_grids(decoder):
    """Mirroring the input crop (x -> W-1-x) mirrors the heatmap grid (x -> w-1-x): the flip test
    and flip augmentation need no shift (the bias UDP removes from other pipelines)."""
    codec = HeatmapCodec(decoder)
    joints = np.random.default_rng(2).uniform(0, 255, (1, 16, 2)).astype(np.float32)
    mirrored = joints * [-1.0, 1.0] + [255.0, 0.0]
    hm = ops.convert_to_numpy(codec.to_heatmap(joints, 256, 64))
    hm_mirrored = ops.convert_to_numpy(codec.to_heatmap(mirrored, 256, 64))
    np.testing.assert_allclose(hm_mirrored, hm * [-1.0, 1.0] + [63.0, 0.0], atol=1e-4)
    # decoding the mirror of a target gives the mirrored joints (exact for Taylor decoders)
    if decoder == "udp":
        targets = codec.encode(joints, np.ones((1, 16)), 256, 64)
        back, _ = codec.decode(ops.flip(targets, axis=2), 256)
        np.testing.assert_allclose(ops.convert_to_numpy(back), mirrored, atol=0.05)


def test_graph_decoding_equals_eager_decoding():
    """Every decoder traces into a TensorFlow graph (the SavedModel's) and decodes there as eagerly."""
    import tensorflow as tf

    maps, _ = _synthetic(1.5, count=4, noise=0.02, seed=3)
    centers = np.array([[300.0, 200.0], [50.0, 80.0], [640.0, 360.0], [0.0, 0.0]], np.float32)
    scales = np.array([1.2, 0.4, 3.0, 0.8], np.float32)
    codecs = [HeatmapCodec(decoder, 1.5) for decoder in DECODERS]

    def decode_all(m, c, s):
        return [codec.decode_to_image(m, c, s, (256, 256)) for codec in codecs]

    graph = tf.function(decode_all)(tf.constant(maps), tf.constant(centers), tf.constant(scales))
    for (got, got_scores), (want, want_scores) in zip(
        graph, decode_all(maps, centers, scales), strict=True
    ):
        np.testing.assert_allclose(got.numpy(), ops.convert_to_numpy(want), atol=1e-3)
        np.testing.assert_allclose(got_scores.numpy(), ops.convert_to_numpy(want_scores))


def test_model_trainer_and_folded_copy_record_the_codec():
    from hgkeras import PoseTrainer, StackedHourglass
    from hgkeras.models.fold import fold_batch_norms

    model = StackedHourglass(num_stacks=1, num_features=16, depth=1, image_shape=(32, 32, 3))
    assert codec_of(model) == HeatmapCodec()
    udp = HeatmapCodec("udp", 2.0)
    trainer = PoseTrainer(model, augment=False, codec=udp)
    assert model.codec == udp and codec_of(trainer) == udp  # the model records its targets
    restored = StackedHourglass.from_config(model.get_config())
    assert restored.codec == udp and model.get_config()["codec"] == {"decoder": "udp", "sigma": 2.0}
    assert PoseTrainer.from_config(trainer.get_config()).codec == udp
    assert codec_of(fold_batch_norms(model)) == udp
    assert codec_for(model, "udp") == udp
    with pytest.raises(ValueError, match="choose udp"):
        codec_for(model, "paper")
    assert PoseTrainer(model, sigma=1.5).codec == HeatmapCodec("udp", 1.5)  # sigma overrides


@pytest.mark.parametrize("decoder", ["paper", "udp"])
def test_trainer_targets_decode_to_the_joints_in_input_pixels(decoder):
    from hgkeras import PoseTrainer, StackedHourglass

    model = StackedHourglass(num_stacks=1, num_features=16, depth=1, image_shape=(64, 64, 3))
    trainer = PoseTrainer(model, augment=False, codec=decoder, source_margin=1.0)
    joints = np.random.default_rng(4).uniform(12, 52, (2, 16, 2)).astype(np.float32)
    batch = {"image": np.zeros((2, 64, 64, 3), np.uint8), "joints": joints,
             "visible": np.ones((2, 16), np.float32)}  # fmt: skip
    _, targets = trainer.prepare(batch)  # no augmentation: source crop = input crop
    decoded, _ = HeatmapCodec("dark" if decoder == "paper" else "udp").decode(targets, 64)
    np.testing.assert_allclose(ops.convert_to_numpy(decoded), joints, atol=0.02)


def test_pose_json_records_the_codec(tmp_path):
    from hgkeras.inference.runtimes import pose_spec, read_pose_spec

    (tmp_path / "pose.json").write_text(
        json.dumps(pose_spec(MPII, (64, 64), HeatmapCodec("dark", 2.0)))
    )
    assert read_pose_spec(tmp_path / "model.onnx")["codec"] == HeatmapCodec("dark", 2.0)
    spec = pose_spec(MPII, (64, 64), HeatmapCodec())
    del spec["codec"]  # a pose.json that names no codec: the paper's
    (tmp_path / "pose.json").write_text(json.dumps(spec))
    assert read_pose_spec(tmp_path / "model.onnx")["codec"] == HeatmapCodec()
