"""Poses on videos, webcams and streams: frame sources, the prediction loop, browser-playable output.

Sources are opened with OpenCV's ``VideoCapture``: a video file, a camera index (``0`` is the first
webcam) or a stream URL (``rtsp://``, ``http(s)://``, ...). Overlays are written as H.264 MP4 (the
codec browsers play) through PyAV (``pip install hgkeras[video]``); without PyAV, OpenCV's MPEG-4
Part 2 (``mp4v``) is written with a warning, since this OpenCV build has no H.264 encoder.
With ``smoothing`` options the keypoints are smoothed over time per tracked person
(:mod:`hgkeras.inference.smoothing`) before they are written and drawn.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hgkeras.inference.smoothing import PoseSmoother, SmoothingOptions
from hgkeras.io import atomic_path

#: Frame rate used when a source does not report one (cameras, some streams).
DEFAULT_FPS = 25.0
#: URL schemes read as network streams.
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


@dataclass
class VideoSource:
    """An opened frame source: ``kind`` is "file", "camera" or "stream"; ``name`` a file stem."""

    capture: Any
    source: str
    kind: str
    name: str
    description: str
    fps: float
    total: int | None

    @property
    def live(self) -> bool:
        return self.kind != "file"

    def frames(self, max_frames: int | None = None) -> Iterator[tuple[np.ndarray, float]]:
        """(BGR uint8 frame, time) until the source ends or ``max_frames`` were read.

        The time (seconds from the first frame) is the frame's timestamp as OpenCV reports it
        (``CAP_PROP_POS_MSEC``: the presentation time of files and streams, the capture time of
        cameras that give one); where that is missing or does not increase, the previous frame's
        time plus ``1 / fps``.
        """
        count, start, previous = 0, None, -math.inf
        while max_frames is None or count < max_frames:
            ok, frame = self.capture.read()
            if not ok or frame is None:
                return
            stamp = self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not (math.isfinite(stamp) and stamp > previous):
                stamp = previous + 1.0 / self.fps if count else 0.0
            start = stamp if start is None else start
            previous = stamp
            count += 1
            yield frame, stamp - start

    def close(self) -> None:
        self.capture.release()


def source_kind(source: str | int) -> str:
    """ "camera" for an int or a string of digits, "stream" for a URL, else "file"."""
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        return "camera"
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", str(source))
    if match and match.group(1).lower() in STREAM_SCHEMES:
        return "stream"
    return "file"


def source_name(source: str | int | os.PathLike) -> str:
    """A file stem for a source's outputs: the file's stem, ``camera0``, the URL's last part."""
    kind = source_kind(source if isinstance(source, int) else os.fspath(source))
    if kind == "camera":
        return f"camera{int(source)}"
    if kind == "stream":
        tail = str(source).split("://", 1)[1].rstrip("/").rsplit("/", 1)[-1]
        return Path(re.sub(r"[^A-Za-z0-9_.-]+", "_", tail)).stem or "stream"
    return Path(source).stem


