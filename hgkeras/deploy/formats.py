"""Export formats beyond the SavedModel: ONNX, LiteRT (TFLite), OpenVINO, float16 and int8.

Every file holds the bare network: ``images`` float32 (N, H, W, 3) RGB in [0, 1] -> ``heatmaps``
float32 (N, H/4, W/4, J) of the last stack, with a dynamic batch. Decoding and the flip test run on
the host with the codec recorded in ``pose.json`` (:mod:`hgkeras.inference.runtimes`,
:class:`~hgkeras.inference.predictor.PosePredictor`).

=================  =======================  ===================================================
format             file                     made with
=================  =======================  ===================================================
``onnx``           ``model.onnx``           Keras ``model.export(format="onnx")`` (tf2onnx)
``onnx-int8``      ``model_int8.onnx``      ``onnxruntime.quantization.quantize_static`` (QDQ,
                                            per-channel int8 weights in the reduced 7-bit
                                            range, uint8 activations; the first and last
                                            convolutions, the residual sums and the
                                            pre-activation batch norms stay float)
``tflite``         ``model.tflite``         Keras ``model.export(format="litert")``
``tflite-fp16``    ``model_fp16.tflite``    the same with float16 weights
``tflite-int8``    ``model_int8.tflite``    the same, full int8 with a representative dataset
``openvino``       ``model.xml`` + ``.bin``  ``openvino.convert_model`` of the ONNX file
=================  =======================  ===================================================

int8 formats are calibrated on real person crops (:func:`calibration_crops`). Every file is checked
against the Keras model on real crops (:func:`check_format`); int8 files on annotated people also
against the annotations, with a warning when they lose more than 2 PCK points or 10 % of mean
keypoint error to the Keras model.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hgkeras import io
from hgkeras.codec import HeatmapCodec

SAVED_MODEL = "saved_model"
#: Format -> file name inside the version folder (the SavedModel is the folder itself).
FILENAMES = {
    "saved_model": "saved_model.pb",
    "onnx": "model.onnx",
    "onnx-int8": "model_int8.onnx",
    "tflite": "model.tflite",
    "tflite-fp16": "model_fp16.tflite",
    "tflite-int8": "model_int8.tflite",
    "openvino": "model.xml",
}
FORMATS = tuple(FILENAMES)
#: Numeric precision of each format's weights and activations.
PRECISION = {
    "saved_model": "float32",
    "onnx": "float32",
    "onnx-int8": "int8",
    "tflite": "float32",
    "tflite-fp16": "float16",
    "tflite-int8": "int8",
    "openvino": "float32",
}
#: Largest max |heatmap difference| from Keras accepted for float formats.
TOLERANCE = {"float32": 1e-4, "float16": 2e-2}
#: Below this share of joints within one heatmap pixel of Keras, an int8 export is flagged (when
#: the calibration people have no annotations).
MIN_AGREEMENT = 0.9
#: On annotated calibration people, an int8 export is flagged when its PCK@0.5 against the
#: annotations is more than MAX_PCK_DROP points below Keras' or its mean pixel error more than
#: MAX_ERROR_RATIO times Keras'.
MAX_PCK_DROP = 2.0
MAX_ERROR_RATIO = 1.1
#: Most crops used for calibration.
MAX_CALIBRATION_CROPS = 256
ONNX_OPSET = 17
#: ONNX operators that int8 ONNX quantises. The residual sums (``Add``) stay float: quantising
#: them nearly doubled the heatmap error of the trained network (rms 0.014 -> 0.026, docs/deploy.md);
#: ``Relu``, ``MaxPool``, ``Transpose`` and ``Reshape`` only pass int8 values on.
INT8_ONNX_OPS = ("Conv", "Relu", "MaxPool", "Transpose", "Reshape")


def parse_formats(values: str | Iterable[str]) -> tuple[str, ...]:
    """Format names from "a,b" or a list, checked and de-duplicated, in :data:`FORMATS` order."""
    if isinstance(values, str):
        values = values.split(",")
    names = {v.strip().lower() for v in values if v.strip()}
    unknown = sorted(names - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; choose from {', '.join(FORMATS)}")
    if not names:
        raise ValueError(f"no export format given; choose from {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in names)


# --------------------------------------------------------------------------------------------------
# Calibration data


def default_calibration() -> Path:
    """The shipped real MPII samples' annotations (:data:`hgkeras.data.samples.SAMPLES_JSON`)."""
    from hgkeras.data.samples import SAMPLES_JSON

    return SAMPLES_JSON


