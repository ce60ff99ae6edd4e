"""Pose estimation on whole images: load any image, crop each person, run the network, map back.

:class:`PosePredictor` is the user-facing entry point::

    predictor = PosePredictor("model.keras")
    people = predictor.predict("photo.jpg", boxes=[(x1, y1, x2, y2)])
    people[0].keypoints  # (J, 2) in the photo's pixels

Models are read by :func:`hgkeras.models.loading.load_model` (a ``StackedHourglass``, a
``PoseTrainer`` or their ``.keras`` files) and carry their pose spec. Crops follow the one crop
policy (:func:`hgkeras.crop.crop_numpy`, ``docs/architecture.md``); the network runs through the
model's heatmap codec (:meth:`hgkeras.codec.HeatmapCodec.predict_keypoints`: flip test, decoding
to original image pixels), or the one named by ``decoder``.
:meth:`PosePredictor.from_network` takes any callable from crops to heatmaps instead of a Keras
model (the seam for exported runtimes).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hgkeras import geometry
from hgkeras.codec import HeatmapCodec, codec_for, get_codec
from hgkeras.crop import crop_numpy
from hgkeras.data.images import DEFAULT_MAX_PIXELS, load_image, to_rgb_float, to_uint8_bgr
from hgkeras.inference.boxes import Detector, check_boxes, check_crop_box, run_detector
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
        detection_score: the detector's score (``detect=True``, ``detector=``, ``box_scores``)
            or None.
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


def whole_image_center_scale(
    height: int, width: int, aspect_ratio: float = 1.0
) -> tuple[np.ndarray, float]:
    """The default person box: the smallest box of ``aspect_ratio`` (width / height) holding the image.

    centre = ((W - 1) / 2, (H - 1) / 2), scale = max(H, W / aspect_ratio) / 200 (no padding): the
    image fills the crop along one side and is centred with zero borders along the other.
    """
    center = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    return center, max(height, width / aspect_ratio) / geometry.PIXELS_PER_SCALE


class PosePredictor:
    """Keypoints of people in whole images from a Stacked Hourglass model.

    Args:
        model_or_path: a ``StackedHourglass`` (or other Keras model), a ``PoseTrainer``, a
            ``.keras`` path holding either (read by :func:`hgkeras.models.loading.load_model`), an
            exported file (SavedModel folder, ``.onnx``, ``.tflite``, OpenVINO ``.xml``: the runtime
            is chosen from the file, :mod:`hgkeras.inference.runtimes`) or such a runtime.
        flip: average with the mirrored image (the flip test).
        batch_size: person crops per network call.
        fold_batch_norms: run an inference copy of the model with each conv -> BatchNorm pair folded
            into one conv (:func:`hgkeras.models.fold.fold_batch_norms`: same outputs, faster). The copy is
            made here: weights changed on ``model`` later are not seen by this predictor.
        pose: the joint set, when the model carries none (default: the model's own pose spec).
        decoder: ``"paper"``, ``"dark"`` or ``"udp"`` (default: the codec the model was trained
            or exported with; :func:`hgkeras.codec.codec_for` refuses decoders of another encoding).
        detector: person boxes for images given without ``boxes``: any callable
            ``detector(image_bgr uint8 (H, W, 3)) -> (boxes (N, 4) x1, y1, x2, y2, scores (N,))``
            (:mod:`hgkeras.inference.boxes`); None: OpenCV's HOG with ``detect=True``, else the
            whole image is one person.
        max_pixels: decoded-size limit of image files (None = none; arrays are not limited).
        allow_truncated: decode truncated JPEG/PNG files with a warning instead of an error.
    """

    detector: Detector | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    allow_truncated: bool = False

    def __init__(
        self,
        model_or_path: Any,
        flip: bool = True,
        batch_size: int = 16,
        fold_batch_norms: bool = True,
        pose: str | PoseSpec | None = None,
        detector: Detector | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        allow_truncated: bool = False,
        decoder: str | None = None,
    ) -> None:
        from hgkeras.models.loading import load_model

        if detector is not None and not callable(detector):
            raise ValueError(
                f"detector must be a callable image -> (boxes, scores), got {detector!r}"
            )
        self.detector = detector
        self.max_pixels = max_pixels
        self.allow_truncated = bool(allow_truncated)

        from hgkeras.inference.runtimes import Runtime, load_runtime, runtime_kind

        if isinstance(model_or_path, (str, os.PathLike)) and runtime_kind(model_or_path) != "keras":
            model_or_path = load_runtime(model_or_path)
        if isinstance(model_or_path, Runtime):
            if pose is None and model_or_path.pose is None:
                raise ValueError(
                    f"{model_or_path.path}: no pose.json beside the model names its joints; "
                    "pass pose='mpii' / 'flic' / 'coco' / a PoseSpec"
                )
            spec = get_pose(pose) if pose is not None else model_or_path.pose
            # a SavedModel exported with --flip already averages the mirrored pass in its graph
            flip = bool(flip) and not model_or_path.flip_in_graph
            codec = codec_for(model_or_path, decoder)
            self._setup(model_or_path, spec, model_or_path.input_size, flip, batch_size, codec)
            self.model = model_or_path
            return
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
        codec = codec_for(model, decoder)
        self._setup(network, spec, _input_size(model), flip, batch_size, codec)
        self.model = model

    @classmethod
    def from_network(
        cls,
        network: Any,
        pose: str | PoseSpec,
        input_size: Sequence[int],
        flip: bool = True,
        batch_size: int = 16,
        codec: HeatmapCodec | dict | str | None = None,
    ) -> PosePredictor:
        """A predictor around ``network``: any callable from crops (N, H, W, 3) float32 RGB in [0, 1]
        to heatmaps (N, H/4, W/4, J) (numpy or tensors; a list of stacks is fine), for runtimes
        other than Keras. ``input_size`` is (H, W); ``codec`` decodes the heatmaps (default the
        paper's)."""
        predictor = cls.__new__(cls)
        predictor._setup(network, get_pose(pose), input_size, flip, batch_size, get_codec(codec))
        predictor.model = None
        return predictor

    def _setup(
        self, network, pose: PoseSpec, input_size, flip: bool, batch_size: int, codec: HeatmapCodec
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.network = network
        self.pose = pose
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.flip = bool(flip) and pose.flip  # sets without left/right pairs train unmirrored
        self.batch_size = int(batch_size)
        self.codec = codec

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
        box_scores: Sequence[float] | None = None,
        color: str = "rgb",
        return_heatmaps: bool = False,
    ) -> list[PersonPose]:
        """Poses of the people in ``image``.

        Args:
            image: a path (read with OpenCV, any format it decodes), or an array HxW (gray),
                HxWx3 (RGB, or BGR with ``color="bgr"``), HxWx4 (alpha ignored); uint8, uint16
                (full range 0..65535) or float in [0, 1].
            boxes: person boxes (x1, y1, x2, y2) in image pixels, one or (N, 4). Each is padded
                by 1.25 into a box of the model input's aspect ratio, which must overlap the image
                and be at most 10x its longer side (:func:`hgkeras.inference.boxes.check_crop_box`).
                ``None``: the predictor's ``detector`` finds them; without one, the whole image is
                one person (see :func:`whole_image_center_scale`; a warning says so) unless
                ``detect`` is set.
            detect: instead of boxes, find people with OpenCV's HOG people detector
                (:func:`hgkeras.inference.detect.detect_people`); returns [] when it finds nobody.
            box_scores: a detector's scores of ``boxes`` (N,), kept as ``detection_score``.
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
        pixels = load_image(image, max_pixels=self.max_pixels, allow_truncated=self.allow_truncated)
        height, width = pixels.shape[:2]
        if boxes is None and (detect or self.detector is not None):
            from hgkeras.inference.detect import detect_people

            box_array, det_scores = run_detector(
                self.detector or detect_people, to_uint8_bgr(pixels, color)
            )
        elif boxes is None:
            warnings.warn(
                "no person boxes: the whole image is taken as one person (pass boxes, "
                "detect=True or a detector)",
                stacklevel=2,
            )
            center, scale = whole_image_center_scale(height, width, self._aspect_ratio)
            box_array = np.array([[-0.5, -0.5, width - 0.5, height - 0.5]])
            return self._predict_crops(
                pixels, box_array, [center], [scale], [None], color, return_heatmaps
            )
        else:
            box_array, det_scores = check_boxes(boxes, box_scores)
        detection_scores = [None if math.isnan(v) else float(v) for v in det_scores]
        centers, scales = [], []
        for box in box_array:
            center, scale = geometry.box_to_center_scale(
                box, padding=BOX_PADDING, aspect_ratio=self._aspect_ratio
            )
            check_crop_box(center, scale, height, width, self._aspect_ratio)
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
        out = self.codec.predict_keypoints(
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
