"""Steady keypoints in video: a One-Euro filter per keypoint of each tracked person.

The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) is a first-order low-pass filter whose
cutoff frequency rises with the signal's speed: slow, jittery keypoints are smoothed strongly, fast
ones follow with little lag. Per keypoint and frame, with ``dt`` the time since the keypoint's last
update (seconds, from the stream's timestamps)::

    alpha(fc) = 1 / (1 + 1 / (2 pi fc dt))
    v   = (x - x_prev) / dt                        # px/s, from the previous smoothed position
    v_s = v_prev + alpha(d_cutoff) (v - v_prev)    # smoothed velocity (2-D)
    fc  = min_cutoff + beta |v_s| / size           # size: the person's crop box height (px)
    x_s = x_prev + alpha(fc) (x - x_prev)

Speeds are measured in crop box heights per second (the crop the network sees, ``200 * scale``
pixels), so the parameters mean the same for a person 100 or 1000 pixels tall and at any frame rate.
People are followed from frame to frame by the overlap of their boxes (:class:`PoseSmoother`);
each track keeps its own filter state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hgkeras.geometry import PIXELS_PER_SCALE
from hgkeras.inference.boxes import box_iou

if TYPE_CHECKING:
    from hgkeras.inference.predictor import PersonPose


@dataclass(frozen=True)
class SmoothingOptions:
    """Parameters of the keypoint filter and of the person tracks it runs on.

    Attributes:
        min_cutoff: cutoff frequency (Hz) of a keypoint at rest; lower = steadier, more lag.
        beta: cutoff increase (Hz) per crop box height per second of keypoint speed; higher = less
            lag on fast motion, more jitter.
        d_cutoff: cutoff frequency (Hz) of the speed estimate.
        min_score: keypoints scoring below this are passed through unsmoothed and do not update
            their filter (an unreliable detection would drag it).
        max_gap: seconds a keypoint or person may go unseen before its filter starts afresh.
        min_iou: box overlap (intersection over union) for a person to continue a track.
    """

    min_cutoff: float = 4.0
    beta: float = 5.0
    d_cutoff: float = 0.25
    min_score: float = 0.0
    max_gap: float = 0.5
    min_iou: float = 0.3

    def __post_init__(self) -> None:
        for name in ("min_cutoff", "d_cutoff", "max_gap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"smoothing {name} must be a positive number, got {value}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"smoothing beta must be >= 0, got {self.beta}")
        if not 0 <= self.min_iou <= 1:
            raise ValueError(f"smoothing min_iou must be in [0, 1], got {self.min_iou}")
        if not math.isfinite(self.min_score):
            raise ValueError(f"smoothing min_score must be finite, got {self.min_score}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: the filter's name and every parameter."""
        return {"filter": "one_euro", **dataclasses.asdict(self)}


def _alpha(cutoff: np.ndarray | float, dt: np.ndarray) -> np.ndarray:
    """Smoothing factor of a first-order low-pass filter at ``cutoff`` Hz for steps of ``dt`` s."""
    rate = 2.0 * np.pi * cutoff * dt
    return rate / (rate + 1.0)


class OneEuroFilter:
    """One-Euro filter of N points in D dimensions (e.g. a person's (J, 2) keypoints).

    Each point has its own state; the cutoff (Hz) follows the norm of its smoothed velocity (units
    per second) divided by ``size`` (the units of one person size). A point's first value, and its
    first after more than ``max_gap`` seconds unseen, come back as they are and restart its state.
    Points marked invalid (or not finite) in a call come back unchanged and leave their state alone.
    """

    def __init__(
        self, min_cutoff: float, beta: float, d_cutoff: float, max_gap: float = math.inf
    ) -> None:
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self.max_gap = float(max_gap)
        self._value: np.ndarray | None = None
        self._velocity: np.ndarray | None = None
        self._time: np.ndarray | None = None

    def __call__(
        self,
        points: np.ndarray,
        time: float,
        size: float = 1.0,
        valid: np.ndarray | None = None,
    ) -> np.ndarray:
        """The smoothed points (N, D) at ``time`` (seconds, increasing call after call)."""
        points = np.asarray(points, np.float64)
        if points.ndim != 2:
            raise ValueError(f"points must be (N, D), got shape {points.shape}")
        valid = np.ones(len(points), bool) if valid is None else np.asarray(valid, bool)
        valid = valid & np.all(np.isfinite(points), axis=1)
        if self._value is None or self._value.shape != points.shape:
            self._value = points.copy()
            self._velocity = np.zeros_like(points)
            self._time = np.full(len(points), -np.inf)
        dt = time - self._time
        if np.any(dt[valid] <= 0):
            latest = float(np.max(self._time[valid]))
            raise ValueError(f"time must increase from call to call, got {time} after {latest}")
        fresh = valid & ((dt > self.max_gap) | np.isinf(self._time))
        update = valid & ~fresh
        out = points.copy()
        if np.any(update):
            step = dt[update, None]
            previous = self._value[update]
            velocity = (points[update] - previous) / step
            velocity = self._velocity[update] + _alpha(self.d_cutoff, step) * (
                velocity - self._velocity[update]
            )
            speed = np.linalg.norm(velocity, axis=1, keepdims=True) / float(size)
            cutoff = self.min_cutoff + self.beta * speed
            out[update] = previous + _alpha(cutoff, step) * (points[update] - previous)
            self._velocity[update] = velocity
        self._velocity[fresh] = 0.0
        self._value[valid] = out[valid]
        self._time[valid] = time
        return out