@dataclass
class CalibrationCrops:
    """Person crops for calibration and checks, with the annotated people's scale where known.

    ``crops`` float32 (N, H, W, 3) in [0, 1]: the people, then their mirror images. For people
    read from an annotation file, ``tenth_head`` (N,) is 0.1 of each one's PCK normaliser (MPII:
    head size) as a share of the crop height, ``visible`` (N, J) their annotated joints (False for
    the mirror images), ``joints`` (N, J, 2) the annotations in crop pixels and ``box`` (N,) the
    crop height in image pixels (all None for TFRecords).
    """

    crops: np.ndarray
    tenth_head: np.ndarray | None = None
    visible: np.ndarray | None = None
    joints: np.ndarray | None = None
    box: np.ndarray | None = None


def calibration_crops(
    source: str | os.PathLike | None,
    input_size: tuple[int, int],
    images: str | os.PathLike | None = None,
    limit: int = MAX_CALIBRATION_CROPS,
) -> np.ndarray:
    """Person crops float32 (N, H, W, 3) in [0, 1] and their mirror images, for calibration/checks.

    ``source``: a TFRecords folder of ``hgkeras prepare`` (its valid split, else train), an
    annotation file (MPII/FLIC, any layout :func:`hgkeras.data.read_annotations` reads) with its
    ``images`` folder (default: ``images/`` beside the file), or None for the shipped samples.
    At most ``limit`` crops (half of them mirrored).
    """
    return calibration_people(source, input_size, images, limit).crops


def calibration_people(
    source: str | os.PathLike | None,
    input_size: tuple[int, int],
    images: str | os.PathLike | None = None,
    limit: int = MAX_CALIBRATION_CROPS,
) -> CalibrationCrops:
    """:func:`calibration_crops` with the people's head sizes and annotated joints where known."""
    source = Path(source) if source is not None else default_calibration()
    if not source.exists():
        raise FileNotFoundError(f"calibration data not found: {source}")
    height, width = int(input_size[0]), int(input_size[1])
    people = max(1, limit // 2)
    truth = None
    if source.is_dir():
        crops = _tfrecord_crops(source, (height, width), people)
    else:
        crops, truth = _annotation_crops(source, images, (height, width), people)
    if len(crops) == 0:
        raise ValueError(f"{source}: no people to calibrate on")
    mirrored = np.concatenate([crops, crops[:, :, ::-1]])  # the flip test runs mirrored crops
    if truth is None or not np.all(np.isfinite(truth["tenth_head"])):
        return CalibrationCrops(mirrored)
    # only the people as annotated are scored (a mirrored crop's joints swap sides)
    visible = truth["visible"]
    return CalibrationCrops(
        mirrored,
        tenth_head=np.tile(truth["tenth_head"], 2),
        visible=np.concatenate([visible, np.zeros_like(visible)]),
        joints=np.tile(truth["joints"], (2, 1, 1)),
        box=np.tile(truth["box"], 2),
    )


def _annotation_crops(path: Path, images, size: tuple[int, int], people: int):
    from hgkeras import geometry
    from hgkeras.crop import crop_numpy
    from hgkeras.data.images import load_image, to_rgb_float
    from hgkeras.data.readers import read_annotations

    folder = Path(images) if images is not None else path.parent / "images"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder of the calibration annotations not found: {folder} "
            "(give it with --calibration-images)"
        )
    records = read_annotations(path)[:people]
    crops, joints = [], []
    for record in records:
        image = load_image(folder / record.image)  # BGR, as OpenCV reads it
        crop = crop_numpy(image, record.center, record.scale, size)
        crops.append(to_rgb_float(crop, "bgr"))
        matrix = geometry.crop_matrix(record.center, record.scale, size)
        joints.append(geometry.apply_matrix(matrix, np.asarray(record.joints, np.float64)))
    if not crops:
        return np.zeros((0, *size, 3), np.float32), None
    box = np.array([geometry.PIXELS_PER_SCALE * r.scale for r in records])
    truth = {
        "tenth_head": 0.1 * np.array([r.normalizer for r in records]) / box,
        "visible": np.stack([np.asarray(r.visible) > 0 for r in records]),
        "joints": np.stack(joints),
        "box": box,
    }
    return np.stack(crops), truth


def _tfrecord_crops(folder: Path, size: tuple[int, int], people: int) -> np.ndarray:
    from hgkeras.data.pipeline import pose_dataset
    from hgkeras.data.tfrecords import read_manifest

    if size[0] != size[1]:
        raise ValueError(f"TFRecord calibration crops are square; the model's input is {size}")
    splits = read_manifest(folder).get("splits", {})
    # the training people: what the network saw (held-out people stay out of the calibration)
    split = "train" if "train" in splits else next(iter(splits), None)
    dataset = pose_dataset(folder, 16, training=False, split=split, input_size=size[0])
    crops, count = [], 0
    for batch in dataset:
        crops.append(np.asarray(batch["image"], np.float32))
        count += len(crops[-1])
        if count >= people:
            break
    return np.concatenate(crops)[:people] if crops else np.zeros((0, *size, 3), np.float32)


