"""How precisely each heatmap decoder (paper, dark, udp) finds keypoints, with the published gains.

    python benchmarks/decoders.py                                   # (a) synthetic heatmaps
    python benchmarks/decoders.py --model best.keras --data samples.json --images images/ --no-flip

(a) Synthetic heatmaps with known sub-pixel centres: Gaussians of peak 1 and sigma 1, 1.5 and 2 heatmap
pixels at uniformly random positions of a 64x64 grid (at least 3 pixels from the border), plus noise
of standard deviation 0, 0.02, 0.05 and 0.1 (relative to the peak): white (independent per pixel)
or smooth (white noise blurred with a Gaussian of sigma 1 pixel, rescaled to the same standard
deviation, closer to a network's errors). Each decoder locates the peaks on the heatmap grid
(:meth:`hgkeras.codec.HeatmapCodec.locate`, blurring with the Gaussians' sigma); the table gives the
mean, median and 95th percentile of the distance to the true centre in heatmap pixels. This measures
the decoding step alone: UDP's other half (its grid alignment, a training-time choice) does not enter.

(b) A trained model on annotated data (``--model``, repeatable, with ``--data``: an annotation file
and ``--images``, or TFRecords): for every decoder that fits the model's encoding (``paper`` and
``dark`` for models trained with the paper's targets, ``udp`` for udp-trained ones), the mean
keypoint error in original image pixels and in heatmap pixels, and PCK at 0.05 and 0.1 of the
data's normaliser (MPII: head size, FLIC: torso size, other sets: the box's longer side) over the annotated joints, through
:func:`hgkeras.evaluation.evaluate.gather_predictions` (the path of ``hgkeras evaluate``).

Prints the tables and writes ``benchmarks/results/decoders.json`` (machine, versions, settings, both
parts and the published gains).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from _workers import machine  # noqa: E402

SIGMAS = (1.0, 1.5, 2.0)
NOISES = (0.0, 0.02, 0.05, 0.1)
NOISE_KINDS = ("white", "smooth")
GRID = 64
#: Gaussians per setting (maps x joints).
MAPS, JOINTS = 250, 4
#: PCK thresholds of part (b), as shares of the data's normaliser.
PCK_THRESHOLDS = (0.05, 0.1)

#: The published gains of the methods over the argmax + quarter-pixel decoding (their papers).
PUBLISHED = [
    {
        "method": "dark",
        "paper": "Zhang et al., Distribution-Aware Coordinate Representation for Human Pose "
        "Estimation, CVPR 2020",
        "model": "8-stack Hourglass, 128x96 input",
        "data": "COCO val2017",
        "metric": "AP",
        "before": 67.6,
        "after": 70.8,
    },
    {
        "method": "dark",
        "paper": "Zhang et al., CVPR 2020",
        "model": "HRNet-W32",
        "data": "MPII validation",
        "metric": "PCKh@0.1",
        "before": 37.7,
        "after": 42.0,
    },
    {
        "method": "udp",
        "paper": "Huang et al., The Devil is in the Details: Delving into Unbiased Data Processing "
        "for Human Pose Estimation, CVPR 2020",
        "model": "HRNet-W32, 256x192 input",
        "data": "COCO val2017",
        "metric": "AP",
        "before": 75.6,
        "after": 76.8,
    },
]


def synthetic_heatmaps(sigma: float, noise: float, kind: str, seed: int):
    """(heatmaps (MAPS, GRID, GRID, JOINTS) float32, true centres (MAPS, JOINTS, 2))."""
    from keras import ops

    from hgkeras.codec import render_heatmaps

    rng = np.random.default_rng(seed)
    centres = rng.uniform(3.0, GRID - 4.0, (MAPS, JOINTS, 2)).astype(np.float32)
    maps = ops.convert_to_numpy(render_heatmaps(centres, np.ones((MAPS, JOINTS)), GRID, sigma))
    if noise > 0:
        extra = rng.standard_normal(maps.shape).astype(np.float32)
        if kind == "smooth":
            import cv2

            for n in range(MAPS):
                extra[n] = cv2.GaussianBlur(extra[n], (0, 0), 1.0).reshape(extra[n].shape)
            extra /= extra.std()
        maps = maps + noise * extra
    return maps, centres


def measure_synthetic() -> list[dict]:
    """Part (a): one row per (sigma, noise kind, noise, decoder)."""
    from keras import ops

    from hgkeras.codec import DECODERS, HeatmapCodec

    rows = []
    seed = 0
    for sigma in SIGMAS:
        for kind in NOISE_KINDS:
            for noise in NOISES:
                if kind == "smooth" and noise == 0:
                    continue  # the same maps as white noise 0
                maps, centres = synthetic_heatmaps(sigma, noise, kind, seed)
                seed += 1
                for decoder in DECODERS:
                    start = time.perf_counter()
                    coords, _ = HeatmapCodec(decoder, sigma).locate(maps)
                    seconds = time.perf_counter() - start
                    error = np.linalg.norm(ops.convert_to_numpy(coords) - centres, axis=-1)
                    rows.append({
                        "sigma": sigma, "noise": noise, "noise_kind": "none" if noise == 0 else kind,
                        "decoder": decoder, "mean_px": float(error.mean()),
                        "median_px": float(np.median(error)), "p95_px": float(np.percentile(error, 95)),
                        "ms_per_map": 1000.0 * seconds / (MAPS * JOINTS),
                    })  # fmt: skip
    return rows


def synthetic_table(rows: list[dict]) -> str:
    """Markdown: one line per (sigma, noise), mean (95th percentile) error per decoder."""
    decoders = list(dict.fromkeys(r["decoder"] for r in rows))
    lines = [
        "| sigma | noise | " + " | ".join(f"{d} mean (p95)" for d in decoders) + " |",
        "|---|---|" + "---|" * len(decoders),
    ]
    keys = list(dict.fromkeys((r["sigma"], r["noise_kind"], r["noise"]) for r in rows))
    for sigma, kind, noise in keys:
        cells = []
        for decoder in decoders:
            (row,) = [r for r in rows if (r["sigma"], r["noise_kind"], r["noise"], r["decoder"])
                      == (sigma, kind, noise, decoder)]  # fmt: skip
            cells.append(f"{row['mean_px']:.3f} ({row['p95_px']:.3f})")
        label = "0" if kind == "none" else f"{noise:g} {kind}"
        lines.append(f"| {sigma:g} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_model(model_path: str, data: str, images: str | None, split: str | None,
                  flip: bool, batch_size: int) -> dict:  # fmt: skip
    """Part (b) for one model: per fitting decoder, errors and PCK against the annotations."""
    from hgkeras.codec import DECODERS, HeatmapCodec, codec_of
    from hgkeras.evaluation.evaluate import gather_predictions
    from hgkeras.geometry import PIXELS_PER_SCALE
    from hgkeras.models.loading import load_model
    from hgkeras.spec import get_pose

    network = load_model(model_path, fold_batch_norms=True)
    trained = codec_of(network)
    heatmap_height = int(network.outputs[-1].shape[1])
    results = {}
    for decoder in DECODERS:
        if HeatmapCodec(decoder).encoding != trained.encoding:
            continue
        start = time.perf_counter()
        out = gather_predictions(data, model=network, images=images, split=split, flip=flip,
                                 batch_size=batch_size, decoder=decoder)  # fmt: skip
        seconds = time.perf_counter() - start
        spec = get_pose(out["pose"])
        joints = np.asarray(out["joints"], np.float64)
        if spec.normalizer == "torso":
            normalizer = spec.torso_size(joints)
        elif spec.normalizer in ("head", "box"):  # the records' head size or box side
            normalizer = np.asarray(out["normalizer"], np.float64)
        else:  # OKS sets: PCK of the box's longer side
            from hgkeras.evaluation.evaluate import box_sides

            normalizer = box_sides(out["box"])
        seen = np.asarray(out["visible"]) > 0
        error = np.linalg.norm(out["pred"] - joints, axis=-1)
        scales = _scales(data, out, split)
        heatmap_px = error / (PIXELS_PER_SCALE * scales[:, None] / heatmap_height)
        share = error / normalizer[:, None]
        results[decoder] = {
            "mean_error_image_px": float(error[seen].mean()),
            "mean_error_heatmap_px": float(heatmap_px[seen].mean()),
            **{f"pck@{t:g}": 100.0 * float(np.mean(share[seen] <= t)) for t in PCK_THRESHOLDS},
            "joints": int(seen.sum()),
            "seconds": round(seconds, 2),
        }
    return {
        "model": str(model_path),
        "codec_trained": trained.to_config(),
        "data": str(data),
        "split": split,
        "flip": flip,
        "normalizer": spec.normalizer,
        "decoders": results,
    }


def _scales(data: str, out: dict, split: str | None) -> np.ndarray:
    """Each person's box scale (heatmap pixel size in the image), in the order of ``out``."""
    from hgkeras.evaluation.evaluate import is_annotation_file

    if is_annotation_file(data):
        from hgkeras.data import read_annotations

        return np.array([r.scale for r in read_annotations(data, split=split)], np.float64)
    from hgkeras.data import pose_dataset

    scales = [np.asarray(b["scale"]).reshape(-1) for b in pose_dataset(data, 64, training=False,
                                                                        split=split)]  # fmt: skip
    return np.concatenate(scales).astype(np.float64)


