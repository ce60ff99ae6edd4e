"""Pose estimation on whole images: load any image, crop each person, run the network, map back.

:class:`PosePredictor` is the user-facing entry point::

    predictor = PosePredictor("model.keras")
    people = predictor.predict("photo.jpg", boxes=[(x1, y1, x2, y2)])
    people[0].keypoints  # (J, 2) in the photo's pixels

Crops follow :mod:`hgkeras.geometry` (a square person box of side ``200 * scale``, zero border);
the network runs through :func:`hgkeras.codec.predict_keypoints` (flip test, decoding to
original image pixels).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hgkeras import geometry
from hgkeras.spec import Skeleton, get_skeleton

#: Person boxes given by the user or the detector are enlarged by this factor (Torch's 1.25).
BOX_PADDING = 1.25
#: Above this many source pixels per crop pixel, the box region is first shrunk with area
#: averaging (as the original Torch code does) so that the bilinear warp does not alias.
ANTIALIAS_FACTOR = 2.0


@dataclass
class PersonPose:
    """The pose of one person in one image.

    Attributes:
        keypoints: (J, 2) float32 (x, y) in original image pixels (0-based pixel centres).
        scores: (J,) float32 heatmap maxima (about 1 = confident, near 0 = not found).
        joint_names: the J joint names, in keypoint order.
        box: (x1, y1, x2, y2) the person box the crop was made from.
        center: (2,) centre of the square crop in image pixels.
        scale: crop side / 200 px.
        detection_score: the detector's score when the box came from ``detect=True``, else None.
        heatmaps: (h, w, J) final heatmaps of the crop when requested, else None.
        crop: (H, W, 3) float32 RGB network input when heatmaps were requested, else None.
    """

    keypoints: np.ndarray
    scores: np.ndarray
    joint_names: tuple[str, ...]
    box: tuple[float, float, float, float]
    center: np.ndarray
    scale: float
    detection_score: float | None = None
    heatmaps: np.ndarray | None = field(default=None, repr=False)
    crop: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict: plain floats and lists, joints keyed by name as well as in order."""
        return {
            "box": [float(v) for v in self.box],
            "center": [float(v) for v in self.center],
            "scale": float(self.scale),
            "detection_score": None
            if self.detection_score is None
            else float(self.detection_score),
            "joint_names": list(self.joint_names),
            "keypoints": [[float(x), float(y)] for x, y in self.keypoints],
            "scores": [float(s) for s in self.scores],
        }


def load_image(image: str | os.PathLike | np.ndarray) -> np.ndarray:
    """Read or check an image; returns it in its own dtype, 2-D (gray) or HxWxC with C in {1, 3, 4}.

    Paths are read with ``cv2.IMREAD_UNCHANGED`` (so 16-bit and alpha survive) and come back BGR(A);
    arrays are checked and returned as they are. No copy or float conversion of the whole image
    is made, so huge images cost only their own memory. Use :func:`to_rgb_float` on crops.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise ValueError(f"cannot read image file {path}: not an image OpenCV can decode")
        return array
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a file path or a numpy array, got {type(image).__name__}")
    check_image_array(image)
    return image


def check_image_array(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is HxW, HxWx1, HxWx3 or HxWx4 of a supported dtype."""
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        pass
    elif image.ndim != 2:
        raise ValueError(
            f"image must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be at least 1x1 pixels, got shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64, np.bool_):
        raise ValueError(
            f"image dtype must be uint8, uint16, float32 or float64 (in [0, 1]), got {image.dtype}"
        )


def to_rgb_float(pixels: np.ndarray, color: str = "rgb") -> np.ndarray:
    """An image or crop (any supported dtype/channels) -> float32 RGB HxWx3 in [0, 1].

    uint8 is divided by 255, uint16 by 65535, floats are clipped to [0, 1]; gray is repeated to
    three channels, alpha is dropped, ``color="bgr"`` swaps the channel order.
    """
    if color not in ("rgb", "bgr"):
        raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
    if pixels.dtype == np.uint8:
        out = pixels.astype(np.float32) / 255.0
    elif pixels.dtype == np.uint16:
        out = pixels.astype(np.float32) / 65535.0
    elif pixels.dtype == np.bool_:
        out = pixels.astype(np.float32)
    else:
        out = np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0)
    if out.ndim == 2:
        out = out[..., None]
    if out.shape[2] == 1:
        return np.repeat(out, 3, axis=2)
    out = out[..., :3]
    if color == "bgr":
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