# --------------------------------------------------------------------------------------------------
# Writing


def _images_signature(network) -> list:
    """The export input signature: ``images`` float32 (None, H, W, 3)."""
    import tensorflow as tf

    height, width = (int(d) for d in network.inputs[0].shape[1:3])
    return [tf.TensorSpec([None, height, width, 3], tf.float32, name="images")]


def _rename_output(proto, name: str) -> None:
    """Give the ONNX graph's single output the name ``name``."""
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    proto.graph.output[0].name = name


def write_onnx(network, path: str | os.PathLike) -> Path:
    """``network`` (images -> heatmaps) as ONNX with a dynamic batch, output named ``heatmaps``."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="hgkeras-onnx-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Keras' tf2onnx patch probes np.object
        raw = os.path.join(tmp, "model.onnx")
        network.export(
            raw, format="onnx", verbose=False, input_signature=_images_signature(network),
            opset_version=ONNX_OPSET,
        )  # fmt: skip
        proto = onnx.load(raw)
    _rename_output(proto, "heatmaps")
    onnx.checker.check_model(proto)
    io.atomic_write_bytes(path, proto.SerializeToString())
    return Path(path)


def write_onnx_int8(float_onnx: str | os.PathLike, path: str | os.PathLike, crops) -> Path:
    """Static int8 quantisation (QDQ, per-channel 7-bit weights) of ``float_onnx``, calibrated on
    ``crops``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(float_onnx)).graph.input[0].name

    class CropReader(CalibrationDataReader):
        """One crop per call, then None."""

        def __init__(self) -> None:
            self.feeds = iter([{input_name: c[None]} for c in np.asarray(crops, np.float32)])

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory(prefix="hgkeras-quant-") as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(str(float_onnx), prepared, skip_symbolic_shape=True)
        graph = onnx.load(prepared).graph
        convs = [n.name for n in graph.node if n.op_type == "Conv"]  # in topological order
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # per-channel notes about rank-1 (batch norm) constants
        try:
            with io.atomic_path(path) as temp:
                quantize_static(
                    prepared,
                    temp,
                    CropReader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    # 7-bit weights: x86 CPUs without VNNI (AVX2 only) multiply uint8 x int8 pairs
                    # into saturating int16 sums; full 8-bit weights overflow them (on this
                    # project's AVX2 AMD EPYC PCKh fell from 97.4 to 68.4, docs/deploy.md)
                    reduce_range=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    # the stem's and the final heatmaps' convolutions stay float (as is usual)
                    nodes_to_exclude=[convs[0], convs[-1]],
                    op_types_to_quantize=list(INT8_ONNX_OPS),
                )
        finally:
            root.setLevel(level)
    return Path(path)


def write_tflite(network, path: str | os.PathLike, precision: str, crops=None) -> Path:
    """``network`` as LiteRT: float32, float16 weights, or full int8 calibrated on ``crops``."""
    import tensorflow as tf

    options: dict = {}
    if precision == "float16":
        options = {
            "optimizations": [tf.lite.Optimize.DEFAULT],
            "target_spec": {"supported_types": [tf.float16]},
        }
    elif precision == "int8":
        samples = np.asarray(crops, np.float32)

        def representative_dataset():
            for crop in samples:
                yield [crop[None]]

        options = {
            "optimizations": [tf.lite.Optimize.DEFAULT],
            "representative_dataset": representative_dataset,
            "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
        }
    elif precision != "float32":
        raise ValueError(f"LiteRT precision must be float32, float16 or int8, got {precision!r}")
    with io.atomic_path(path) as temp:
        network.export(
            temp, format="litert", verbose=False, input_signature=_images_signature(network),
            **options,
        )  # fmt: skip
    return Path(path)


def write_openvino(float_onnx: str | os.PathLike, path: str | os.PathLike) -> Path:
    """OpenVINO IR (``path`` .xml + .bin, float32 weights) converted from the float ONNX file."""
    import openvino

    model = openvino.convert_model(str(float_onnx))
    path = Path(path)
    openvino.save_model(model, str(path), compress_to_fp16=False)
    return path


