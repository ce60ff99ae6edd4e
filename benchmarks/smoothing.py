"""Keypoint smoothing in video: jitter and lag of the One-Euro filter on clips with known motion.

Clips are made from the five shipped MPII sample images (``hgkeras/data/samples/mpii``; person crops
440 to 1180 px high), each moved by known shifts ``s[t]`` (bilinear, sub-pixel; the person box
follows the shift rounded to whole pixels, as a detector's box would), and run frame by frame
through the real :class:`PosePredictor` (its folded network traced once by ``tf.function``):

* **shake** (150 frames): ``s[t]`` drawn independently per frame, normal with 1 px standard
  deviation per axis (frame-to-frame moves from sub-pixel to a few pixels), around a fixed position;
* **steady** (40 frames each): the image translated at a constant 0.5, 1, 2, 4 and 8 px per frame
  along x, towards the image's centre.

The raw keypoints are smoothed by :class:`hgkeras.inference.smoothing.PoseSmoother` at 25 fps with
the default options, and with a grid of ``min_cutoff`` x ``beta`` x ``d_cutoff`` (the figures that
chose the defaults). Measures (:mod:`hgkeras.inference.smoothing`), over the joints of all five
people:

* jitter: the mean length of the keypoints' second difference ``|k[t+1] - 2 k[t] + k[t-1]|`` (px),
  zero for motion at constant velocity; reported as smoothed / raw (target: at most 0.5 on shake);
* lag: the delay (frames, to 0.001) that best aligns the keypoints with the true positions
  ``b + s[t]`` (``b``: each joint's mean raw position less the shift, the model's own estimate of
  the joint), linearly interpolated between frames; the *added lag* is the smoothed keypoints' lag
  less the raw ones' (target: at most 1 frame on steady motion of 1 px per frame and faster);
* error: the mean distance (px) to the true positions ``b + s[t]``.

Usage::

    python train.py --out /tmp/embedded-smooth            # once (the embedded run, CPU minutes)
    python benchmarks/smoothing.py --model /tmp/embedded-smooth/best.keras [--raw-cache raw.npz]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from _workers import cpu_model  # noqa: E402

from hgkeras.inference.smoothing import (  # noqa: E402
    PoseSmoother,
    SmoothingOptions,
    jitter,
    lag,
)

RESULTS = Path(__file__).resolve().parent / "results" / "smoothing.json"
FPS = 25.0
SHAKE_FRAMES = 150
SHAKE_SIGMA = 1.0
STEADY_FRAMES = 40
STEADY_SPEEDS = (0.5, 1.0, 2.0, 4.0, 8.0)
GRID_MIN_CUTOFF = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
GRID_BETA = (0.0, 2.5, 5.0, 10.0, 20.0)
GRID_D_CUTOFF = (0.25, 1.0)
#: The targets: smoothed jitter at most this fraction of the raw one on the shake clip ...
TARGET_JITTER_RATIO = 0.5
#: ... and at most this lag (frames) added on steady motion of at least 1 px per frame.
TARGET_LAG = 1.0


def samples() -> list[dict]:
    """The shipped MPII people: BGR image, person box (its crop padded by 1.25 is the record's)."""
    from hgkeras.data.readers import read_mpii_json
    from hgkeras.geometry import PIXELS_PER_SCALE
    from hgkeras.inference.predictor import BOX_PADDING
    from hgkeras.training.run import default_samples_dir

    folder = default_samples_dir()
    people = []
    for record in read_mpii_json(folder / "samples.json"):
        half = PIXELS_PER_SCALE * float(record.scale) / BOX_PADDING / 2
        cx, cy = (float(v) for v in record.center)
        box = np.array([cx - half, cy - half, cx + half, cy + half])
        people.append({"image": cv2.imread(str(folder / "images" / record.image)), "box": box,
                       "name": record.image})  # fmt: skip
    return people


def compiled(predictor):
    """The same predictor with its (folded) network traced once by ``tf.function``: the same
    heatmaps to float rounding, without Keras' layer-by-layer eager calls (0.5 s a frame here)."""
    import tensorflow as tf

    from hgkeras.inference.predictor import PosePredictor

    network = predictor.network
    traced = tf.function(lambda images: network(images, training=False), reduce_retracing=True)
    return PosePredictor.from_network(traced, predictor.pose, predictor.input_size, predictor.flip)


def shake_shifts(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, SHAKE_SIGMA, (SHAKE_FRAMES, 2))


def steady_shifts(speed: float, person: dict) -> np.ndarray:
    """Constant motion along x, towards the image's centre (the person stays in the picture)."""
    toward = 1.0 if (person["box"][0] + person["box"][2]) / 2 < person["image"].shape[1] / 2 else -1
    return np.stack([toward * speed * np.arange(STEADY_FRAMES), np.zeros(STEADY_FRAMES)], axis=1)


def run_clip(predictor, person: dict, shifts: np.ndarray) -> list:
    """The raw people of each frame of ``person``'s image moved by ``shifts`` (T, 2)."""
    image = person["image"]
    height, width = image.shape[:2]
    frames = []
    for shift in shifts:
        matrix = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
        frame = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)  # fmt: skip
        box = person["box"] + np.tile(np.round(shift), 2)
        frames.append(predictor.predict(frame, [box], color="bgr"))
    return frames