@dataclass
class _Track:
    track_id: int
    box: np.ndarray
    filter: OneEuroFilter
    seen: float


class PoseSmoother:
    """Smooth the people of consecutive video frames, one :class:`OneEuroFilter` per person track.

    Each frame's people are matched to the tracks of earlier frames by box overlap (greedy, best
    pairs first, IoU at least ``min_iou``); unmatched people start new tracks, and tracks unseen for
    more than ``max_gap`` seconds end. Call it once per frame, in order::

        smoother = PoseSmoother(SmoothingOptions())
        for frame, time in frames:
            tracked = smoother(predictor.predict(frame, boxes), time)  # [(track_id, PersonPose)]
    """

    def __init__(self, options: SmoothingOptions | None = None) -> None:
        self.options = options or SmoothingOptions()
        self._tracks: list[_Track] = []
        self._next_id = 0

    def __call__(self, people: Sequence[PersonPose], time: float) -> list[tuple[int, PersonPose]]:
        """(track id, a copy of the person with smoothed keypoints) per person, in input order."""
        options = self.options
        self._tracks = [t for t in self._tracks if time - t.seen <= options.max_gap]
        boxes = np.array([p.box for p in people], np.float64).reshape(-1, 4)
        assigned: list[_Track | None] = [None] * len(people)
        if self._tracks and len(people):
            iou = box_iou(boxes, np.array([t.box for t in self._tracks]))
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                i, k = np.unravel_index(flat, iou.shape)
                if iou[i, k] < options.min_iou or iou[i, k] <= 0:
                    break
                if assigned[i] is None and all(a is not self._tracks[k] for a in assigned):
                    assigned[i] = self._tracks[k]
        result = []
        for i, person in enumerate(people):
            track = assigned[i]
            if track is None:
                track = _Track(self._next_id, boxes[i], self._new_filter(), time)
                self._next_id += 1
                self._tracks.append(track)
            track.box, track.seen = boxes[i], time
            scores = np.asarray(person.scores, np.float64)
            keypoints = track.filter(
                person.keypoints,
                time,
                size=PIXELS_PER_SCALE * float(person.scale),
                valid=scores >= options.min_score,
            )
            smoothed = dataclasses.replace(person, keypoints=keypoints.astype(np.float32))
            result.append((track.track_id, smoothed))
        return result

    def _new_filter(self) -> OneEuroFilter:
        o = self.options
        return OneEuroFilter(o.min_cutoff, o.beta, o.d_cutoff, o.max_gap)


def jitter(track: np.ndarray) -> float:
    """Mean length of the second difference of a keypoint track (T, J, 2): ``|k[t+1] - 2 k[t] +
    k[t-1]|`` over frames and joints, in the track's units. Zero for motion at constant velocity."""
    track = np.asarray(track, np.float64)
    if len(track) < 3:
        raise ValueError(f"jitter needs at least 3 frames, got {len(track)}")
    second = track[2:] - 2.0 * track[1:-1] + track[:-2]
    return float(np.mean(np.linalg.norm(second, axis=-1)))


def lag(track: np.ndarray, reference: np.ndarray, max_lag: float = 5.0) -> float:
    """The delay (frames) that best aligns ``track`` (T, J, 2) with ``reference`` (T, J, 2).

    The delay ``d`` in [-max_lag, max_lag] (to 0.001 frame) minimising the mean squared distance
    between ``track[t]`` and ``reference`` at ``t - d`` (linearly interpolated between frames), over
    the frames ``max_lag <= t < T - max_lag``. Positive: ``track`` trails ``reference``.
    """
    track = np.asarray(track, np.float64)
    reference = np.asarray(reference, np.float64)
    if track.shape != reference.shape:
        raise ValueError(f"track {track.shape} and reference {reference.shape} differ in shape")
    first = int(math.ceil(max_lag))
    if len(track) < 2 * first + 2:
        raise ValueError(f"lag needs at least {2 * first + 2} frames, got {len(track)}")
    frames = np.arange(first, len(track) - first)

    def error(delay: float) -> float:
        at = frames - delay
        low = np.floor(at).astype(int)
        frac = (at - low)[:, None, None]
        shifted = (1 - frac) * reference[low] + frac * reference[
            np.minimum(low + 1, len(track) - 1)
        ]
        return float(np.mean(np.sum((track[frames] - shifted) ** 2, axis=-1)))

    best = 0.0
    for step in (0.1, 0.01, 0.001):  # a grid, then finer grids around its best
        span = max_lag if step == 0.1 else 10 * step
        grid = np.arange(best - span, best + span + step / 2, step)
        grid = grid[np.abs(grid) <= max_lag + 1e-9]
        best = float(min(grid, key=error))
    return best