def write_formats(
    network, folder: str | os.PathLike, formats: Sequence[str], crops: np.ndarray | None
) -> dict[str, Path]:
    """Write every non-SavedModel format of ``formats`` into ``folder``; returns {format: path}.

    ``network`` is the heatmap network (:func:`hgkeras.inference.runtimes.heatmap_model`); ``crops`` the calibration crops
    (needed for int8). The float ONNX file that int8 ONNX and OpenVINO start from is written to a
    scratch folder when ``onnx`` itself is not asked for.
    """
    folder = Path(folder)
    written: dict[str, Path] = {}
    needs_int8 = [f for f in formats if PRECISION[f] == "int8"]
    if needs_int8 and crops is None:
        raise ValueError(f"{', '.join(needs_int8)} need calibration crops")
    with tempfile.TemporaryDirectory(prefix="hgkeras-formats-") as scratch:
        float_onnx = None
        if any(f in formats for f in ("onnx", "onnx-int8", "openvino")):
            target = folder / FILENAMES["onnx"] if "onnx" in formats else Path(scratch) / "f.onnx"
            float_onnx = write_onnx(network, target)
            if "onnx" in formats:
                written["onnx"] = float_onnx
        for fmt in formats:
            path = folder / FILENAMES[fmt]
            if fmt == "onnx-int8":
                written[fmt] = write_onnx_int8(float_onnx, path, crops)
            elif fmt.startswith("tflite"):
                written[fmt] = write_tflite(network, path, PRECISION[fmt], crops)
            elif fmt == "openvino":
                written[fmt] = write_openvino(float_onnx, path)
    return written


# --------------------------------------------------------------------------------------------------
# Checks


@dataclass
class FormatCheck:
    """How one exported file's heatmaps compare with Keras on real crops."""

    format: str
    precision: str
    crops: int
    max_abs: float
    agreement: float
    tolerance: float | None = None
    #: Share of annotated joints within 0.1 head sizes (PCK normalisers) of Keras' keypoints.
    within_tenth_head: float | None = None
    #: Against the annotations of the calibration people: (file, Keras) PCK@0.5 in % and mean
    #: keypoint error in image pixels.
    pck: tuple[float, float] | None = None
    mean_error: tuple[float, float] | None = None

    @property
    def warning(self) -> str | None:
        """A message when an int8 file loses accuracy: on annotated people more than 2 PCK points or
        10 % more mean pixel error than Keras; without annotations, fewer than 90 % of joints within
        1 heatmap pixel of Keras."""
        if self.precision != "int8":
            return None
        advice = "; check accuracy with `hgkeras evaluate --model` before deploying it"
        if self.pck is not None and self.mean_error is not None:
            drop = self.pck[1] - self.pck[0]
            ratio = _ratio(*self.mean_error)
            if drop > MAX_PCK_DROP or ratio > MAX_ERROR_RATIO:
                return (
                    f"WARNING: {self.format}: on the annotated calibration people PCK@0.5 "
                    f"{self.pck[0]:.1f} vs {self.pck[1]:.1f} for the Keras model ({-drop:+.1f} "
                    f"points) and mean keypoint error {self.mean_error[0]:.1f} vs "
                    f"{self.mean_error[1]:.1f} px ({ratio - 1:+.0%}); more than "
                    f"{MAX_PCK_DROP:g} points or {MAX_ERROR_RATIO - 1:.0%} lost{advice}"
                )
            return None
        if self.agreement < MIN_AGREEMENT:
            return (
                f"WARNING: {self.format}: only {self.agreement:.1%} of joints within 1 heatmap "
                f"pixel of the Keras model (< {MIN_AGREEMENT:.0%}){advice}"
            )
        return None

    def describe(self) -> str:
        text = (
            f"{self.format:12s} {self.precision:8s} max |heatmap - Keras| = {self.max_abs:.2e}"
            f"{'' if self.tolerance is None else f' (<= {self.tolerance:g})'}, "
            f"keypoint agreement {self.agreement:.1%} on {self.crops} real crops"
        )
        if self.within_tenth_head is not None:
            text += f", {self.within_tenth_head:.1%} of annotated joints within 0.1 head of Keras"
        if self.pck is not None and self.mean_error is not None:
            text += (
                f", PCK@0.5 {self.pck[0]:.1f} (Keras {self.pck[1]:.1f}), mean error "
                f"{self.mean_error[0]:.1f} px (Keras {self.mean_error[1]:.1f})"
            )
        return text


def _ratio(error: float, reference: float) -> float:
    """``error / reference``, 1 for two zeros."""
    if reference > 0:
        return error / reference
    return 1.0 if error == 0 else float("inf")


