"""The heatmap codec: training targets, decoding and the flip test, one object (``keras.ops``).

:class:`HeatmapCodec` (``decoder`` = ``"paper"``, ``"dark"`` or ``"udp"``, ``sigma``) is what every
entry point takes: :class:`hgkeras.PoseTrainer` renders its targets with :meth:`HeatmapCodec.encode`,
evaluation, :class:`hgkeras.PosePredictor`, the exported SavedModel's graph and the host side of
every other exported format run the flip test (:meth:`HeatmapCodec.flip_test`) and decode with
:meth:`HeatmapCodec.decode` / :meth:`HeatmapCodec.decode_to_image`. A model records the codec it was
trained with in its config (:class:`hgkeras.StackedHourglass` ``codec``) and exports record it in
``pose.json``, so a model is decoded as it was trained and evaluated (:func:`codec_of`,
:func:`codec_for`).

Codecs (``docs/method.md`` "Decoding"):

* ``paper``: the heatmap grid lies on the input grid edge to edge (heatmap pixel ``j`` covers input
  pixels ``[4j, 4j + 4)``), Gaussian targets centred on the joint's exact sub-pixel position;
  decoding takes the argmax moved a quarter pixel towards the higher neighbour (the Torch code).
* ``dark`` (Zhang et al., CVPR 2020): the same grid and targets; decoding blurs each heatmap with a
  Gaussian of the encoding's sigma, takes its logarithm and moves from the argmax by one Newton step
  of the second-order Taylor expansion there. A ``paper``-trained model decodes with ``dark`` as it is.
* ``udp`` (Huang et al., CVPR 2020): the grids are aligned at their outer pixel centres
  (heatmap ``x = input x * (w - 1) / (W - 1)`` per axis), the targets are drawn on that grid, and
  decoding is the Taylor step on the blurred log-heatmap with edge-replicated neighbours (peaks on
  the border are refined too). It needs a model trained with it.

Points are (x, y) in 0-based pixel centres (:mod:`hgkeras.geometry`). Everything is batched backend
tensors: it runs eagerly under every backend and traces into exported TensorFlow graphs. Keras is
imported on first use, so the codec's configuration (command-line choices, ``pose.json``) reads
without it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hgkeras import geometry

#: Decoders (the codec's name): the Torch code's, DARK's and UDP's.
DECODERS = ("paper", "dark", "udp")
#: Default Gaussian sigma in heatmap pixels: the paper's text's 1 at 64x64 (the Torch code's is 1.75).
DEFAULT_SIGMA = 1.0
#: Largest Taylor step in heatmap pixels (the true peak of a smooth heatmap lies within one pixel of
#: its grid maximum; a longer step comes from a flat or noisy neighbourhood).
MAX_STEP = 1.0
#: Floors of the blurred heatmap before the logarithm: DARK's, and UDP's (which also caps at 50).
_DARK_FLOOR = 1e-10
_UDP_RANGE = (1e-3, 50.0)


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    return int(size[0]), int(size[1])


@dataclass(frozen=True)
class HeatmapCodec:
    """Targets, decoding and flip test of a heatmap model (see the module docstring).

    Args:
        decoder: ``"paper"`` (default), ``"dark"`` or ``"udp"``.
        sigma: the target Gaussian's standard deviation in heatmap pixels; DARK and UDP blur with it.
    """

    decoder: str = "paper"
    sigma: float = DEFAULT_SIGMA

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        sigma = self.sigma
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise ValueError(f"codec sigma must be a positive number, got {sigma!r}")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"codec sigma must be a positive number, got {sigma!r}")
        object.__setattr__(self, "sigma", float(sigma))

    # ------------------------------------------------------------------------------ configuration

    def to_config(self) -> dict[str, Any]:
        """JSON-friendly dict (:meth:`from_config` reads it back)."""
        return {"decoder": self.decoder, "sigma": self.sigma}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> HeatmapCodec:
        if not isinstance(config, dict) or set(config) - {"decoder", "sigma"}:
            raise ValueError(f"a codec config is {{'decoder': ..., 'sigma': ...}}, got {config!r}")
        return cls(**config)

    @property
    def encoding(self) -> str:
        """The training side a decoder needs: ``"paper"`` (paper and dark) or ``"udp"``."""
        return "udp" if self.decoder == "udp" else "paper"

    def with_decoder(self, decoder: str | None) -> HeatmapCodec:
        """This codec decoding with ``decoder`` (None: unchanged); ValueError when the model's
        encoding cannot be decoded that way (``udp`` needs a ``udp``-trained model and vice versa)."""
        if decoder is None or decoder == self.decoder:
            return self
        other = HeatmapCodec(decoder, self.sigma)
        if other.encoding != self.encoding:
            fits = [d for d in DECODERS if HeatmapCodec(d).encoding == self.encoding]
            raise ValueError(
                f"the model was trained with the {self.encoding!r} encoding (codec "
                f"{self.decoder!r}); decoder {decoder!r} decodes the {other.encoding!r} encoding: "
                f"choose {' or '.join(fits)}"
            )
        return other

    # ------------------------------------------------------------------------------------- grids

    def _grid(self, input_size, heatmap_size) -> tuple[tuple[float, float], tuple[float, float]]:
        """((ax, ay), (bx, by)): heatmap coordinate = a * input coordinate + b, per axis."""
        (ih, iw), (hh, hw) = _size_hw(input_size), _size_hw(heatmap_size)
        if self.encoding == "udp":
            if min(ih, iw, hh, hw) < 2:
                raise ValueError(
                    f"the udp codec needs grids of at least 2 pixels, got input {(ih, iw)} and "
                    f"heatmaps {(hh, hw)}"
                )
            return ((hw - 1) / (iw - 1), (hh - 1) / (ih - 1)), (0.0, 0.0)
        ax, ay = hw / iw, hh / ih
        return (ax, ay), (0.5 * ax - 0.5, 0.5 * ay - 0.5)

    def to_heatmap(self, points, input_size, heatmap_size):
        """Input-pixel points (..., 2) -> heatmap coordinates of this codec's grid."""
        from keras import ops

        (ax, ay), (bx, by) = self._grid(input_size, heatmap_size)
        points = ops.cast(ops.convert_to_tensor(points), "float32")
        return ops.stack([points[..., 0] * ax + bx, points[..., 1] * ay + by], axis=-1)

    def to_input(self, coords, input_size, heatmap_size):
        """Heatmap coordinates (..., 2) -> input pixels (the inverse of :meth:`to_heatmap`)."""
        from keras import ops

        (ax, ay), (bx, by) = self._grid(input_size, heatmap_size)
        coords = ops.cast(ops.convert_to_tensor(coords), "float32")
        return ops.stack([(coords[..., 0] - bx) / ax, (coords[..., 1] - by) / ay], axis=-1)

    # ---------------------------------------------------------------------------------- encoding

    def encode(self, joints, visible, input_size, heatmap_size, dtype: str = "float32"):
        """Target heatmaps (N, h, w, J) of joints (N, J, 2) given in input (crop) pixels.

        Each annotated joint inside the grid gets a Gaussian of peak 1 centred on its exact
        position on this codec's heatmap grid (:func:`render_heatmaps`); others get zeros.
        """
        points = self.to_heatmap(joints, input_size, heatmap_size)
        return render_heatmaps(points, visible, _size_hw(heatmap_size), self.sigma, dtype)

    # ---------------------------------------------------------------------------------- decoding

    def locate(self, heatmaps):
        """Peak positions (N, J, 2) in heatmap coordinates and scores (N, J) of heatmaps (N, h, w, J).

        The score is the heatmap maximum for every decoder.
        """
        from keras import ops

        heatmaps = ops.cast(ops.convert_to_tensor(heatmaps), "float32")
        maps = ops.transpose(heatmaps, (0, 3, 1, 2))  # (N, J, H, W)
        height, width = int(heatmaps.shape[1]), int(heatmaps.shape[2])
        flat = ops.reshape(maps, (ops.shape(maps)[0], ops.shape(maps)[1], height * width))
        index = ops.argmax(flat, axis=-1)
        scores = ops.max(flat, axis=-1)
        px = ops.cast(index % width, "int32")
        py = ops.cast(index // width, "int32")
        if self.decoder == "paper":
            dx, dy = _quarter_step(flat, px, py, height, width)
        else:
            logs = _log_blurred(maps, scores, self.sigma, self.decoder)
            flat_logs = ops.reshape(logs, ops.shape(flat))
            dx, dy = _taylor_step(flat_logs, px, py, height, width, self.decoder)
        coords = ops.stack([ops.cast(px, "float32") + dx, ops.cast(py, "float32") + dy], axis=-1)
        return coords, scores

    def decode(self, heatmaps, input_size):
        """Keypoints (N, J, 2) in the model's input pixels and scores (N, J) of heatmaps (N, h, w, J)."""
        coords, scores = self.locate(heatmaps)
        size = (int(heatmaps.shape[1]), int(heatmaps.shape[2]))
        return self.to_input(coords, input_size, size), scores

    def decode_to_image(self, heatmaps, centers, scales, input_size):
        """Keypoints (N, J, 2) in original image pixels and scores (N, J).

        ``centers`` (N, 2) and ``scales`` (N,) are the person boxes the input crops were cut from
        (:mod:`hgkeras.crop`); ``input_size`` is the crops' (height, width).
        """
        points, scores = self.decode(heatmaps, input_size)
        inverse = geometry.invert_matrices(
            geometry.crop_matrices(centers, scales, _size_hw(input_size))
        )
        return geometry.transform_points(inverse, points), scores

    # --------------------------------------------------------------------------------- flip test

    @staticmethod
    def flip_test(run: Callable, images, flip_permutation: Sequence[int]):
        """Heatmaps of ``images`` (N, H, W, 3) averaged with those of their mirror images.

        ``run`` maps a batch of images to final heatmaps; the images and their mirrors go through it
        as one batch of 2N, and the mirrors' heatmaps are mirrored back with left/right channels
        swapped (``flip_permutation``, :attr:`hgkeras.spec.PoseSpec.flip_permutation`) before
        averaging (docs/method.md "Flip test").
        """
        from keras import ops

        if flip_permutation is None:
            raise ValueError("the flip test needs the pose spec's flip permutation")
        images = ops.convert_to_tensor(images)
        count = ops.shape(images)[0]
        both = ops.concatenate([images, ops.flip(images, axis=2)], axis=0)
        heatmaps = ops.convert_to_tensor(run(both))
        return (heatmaps[:count] + flip_heatmaps(heatmaps[count:], flip_permutation)) / 2.0

    def heatmap_function(
        self,
        network,
        flip_permutation: Sequence[int] | None,
        flip: bool = True,
        compiled: bool = False,
    ) -> Callable:
        """``images (N, H, W, 3) -> final heatmaps`` of ``network``, with the flip test if ``flip``.

        ``network`` is a Keras model (run in inference mode) or any callable from images to
        heatmaps or a list of stacks (an exported runtime). With ``compiled`` a Keras model runs as
        one compiled step (``predict_on_batch``, built once per network and kept while it lives:
        what evaluation and validation use); otherwise it is called eagerly.
        """
        import keras

        if flip and flip_permutation is None:
            raise ValueError("the flip test needs the pose spec's flip permutation")
        perm = None if flip_permutation is None else tuple(int(i) for i in flip_permutation)
        if compiled and isinstance(network, keras.Model):
            return _compiled_predictor(network, perm if flip else None)

        def run(images):
            return network_heatmaps(network, images)

        if not flip:
            return run
        return lambda images: self.flip_test(run, images, perm)

    def predict_keypoints(
        self,
        network,
        crops: np.ndarray,
        centers: np.ndarray,
        scales: np.ndarray,
        flip_permutation: Sequence[int] | None,
        flip: bool = True,
        batch_size: int = 16,
        return_heatmaps: bool = False,
        compiled: bool = False,
    ) -> dict[str, np.ndarray]:
        """Keypoints of person crops in original image pixels, batched (numpy in, numpy out).

        ``crops`` (N, H, W, 3) float32 in [0, 1] are the person boxes ``centers`` (N, 2), ``scales``
        (N,) cropped by :mod:`hgkeras.crop`; ``network`` and ``compiled`` are as in
        :meth:`heatmap_function`. Returns ``keypoints`` (N, J, 2), ``scores`` (N, J) and, with
        ``return_heatmaps``, ``heatmaps``.
        """
        from keras import ops

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
        predict = self.heatmap_function(network, flip_permutation, flip, compiled)
        input_size = crops.shape[1:3]
        out: dict[str, list[np.ndarray]] = {"keypoints": [], "scores": []}
        if return_heatmaps:
            out["heatmaps"] = []
        for start in range(0, len(crops), batch_size):
            stop = start + batch_size
            heatmaps = ops.convert_to_tensor(predict(crops[start:stop]))
            keypoints, scores = self.decode_to_image(
                heatmaps, centers[start:stop], scales[start:stop], input_size
            )
            out["keypoints"].append(ops.convert_to_numpy(keypoints))
            out["scores"].append(ops.convert_to_numpy(scores))
            if return_heatmaps:
                out["heatmaps"].append(ops.convert_to_numpy(heatmaps))
        return {key: np.concatenate(values) for key, values in out.items()}


# ------------------------------------------------------------------------------- looking codecs up


def get_codec(codec: HeatmapCodec | dict | str | None) -> HeatmapCodec:
    """A :class:`HeatmapCodec` from itself, its config, a decoder name, or None (the default)."""
    if codec is None:
        return HeatmapCodec()
    if isinstance(codec, HeatmapCodec):
        return codec
    if isinstance(codec, str):
        return HeatmapCodec(codec)
    if isinstance(codec, dict):
        return HeatmapCodec.from_config(codec)
    raise ValueError(f"expected a HeatmapCodec, its config or a decoder name, got {codec!r}")


def codec_of(model: Any) -> HeatmapCodec:
    """The codec a model was trained with (``model.codec``; a trainer's ``.hourglass.codec``;
    an exported runtime's from its ``pose.json``); the default codec for models that carry none."""
    codec = getattr(model, "codec", None)
    if codec is None and hasattr(model, "hourglass"):
        codec = getattr(model.hourglass, "codec", None)
    return get_codec(codec)


def codec_for(model: Any, decoder: str | None = None) -> HeatmapCodec:
    """The model's codec decoding with ``decoder`` (None: its own); see :meth:`HeatmapCodec.with_decoder`."""
    return codec_of(model).with_decoder(decoder)


# ------------------------------------------------------------------------------------- primitives


def render_heatmaps(
    joints,
    visible,
    heatmap_size: int | Sequence[int],
    sigma: float = DEFAULT_SIGMA,
    dtype: str = "float32",
):
    """Gaussian heatmaps for a batch of people, at given heatmap coordinates.

    Args:
        joints: (N, J, 2) joint positions (x, y) in heatmap coordinates.
        visible: (N, J) annotated flags (non-zero = annotated).
        heatmap_size: int or (height, width) of the grid.
        sigma: Gaussian standard deviation in heatmap pixels.

    Returns (N, H, W, J): ``exp(-d^2 / (2 sigma^2))`` centred on each joint (peak 1 at the joint),
    all zeros for joints that are not annotated, not finite, or outside the grid.
    """
    from keras import ops

    height, width = _size_hw(heatmap_size)
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


def flip_heatmaps(heatmaps, flip_permutation: Sequence[int]):
    """Mirror heatmaps (N, H, W, J) left-right and swap left/right joint channels."""
    from keras import ops

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
    from keras import ops

    if isinstance(network, keras.Layer):
        return final_heatmaps(network(images, training=False))
    return ops.convert_to_tensor(final_heatmaps(network(images)))


#: Compiled predictors by network (weakly held), so that validation compiles once per run.
_PREDICTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled_predictor(network, flip_permutation: tuple[int, ...] | None) -> Callable:
    """A compiled ``images -> final heatmaps`` of a Keras model (``predict_on_batch``), with the
    flip test of :meth:`HeatmapCodec.flip_test` when ``flip_permutation`` is given."""
    import keras

    cached = _PREDICTORS.get(network, {}).get(flip_permutation)
    if cached is not None:
        return cached

    class FlipTest(keras.Model):
        def __init__(self):
            super().__init__(name="flip_test")
            self.network = network  # tracked: compiled steps read its current weights

        def call(self, images):
            def run(batch):
                return final_heatmaps(self.network(batch, training=False))

            if flip_permutation is None:
                return run(images)
            return HeatmapCodec.flip_test(run, images, flip_permutation)

    predictor = FlipTest().predict_on_batch
    _PREDICTORS.setdefault(network, {})[flip_permutation] = predictor
    return predictor


def _sampler(flat, px, py, height: int, width: int):
    """``sample(dx, dy)``: values of ``flat`` (N, J, H*W) at (px + dx, py + dy), indices clamped to
    the grid (the border value repeats outside: edge padding)."""
    from keras import ops

    def sample(dx: int, dy: int):
        qx = ops.clip(px + dx, 0, width - 1)
        qy = ops.clip(py + dy, 0, height - 1)
        idx = ops.cast(qy * width + qx, "int32")
        return ops.squeeze(ops.take_along_axis(flat, idx[..., None], axis=-1), axis=-1)

    return sample


def _inside(px, py, height: int, width: int, margin: int):
    """1.0 where (px, py) lies at least ``margin`` pixels inside the grid, else 0.0."""
    from keras import ops

    return ops.cast(
        (px >= margin) & (px <= width - 1 - margin) & (py >= margin) & (py <= height - 1 - margin),
        "float32",
    )


def _quarter_step(flat, px, py, height: int, width: int):
    """The Torch code's shift: a quarter pixel towards the higher neighbour, peaks off the border."""
    from keras import ops

    sample = _sampler(flat, px, py, height, width)
    inner = _inside(px, py, height, width, 1)
    dx = 0.25 * ops.sign(sample(1, 0) - sample(-1, 0)) * inner
    dy = 0.25 * ops.sign(sample(0, 1) - sample(0, -1)) * inner
    return dx, dy


def _gaussian_band(size: int, sigma: float) -> np.ndarray:
    """(size, size) matrix of a 1-D Gaussian blur (radius ceil(3 sigma)) with zeros outside the grid."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
    band = np.exp(-(offsets.astype(np.float64) ** 2) / (2.0 * sigma**2))
    band[np.abs(offsets) > radius] = 0.0
    kernel_sum = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2.0 * sigma**2)).sum()
    return (band / kernel_sum).astype(np.float32)


def _log_blurred(maps, scores, sigma: float, decoder: str):
    """log of the heatmaps (N, J, H, W) blurred with a Gaussian of ``sigma`` (zeros outside the grid),
    each rescaled to its original maximum ``scores`` (N, J) and floored (DARK) or clipped (UDP)."""
    from keras import ops

    height, width = int(maps.shape[2]), int(maps.shape[3])
    rows = ops.convert_to_tensor(_gaussian_band(height, sigma))
    cols = ops.convert_to_tensor(_gaussian_band(width, sigma))
    blurred = ops.einsum("yk,njkx->njyx", rows, maps)
    blurred = ops.einsum("xk,njyk->njyx", cols, blurred)
    peak = ops.max(blurred, axis=(2, 3))
    ratio = ops.where(peak > 0, scores / ops.where(peak > 0, peak, ops.ones_like(peak)), 1.0)
    blurred = blurred * ratio[..., None, None]
    if decoder == "udp":
        return ops.log(ops.clip(blurred, _UDP_RANGE[0], _UDP_RANGE[1]))
    return ops.log(ops.maximum(blurred, _DARK_FLOOR))


def _taylor_step(flat_logs, px, py, height: int, width: int, decoder: str):
    """One Newton step ``-H^-1 g`` on the log-heatmap at the argmax (DARK's and UDP's refinement).

    ``dark``: first derivatives from the neighbours at +-1, second derivatives of x and y from those
    at +-2 (DARK's stencil), only for peaks at least 2 pixels inside the grid; ``udp``: all
    derivatives from the neighbours at +-1 with the border value repeated outside the grid, for every
    peak. Steps where the fitted quadratic has no maximum (Hessian not negative definite) are 0;
    steps are clipped to :data:`MAX_STEP`.
    """
    from keras import ops

    sample = _sampler(flat_logs, px, py, height, width)
    centre = sample(0, 0)
    dx = 0.5 * (sample(1, 0) - sample(-1, 0))
    dy = 0.5 * (sample(0, 1) - sample(0, -1))
    dxy = 0.25 * (sample(1, 1) - sample(1, -1) - sample(-1, 1) + sample(-1, -1))
    if decoder == "dark":
        dxx = 0.25 * (sample(2, 0) - 2.0 * centre + sample(-2, 0))
        dyy = 0.25 * (sample(0, 2) - 2.0 * centre + sample(0, -2))
        usable = _inside(px, py, height, width, 2) > 0
    else:
        dxx = sample(1, 0) - 2.0 * centre + sample(-1, 0)
        dyy = sample(0, 1) - 2.0 * centre + sample(0, -1)
        usable = ops.ones_like(dx) > 0
    det = dxx * dyy - dxy * dxy
    maximum = usable & (det > 0) & (dxx < 0)
    safe = ops.where(maximum, det, ops.ones_like(det))
    step_x = -(dyy * dx - dxy * dy) / safe
    step_y = -(dxx * dy - dxy * dx) / safe
    zero = ops.zeros_like(step_x)
    step_x = ops.where(maximum, ops.clip(step_x, -MAX_STEP, MAX_STEP), zero)
    step_y = ops.where(maximum, ops.clip(step_y, -MAX_STEP, MAX_STEP), zero)
    return step_x, step_y