def predict_clips(predictor, people: list[dict], seed: int) -> dict[str, list]:
    """{clip name: [(raw people per frame, shifts (T, 2)) per person]} of every clip."""
    rng = np.random.default_rng(seed)
    clips: dict[str, list] = {"shake": []}
    for person in people:
        shifts = shake_shifts(rng)
        clips["shake"].append((run_clip(predictor, person, shifts), shifts))
    for speed in STEADY_SPEEDS:
        clips[f"steady_{speed:g}px"] = [
            (run_clip(predictor, person, shifts), shifts)
            for person in people
            for shifts in [steady_shifts(speed, person)]
        ]
    return clips


def save_clips(path: str, clips: dict[str, list]) -> None:
    """The raw predictions of every clip as a .npz (to try other options without the model)."""
    arrays = {}
    for name, runs in clips.items():
        for i, (frames, shifts) in enumerate(runs):
            arrays[f"{name}/{i}/shifts"] = shifts
            for field in ("keypoints", "scores", "box", "center", "scale"):
                arrays[f"{name}/{i}/{field}"] = np.stack(
                    [np.asarray(getattr(people[0], field)) for people in frames]
                )
    np.savez_compressed(path, **arrays)


def load_clips(path: str, people: list[dict]) -> dict[str, list]:
    """The clips written by :func:`save_clips`, as lists of one-person frames."""
    from hgkeras.inference.predictor import PersonPose
    from hgkeras.spec import get_pose

    names = get_pose("mpii").joint_names
    data = np.load(path)
    clips: dict[str, list] = {}
    for name in ["shake"] + [f"steady_{speed:g}px" for speed in STEADY_SPEEDS]:
        clips[name] = []
        for i in range(len(people)):
            fields = {
                f: data[f"{name}/{i}/{f}"]
                for f in ("keypoints", "scores", "box", "center", "scale")
            }
            frames = [
                [PersonPose(fields["keypoints"][t], fields["scores"][t], names,
                            tuple(fields["box"][t]), fields["center"][t], float(fields["scale"][t]))]
                for t in range(len(fields["scale"]))
            ]  # fmt: skip
            clips[name].append((frames, data[f"{name}/{i}/shifts"]))
    return clips


def smooth(frames: list, options: SmoothingOptions) -> np.ndarray:
    """(T, J, 2) smoothed keypoints of one person's frames at ``FPS``."""
    smoother = PoseSmoother(options)
    out = []
    for index, people in enumerate(frames):
        ((_, person),) = smoother(people, index / FPS)
        out.append(person.keypoints)
    return np.stack(out).astype(np.float64)


def raw(frames: list) -> np.ndarray:
    return np.stack([people[0].keypoints for people in frames]).astype(np.float64)


def measure(clips: list[tuple[list, np.ndarray]], options: SmoothingOptions | None) -> dict:
    """Jitter, lag and error of one kind of clip, pooled over the people (joints side by side)."""
    tracks, truths = [], []
    for frames, shifts in clips:
        keypoints = raw(frames)
        offset = np.mean(keypoints - shifts[:, None, :], axis=0)  # the model's joint estimate b
        truths.append(offset[None] + shifts[:, None, :])
        tracks.append(keypoints if options is None else smooth(frames, options))
    track, truth = np.concatenate(tracks, axis=1), np.concatenate(truths, axis=1)
    return {
        "jitter_px": jitter(track),
        "lag_frames": lag(track, truth),
        "error_px": float(np.mean(np.linalg.norm(track - truth, axis=-1))),
    }


def compare(raw_figures: dict, smoothed: dict) -> dict:
    """Per clip: smoothed jitter / raw jitter, and the lag the smoothing adds (smoothed - raw)."""
    return {
        name: {
            "jitter_ratio": smoothed[name]["jitter_px"] / raw_figures[name]["jitter_px"],
            "added_lag_frames": smoothed[name]["lag_frames"] - raw_figures[name]["lag_frames"],
        }
        for name in smoothed
    }


def meets_targets(figures: dict) -> bool:
    lags = [v["added_lag_frames"] for k, v in figures.items() if k.startswith("steady") and
            float(k.split("_")[1][:-2]) >= 1.0]  # fmt: skip
    return figures["shake"]["jitter_ratio"] <= TARGET_JITTER_RATIO and max(lags) <= TARGET_LAG


def evaluate(clips: dict, options: SmoothingOptions | None) -> dict:
    return {name: measure(clip, options) for name, clip in clips.items()}