def pck_and_error(
    distance: np.ndarray, normalizer: np.ndarray, annotated: np.ndarray, threshold: float = 0.5
) -> tuple[float, float]:
    """(PCK in %, mean distance) over ``annotated`` joints: the share of distances (N, J) at most
    ``threshold`` times the person's normaliser (N,) (MPII: head size; 0.5 gives PCKh@0.5)."""
    hits = distance / np.asarray(normalizer, np.float64)[:, None] <= threshold
    return 100.0 * float(np.mean(hits[annotated])), float(np.mean(distance[annotated]))


def ground_truth_scores(
    heatmaps: np.ndarray, people: CalibrationCrops, codec: HeatmapCodec | None = None
) -> tuple[float, float]:
    """(PCK@0.5 in %, mean error in image pixels) of ``heatmaps`` of ``people``'s crops, decoded by
    ``codec`` (default the paper's), against their annotations."""
    from keras import ops

    codec = codec if codec is not None else HeatmapCodec()
    keypoints = ops.convert_to_numpy(codec.decode(heatmaps, people.crops.shape[1:3])[0])
    to_image = people.box / people.crops.shape[1]  # image pixels per crop pixel
    distance = np.linalg.norm(keypoints - people.joints, axis=-1) * to_image[:, None]
    return pck_and_error(distance, 10.0 * people.tenth_head * people.box, people.visible)


def keypoint_agreement(
    heatmaps: np.ndarray, reference: np.ndarray, codec: HeatmapCodec | None = None
) -> float:
    """Share of joints whose position decoded by ``codec`` (default the paper's) lies within 1
    heatmap pixel of the reference's."""
    return float(np.mean(_heatmap_distances(heatmaps, reference, codec) <= 1.0))


def head_agreement(
    heatmaps: np.ndarray,
    reference: np.ndarray,
    people: CalibrationCrops,
    codec: HeatmapCodec | None = None,
) -> float:
    """Share of ``people``'s annotated joints decoded (by ``codec``, default the paper's) within
    0.1 head sizes of the reference's."""
    # the crop height is the box height: heatmap pixels -> shares of the box
    distance = _heatmap_distances(heatmaps, reference, codec) / heatmaps.shape[1]
    return float(np.mean((distance <= people.tenth_head[:, None])[people.visible]))


def _heatmap_distances(
    heatmaps: np.ndarray, reference: np.ndarray, codec: HeatmapCodec | None
) -> np.ndarray:
    """(N, J) distances in heatmap pixels between the keypoints ``codec`` (default the paper's)
    decodes from two batches."""
    from keras import ops

    codec = codec if codec is not None else HeatmapCodec()
    got = ops.convert_to_numpy(codec.locate(heatmaps)[0])
    want = ops.convert_to_numpy(codec.locate(reference)[0])
    return np.linalg.norm(got - want, axis=-1)


def check_format(
    fmt: str,
    path: str | os.PathLike,
    crops: np.ndarray,
    reference: np.ndarray,
    people: CalibrationCrops | None = None,
    codec: HeatmapCodec | None = None,
) -> FormatCheck:
    """Run ``path`` on ``crops`` and compare with the Keras heatmaps ``reference``, both decoded
    by ``codec`` (default the paper's); with ``people`` (the crops' annotations) also the share of
    joints within 0.1 head sizes.

    Float formats beyond :data:`TOLERANCE` raise ValueError; int8 results are only measured (see
    :attr:`FormatCheck.warning`).
    """
    from hgkeras.inference.runtimes import load_runtime

    heatmaps = load_runtime(path).run(crops)
    if heatmaps.shape != reference.shape:
        raise ValueError(f"{fmt}: heatmaps have shape {heatmaps.shape}, Keras {reference.shape}")
    precision = PRECISION[fmt]
    check = FormatCheck(
        format=fmt,
        precision=precision,
        crops=len(crops),
        max_abs=float(np.max(np.abs(heatmaps - reference))),
        agreement=keypoint_agreement(heatmaps, reference, codec),
        tolerance=TOLERANCE.get(precision),
    )
    if people is not None and people.tenth_head is not None:
        check.within_tenth_head = head_agreement(heatmaps, reference, people, codec)
    if people is not None and people.joints is not None:
        got = ground_truth_scores(heatmaps, people, codec)
        want = ground_truth_scores(reference, people, codec)
        check.pck, check.mean_error = (got[0], want[0]), (got[1], want[1])
    if check.tolerance is not None and not check.max_abs <= check.tolerance:
        raise ValueError(
            f"{fmt} ({Path(path).name}): heatmaps differ from Keras by {check.max_abs:.3g} "
            f"(> {check.tolerance:g}) on {len(crops)} real crops"
        )
    return check
