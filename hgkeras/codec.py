"""The heatmap codec: Gaussian targets, decoding to crop and image pixels, the flip test (``keras.ops``).

Training renders targets with :func:`render_heatmaps`; evaluation (on TFRecords and on image files),
:class:`hgkeras.PosePredictor` and the exported graphs run the network and average the mirrored pass
with :func:`heatmaps_with_flip` and decode with :func:`decode_to_image` / :func:`decode_to_input`
(batched over numpy crops by :func:`predict_keypoints`). The flip permutation always comes from the
model's pose spec (:mod:`hgkeras.spec`). Everything is batched backend tensors, so it runs eagerly under every
backend and traces into exported TensorFlow graphs. Heatmap coordinates follow
:mod:`hgkeras.geometry`: (x, y) in 0-based pixel centres of the heatmap grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from keras import ops

from hgkeras import geometry

#: Default Gaussian sigma in heatmap pixels: the paper's text's 1 at 64x64 (the Torch code's is 1.75).
DEFAULT_SIGMA = 1.0


def render_heatmaps(
    joints,
    visible,
    heatmap_size: int | Sequence[int],
    sigma: float = DEFAULT_SIGMA,
    dtype: str = "float32",
):
    """Gaussian target heatmaps for a batch of people.

    Args:
        joints: (N, J, 2) joint positions (x, y) in heatmap coordinates.
        visible: (N, J) annotated flags (non-zero = annotated).
        heatmap_size: int or (height, width) of the grid.
        sigma: Gaussian standard deviation in heatmap pixels.

    Returns (N, H, W, J): ``exp(-d^2 / (2 sigma^2))`` centred on each joint (peak 1 at the joint),
    all zeros for joints that are not annotated, not finite, or outside the grid.
    """
    if isinstance(heatmap_size, int):
        height, width = heatmap_size, heatmap_size
    else:
        height, width = int(heatmap_size[0]), int(heatmap_size[1])
    joints = ops.cast(ops.convert_to_tensor(joints), "float32")
    visible = ops.cast(ops.convert_to_tensor(visible), "float32")
    x = joints[..., 0]
    y = joints[..., 1]
    finite = ops.logical_and(ops.isfinite(x), ops.isfinite(y))
    inside = (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)
    keep = ops.cast(finite & inside & (visible > 0), "float32")  # (N, J)
    x = ops.where(finite, x, ops.zeros_like(x))
    y = ops.where(finite, y, ops.zeros_like(y))
    xs = ops.arange(width, dtype="float32")
    ys = ops.arange(height, dtype="float32")
    # (N, J, W) and (N, J, H): the Gaussian is separable.
    gx = ops.exp(-ops.square(xs[None, None, :] - x[..., None]) / (2.0 * sigma**2))
    gy = ops.exp(-ops.square(ys[None, None, :] - y[..., None]) / (2.0 * sigma**2))
    maps = ops.einsum("njh,njw->nhwj", gy, gx * keep[..., None])
    return ops.cast(maps, dtype)


def decode_heatmaps(heatmaps):
    """Joint positions and confidences from heatmaps (N, H, W, J).

    The position is the argmax moved a quarter pixel towards the higher neighbour in x and in y,
    for peaks that are not on the grid's border (as the Torch code); the confidence is the maximum.

    Returns (coords (N, J, 2) as (x, y) heatmap coordinates, scores (N, J)).
    """
    heatmaps = ops.cast(ops.convert_to_tensor(heatmaps), "float32")
    shape = ops.shape(heatmaps)
    height, width = shape[1], shape[2]
    maps = ops.transpose(heatmaps, (0, 3, 1, 2))  # (N, J, H, W)
    flat = ops.reshape(maps, (shape[0], shape[3], -1))
    index = ops.argmax(flat, axis=-1)
    scores = ops.max(flat, axis=-1)
    px = ops.cast(index % width, "int32")
    py = ops.cast(index // width, "int32")

    def sample(dx: int, dy: int):
        qx = ops.clip(px + dx, 0, width - 1)
        qy = ops.clip(py + dy, 0, height - 1)
        idx = ops.cast(qy * width + qx, "int32")
        return ops.squeeze(ops.take_along_axis(flat, idx[..., None], axis=-1), axis=-1)

    fx = ops.cast(px, "float32")
    fy = ops.cast(py, "float32")
    # As the Torch reference: shift only peaks with neighbours on all four sides.
    inner = ops.cast((px > 0) & (px < width - 1) & (py > 0) & (py < height - 1), "float32")
    fx = fx + 0.25 * ops.sign(sample(1, 0) - sample(-1, 0)) * inner
    fy = fy + 0.25 * ops.sign(sample(0, 1) - sample(0, -1)) * inner
    return ops.stack([fx, fy], axis=-1), scores


def flip_heatmaps(heatmaps, flip_permutation: Sequence[int]):
    """Mirror heatmaps (N, H, W, J) left-right and swap left/right joint channels."""
    heatmaps = ops.convert_to_tensor(heatmaps)
    mirrored = ops.flip(heatmaps, axis=2)
    return ops.take(mirrored, ops.convert_to_tensor(list(flip_permutation), dtype="int32"), axis=3)


def final_heatmaps(outputs):
    """The last stack's heatmaps from a model's output (a list of stacks, or one tensor)."""
    if isinstance(outputs, (list, tuple)):
        return outputs[-1]
    return outputs


def network_heatmaps(network, images):
    """Final-stack heatmaps of ``network`` on ``images``.

    ``network`` is a Keras model (run in inference mode) or any callable from images (N, H, W, 3)
    float32 in [0, 1] to heatmaps (N, h, w, J) or a list of stacks (e.g. an exported runtime).
    """
    import keras

    if isinstance(network, keras.Layer):
        return final_heatmaps(network(images, training=False))
    return ops.convert_to_tensor(final_heatmaps(network(images)))


def heatmaps_with_flip(network, images, flip_permutation: Sequence[int] | None, flip: bool = True):
    """Final-stack heatmaps of ``network`` on ``images`` (N, H, W, 3), averaged with the mirrored pass.

    The mirrored image's heatmaps are mirrored back with left/right channels swapped
    (``flip_permutation``, from the pose spec: :attr:`hgkeras.spec.PoseSpec.flip_permutation`)
    before averaging (docs/method.md "Flip test"). ``flip=False`` returns the plain prediction.
    """
    images = ops.convert_to_tensor(images)
    heatmaps = network_heatmaps(network, images)
    if not flip:
        return heatmaps
    if flip_permutation is None:
        raise ValueError("the flip test needs the pose spec's flip permutation")
    mirrored = network_heatmaps(network, ops.flip(images, axis=2))
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
    network,
    crops: np.ndarray,
    centers: np.ndarray,
    scales: np.ndarray,
    flip_permutation: Sequence[int] | None,
    flip: bool = True,
    batch_size: int = 16,
    return_heatmaps: bool = False,
) -> dict[str, np.ndarray]:
    """Keypoints of person crops in original image pixels, batched (numpy in, numpy out).

    ``crops`` (N, H, W, 3) float32 in [0, 1] are the person boxes ``centers`` (N, 2), ``scales``
    (N,) cropped by :mod:`hgkeras.crop`; ``network`` is as in :func:`network_heatmaps`. Returns
    ``keypoints`` (N, J, 2), ``scores`` (N, J) and, with ``return_heatmaps``, ``heatmaps``.
    """
    crops = np.asarray(crops, np.float32)
    centers = np.asarray(centers, np.float32).reshape(-1, 2)
    scales = np.asarray(scales, np.float32).reshape(-1)
    if not (len(crops) == len(centers) == len(scales)):
        raise ValueError(
            f"crops ({len(crops)}), centers ({len(centers)}) and scales ({len(scales)}) must "
            "have the same length"
        )
    if len(crops) == 0:
        raise ValueError("no person crops to predict")
    out: dict[str, list[np.ndarray]] = {"keypoints": [], "scores": []}
    if return_heatmaps:
        out["heatmaps"] = []
    for start in range(0, len(crops), batch_size):
        stop = start + batch_size
        heatmaps = heatmaps_with_flip(network, crops[start:stop], flip_permutation, flip=flip)
        keypoints, scores = decode_to_image(heatmaps, centers[start:stop], scales[start:stop])
        out["keypoints"].append(ops.convert_to_numpy(keypoints))
        out["scores"].append(ops.convert_to_numpy(scores))
        if return_heatmaps:
            out["heatmaps"].append(ops.convert_to_numpy(heatmaps))
    return {key: np.concatenate(values) for key, values in out.items()}