def open_source(source: str | int | os.PathLike) -> VideoSource:
    """Open a video file, camera index or stream URL; ValueError when it cannot be read."""
    kind = source_kind(source if isinstance(source, int) else os.fspath(source))
    name = source_name(source)
    if kind == "camera":
        capture = cv2.VideoCapture(int(source))
        description = f"camera {int(source)}"
    elif kind == "stream":
        capture = cv2.VideoCapture(str(source))
        description = f"stream {source}"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"video file not found: {path}")
        capture = cv2.VideoCapture(str(path))
        description = f"video file {path}"
    if not capture.isOpened():
        capture.release()
        hint = {
            "camera": " (no such camera, or it is busy or not accessible)",
            "stream": " (unreachable, or a protocol OpenCV's FFmpeg cannot read)",
            "file": " with OpenCV",
        }[kind]
        raise ValueError(f"cannot open {description}{hint}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    if not np.isfinite(fps) or fps <= 0 or fps > 1000:
        fps = DEFAULT_FPS
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if kind == "file" else 0
    total = total if total > 0 else None
    return VideoSource(capture, str(source), kind, name, description, float(fps), total)


class VideoWriter:
    """Write BGR uint8 frames to an MP4: H.264 with PyAV, else OpenCV's mp4v (with a warning).

    Frames of odd width or height are padded by one edge pixel (H.264 4:2:0 needs even sizes).
    """

    def __init__(self, path: str | os.PathLike, fps: float, codec: str | None = None) -> None:
        self.path = os.fspath(path)
        self.fps = float(fps)
        self.codec = codec
        self._container = self._stream = self._writer = None
        self.size: tuple[int, int] | None = None

    def _open(self, width: int, height: int) -> None:
        try:
            import av
        except ImportError:
            av = None
        if av is not None and self.codec in (None, "h264"):
            self.size = (width + width % 2, height + height % 2)
            self._container = av.open(
                self.path, mode="w", format="mp4", options={"movflags": "+faststart"}
            )
            self._stream = self._container.add_stream(
                "libx264", rate=Fraction(self.fps).limit_denominator(1001)
            )
            self._stream.width, self._stream.height = self.size
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": "23", "preset": "veryfast"}
            self.codec = "h264"
            return
        if self.codec == "h264":
            raise ValueError("writing H.264 needs PyAV: pip install 'hgkeras[video]'")
        warnings.warn(
            "PyAV is not installed: writing MPEG-4 Part 2 (mp4v), which browsers do not play; "
            "pip install 'hgkeras[video]' for H.264",
            RuntimeWarning,
            stacklevel=3,
        )
        self.size = (width, height)
        self._writer = cv2.VideoWriter(
            self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size
        )
        if not self._writer.isOpened():
            raise OSError(f"OpenCV cannot write an mp4v video at {self.path}")
        self.codec = "mp4v"

    def write(self, frame: np.ndarray) -> None:
        height, width = frame.shape[:2]
        if self.size is None:
            self._open(width, height)
        target_w, target_h = self.size
        if (width, height) != (target_w, target_h):
            if width > target_w or height > target_h:
                raise ValueError(
                    f"frame is {width}x{height} but the video is {target_w}x{target_h}"
                )
            frame = cv2.copyMakeBorder(
                frame, 0, target_h - height, 0, target_w - width, cv2.BORDER_REPLICATE
            )
        if self._writer is not None:
            self._writer.write(frame)
            return
        import av

        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        for packet in self._stream.encode(picture):
            self._container.mux(packet)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._container is not None:
            for packet in self._stream.encode():  # flush the encoder
                self._container.mux(packet)
            self._container.close()
            self._container = None


def predict_video(
    predictor,
    source: str | int | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    stem: str | None = None,
    predict_options: dict[str, Any] | None = None,
    jsonl: bool = False,
    overlay: bool = True,
    draw: Callable[[np.ndarray, list], np.ndarray] | None = None,
    max_frames: int | None = None,
    progress: Callable[[Iterator, int | None, str], Iterator] | None = None,
    smoothing: SmoothingOptions | None = None,
) -> list[Path]:
    """Predict every frame of a video file, camera or stream; write OUT/STEM.json(l) and STEM.mp4.

    Args:
        predictor: a :class:`hgkeras.inference.predictor.PosePredictor`.
        predict_options: keyword arguments of ``predictor.predict`` (boxes, detect, ...).
        jsonl: one ``{frame, people}`` JSON line per frame instead of one JSON document.
        overlay: write the overlay video (drawn by ``draw(frame, people)``, default
            :func:`hgkeras.vis.draw.draw_people` with the predictor's skeleton).
        max_frames: stop after this many frames (a camera or stream otherwise runs until it ends
            or Ctrl-C, which ends the outputs cleanly).
        progress: wraps the frame iterator (e.g. a tqdm bar): ``progress(frames, total, name)``.
        smoothing: smooth the keypoints over time with these One-Euro filter options
            (:mod:`hgkeras.inference.smoothing`); the JSON and the overlay then show the smoothed
            keypoints, each person carries ``smoothed: true``, its ``track_id`` and the network's
            own keypoints as ``keypoints_raw``, and the JSON document records the options under
            ``smoothing``. None: raw keypoints.

    Every frame entry has its ``time`` in seconds from the first frame (the source's timestamps,
    :meth:`VideoSource.frames`).

    Both files are written under temporary names and renamed when complete. Returns their paths.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    opened = open_source(source)
    stem = stem or opened.name
    out = Path(out_dir)
    options = dict(predict_options or {})
    options["color"] = "bgr"
    if draw is None:
        from hgkeras.vis.draw import draw_people

        def draw(frame, people):
            return draw_people(frame, people, predictor.skeleton, in_place=True)

    json_path = out / (f"{stem}.jsonl" if jsonl else f"{stem}.json")
    video_path = out / f"{stem}.mp4"
    frames = opened.frames(max_frames)
    total = opened.total if max_frames is None else min(max_frames, opened.total or max_frames)
    if progress is not None:
        frames = progress(frames, total, stem)
    entries: list[dict] = []
    count = 0
    smoother = None if smoothing is None else PoseSmoother(smoothing)
    with ExitStack() as stack:
        stack.callback(opened.close)
        json_tmp = stack.enter_context(atomic_path(json_path))
        video_tmp = stack.enter_context(atomic_path(video_path)) if overlay else None
        writer = VideoWriter(video_tmp, opened.fps) if overlay else None
        with open(json_tmp, "w") as lines:
            try:
                for index, (frame, time) in enumerate(frames):
                    people = predictor.predict(frame, **options)
                    if smoother is None:
                        records = [p.to_dict() for p in people]
                    else:
                        tracked = smoother(people, time)
                        records = [
                            {**smoothed.to_dict(), "smoothed": True, "track_id": track,
                             "keypoints_raw": raw.to_dict()["keypoints"]}
                            for (track, smoothed), raw in zip(tracked, people, strict=True)
                        ]  # fmt: skip
                        people = [smoothed for _, smoothed in tracked]
                    entry = {"frame": index, "time": round(time, 6), "people": records}
                    if jsonl:
                        lines.write(json.dumps(entry) + "\n")
                    else:
                        entries.append(entry)
                    if writer is not None:
                        writer.write(draw(frame, people))
                    count += 1
            except KeyboardInterrupt:
                if not opened.live:
                    raise
            finally:
                if writer is not None:
                    writer.close()
            if count == 0:
                raise ValueError(f"{opened.description} gave no readable frames")
            if not jsonl:
                record = {
                    "source": opened.source,
                    "source_kind": opened.kind,
                    "fps": opened.fps,
                    "num_frames": count,
                    "flip": predictor.flip,
                    "video_codec": None if writer is None else writer.codec,
                    "smoothing": None if smoothing is None else smoothing.to_dict(),
                    "frames": entries,
                }
                lines.write(json.dumps(record) + "\n")
    return [json_path] + ([video_path] if overlay else [])
