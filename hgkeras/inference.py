"""Inference on person crops: the flip test and decoding to original image coordinates (``keras.ops``).

These functions work on backend tensors, so they run eagerly under every backend and trace into
exported TensorFlow graphs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from keras import ops

from hgkeras import geometry
from hgkeras.heatmaps import decode_heatmaps, flip_heatmaps
from hgkeras.joints import get_skeleton


def final_heatmaps(outputs):
    """The last stack's heatmaps from a model's output (a list of stacks, or one tensor)."""
    if isinstance(outputs, (list, tuple)):
        return outputs[-1]
    return outputs


def flip_permutation_for(model_or_joints) -> np.ndarray:
    """The left/right channel permutation for a model (by its joint count) or a joint count."""
    joints = (
        model_or_joints
        if isinstance(model_or_joints, int)
        else model_or_joints.outputs[-1].shape[-1]
    )
    return get_skeleton(int(joints)).flip_permutation


def heatmaps_with_flip(
    model, images, flip_permutation: Sequence[int] | None = None, flip: bool = True
):
    """Final-stack heatmaps of ``model`` on ``images`` (N, H, W, 3), averaged with the mirrored pass.

    The mirrored image's heatmaps are mirrored back with left/right channels swapped before
    averaging (METHOD.md "Flip test"). ``flip=False`` returns the plain prediction.
    """
    images = ops.convert_to_tensor(images)
    heatmaps = final_heatmaps(model(images, training=False))
    if not flip:
        return heatmaps
    if flip_permutation is None:
        flip_permutation = flip_permutation_for(model)
    mirrored = final_heatmaps(model(ops.flip(images, axis=2), training=False))
    return (heatmaps + flip_heatmaps(mirrored, flip_permutation)) / 2.0


def decode_to_image(heatmaps, centers, scales):
    """Keypoints in original image pixels and scores from crop heatmaps (N, h, w, J).

    ``centers`` (N, 2) and ``scales`` (N,) describe each crop's person box (0-based pixels).
    Returns (keypoints (N, J, 2), scores (N, J)).
    """
    coords, scores = decode_heatmaps(heatmaps)
    size = tuple(int(s) for s in heatmaps.shape[1:3])
    return geometry.heatmap_to_image(coords, centers, scales, size), scores


def decode_to_input(heatmaps, input_size: Sequence[int]):
    """Keypoints in the model's input pixels (the 256x256 crop) and scores from heatmaps (N, h, w, J)."""
    coords, scores = decode_heatmaps(heatmaps)
    h, w = int(heatmaps.shape[1]), int(heatmaps.shape[2])
    ih, iw = int(input_size[0]), int(input_size[1])
    x = (coords[..., 0] + 0.5) * (iw / w) - 0.5
    y = (coords[..., 1] + 0.5) * (ih / h) - 0.5
    return ops.stack([x, y], axis=-1), scores


def predict_keypoints(
    model,
    crops: np.ndarray,
    centers: np.ndarray,
    scales: np.ndarray,
    flip: bool = True,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N, J, 2) in original image pixels and scores (N, J) for person crops, batched (numpy)."""
    crops = np.asarray(crops, np.float32)
    centers = np.asarray(centers, np.float32).reshape(-1, 2)
    scales = np.asarray(scales, np.float32).reshape(-1)
    if not (len(crops) == len(centers) == len(scales)):
        raise ValueError(
            f"crops ({len(crops)}), centers ({len(centers)}) and scales ({len(scales)}) must have the same length"
        )
    perm = flip_permutation_for(model)
    keypoints, scores = [], []
    for start in range(0, len(crops), batch_size):
        stop = start + batch_size
        heatmaps = heatmaps_with_flip(model, crops[start:stop], perm, flip=flip)
        k, s = decode_to_image(heatmaps, centers[start:stop], scales[start:stop])
        keypoints.append(ops.convert_to_numpy(k))
        scores.append(ops.convert_to_numpy(s))
    num_joints = model.outputs[-1].shape[-1]
    if not keypoints:
        return np.zeros((0, num_joints, 2), np.float32), np.zeros((0, num_joints), np.float32)
    return np.concatenate(keypoints), np.concatenate(scores)
