"""PoseSpec: JSON round trip, spec files, validation naming the field, flip pairs by name, defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hgkeras.spec import (
    COCO,
    DEFAULT_OKS_SIGMA,
    FLIC,
    MPII,
    PALETTE,
    SIDE_COLORS,
    PoseSpec,
    get_pose,
    infer_flip_pairs,
    parse_flip_pairs,
    pose_config,
)

MOUSE = PoseSpec(
    "mouse", ("snout", "left_ear", "right_ear", "tail"), limbs=((0, 1), (0, 2), (0, 3))
)


@pytest.mark.parametrize("spec", [MPII, FLIC, COCO, MOUSE])
def test_json_round_trip_gives_the_same_spec(spec):
    config = json.loads(json.dumps(spec.to_config(), sort_keys=True))  # as the manifest stores it
    assert PoseSpec.from_config(config) == spec
    assert get_pose(config) == spec and (spec is MOUSE or get_pose(config) is spec)


def test_older_dicts_name_the_registered_specs():
    """Configs and pose.json files of earlier versions hold name, names, pairs, limbs, normaliser."""
    for spec in (MPII, FLIC, COCO):
        old = {k: spec.to_config()[k] for k in ("name", "joint_names", "flip_pairs", "limbs")}
        assert get_pose({**old, "normalizer": spec.normalizer, "input_size": [256, 256]}) is spec
    assert get_pose({"name": "mpii", "joint_names": list(MPII.joint_names)[:15],
                     "flip_pairs": []}) != MPII  # fmt: skip


def test_the_built_in_rules():
    assert (MPII.metric, MPII.threshold, MPII.unscored) == ("pckh", 0.5, (6, 7))
    assert list(MPII.group_table) == ["Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle"]
    assert (FLIC.metric, FLIC.threshold, FLIC.torso_joints) == ("pck", 0.2, (0, 7))
    assert (COCO.metric, COCO.recipe, COCO.sigma) == ("ap", "coco", 2.0)
    assert COCO.sigmas[0] == pytest.approx(0.026) and COCO.sigmas[-1] == pytest.approx(0.089)
    # a set of one's own: PCK@0.2 of the box, one group per keypoint, the default sigma
    assert (MOUSE.metric, MOUSE.threshold, MOUSE.normalizer) == ("pck", 0.2, "box")
    assert MOUSE.group_table == {"snout": (0,), "left_ear": (1,), "right_ear": (2,), "tail": (3,)}
    np.testing.assert_array_equal(MOUSE.sigmas, [DEFAULT_OKS_SIGMA] * 4)
    assert not MOUSE.flip and MPII.flip


def test_default_colours_by_side_or_palette():
    assert MPII.colors[0] == SIDE_COLORS["right"] and MPII.colors[3] == SIDE_COLORS["left"]
    assert MPII.colors[6] == SIDE_COLORS["center"]
    assert MOUSE.colors == PALETTE[:4]  # no pairs: one colour per keypoint
    paired = PoseSpec("m", MOUSE.joint_names, flip_pairs=((1, 2),), limbs=((1, 2), (0, 3)))
    assert paired.colors == (SIDE_COLORS["center"], SIDE_COLORS["left"], SIDE_COLORS["right"],
                             SIDE_COLORS["center"])  # fmt: skip
    green = (0, 200, 0)
    assert paired.limb_colors == (green, green)  # left-right limb: centre; centre-centre: centre
    assert MOUSE.limb_colors == tuple(MOUSE.keypoint_colors[a] for a, _ in MOUSE.limbs)


def test_spec_file_by_names_and_clear_errors(tmp_path):
    path = tmp_path / "mouse.json"
    path.write_text(json.dumps({
        "name": "mouse", "joint_names": ["snout", "left_ear", "right_ear", "tail"],
        "limbs": [["snout", "left_ear"], ["snout", 2]], "flip_pairs": [["Left_Ear", "right_ear"]],
        "groups": {"Head": ["snout", "left_ear", "right_ear"], "Tail": ["tail"]},
        "oks_sigmas": [0.05, 0.08, 0.08, 0.1],
    }))  # fmt: skip
    spec = get_pose(str(path))
    assert spec.flip_pairs == ((1, 2),) and spec.limbs == ((0, 1), (0, 2))
    assert spec.group_table == {"Head": (0, 1, 2), "Tail": (3,)}
    assert PoseSpec.from_file(path) == spec and get_pose(path) == spec
    cases = [
        ({"flip_pair": []}, "unknown field(s) ['flip_pair']"),
        ({"limbs": [["snout", "nose"]]}, "field 'limbs': no keypoint named 'nose'"),
        ({"flip_pairs": [[0, 9]]}, "field 'flip_pairs': keypoint 9 is not an index in 0..3"),
        ({"flip_pairs": [[1, 2], [2, 3]]}, "field 'flip_pairs': pair [2, 3]: each keypoint"),
        ({"normalizer": "torso"}, "field 'torso_joints': the \"torso\" normaliser needs"),
        ({"normalizer": "hand"}, "field 'normalizer': 'hand' is not one of"),
        ({"oks_sigmas": [0.1]}, "field 'oks_sigmas': needs 4 positive numbers"),
        ({"colors": ["red"] * 4}, "field 'colors': needs 4 colours"),
        ({"input_shape": [256, 0]}, "field 'input_shape'"),
        ({"joint_names": ["a", "a"]}, "field 'joint_names': names must be unique"),
    ]
    base = {"name": "mouse", "joint_names": ["snout", "left_ear", "right_ear", "tail"]}
    for change, message in cases:
        path.write_text(json.dumps({**base, **change}))
        with pytest.raises(ValueError, match="mouse") as info:
            get_pose(path)
        assert message in str(info.value) and str(path) in str(info.value), str(info.value)
    with pytest.raises(FileNotFoundError, match="pose spec file not found"):
        get_pose(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="by name"):
        get_pose(16)


def test_flip_pairs_found_by_name():
    names = ["leftear", "RightEar", "L_Wrist", "R_Wrist", "left_eye", "right_eye", "snout",
             "paw.L", "paw.R", "LHip", "RHip", "Tail", "lower_jaw", "rump", "left_only"]  # fmt: skip
    found = {(names[a], names[b]) for a, b in infer_flip_pairs(names)}
    assert found == {("leftear", "RightEar"), ("L_Wrist", "R_Wrist"), ("left_eye", "right_eye"),
                     ("paw.L", "paw.R"), ("LHip", "RHip")}  # fmt: skip
    assert infer_flip_pairs(["Hand", "Finger1", "Tongue", "Joystick1", "Joystick2"]) == ()
    assert set(infer_flip_pairs(COCO.joint_names)) == set(COCO.flip_pairs)
    assert {frozenset(p) for p in infer_flip_pairs(MPII.joint_names)} == {
        frozenset(p) for p in MPII.flip_pairs
    }
    # ambiguous: two left ears for one right ear pair with none
    assert infer_flip_pairs(["left_ear", "Left_Ear", "right_ear"]) == ()


def test_flip_pairs_given_by_name_or_index():
    assert parse_flip_pairs("left_ear:right_ear", MOUSE.joint_names) == ((1, 2),)
    assert parse_flip_pairs("1:2", MOUSE.joint_names) == ((1, 2),)
    assert parse_flip_pairs("", MOUSE.joint_names) == ()
    with pytest.raises(ValueError, match="'left_ear' is not a pair"):
        parse_flip_pairs("left_ear", MOUSE.joint_names)
    with pytest.raises(ValueError, match="no keypoint named 'ear'"):
        parse_flip_pairs("ear:tail", MOUSE.joint_names)


def test_normaliser_values_and_config_storage():
    box = (10.0, 20.0, 110.0, 70.0)
    assert MOUSE.normalizer_value(box=box) == 100.0  # longer side
    assert np.isnan(MOUSE.normalizer_value(box=(np.nan,) * 4))
    oks = PoseSpec("m", ("a", "b"), normalizer="oks")
    assert oks.normalizer_value(box=box, area=321.0) == 321.0
    assert oks.normalizer_value(box=box) == 100.0 * 50.0
    joints = np.zeros((11, 2))
    joints[7] = (30.0, 40.0)
    assert FLIC.normalizer_value(joints, np.ones(11)) == 50.0
    assert np.isnan(FLIC.normalizer_value(joints, np.zeros(11)))
    assert pose_config(MPII) == "mpii" and pose_config(MOUSE) == MOUSE.to_config()


def test_the_documented_spec_file_is_valid(repo_root):
    """docs/own-keypoints.md's example reads as a spec (unknown fields would be errors)."""
    text = (repo_root / "docs" / "own-keypoints.md").read_text()
    example = text.split("```json\n", 1)[1].split("```", 1)[0]
    spec = PoseSpec.from_config(json.loads(example), strict=True)
    assert spec.joint_names == ("Hand", "Finger1", "Tongue", "Joystick1", "Joystick2")
    assert spec.group_table == {"Paw": (0, 1), "Tongue": (2,), "Joystick": (3, 4)}