def rounded(value):
    """``value`` with its floats rounded to 4 decimals (the lag is found to 0.001 frame)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/embedded/best.keras", help="a .keras model")
    parser.add_argument("--flip", action="store_true", help="with the flip test (default: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--raw-cache",
        metavar="NPZ",
        help="read the raw predictions from this file if it exists, else write them there",
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from hgkeras.inference.predictor import PosePredictor
    from hgkeras.io import atomic_write_json

    people = samples()
    start = time.perf_counter()
    cached = bool(args.raw_cache) and Path(args.raw_cache).is_file()
    if cached:
        clips = load_clips(args.raw_cache, people)
    else:
        predictor = compiled(PosePredictor(args.model, flip=args.flip))
        clips = predict_clips(predictor, people, args.seed)
        if args.raw_cache:
            save_clips(args.raw_cache, clips)
    predict_seconds = time.perf_counter() - start

    raw_figures = evaluate(clips, None)
    default = SmoothingOptions()
    smoothed = evaluate(clips, default)
    figures = compare(raw_figures, smoothed)
    grid = []
    for min_cutoff in GRID_MIN_CUTOFF:
        for beta in GRID_BETA:
            for d_cutoff in GRID_D_CUTOFF:
                options = SmoothingOptions(min_cutoff=min_cutoff, beta=beta, d_cutoff=d_cutoff)
                row = compare(raw_figures, evaluate(clips, options))
                grid.append({"min_cutoff": min_cutoff, "beta": beta, "d_cutoff": d_cutoff,
                             "meets_targets": meets_targets(row), **row})  # fmt: skip

    print(f"{'clip':<13} {'raw jitter':>10} {'smoothed':>9} {'ratio':>6} {'lag raw':>8} "
          f"{'smoothed':>9} {'added':>6} {'err raw':>8} {'smoothed':>9}")  # fmt: skip
    for name in clips:
        r, s, f = raw_figures[name], smoothed[name], figures[name]
        print(f"{name:<13} {r['jitter_px']:>10.2f} {s['jitter_px']:>9.2f} {f['jitter_ratio']:>6.2f} "
              f"{r['lag_frames']:>8.2f} {s['lag_frames']:>9.2f} {f['added_lag_frames']:>6.2f} "
              f"{r['error_px']:>8.2f} {s['error_px']:>9.2f}")  # fmt: skip
    print(f"defaults {default.to_dict()}: targets met: {meets_targets(figures)}")
    per_person = {}
    for i, person in enumerate(people):  # the same options on crops 440 to 1180 px high
        alone = {name: [runs[i]] for name, runs in clips.items()}
        per_person[person["name"]] = compare(evaluate(alone, None), evaluate(alone, default))
        row = per_person[person["name"]]
        lags = " ".join(f"{row[f'steady_{v:g}px']['added_lag_frames']:5.2f}" for v in STEADY_SPEEDS)
        crop = clips["shake"][i][0][0][0].scale * 200
        print(f"  {person['name']} (crop {crop:.0f} px): jitter ratio "
              f"{row['shake']['jitter_ratio']:.2f} | added lag {lags}")  # fmt: skip
    print(f"\ngrid: jitter ratio on shake | added lag (frames) at {STEADY_SPEEDS} px/frame")
    for row in grid:
        lags = " ".join(f"{row[f'steady_{v:g}px']['added_lag_frames']:5.2f}" for v in STEADY_SPEEDS)
        print(f"  min_cutoff {row['min_cutoff']:<4g} beta {row['beta']:<4g} d_cutoff "
              f"{row['d_cutoff']:<5g} {row['shake']['jitter_ratio']:.2f} | {lags}"
              f"{'  meets targets' if row['meets_targets'] else ''}")  # fmt: skip
    timing = (
        "raw predictions from the cache" if cached else f"{predict_seconds:.0f} s of prediction"
    )
    print(f"({cpu_model()}, {os.cpu_count()} cores; {timing})")

    report = {
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
        "model": str(args.model),
        "flip": args.flip,
        "fps": FPS,
        "people": [p["name"] for p in people],
        "clips": {
            "shake": {"frames": SHAKE_FRAMES, "sigma_px": SHAKE_SIGMA, "seed": args.seed},
            "steady": {"frames": STEADY_FRAMES, "speeds_px_per_frame": list(STEADY_SPEEDS)},
        },
        "person_crop_height_px": [
            float(clips["shake"][i][0][0][0].scale * 200) for i in range(len(people))
        ],
        "default_options": default.to_dict(),
        "targets": {
            "jitter_ratio": TARGET_JITTER_RATIO,
            "added_lag_frames": TARGET_LAG,
            "lag_at_speeds_px_per_frame": ">= 1",
        },  # fmt: skip
        "raw": raw_figures,
        "smoothed": smoothed,
        "default_figures": figures,
        "default_meets_targets": meets_targets(figures),
        "default_per_person": per_person,
        "grid": grid,
        "predict_seconds": None if cached else predict_seconds,
    }
    atomic_write_json(args.out, rounded(report))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
