"""``hgkeras predict``: poses on images, folders, videos, webcams and streams -> JSON + overlays."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from hgkeras.codec import DECODERS

#: File name endings read as still images (others in a folder are skipped).
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jp2",
)  # fmt: skip
#: File name endings read as videos with OpenCV's VideoCapture.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
#: ``SmoothingOptions`` fields set by ``--smooth-NAME`` flags.
SMOOTHING_FLAGS = ("min_cutoff", "beta", "d_cutoff", "min_score")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="run a model on images, folders, videos, a webcam or a stream; write keypoint JSON "
        "and overlays",
        description="Estimate poses with a saved model. For each image: OUT/NAME.json (keypoints in "
        "the upright image's pixels, scores, joint names per person) and OUT/NAME.png (skeleton "
        "overlay). For each video, camera index (0 = first webcam) or stream URL (rtsp://, "
        "http://): OUT/NAME.json (or .jsonl with --jsonl) with one entry per frame and OUT/NAME.mp4 "
        "(H.264 overlay with PyAV installed). Folders are read in sorted order (images and videos "
        "inside, not recursive). People come from --box, --boxes or --detect; without any, the "
        "whole image is one person.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image, folder, video file, camera index (0, 1, ...) or stream URL",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a saved .keras model or an exported one (SavedModel folder, .onnx, .tflite, .xml)",
    )
    parser.add_argument(
        "--box",
        nargs=4,
        type=float,
        action="append",
        metavar=("X1", "Y1", "X2", "Y2"),
        help="a person box in pixels (repeat for several people); applies to every input",
    )
    parser.add_argument(
        "--boxes",
        metavar="FILE",
        help="person boxes per image from a COCO detection-results JSON ([{image_id or "
        "file_name, bbox: [x, y, w, h], score}]); an int image_id matches 000000000785.jpg",
    )
    parser.add_argument(
        "--detect",
        action="store_true",
        help="find people with OpenCV's built-in HOG people detector (no download)",
    )
    parser.add_argument(
        "--min-box-score",
        type=float,
        default=0.5,
        help="--boxes/--detect: keep boxes scoring at least this (default 0.5)",
    )
    parser.add_argument(
        "--box-nms",
        type=float,
        metavar="IOU",
        help="--boxes: drop boxes overlapping a better one by more than IOU (default: keep all)",
    )
    parser.add_argument("--no-flip", action="store_true", help="skip the flip test (2x faster)")
    parser.add_argument(
        "--decoder",
        choices=DECODERS,
        help="heatmap decoder: paper, dark or udp (default: the codec the model was trained or "
        "exported with; docs/predict.md)",
    )
    parser.add_argument(
        "--heatmaps",
        action="store_true",
        help="also write OUT/NAME_heatmaps.png (one montage per person, images only)",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=0.3,
        help="joints below this confidence are drawn faded (default 0.3)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="person crops per batch")
    parser.add_argument(
        "--max-frames", type=int, help="videos, cameras, streams: stop after this many frames"
    )
    parser.add_argument(
        "--jsonl", action="store_true", help="videos: write NAME.jsonl, one JSON line per frame"
    )
    from hgkeras.inference.smoothing import SmoothingOptions

    default = SmoothingOptions()
    smooth = parser.add_argument_group(
        "smoothing (videos, cameras, streams)",
        "a One-Euro filter per keypoint of each person, followed from frame to frame by box "
        "overlap; the JSON and the overlay show the smoothed keypoints (docs/predict.md)",
    )
    smooth.add_argument(
        "--smooth", action="store_true", help="smooth the keypoints over time (One-Euro filter)"
    )
    smooth.add_argument(
        "--smooth-min-cutoff",
        type=float,
        metavar="HZ",
        help="cutoff frequency of a keypoint at rest: lower = steadier, more lag "
        f"(default {default.min_cutoff:g})",
    )
    smooth.add_argument(
        "--smooth-beta",
        type=float,
        metavar="B",
        help="cutoff increase in Hz per person crop height per second of speed: higher = less "
        f"lag on fast motion (default {default.beta:g})",
    )
    smooth.add_argument(
        "--smooth-d-cutoff",
        type=float,
        metavar="HZ",
        help=f"cutoff frequency of the speed estimate (default {default.d_cutoff:g})",
    )
    smooth.add_argument(
        "--smooth-min-score",
        type=float,
        metavar="S",
        help=f"keypoints scoring below S are left unsmoothed (default {default.min_score:g})",
    )
    parser.add_argument("--no-overlay", action="store_true", help="write JSON only")
    parser.add_argument(
        "--format", choices=("hgkeras", "coco"), default="hgkeras",
        help="coco: also write OUT/results.json, the COCO keypoint results of all images (any "
        "keypoint set, in the model's keypoint order, category 1; image ids from COCO file names "
        "such as 000000000785.jpg)",
    )  # fmt: skip
    parser.add_argument(
        "--overlay-max-side",
        type=int,
        default=4096,
        help="image overlays longer than this are written downscaled (default 4096 px; JSON "
        "keypoints stay in full-size pixels)",
    )
    parser.add_argument(
        "--max-pixels",
        type=float,
        default=100e6,
        help="refuse images larger than this many pixels, checked before decoding (default 100e6)",
    )
    parser.add_argument(
        "--allow-truncated",
        action="store_true",
        help="predict truncated JPEGs (decoded down to the cut) with a warning instead of an error",
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary lines")
    parser.set_defaults(func=run)


def collect_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    """(input, "image" | "video") for every input; folders expand to their sorted media files.

    Camera indices and stream URLs are videos; a file named only with digits needs ``./``.
    """
    from hgkeras.inference.video import source_kind

    items: list[tuple[str, str]] = []
    for name in inputs:
        if source_kind(name) != "file":
            items.append((name, "video"))
            continue
        path = Path(name)
        if path.is_dir():
            found = [
                p
                for p in sorted(path.iterdir())
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES
            ]
            if not found:
                raise ValueError(f"folder {path} holds no image or video files")
            items.extend((str(p), _kind(p)) for p in found)
        elif path.is_file():
            items.append((str(path), _kind(path)))
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return items


def _kind(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"


def _unique_stem(stem: str, used: set[str]) -> str:
    name, n = stem, 1
    while name in used:
        name = f"{stem}_{n}"
        n += 1
    used.add(name)
    return name


def _progress(quiet: bool):
    from tqdm import tqdm

    def wrap(iterable, total, desc):
        return tqdm(iterable, total=total, desc=desc, unit="frame" if desc else "image",
                    disable=quiet, file=sys.stderr, dynamic_ncols=True)  # fmt: skip

    return wrap


def predict_image(
    predictor,
    path: Path,
    stem: str,
    args: argparse.Namespace,
    boxes,
    coco_results: list | None = None,
) -> list[Path]:
    """Predict one image file; write its JSON, overlay and montages; return the written paths.

    ``coco_results``: a list the image's COCO results entries are added to.
    """
    from hgkeras.data.images import load_image, to_uint8_bgr
    from hgkeras.io import atomic_write_text
    from hgkeras.vis.draw import draw_people, heatmap_montage, write_image

    pixels = load_image(path, max_pixels=predictor.max_pixels, allow_truncated=args.allow_truncated)
    options: dict = {"detect": args.detect}
    if boxes is not None:
        options["boxes"], options["box_scores"] = boxes.lookup(path)
    elif args.box:
        options["boxes"] = args.box
    people = predictor.predict(pixels, color="bgr", return_heatmaps=args.heatmaps, **options)
    if coco_results is not None:
        from hgkeras.evaluation.coco import image_id_from_name, results_from_people

        coco_results += results_from_people(image_id_from_name(path), people)
    out = Path(args.out)
    record = {
        "source": str(path),
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "flip": predictor.flip,
        "decoder": predictor.codec.decoder,
        "people": [p.to_dict() for p in people],
    }
    written = [out / f"{stem}.json"]
    atomic_write_text(written[0], json.dumps(record, indent=1) + "\n")
    if not args.no_overlay:
        overlay = draw_people(to_uint8_bgr(pixels, "bgr"), people, predictor.skeleton,
                              min_score=args.min_score, max_side=args.overlay_max_side,
                              in_place=True)  # fmt: skip
        written.append(out / f"{stem}.png")
        write_image(written[-1], overlay)
    if args.heatmaps:
        for i, person in enumerate(people):
            montage = heatmap_montage(person.heatmaps, person.crop, person.joint_names)
            suffix = "" if len(people) == 1 else f"_{i}"
            written.append(out / f"{stem}_heatmaps{suffix}.png")
            write_image(written[-1], montage)
    return written


def smoothing_options(args: argparse.Namespace):
    """The ``SmoothingOptions`` of ``--smooth`` and its parameter flags, or None."""
    given = {name: getattr(args, f"smooth_{name}") for name in SMOOTHING_FLAGS}
    given = {name: value for name, value in given.items() if value is not None}
    if not args.smooth:
        if given:
            flags = ", ".join(f"--smooth-{name.replace('_', '-')}" for name in given)
            raise ValueError(f"{flags} need(s) --smooth")
        return None
    from hgkeras.inference.smoothing import SmoothingOptions

    return SmoothingOptions(**given)


def run(args: argparse.Namespace) -> int:
    given = [flag for flag, on in (("--box", args.box), ("--boxes", args.boxes),
                                   ("--detect", args.detect)) if on]  # fmt: skip
    if len(given) > 1:
        raise ValueError(f"use only one of --box, --boxes and --detect, got {' and '.join(given)}")
    if args.box:
        from hgkeras.geometry import box_to_center_scale

        for box in args.box:
            box_to_center_scale(box)  # clear error for a bad box before loading the model
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {args.max_frames}")
    smoothing = smoothing_options(args)
    boxes = None
    if args.boxes:
        from hgkeras.inference.boxes import DetectionFile

        boxes = DetectionFile(args.boxes, min_score=args.min_box_score, nms_iou=args.box_nms)
    items = collect_inputs(args.inputs)
    if boxes is not None and any(kind == "video" for _, kind in items):
        raise ValueError("--boxes gives boxes per image file; it cannot be used with videos")
    coco_results = [] if args.format == "coco" else None
    if coco_results is not None:
        from hgkeras.evaluation.coco import image_id_from_name

        if any(kind == "video" for _, kind in items):
            raise ValueError("--format coco applies to images, not videos")
        for path, _ in items:
            image_id_from_name(path)  # clear error before loading the model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from hgkeras.inference.predictor import PosePredictor
    from hgkeras.inference.video import predict_video, source_name
    from hgkeras.vis.draw import draw_people

    detector = None
    if args.detect:
        from functools import partial

        from hgkeras.inference.detect import detect_people

        detector = partial(detect_people, min_score=args.min_box_score)
    predictor = PosePredictor(
        args.model, flip=not args.no_flip, batch_size=args.batch_size, detector=detector,
        max_pixels=int(args.max_pixels) if args.max_pixels > 0 else None,
        allow_truncated=args.allow_truncated, decoder=args.decoder,
    )  # fmt: skip
    whole_image = not (args.box or args.boxes or args.detect)
    if whole_image and not args.quiet:
        print("note: no --box, --boxes or --detect: each image is taken as one person",
              file=sys.stderr)  # fmt: skip

    def draw(frame, people):
        return draw_people(frame, people, predictor.skeleton, min_score=args.min_score,
                           in_place=True)  # fmt: skip

    used: set[str] = set()
    images = [(Path(p), k) for p, k in items if k == "image"]
    written: list[Path] = []
    progress = _progress(args.quiet)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no person boxes")  # said once above
        for path, _ in progress(images, len(images), "") if len(images) > 1 else images:
            written += predict_image(
                predictor, path, _unique_stem(path.stem, used), args, boxes, coco_results
            )
        for source, kind in items:
            if kind == "video":
                written += predict_video(
                    predictor, source, out, stem=_unique_stem(source_name(source), used),
                    predict_options={"boxes": args.box, "detect": args.detect},
                    jsonl=args.jsonl, overlay=not args.no_overlay, draw=draw,
                    max_frames=args.max_frames, progress=progress, smoothing=smoothing,
                )  # fmt: skip
    if coco_results is not None:
        from hgkeras.evaluation.coco import write_results

        written.append(out / "results.json")
        write_results(written[-1], coco_results)
    if not args.quiet:
        for path in written:
            print(f"wrote {path}")
    return 0
