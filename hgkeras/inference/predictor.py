"""Pose estimation on whole images: load any image, crop each person, run the network, map back.

:class:`PosePredictor` is the user-facing entry point::

    predictor = PosePredictor("model.keras")
    people = predictor.predict("photo.jpg", boxes=[(x1, y1, x2, y2)])
    people[0].keypoints  # (J, 2) in the photo's pixels

Models are read by :func:`hgkeras.models.loading.load_model` (a ``StackedHourglass``, a
``PoseTrainer`` or their ``.keras`` files) and carry their pose spec. Crops follow the one crop
policy (:func:`hgkeras.crop.crop_numpy`, ``docs/architecture.md``); the network runs through
:func:`hgkeras.codec.predict_keypoints` (flip test, decoding to original image pixels).
:meth:`PosePredictor.from_network` takes any callable from crops to heatmaps instead of a Keras
model (the seam for exported runtimes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hgkeras import geometry
from hgkeras.crop import crop_numpy
from hgkeras.spec import PoseSpec, get_pose, pose_of

#: Person boxes given by the user or the detector are enlarged by this factor (Torch's 1.25).
BOX_PADDING = 1.25


@dataclass
class PersonPose:
    """The pose of one person in one image.

    Attributes:
        keypoints: (J, 2) float32 (x, y) in original image pixels (0-based pixel centres).
        scores: (J,) float32 heatmap maxima (about 1 = confident, near 0 = not found).
        joint_names: the J joint names, in keypoint order.
        box: (x1, y1, x2, y2) the person box the crop was made from.
        center: (2,) centre of the crop box in image pixels.
        scale: crop box height / 200 px.
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


def whole_image_center_scale(
    height: int, width: int, aspect_ratio: float = 1.0
) -> tuple[np.ndarray, float]:
    """The default person box: the smallest box of ``aspect_ratio`` (width / height) holding the image.

    centre = ((W - 1) / 2, (H - 1) / 2), scale = max(H, W / aspect_ratio) / 200 (no padding): the
    image fills the crop along one side and is centred with zero borders along the other.
    """
    center = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    return center, max(height, width / aspect_ratio) / geometry.PIXELS_PER_SCALE


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


class PosePredictor:
    """Keypoints of people in whole images from a Stacked Hourglass model.

    Args:
        model_or_path: a ``StackedHourglass`` (or other Keras model), a ``PoseTrainer`` or a
            ``.keras`` path holding either (read by :func:`hgkeras.models.loading.load_model`).
        flip: average with the mirrored image (the flip test).
        batch_size: person crops per network call.
        fold_batch_norms: run an inference copy of the model with each conv -> BatchNorm pair folded
            into one conv (:func:`hgkeras.models.fold.fold_batch_norms`: same outputs, faster). The copy is
            made here: weights changed on ``model`` later are not seen by this predictor.
        pose: the joint set, when the model carries none (default: the model's own pose spec).
    """

    def __init__(
        self,
        model_or_path: Any,
        flip: bool = True,
        batch_size: int = 16,
        fold_batch_norms: bool = True,
        pose: str | PoseSpec | None = None,
    ) -> None:
        from hgkeras.models.loading import load_model

        model = load_model(model_or_path)
        spec = get_pose(pose) if pose is not None else pose_of(model)
        joints = int(model.outputs[-1].shape[-1])
        if joints != spec.num_joints:
            raise ValueError(
                f"the model predicts {joints} joints but pose {spec.name!r} has {spec.num_joints}"
            )
        network = model
        if fold_batch_norms:
            try:
                network = load_model(model, fold_batch_norms=True)
            except TypeError:  # not a functional model: run it as it is
                network = model
        self._setup(network, spec, _input_size(model), flip, batch_size)
        self.model = model

    @classmethod
    def from_network(
        cls,
        network: Any,
        pose: str | PoseSpec,
        input_size: Sequence[int],
        flip: bool = True,
        batch_size: int = 16,
    ) -> PosePredictor:
        """A predictor around ``network``: any callable from crops (N, H, W, 3) float32 RGB in [0, 1]
        to heatmaps (N, H/4, W/4, J) (numpy or tensors; a list of stacks is fine), for runtimes
        other than Keras. ``input_size`` is (H, W)."""
        predictor = cls.__new__(cls)
        predictor._setup(network, get_pose(pose), input_size, flip, batch_size)
        predictor.model = None
        return predictor

    def _setup(self, network, pose: PoseSpec, input_size, flip: bool, batch_size: int) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.network = network
        self.pose = pose
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.flip = bool(flip)
        self.batch_size = int(batch_size)

    @property
    def _aspect_ratio(self) -> float:
        return self.input_size[1] / self.input_size[0]

    @property
    def skeleton(self) -> PoseSpec:
        """The pose spec (older name)."""
        return self.pose

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.pose.joint_names

    @property
    def num_joints(self) -> int:
        return self.pose.num_joints

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
                by 1.25 into a box of the model input's aspect ratio. ``None``: the whole image is one
                person (see
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
            center, scale = whole_image_center_scale(height, width, self._aspect_ratio)
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
            center, scale = geometry.box_to_center_scale(
                box, padding=BOX_PADDING, aspect_ratio=self._aspect_ratio
            )
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
                to_rgb_float(crop_numpy(pixels, c, s, self.input_size), color)
                for c, s in zip(centers, scales, strict=True)
            ]
        )
        from hgkeras.codec import predict_keypoints

        out = predict_keypoints(
            self.network,
            crops,
            np.asarray(centers, np.float32),
            np.asarray(scales, np.float32),
            self.pose.flip_permutation,
            self.flip,
            self.batch_size,
            return_heatmaps=return_heatmaps,
        )
        keypoints, scores, heatmaps = out["keypoints"], out["scores"], out.get("heatmaps")
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


def _input_size(model) -> tuple[int, int]:
    """(height, width) of a model's fixed input, or ValueError."""
    shape = getattr(model, "image_shape", None) or tuple(model.input_shape[1:])
    if len(shape) != 3 or shape[0] is None or shape[1] is None:
        raise ValueError(
            f"the model needs a fixed input shape (H, W, 3) to crop people, got {shape}"
        )
    return int(shape[0]), int(shape[1])


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
