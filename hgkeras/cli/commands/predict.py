"""``hgkeras predict``: poses on your own images, folders and videos -> JSON + overlay pictures."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: File name endings read as still images (others in a folder are skipped).
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jp2",
)  # fmt: skip
#: File name endings read as videos with OpenCV's VideoCapture.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="run a model on images, folders or videos; write keypoint JSON and overlay pictures",
        description="Estimate poses with a saved model. For each image: OUT/NAME.json (keypoints in "
        "the image's pixels, scores, joint names per person) and OUT/NAME.png (skeleton overlay). "
        "For each video: OUT/NAME.json (or .jsonl with --jsonl) with one entry per frame and "
        "OUT/NAME.mp4 (overlay). Folders are read in sorted order (images and videos inside, not "
        "recursive). Without --box or --detect the whole image is one person.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image, folder or video file")
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
        "--detect",
        action="store_true",
        help="find people with OpenCV's built-in HOG people detector (no download)",
    )
    parser.add_argument("--no-flip", action="store_true", help="skip the flip test (2x faster)")
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
        "--jsonl", action="store_true", help="videos: write NAME.jsonl, one JSON line per frame"
    )
    parser.add_argument("--no-overlay", action="store_true", help="write JSON only")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary lines")
    parser.set_defaults(func=run)


def collect_inputs(inputs: list[str]) -> list[tuple[Path, str]]:
    """(path, "image" | "video") for every input; folders expand to their sorted media files."""
    items: list[tuple[Path, str]] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = [
                p
                for p in sorted(path.iterdir())
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES
            ]
            if not found:
                raise ValueError(f"folder {path} holds no image or video files")
            items.extend((p, _kind(p)) for p in found)
        elif path.is_file():
            items.append((path, _kind(path)))
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return items


def _kind(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 1
    while stem in used:
        stem = f"{path.stem}_{n}"
        n += 1
    used.add(stem)
    return stem


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_png(path: Path, image_bgr) -> None:
    import cv2

    ok, encoded = cv2.imencode(".png", image_bgr)
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    write_atomic(path, encoded.tobytes())


def _progress(iterable, total: int | None, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="frame" if desc else "image",
                disable=quiet, file=sys.stderr, dynamic_ncols=True)  # fmt: skip


def predict_image(predictor, path: Path, stem: str, args: argparse.Namespace) -> list[Path]:
    """Predict one image file; write its JSON, overlay and montages; return the written paths."""
    from hgkeras.inference.predictor import load_image, to_uint8_bgr
    from hgkeras.vis.draw import draw_people, heatmap_montage

    pixels = load_image(path)
    people = predictor.predict(
        pixels, boxes=args.box, detect=args.detect, color="bgr", return_heatmaps=args.heatmaps
    )
    out = Path(args.out)
    record = {
        "source": str(path),
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "flip": predictor.flip,
        "people": [p.to_dict() for p in people],
    }
    written = [out / f"{stem}.json"]
    write_atomic(written[0], (json.dumps(record, indent=1) + "\n").encode())
    if not args.no_overlay:
        overlay = draw_people(to_uint8_bgr(pixels, "bgr"), people, predictor.skeleton,
                              min_score=args.min_score)  # fmt: skip
        written.append(out / f"{stem}.png")
        write_png(written[-1], overlay)
    if args.heatmaps:
        for i, person in enumerate(people):
            montage = heatmap_montage(person.heatmaps, person.crop, person.joint_names)
            suffix = "" if len(people) == 1 else f"_{i}"
            written.append(out / f"{stem}_heatmaps{suffix}.png")
            write_png(written[-1], montage)
    return written


def _frames(capture) -> Iterator[Any]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def predict_video(predictor, path: Path, stem: str, args: argparse.Namespace) -> list[Path]:
    """Predict every frame of a video; write NAME.json(l) and the overlay NAME.mp4."""
    import cv2

    from hgkeras.vis.draw import draw_people

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"cannot open video file {path} with OpenCV")
    out = Path(args.out)
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    if not fps or fps != fps or fps <= 0:
        fps = 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    json_path = out / (f"{stem}.jsonl" if args.jsonl else f"{stem}.json")
    video_path = out / f"{stem}.mp4"
    json_tmp = out / f".{json_path.name}.partial"
    video_tmp = out / f".{stem}.partial.mp4"
    writer = None
    frames_out: list[dict] = []
    count = 0
    try:
        with open(json_tmp, "w") as lines:
            for index, frame in enumerate(
                _progress(_frames(capture), total, path.name, args.quiet)
            ):
                people = predictor.predict(frame, boxes=args.box, detect=args.detect, color="bgr")
                entry = {"frame": index, "people": [p.to_dict() for p in people]}
                if args.jsonl:
                    lines.write(json.dumps(entry) + "\n")
                else:
                    frames_out.append(entry)
                if not args.no_overlay:
                    if writer is None:
                        height, width = frame.shape[:2]
                        writer = cv2.VideoWriter(
                            str(video_tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)
                        )
                        if not writer.isOpened():
                            raise OSError(f"OpenCV cannot write an mp4v video at {video_tmp}")
                    writer.write(draw_people(frame, people, predictor.skeleton,
                                             min_score=args.min_score))  # fmt: skip
                count += 1
            if not args.jsonl:
                record = {
                    "source": str(path),
                    "fps": fps,
                    "num_frames": count,
                    "flip": predictor.flip,
                    "frames": frames_out,
                }
                lines.write(json.dumps(record) + "\n")
        if count == 0:
            raise ValueError(f"video file {path} has no readable frames")
        written = [json_path]
        os.replace(json_tmp, json_path)
        if writer is not None:
            writer.release()
            writer = None
            os.replace(video_tmp, video_path)
            written.append(video_path)
        return written
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        for tmp in (json_tmp, video_tmp):
            if tmp.exists():
                tmp.unlink()


def run(args: argparse.Namespace) -> int:
    if args.box and args.detect:
        raise ValueError("use either --box or --detect, not both")
    if args.box:
        from hgkeras.geometry import box_to_center_scale

        for box in args.box:
            box_to_center_scale(box)  # clear error for a bad box before loading the model
    items = collect_inputs(args.inputs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from hgkeras.inference.predictor import PosePredictor

    predictor = PosePredictor(args.model, flip=not args.no_flip, batch_size=args.batch_size)
    used: set[str] = set()
    images = [(p, k) for p, k in items if k == "image"]
    many = len(images) > 1
    written: list[Path] = []
    image_bar = _progress(images, len(images), "", args.quiet or not many)
    for path, _ in image_bar:
        written += predict_image(predictor, path, _unique_stem(path, used), args)
    for path, kind in items:
        if kind == "video":
            written += predict_video(predictor, path, _unique_stem(path, used), args)
    if not args.quiet:
        for path in written:
            print(f"wrote {path}")
    return 0
