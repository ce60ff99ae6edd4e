"""Preview grids: augmented training samples with their skeletons drawn over them (for eyeballing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hgkeras.spec import Skeleton

#: BGR colours by body side (OpenCV order): left blue, right red, centre green.
_COLORS = {"left": (255, 128, 0), "right": (0, 0, 255), "center": (0, 200, 0)}


def draw_skeleton(image: np.ndarray, joints: np.ndarray, visible: np.ndarray, skeleton: Skeleton):
    """Draw limbs and joints (x, y pixel centres) on a BGR uint8 image in place; return it."""
    import cv2

    size = image.shape[0]
    thickness = max(1, size // 128)
    for a, b in skeleton.limbs:
        if visible[a] and visible[b]:
            pa = tuple(int(round(v)) for v in joints[a])
            pb = tuple(int(round(v)) for v in joints[b])
            side = skeleton.side(a) if skeleton.side(a) == skeleton.side(b) else "center"
            cv2.line(image, pa, pb, _COLORS[side], thickness, cv2.LINE_AA)
    for j in range(len(joints)):
        if visible[j]:
            p = tuple(int(round(v)) for v in joints[j])
            cv2.circle(image, p, thickness + 1, _COLORS[skeleton.side(j)], -1, cv2.LINE_AA)
    return image


def preview_grid(
    pattern,
    out: str | Path,
    *,
    count: int = 16,
    columns: int = 4,
    split: str | None = None,
    input_size: int = 256,
    augment: bool = True,
    seed: int = 0,
) -> Path:
    """Write a PNG grid of ``count`` augmented samples from TFRecord shards; return its path.

    Each tile is the model input after the device-side augmentation, with the augmented joints
    (labels swapped on flips) drawn: left side blue, right side red.
    """
    import cv2
    import keras
    from keras import ops

    from hgkeras.data import augment as aug
    from hgkeras.data.pipeline import SOURCE_MARGIN, pose_dataset, read_pose

    if count < 1 or columns < 1:
        raise ValueError("count and columns must be >= 1")
    batch = next(iter(pose_dataset(pattern, count, training=True, split=split, seed=seed,
                                   drop_remainder=False)))  # fmt: skip
    images = batch["image"].numpy()
    n, source = images.shape[0], images.shape[1]
    skeleton = read_pose(pattern, split)
    generator = keras.random.SeedGenerator(seed)
    params = aug.sample_params(n, generator) if augment else aug.identity_params(n)
    matrices = aug.augmentation_matrices(params, source, SOURCE_MARGIN, input_size)
    x = aug.warp_images(images, matrices, input_size) / 255.0
    if augment:
        x = aug.color_jitter(x, params["color"])
    joints, visible = aug.transform_joints(
        batch["joints"].numpy(), batch["visible"].numpy(), matrices, params["flip"],
        skeleton.flip_permutation,
    )  # fmt: skip
    x = (ops.convert_to_numpy(x) * 255).round().astype(np.uint8)
    joints, visible = ops.convert_to_numpy(joints), ops.convert_to_numpy(visible)
    rows = -(-n // columns)
    grid = np.zeros((rows * input_size, columns * input_size, 3), np.uint8)
    for i in range(n):
        tile = np.ascontiguousarray(x[i, :, :, ::-1])
        draw_skeleton(tile, joints[i], visible[i] > 0, skeleton)
        r, c = divmod(i, columns)
        grid[r * input_size : (r + 1) * input_size, c * input_size : (c + 1) * input_size] = tile
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    if not cv2.imwrite(str(tmp), grid):
        raise OSError(f"could not write {out}")
    tmp.replace(out)
    return out
