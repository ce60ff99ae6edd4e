"""load_model and pose specs: one loader for models, trainers and .keras files; no joint-count guessing."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from hgkeras import FLIC, MPII, PoseTrainer, StackedHourglass
from hgkeras.models.loading import load_model
from hgkeras.spec import PoseSpec, get_pose, pose_of


def _tiny(**kwargs) -> StackedHourglass:
    return StackedHourglass(
        num_stacks=1, num_features=16, depth=2, image_shape=(64, 64, 3), **kwargs
    )


@pytest.fixture(scope="module")
def saved_trainer(tmp_path_factory):
    """A PoseTrainer around a tiny FLIC hourglass, saved as .keras (as ModelCheckpoint would)."""
    hourglass = _tiny(pose="flic")
    path = tmp_path_factory.mktemp("trainer") / "trainer.keras"
    PoseTrainer(hourglass, augment=False).save(path)
    return hourglass, path


def test_pose_is_explicit_saved_and_checked():
    assert _tiny().pose is MPII and _tiny(pose="flic").num_joints == 11
    with pytest.raises(ValueError, match="pose 'mpii'.*pose='flic'"):
        _tiny(num_joints=11)
    custom = PoseSpec("hands", ("a", "b", "c"), ((0, 1),), ((0, 2),), normalizer="torso",
                      torso_joints=(0, 2))  # fmt: skip
    model = _tiny(pose=custom)
    copy = StackedHourglass.from_config(model.get_config())
    assert copy.pose == custom and copy.num_joints == 3
    assert model.get_config()["pose"]["name"] == "hands" and _tiny().get_config()["pose"] == "mpii"
    with pytest.raises(ValueError, match="by name"):
        get_pose(16)


def test_legacy_config_without_pose_warns_and_uses_the_joint_count():
    config = _tiny(pose="flic").get_config()
    del config["pose"]
    with pytest.warns(UserWarning, match="no pose spec"):
        assert StackedHourglass.from_config(config).pose is FLIC
    config["num_joints"] = 7
    with pytest.raises(ValueError, match="7 joints"):
        StackedHourglass.from_config(config)


def test_load_model_unwraps_trainers_and_folds(saved_trainer, tmp_path):
    hourglass, path = saved_trainer
    loaded = load_model(path)
    assert isinstance(loaded, StackedHourglass) and loaded.pose is FLIC
    assert load_model(PoseTrainer(hourglass)) is hourglass
    folded = load_model(path, fold_batch_norms=True)
    assert pose_of(folded) is FLIC
    images = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(folded(images)[-1]),
        keras.ops.convert_to_numpy(loaded(images, training=False)[-1]),
        atol=1e-4,
    )
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        load_model(tmp_path / "nope.keras")
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.keras"):
        load_model(tmp_path / "bad.keras")
    with pytest.raises(ValueError, match="folder"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="Keras model"):
        load_model(42)


def test_a_fresh_process_loads_a_saved_trainer_through_the_loader_alone(saved_trainer, run_backend):
    """The package registers its Keras classes (PoseTrainer included) when Keras is imported; the
    loader itself names no training module (models sit below training)."""
    _, path = saved_trainer
    code = """
        import sys
        from hgkeras.models.loading import load_model
        print(type(load_model(sys.argv[1])).__name__, "hgkeras.training.trainer" in sys.modules)
    """
    assert run_backend("jax", code, str(path)).split() == ["StackedHourglass", "True"]


def test_saved_trainer_runs_in_predictor_evaluate_and_export(saved_trainer, real_data, tmp_path):
    from hgkeras import PosePredictor
    from hgkeras.cli import main

    _, path = saved_trainer
    predictor = PosePredictor(path, flip=True)
    assert predictor.pose is FLIC and predictor.input_size == (64, 64)
    with pytest.raises(ValueError, match="11 joints but pose 'mpii' has 16"):
        PosePredictor(path, pose="mpii")
    (person,) = predictor.predict(np.zeros((40, 30, 3), np.uint8))
    assert person.joint_names == FLIC.joint_names and person.keypoints.shape == (11, 2)

    # the first 7 people of the Torch FLIC annotations, whose images are shipped
    import h5py

    annotations = tmp_path / "valid.h5"
    with (
        h5py.File(real_data / "flic" / "valid_personcentric.h5") as src,
        h5py.File(annotations, "w") as dst,
    ):
        for key in src:
            dst.create_dataset(key, data=src[key][:7])
    out = tmp_path / "flic.json"
    argv = ["evaluate", "--data", str(annotations), "--images", str(real_data / "flic" / "images")]
    assert main([*argv, "--model", str(path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["dataset"] == "flic"
    # an MPII model on FLIC data is refused by pose, not scored on mismatched joints
    mpii = tmp_path / "mpii.keras"
    _tiny().save(mpii)
    assert main([*argv, "--model", str(mpii)]) == 2

    assert main(["export", "--model", str(path), "--out", str(tmp_path / "models")]) == 0
    assert (tmp_path / "models" / "hourglass" / "1" / "saved_model.pb").is_file()


def test_predictor_from_network_is_the_runtime_seam():
    from hgkeras import PosePredictor

    def network(crops):  # a stand-in runtime: numpy in, numpy heatmaps out
        maps = np.zeros((len(crops), 16, 12, 16), np.float32)
        maps[:, 8, 6, :] = 1.0
        return maps

    predictor = PosePredictor.from_network(network, "mpii", (64, 48), flip=True)
    (person,) = predictor.predict(np.zeros((100, 80, 3), np.uint8), boxes=[(20, 10, 60, 90)])
    # every joint at the heatmap centre pixel (6, 8) -> crop (25.5, 33.5) -> the box centre region
    center, scale = person.center, person.scale
    assert scale == pytest.approx(80 * 1.25 / 200)  # the box's height decides (aspect 0.75)
    assert np.allclose(person.keypoints, person.keypoints[0])
    assert np.all(np.abs(person.keypoints[0] - center) <= 200 * scale / 16)