def whole_image_center_scale(height: int, width: int) -> tuple[np.ndarray, float]:
    """The default person box: the square that just holds the whole image (no padding).

    centre = ((W - 1) / 2, (H - 1) / 2), scale = max(W, H) / 200; the image's long side fills the
    crop and the short side is centred with zero borders.
    """
    center = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    return center, max(width, height) / geometry.PIXELS_PER_SCALE


def crop_person(
    image: np.ndarray,
    center: Sequence[float],
    scale: float,
    output_size: int | Sequence[int],
    antialias: bool = True,
) -> np.ndarray:
    """Crop the person box of ``image`` (its own dtype and channels) to ``output_size``.

    ``cv2.warpAffine`` with :func:`hgkeras.geometry.crop_matrix`, bilinear, zero border. When the
    box is more than :data:`ANTIALIAS_FACTOR` times larger than the crop and ``antialias`` is set,
    only the box's part of the image is first shrunk with area averaging, so memory and time stay
    bounded by the box, never by a float copy of the whole image.
    """
    if isinstance(output_size, (int, np.integer)):
        out_h = out_w = int(output_size)
    else:
        out_h, out_w = int(output_size[0]), int(output_size[1])
    matrix = geometry.crop_matrix(center, scale, (out_h, out_w))
    source = image
    if image.dtype == np.bool_:
        source = image.astype(np.uint8) * 255
    side = geometry.PIXELS_PER_SCALE * float(scale)
    factor = side / max(out_h, out_w)
    if antialias and factor > ANTIALIAS_FACTOR:
        height, width = image.shape[:2]
        half = side / 2.0
        cx, cy = float(center[0]), float(center[1])
        x0 = max(0, int(math.floor(cx - half)))
        y0 = max(0, int(math.floor(cy - half)))
        x1 = min(width, int(math.ceil(cx + half)) + 1)
        y1 = min(height, int(math.ceil(cy + half)) + 1)
        if x1 <= x0 or y1 <= y0:  # the box lies entirely outside the image
            shape = (out_h, out_w) + tuple(source.shape[2:])
            return np.zeros(shape, source.dtype)
        region = source[y0:y1, x0:x1]
        small_w = max(1, int(round((x1 - x0) / factor)))
        small_h = max(1, int(round((y1 - y0) / factor)))
        small = cv2.resize(region, (small_w, small_h), interpolation=cv2.INTER_AREA)
        if small.ndim < region.ndim:
            small = small[..., None]
        rx, ry = small_w / (x1 - x0), small_h / (y1 - y0)
        # point in `small` -> point in the image (pixel centres): p = (q + 0.5) / r - 0.5 + origin
        to_image = np.array(
            [[1.0 / rx, 0.0, 0.5 / rx - 0.5 + x0], [0.0, 1.0 / ry, 0.5 / ry - 0.5 + y0]]
        )
        matrix = (np.vstack([matrix, [0.0, 0.0, 1.0]]) @ np.vstack([to_image, [0.0, 0.0, 1.0]]))[:2]
        source = small
    crop = cv2.warpAffine(
        source,
        matrix,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if crop.ndim < source.ndim:
        crop = crop[..., None]
    return crop


def _as_boxes(boxes: Any) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(
            f"boxes must be (x1, y1, x2, y2) or a list of them (N, 4), got shape {array.shape}"
        )
    for box in array:
        geometry.box_to_center_scale(box)  # validates finiteness and x2 > x1, y2 > y1
    return array


def load_model(model_or_path: Any):
    """A keras model, or load one from a ``.keras`` file (clear errors for missing/bad files)."""
    if isinstance(model_or_path, (str, os.PathLike)):
        import keras

        import hgkeras.models.hourglass  # noqa: F401  (registers StackedHourglass for deserialisation)

        path = Path(model_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        try:
            return keras.models.load_model(str(path), compile=False)
        except Exception as error:  # keras raises many types for a bad file
            raise ValueError(f"cannot load a Keras model from {path}: {error}") from error
    if not hasattr(model_or_path, "outputs") or not callable(model_or_path):
        raise ValueError(
            f"model_or_path must be a keras model or a path, got {type(model_or_path).__name__}"
        )
    return model_or_path


def _inference_copy(model):
    """``model`` with its batch norms folded, or ``model`` itself when it is not functional."""
    from hgkeras.models.fold import fold_batch_norms

    try:
        return fold_batch_norms(model)
    except TypeError:
        return model


class PosePredictor:
    """Keypoints of people in whole images from a Stacked Hourglass model.

    Args:
        model_or_path: a keras model (e.g. :class:`hgkeras.StackedHourglass`), a ``.keras`` path,
            an exported file (SavedModel folder, ``.onnx``, ``.tflite``, OpenVINO ``.xml``) or a
            :class:`hgkeras.inference.runtimes.Runtime`; the runtime is chosen from the file.
        flip: average with the mirrored image (METHOD.md "Flip test").
        batch_size: person crops per network call.
        antialias: shrink large person boxes with area averaging before the bilinear crop.
        fold_batch_norms: run an inference copy of the model with each conv -> BatchNorm pair folded
            into one conv (:func:`hgkeras.models.fold.fold_batch_norms`: same outputs, faster). The copy is
            made here: weights changed on ``model`` later are not seen by this predictor.
    """

    def __init__(
        self,
        model_or_path: Any,
        flip: bool = True,
        batch_size: int = 16,
        antialias: bool = True,
        fold_batch_norms: bool = True,
    ) -> None:
        from hgkeras.inference.runtimes import Runtime, load_runtime, runtime_kind

        if isinstance(model_or_path, (str, os.PathLike)) and runtime_kind(model_or_path) != "keras":
            model_or_path = load_runtime(model_or_path)
        runtime = isinstance(model_or_path, Runtime)
        self.model = model_or_path if runtime else load_model(model_or_path)
        self.network = (
            _inference_copy(self.model) if fold_batch_norms and not runtime else self.model
        )
        shape = getattr(self.model, "image_shape", None) or tuple(self.model.input_shape[1:])
        if len(shape) != 3 or shape[0] is None or shape[1] is None:
            raise ValueError(
                f"the model needs a fixed input shape (H, W, 3) to crop people, got {shape}"
            )
        self.input_size = (int(shape[0]), int(shape[1]))
        self.num_joints = int(self.model.outputs[-1].shape[-1])
        try:
            self.skeleton: Skeleton | None = (
                self.model.skeleton if runtime else get_skeleton(self.num_joints)
            )
            if self.skeleton is None:
                raise ValueError(f"no skeleton for {self.num_joints} joints")
        except ValueError:
            if flip:
                raise ValueError(
                    f"the flip test needs the left/right joint pairs, but no known skeleton has "
                    f"{self.num_joints} joints; use flip=False"
                ) from None
            self.skeleton = None
        self.joint_names = (
            self.skeleton.joint_names
            if self.skeleton is not None
            else tuple(f"joint_{j}" for j in range(self.num_joints))
        )
        # a SavedModel exported with --flip already averages the mirrored pass in its graph
        self.flip = bool(flip) and not (runtime and self.model.flip_in_graph)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.antialias = bool(antialias)

    def predict(
        self,
        image: str | os.PathLike | np.ndarray,
        boxes: Any = None,
        *,
        detect: bool = False,
        color: str = "rgb",
        return_heatmaps: bool = False,
    ) -> list[PersonPose]:
        """Poses of the people in ``image``.

        Args:
            image: a path (read with OpenCV, any format it decodes), or an array HxW (gray),
                HxWx3 (RGB, or BGR with ``color="bgr"``), HxWx4 (alpha ignored); uint8, uint16
                (full range 0..65535) or float in [0, 1].
            boxes: person boxes (x1, y1, x2, y2) in image pixels, one or (N, 4). Each is padded
                by 1.25 into a square crop. ``None``: the whole image is one person (see
                :func:`whole_image_center_scale`) unless ``detect`` is set.
            detect: instead of boxes, find people with OpenCV's HOG people detector
                (:func:`hgkeras.inference.detect.detect_people`); returns [] when it finds nobody.
            color: channel order of 3/4-channel arrays ("rgb" or "bgr"); ignored for paths.
            return_heatmaps: keep each person's heatmaps and network input crop.

        Returns one :class:`PersonPose` per box, in box order.
        """
        if color not in ("rgb", "bgr"):
            raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
        if detect and boxes is not None:
            raise ValueError("pass either boxes or detect=True, not both")
        if isinstance(image, (str, os.PathLike)):
            color = "bgr"  # OpenCV reads BGR(A)
        pixels = load_image(image)
        height, width = pixels.shape[:2]
        detection_scores: list[float | None]
        if boxes is None and detect:
            from hgkeras.inference.detect import detect_people

            box_array, det_scores = detect_people(to_uint8_bgr(pixels, color))
            detection_scores = [float(s) for s in det_scores]
        elif boxes is None:
            center, scale = whole_image_center_scale(height, width)
            box_array = np.array([[-0.5, -0.5, width - 0.5, height - 0.5]])
            detection_scores = [None]
            return self._predict_crops(
                pixels, box_array, [center], [scale], detection_scores, color, return_heatmaps
            )
        else:
            box_array = _as_boxes(boxes)
            detection_scores = [None] * len(box_array)
        centers, scales = [], []
        for box in box_array:
            center, scale = geometry.box_to_center_scale(box, padding=BOX_PADDING)
            centers.append(center)
            scales.append(scale)
        return self._predict_crops(
            pixels, box_array, centers, scales, detection_scores, color, return_heatmaps
        )

    def _predict_crops(
        self,
        pixels: np.ndarray,
        boxes: np.ndarray,
        centers: Sequence[np.ndarray],
        scales: Sequence[float],
        detection_scores: Sequence[float | None],
        color: str,
        return_heatmaps: bool,
    ) -> list[PersonPose]:
        if len(boxes) == 0:
            return []
        crops = np.stack(
            [
                to_rgb_float(
                    crop_person(pixels, c, s, self.input_size, antialias=self.antialias), color
                )
                for c, s in zip(centers, scales, strict=True)
            ]
        )
        centers_arr = np.asarray(centers, np.float32)
        scales_arr = np.asarray(scales, np.float32)
        heatmaps = None
        if return_heatmaps:
            keypoints, scores, heatmaps = self._run_with_heatmaps(crops, centers_arr, scales_arr)
        else:
            from hgkeras.codec import predict_keypoints

            keypoints, scores = predict_keypoints(
                self.network, crops, centers_arr, scales_arr, self.flip, self.batch_size
            )
        people = []
        for i, box in enumerate(boxes):
            people.append(
                PersonPose(
                    keypoints=np.asarray(keypoints[i], np.float32),
                    scores=np.asarray(scores[i], np.float32),
                    joint_names=tuple(self.joint_names),
                    box=tuple(float(v) for v in box),
                    center=np.asarray(centers[i], np.float64),
                    scale=float(scales[i]),
                    detection_score=detection_scores[i],
                    heatmaps=None if heatmaps is None else heatmaps[i],
                    crop=crops[i] if return_heatmaps else None,
                )
            )
        return people

    def _run_with_heatmaps(self, crops, centers, scales):
        from keras import ops

        from hgkeras.codec import decode_to_image, heatmaps_with_flip

        perm = self.skeleton.flip_permutation if self.skeleton is not None else None
        keypoints, scores, maps = [], [], []
        for start in range(0, len(crops), self.batch_size):
            stop = start + self.batch_size
            hm = heatmaps_with_flip(self.network, crops[start:stop], perm, flip=self.flip)
            k, s = decode_to_image(hm, centers[start:stop], scales[start:stop])
            keypoints.append(ops.convert_to_numpy(k))
            scores.append(ops.convert_to_numpy(s))
            maps.append(ops.convert_to_numpy(hm))
        return np.concatenate(keypoints), np.concatenate(scores), np.concatenate(maps)


def to_uint8_bgr(pixels: np.ndarray, color: str = "rgb") -> np.ndarray:
    """Any supported image -> uint8 BGR HxWx3 (for drawing, detection and writing)."""
    if pixels.dtype == np.uint8:
        out = pixels
    elif pixels.dtype == np.uint16:
        out = (pixels // 257).astype(np.uint8)
    else:
        out = (np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(
            np.uint8
        )
    if out.ndim == 2:
        return cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    if out.shape[2] == 1:
        return cv2.cvtColor(out[..., 0], cv2.COLOR_GRAY2BGR)
    out = out[..., :3]
    if color == "rgb":
        out = out[..., ::-1]
    return np.ascontiguousarray(out)
