"""Preview grids: augmented training samples with their skeletons drawn over them (for eyeballing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hgkeras.vis.draw import draw_people, write_image


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
    (labels swapped on flips) drawn with :func:`hgkeras.vis.draw.draw_people` (left side blue,
    right side orange, centre green; joints outside the crop or not annotated are left out).
    """
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
        annotated = (visible[i] > 0).astype(np.float64)
        draw_people(tile, [(joints[i], annotated, None)], skeleton, min_score=0.5,
                    thickness=max(1, input_size // 128), colors="side", labels=False,
                    hide_unannotated=True, in_place=True)  # fmt: skip
        r, c = divmod(i, columns)
        grid[r * input_size : (r + 1) * input_size, c * input_size : (c + 1) * input_size] = tile
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_image(out, grid)
    return out