def model_table(entries: list[dict]) -> str:
    lines = [
        "| model (trained with) | decoder | mean error (image px) | mean error (heatmap px) "
        "| PCK@0.05 | PCK@0.1 |",
        "|---|---|---|---|---|---|",
    ]
    for entry in entries:
        path = Path(entry["model"])
        name = f"{path.parent.name}/{path.name} ({entry['codec_trained']['decoder']})"
        for decoder, r in entry["decoders"].items():
            lines.append(
                f"| {name} | {decoder} | {r['mean_error_image_px']:.2f} | "
                f"{r['mean_error_heatmap_px']:.3f} | {r['pck@0.05']:.1f} | {r['pck@0.1']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="trained .keras (repeatable)")
    parser.add_argument("--data", help="annotation file or TFRecords to score --model on")
    parser.add_argument("--images", help="image folder of an annotation file")
    parser.add_argument("--split", help="split of multi-split data (e.g. valid)")
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="flip test in part (b) (default on; the embedded run's model: off)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--note", default="", help="free text stored with the results (the data)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decoders.json"))
    args = parser.parse_args(argv)  # fmt: skip
    if args.model and not args.data:
        parser.error("--model needs --data")

    import keras

    from hgkeras import io

    report = {
        "machine": machine(),
        "versions": {p: md.version(p) for p in ("keras", "tensorflow", "numpy")},
        "backend": keras.backend.backend(),
        "note": args.note,
        "published": PUBLISHED,
        "synthetic": {
            "settings": {
                "grid": GRID,
                "gaussians_per_setting": MAPS * JOINTS,
                "sigmas": list(SIGMAS),
                "noise_std_relative_to_peak": list(NOISES),
                "noise_kinds": list(NOISE_KINDS),
                "smooth_noise_blur_sigma": 1.0,
                "margin_px": 3,
            },  # fmt: skip
        },
        "models": [],
    }
    rows = measure_synthetic()
    report["synthetic"]["rows"] = rows
    report["synthetic"]["table"] = synthetic_table(rows)
    print("(a) synthetic heatmaps: distance to the true centre in heatmap pixels, mean (p95)")
    print(report["synthetic"]["table"])
    for path in args.model:
        report["models"].append(
            measure_model(path, args.data, args.images, args.split, args.flip, args.batch_size)
        )
    if report["models"]:
        report["models_table"] = model_table(report["models"])
        print("\n(b) trained models")
        print(report["models_table"])
    report["machine"]["load_average_at_end"] = os.getloadavg()
    io.atomic_write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
