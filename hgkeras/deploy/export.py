"""Export a pose model for production: a TF Serving SavedModel, other formats and ``models.config``.

Besides the SavedModel, :mod:`hgkeras.deploy.formats` writes ONNX (float32, int8), LiteRT (float32,
float16, int8) and OpenVINO files of the bare network into the same version folder, with a
``pose.json`` (joint names, flip pairs, input size) for :mod:`hgkeras.inference.runtimes`. Every file
is checked against the Keras model on real person crops before the folder is renamed into place.

The SavedModel lands in TF Serving's layout ``DIR/<name>/<version>/`` (written to a temporary folder
beside it, then renamed) and has three signatures:

* ``serving_default``: ``images`` float32 (batch, H, W, 3) RGB in [0, 1] -> ``heatmaps`` (last stack,
  (batch, H/4, W/4, J)), ``keypoints`` (batch, J, 2) in input pixels (0-based pixel centres) and
  ``scores`` (batch, J) (the heatmap maxima).
* ``serving_uint8``: the same with ``images`` uint8 in 0..255.
* ``predict_image``: ``image_bytes`` (string scalar: one encoded JPEG/PNG/BMP/GIF), ``center``
  float32 (2,) (x, y in original 0-based pixels) and ``scale`` float32 scalar (person box side / 200)
  -> ``keypoints`` (J, 2) in ORIGINAL image pixels and ``scores`` (J,). Decoding, the crop of the
  person box (:func:`hgkeras.geometry.crop_matrix` convention, bilinear, zeros outside the image) and
  the inverse transform all run inside the graph.

The graph decodes with the model's heatmap codec (:class:`hgkeras.codec.HeatmapCodec`: the one it
was trained with, or the decoder named in :class:`ExportOptions`), recorded in ``pose.json`` so that
the host decodes the other formats' heatmaps the same way.

Bad requests (empty batch, values outside [0, 1], non-finite numbers, undecodable bytes, images above
the decoded-size limit ``max_pixels`` (default 100 MP, read from the header before decoding), crop
boxes outside the image or not between 1 px and 10x its longer side) fail inside the graph with
``InvalidArgumentError`` (gRPC ``INVALID_ARGUMENT`` in TF Serving).
With ``flip=True`` the flip test (docs/method.md "Inference") is part of every signature. The
SavedModel carries a TF Serving warm-up file (``assets.extra/tf_serving_warmup_requests``) and
``models.config`` is updated through :mod:`hgkeras.deploy.serving_config` (entries, versions and
labels already there are kept).

TensorFlow is imported lazily: the module imports under every Keras backend, and a model loaded under
jax or torch is exported by re-running the export in a TensorFlow subprocess (the options travel as
:class:`ExportOptions` in a JSON file, :func:`run_export_job`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from keras import ops

from hgkeras import io
from hgkeras.codec import HeatmapCodec, codec_for, codec_of, final_heatmaps
from hgkeras.data.images import DEFAULT_MAX_PIXELS
from hgkeras.deploy import serving_config
from hgkeras.deploy.formats import (
    FILENAMES,
    PRECISION,
    SAVED_MODEL,
    FormatCheck,
    calibration_people,
    check_format,
    default_calibration,
    parse_formats,
    write_formats,
)
from hgkeras.inference.runtimes import POSE_SPEC, heatmap_model, pose_spec
from hgkeras.spec import pose_of

#: Signature names.
SERVING_DEFAULT = "serving_default"
SERVING_UINT8 = "serving_uint8"
PREDICT_IMAGE = "predict_image"
SIGNATURES = (SERVING_DEFAULT, SERVING_UINT8, PREDICT_IMAGE)
#: File name of the ONNX model inside the version folder.
ONNX_FILENAME = FILENAMES["onnx"]
#: Parity limits of the exported graphs against Keras (issue 6): heatmaps max abs difference.
HEATMAP_TOLERANCE = 1e-4
#: Largest difference (input pixels) between the graph's keypoints and the host codec's decoding of
#: the graph's own heatmaps.
KEYPOINT_TOLERANCE = 1e-3


class ExportError(ValueError):
    """The export cannot proceed or the exported graph disagrees with the Keras model."""


@dataclass(frozen=True)
class ExportOptions:
    """Everything :func:`export_model` can be told, as one object (also the ``hgkeras export`` flags
    and what the TensorFlow subprocess receives, as JSON).

    Attributes:
        name, version: the served model's folder ``OUT/name/version`` (TF Serving's layout).
        formats: any of :data:`hgkeras.deploy.formats.FORMATS` (a list or "a,b").
        flip: bake the flip test into the SavedModel's signatures (the other formats hold the bare
            network; the host runs the flip test).
        decoder: how the SavedModel's graph decodes and ``pose.json`` tells the host to decode:
            ``"paper"``, ``"dark"`` or ``"udp"``; None: the codec the model was trained with.
        calibration, calibration_images: real people for int8 calibration and the checks (a
            TFRecords folder or an annotation file and its images; default the shipped samples).
        force: replace an existing version.
        verify: check every file against Keras on real person crops.
        models_config: (re)write ``OUT/models.config``; ``base_path`` is OUT inside the server.
        fold: export the graphs with batch norms folded into the convolutions.
        max_pixels: ``predict_image``'s decoded-size limit (None = no limit).
        warmup: write a TF Serving warm-up file into the SavedModel.
    """

    name: str = "hourglass"
    version: int = 1
    formats: tuple[str, ...] = (SAVED_MODEL,)
    flip: bool = False
    decoder: str | None = None
    calibration: str | None = None
    calibration_images: str | None = None
    force: bool = False
    verify: bool = True
    models_config: bool = True
    base_path: str = "/models"
    fold: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    warmup: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", parse_formats(self.formats))
        for name in ("calibration", "calibration_images"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else str(value))
        if self.decoder is not None:
            HeatmapCodec(self.decoder)  # a clear error for an unknown name
        if self.max_pixels is not None and int(self.max_pixels) <= 0:
            object.__setattr__(self, "max_pixels", None)

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly dict (:meth:`from_json` reads it back)."""
        return {**dataclasses.asdict(self), "formats": list(self.formats)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportOptions:
        return cls(**data)


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    version_dir: Path
    signatures: dict[str, dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    onnx_path: Path | None = None
    models_config: Path | None = None
    #: "saved_model": max abs heatmap difference; other formats: a FormatCheck.
    checks: dict[str, Any] = field(default_factory=dict)
    calibration_crops: int = 0


# --------------------------------------------------------------------------------------------------
# Graph building (TensorFlow backend only)


def model_input_size(model) -> tuple[int, int]:
    """(height, width) of the model's input images."""
    shape = getattr(model, "image_shape", None) or tuple(model.inputs[0].shape[1:])
    height, width = shape[0], shape[1]
    if height is None or width is None:
        raise ExportError(
            f"the model's input must have a static height and width to export, got {shape}"
        )
    return int(height), int(width)


def _require_tensorflow_backend() -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            "building TensorFlow graphs needs KERAS_BACKEND=tensorflow (current backend: "
            f"{keras.backend.backend()}); export_model() re-runs itself under TensorFlow for you"
        )


def _validate_images(images, dtype_max: float):
    """Graph-side checks of an image batch: non-empty, finite, in [0, dtype_max]."""
    import tensorflow as tf

    checks = [
        tf.debugging.assert_positive(
            tf.shape(images)[0], message="images: the batch is empty (batch dimension 0)"
        ),
    ]
    if images.dtype.is_floating:
        checks.append(tf.debugging.assert_all_finite(images, message="images: contains NaN or Inf"))
        checks.append(
            tf.debugging.assert_greater_equal(
                tf.reduce_min(images),
                tf.constant(0.0, images.dtype),
                message=f"images: float pixel values must lie in [0, {dtype_max:g}]",
            )
        )
        checks.append(
            tf.debugging.assert_less_equal(
                tf.reduce_max(images),
                tf.constant(dtype_max, images.dtype),
                message=f"images: float pixel values must lie in [0, {dtype_max:g}]",
            )
        )
    return checks


def decode_image_bytes(image_bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Decode one encoded image (JPEG, PNG, BMP, GIF first frame) to RGB uint8 (H, W, 3) in the graph.

    JPEGs use the accurate integer DCT, as OpenCV and PIL do, so pixels match ``cv2.imread``.
    Images above ``max_pixels`` (height x width from the header; None = no limit) fail with
    InvalidArgumentError before anything is decoded. EXIF orientation is not applied: clients send
    upright bytes (:func:`hgkeras.data.images.upright_bytes`).
    """
    import tensorflow as tf

    from hgkeras.crop import decode_image_tf
    from hgkeras.data.images import encoded_image_size_tf

    checks = []
    if max_pixels is not None:
        size = encoded_image_size_tf(image_bytes)
        checks = [
            tf.debugging.assert_less_equal(
                size[0] * size[1],
                tf.constant(int(max_pixels), tf.int64),
                message=f"image_bytes: the image has more pixels than the limit of {max_pixels} "
                "(export option max_pixels)",
            )
        ]
    with tf.control_dependencies(checks):
        image_bytes = tf.identity(image_bytes)
    return decode_image_tf(image_bytes)


def build_serving_functions(
    model,
    codec: HeatmapCodec | None = None,
    flip: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> dict[str, Callable]:
    """The ``tf.function``s of the three signatures for ``model`` (a Keras model under TensorFlow),
    decoding with ``codec`` (default: the model's own).

    ``max_pixels`` is ``predict_image``'s decoded-size limit (None = no limit).
    """
    _require_tensorflow_backend()
    import tensorflow as tf

    from hgkeras.crop import crop_tf
    from hgkeras.data.images import encoded_image_size_tf
    from hgkeras.inference.boxes import crop_box_checks_tf
    from hgkeras.spec import pose_of

    height, width = model_input_size(model)
    codec = codec if codec is not None else codec_of(model)
    heatmaps_of = codec.heatmap_function(model, pose_of(model).flip_permutation, flip)

    def predict(images):
        heatmaps = heatmaps_of(images)
        keypoints, scores = codec.decode(heatmaps, (height, width))
        return {"heatmaps": heatmaps, "keypoints": keypoints, "scores": scores}

    @tf.function(
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="images")]
    )
    def serving_default(images):
        checks = _validate_images(images, 1.0)
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        return predict(images)

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name="images")])
    def serving_uint8(images):
        checks = _validate_images(images, 255.0)
        with tf.control_dependencies(checks):
            scaled = tf.cast(images, tf.float32) / 255.0
        return predict(scaled)

    @tf.function(
        input_signature=[
            tf.TensorSpec([], tf.string, name="image_bytes"),
            tf.TensorSpec([2], tf.float32, name="center"),
            tf.TensorSpec([], tf.float32, name="scale"),
        ]
    )
    def predict_image(image_bytes, center, scale):
        checks = [
            tf.debugging.assert_greater(
                tf.strings.length(image_bytes), 0, message="image_bytes: empty string"
            ),
            tf.debugging.assert_all_finite(center, message="center: contains NaN or Inf"),
            tf.debugging.assert_all_finite(scale, message="scale: contains NaN or Inf"),
            tf.debugging.assert_positive(scale, message="scale: must be > 0 (box side / 200)"),
        ]
        with tf.control_dependencies(checks):
            size = encoded_image_size_tf(image_bytes)
            checks = crop_box_checks_tf(center, scale, size, width / height)
        with tf.control_dependencies(checks):
            image = decode_image_bytes(image_bytes, max_pixels)
        # the uint8 crop of crop_numpy, then / 255 as the host path (to_rgb_float) does
        crop = crop_tf(image, center, scale, (height, width)) / 255.0
        heatmaps = heatmaps_of(crop[None])
        keypoints, scores = codec.decode_to_image(
            heatmaps, center[None], scale[None], (height, width)
        )
        return {"keypoints": keypoints[0], "scores": scores[0]}

    return {
        SERVING_DEFAULT: serving_default,
        SERVING_UINT8: serving_uint8,
        PREDICT_IMAGE: predict_image,
    }


# --------------------------------------------------------------------------------------------------
# Writing


def version_path(out_dir: Path, name: str, version: int) -> Path:
    """`out_dir/name/version` after checking the name and version."""
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise ExportError(f"model name must be a plain folder name, got {name!r}")
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise ExportError(f"version must be an integer >= 1 (TF Serving), got {version!r}")
    return Path(out_dir) / name / str(int(version))


def save_signatures(
    model,
    path: Path,
    codec: HeatmapCodec | None = None,
    flip: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> None:
    """Write the SavedModel with the three signatures (decoding with ``codec``, default the
    model's) to ``path`` (which must not exist)."""
    import keras

    functions = build_serving_functions(model, codec, flip=flip, max_pixels=max_pixels)
    archive = keras.export.ExportArchive()
    archive.track(model)
    for signature, function in functions.items():
        archive.add_endpoint(signature, function)
    archive.write_out(str(path), verbose=False)


def signature_summary(saved_model_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Inputs/outputs (dtype, shape, tensor name) and method of every signature in a SavedModel.

    Reads ``saved_model.pb`` directly (the data ``saved_model_cli show --all`` prints).
    """
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(saved_model_dir) / "saved_model.pb"
    if not path.is_file():
        raise FileNotFoundError(f"no saved_model.pb in {saved_model_dir}")
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(path.read_bytes())
    summary: dict[str, dict[str, Any]] = {}
    for meta_graph in proto.meta_graphs:
        for key, sig in sorted(meta_graph.signature_def.items()):
            if key.startswith("__"):
                continue

            def describe(infos):
                return {
                    k: {
                        "dtype": types_pb2.DataType.Name(v.dtype),
                        "shape": tuple(
                            -1 if d.size < 0 else int(d.size) for d in v.tensor_shape.dim
                        )
                        if not v.tensor_shape.unknown_rank
                        else None,
                        "name": v.name,
                    }
                    for k, v in sorted(infos.items())
                }

            summary[key] = {
                "inputs": describe(sig.inputs),
                "outputs": describe(sig.outputs),
                "method_name": sig.method_name,
                "tags": list(meta_graph.meta_info_def.tags),
            }
    return summary


def format_signature_summary(summary: dict[str, dict[str, Any]]) -> str:
    """``saved_model_cli show --all``-style text for :func:`signature_summary`."""
    lines = []
    tags = ", ".join(next(iter(summary.values()))["tags"]) if summary else ""
    lines.append(f"MetaGraphDef with tag-set: '{tags}' contains the following SignatureDefs:")
    for key, sig in summary.items():
        lines.append("")
        lines.append(f"signature_def['{key}']:")
        for kind in ("inputs", "outputs"):
            lines.append(
                f"  The given SavedModel SignatureDef contains the following {kind[:-1]}(s):"
            )
            for name, info in sig[kind].items():
                shape = "unknown_rank" if info["shape"] is None else str(info["shape"])
                if info["shape"] is not None and len(info["shape"]) == 1:
                    shape = f"({info['shape'][0]})"
                lines.append(f"    {kind}['{name}'] tensor_info:")
                lines.append(f"        dtype: {info['dtype']}")
                lines.append(f"        shape: {shape}")
                lines.append(f"        name: {info['name']}")
        lines.append(f"  Method name is: {sig['method_name']}")
    return "\n".join(lines)


def _reference_heatmaps(model, images: np.ndarray, flip: bool, codec: HeatmapCodec) -> np.ndarray:
    """The Keras model's final heatmaps of ``images`` (with the flip test when ``flip``)."""
    from hgkeras.spec import pose_of

    heatmaps_of = codec.heatmap_function(model, pose_of(model).flip_permutation, flip)
    return ops.convert_to_numpy(heatmaps_of(images))


def _compare(
    name: str, got: dict[str, np.ndarray], want: np.ndarray, codec: HeatmapCodec, input_size
) -> float:
    """Max abs heatmap difference from the Keras heatmaps ``want``; raises ExportError beyond
    :data:`HEATMAP_TOLERANCE`, or when the graph's keypoints and scores differ from ``codec``'s
    decoding of the graph's own heatmaps (the in-graph decoder is the host's)."""
    diff = float(np.max(np.abs(got["heatmaps"] - want)))
    if diff > HEATMAP_TOLERANCE:
        raise ExportError(
            f"{name}: heatmaps differ from Keras by {diff:.3g} (> {HEATMAP_TOLERANCE:g})"
        )
    keypoints, scores = (ops.convert_to_numpy(t) for t in codec.decode(got["heatmaps"], input_size))
    moved = float(np.max(np.abs(got["keypoints"] - keypoints)))
    if not moved <= KEYPOINT_TOLERANCE or not np.allclose(got["scores"], scores, atol=1e-6):
        raise ExportError(
            f"{name}: the graph's {codec.decoder} decoding differs from the host's by "
            f"{moved:.3g} input pixels (> {KEYPOINT_TOLERANCE:g})"
        )
    return diff


def check_saved_model(
    model, version_dir: Path, flip: bool, images: np.ndarray, codec: HeatmapCodec
) -> float:
    """Run the SavedModel's ``serving_default`` on ``images`` (real crops) and compare with Keras
    (heatmaps) and with ``codec`` on the host (keypoints, scores).

    Returns the max abs heatmap difference; raises :class:`ExportError` on a mismatch.
    """
    import tensorflow as tf

    want = _reference_heatmaps(model, images, flip, codec)
    loaded = tf.saved_model.load(str(version_dir))
    got = {
        k: v.numpy()
        for k, v in loaded.signatures[SERVING_DEFAULT](images=tf.constant(images)).items()
    }
    return _compare("SavedModel serving_default", got, want, codec, model_input_size(model))


# --------------------------------------------------------------------------------------------------
# Entry point


def export_model(
    model: Any,
    out_dir: str | Path,
    options: ExportOptions | None = None,
    *,
    log: Callable[[str], None] | None = None,
    **changes: Any,
) -> ExportResult:
    """Export ``model`` (anything :func:`hgkeras.models.loading.load_model` takes: a model, a
    ``PoseTrainer`` or a ``.keras`` path) to ``out_dir/name/version`` as ``options`` say
    (:class:`ExportOptions`; keyword ``changes`` replace its fields, e.g. ``flip=True``).

    Every file is written into a temporary folder, checked against Keras on real person crops
    (``verify``; the crops of ``calibration``, default the shipped samples, which also calibrate the
    int8 formats), then the folder is renamed into place with a ``pose.json`` (joint names, flip
    pairs, input size, the codec). An existing version is an error unless ``force``. The
    SavedModel gets a TF Serving warm-up file (``warmup``) and ``models.config`` is updated
    (``models_config``). With ``fold`` (the default) the exported graphs are those of
    :func:`hgkeras.models.fold.fold_batch_norms` (same outputs, faster). Under a jax or torch
    backend the export re-runs in a TensorFlow subprocess (the ``.keras`` file is backend
    independent). ``log`` receives progress lines (calibration size, checks).
    """
    import keras

    options = dataclasses.replace(options or ExportOptions(), **changes)
    chosen = list(options.formats)
    out_dir = Path(out_dir)
    final = version_path(out_dir, options.name, options.version)
    if final.exists() and not options.force:
        raise FileExistsError(
            f"{final} already exists; choose another --version or pass --force to replace it"
        )
    log = log or (lambda line: None)
    if keras.backend.backend() != "tensorflow":
        return _export_in_tensorflow(model, out_dir, options, log)
    # An export killed mid-way leaves its temporary version folder (hgkeras.io names): remove it.
    for leftover in io.remove_temporaries(final.parent):
        log(f"removed {final.parent / leftover}, left by an interrupted export")
    from hgkeras.models.loading import load_model

    model = load_model(model)  # a trainer (PoseTrainer) gives its .hourglass
    codec = codec_for(model, options.decoder)
    if options.flip and not pose_of(model).flip:  # no left/right pairs: no mirrored training
        options = dataclasses.replace(options, flip=False)
    network = load_model(model, fold_batch_norms=True) if options.fold else model
    size = model_input_size(model)
    needs_crops = options.verify or options.warmup or any(PRECISION[f] == "int8" for f in chosen)
    people = None
    if needs_crops:
        people = calibration_people(options.calibration, size, options.calibration_images)
    crops = None if people is None else people.crops
    if crops is not None:
        log(f"calibration and checks: {len(crops)} real person crops ({len(crops) // 2} people "
            f"and their mirror images) from {options.calibration or default_calibration()}")  # fmt: skip
    final.parent.mkdir(parents=True, exist_ok=True)
    checks: dict[str, Any] = {}
    with io.atomic_path(final) as tmp:
        tmp = Path(tmp)
        tmp.mkdir()
        if SAVED_MODEL in chosen:
            save_signatures(network, tmp, codec, options.flip, options.max_pixels)
            if options.warmup:
                logs = serving_config.warmup_requests(options.name, crops[0])
                serving_config.write_warmup_file(tmp, logs)
            if options.verify:
                checks[SAVED_MODEL] = check_saved_model(model, tmp, options.flip, crops, codec)
        others = [f for f in chosen if f != SAVED_MODEL]
        files = write_formats(heatmap_model(network), tmp, others, crops)
        io.atomic_write_json(
            tmp / POSE_SPEC,
            pose_spec(
                pose_of(model), size, codec, formats={f: FILENAMES[f] for f in chosen},
                flip_in_graph=bool(options.flip and SAVED_MODEL in chosen),
            ),
        )  # fmt: skip
        if options.verify and others:
            reference = ops.convert_to_numpy(final_heatmaps(model(crops, training=False)))
            for fmt, file in files.items():
                try:
                    checks[fmt] = check_format(fmt, file, crops, reference, people, codec)
                except ValueError as error:
                    raise ExportError(str(error)) from None
    config_path = None
    if options.models_config and SAVED_MODEL in chosen:
        config_path = serving_config.write_models_config(out_dir, base_path=options.base_path)
    return _result(out_dir, options, config_path, checks, 0 if crops is None else len(crops))


def _result(
    out_dir: Path, options: ExportOptions, config_path: Path | None, checks: dict, crops: int
) -> ExportResult:
    final = version_path(out_dir, options.name, options.version)
    chosen = options.formats
    return ExportResult(
        version_dir=final,
        signatures=signature_summary(final) if SAVED_MODEL in chosen else {},
        files={f: final / FILENAMES[f] for f in chosen},
        onnx_path=final / FILENAMES["onnx"] if "onnx" in chosen else None,
        models_config=config_path,
        checks=checks,
        calibration_crops=crops,
    )


def _export_in_tensorflow(
    model, out_dir: Path, options: ExportOptions, log: Callable[[str], None]
) -> ExportResult:
    """Re-run :func:`export_model` in a ``KERAS_BACKEND=tensorflow`` subprocess
    (:func:`run_export_job`); its progress lines go to ``log``."""
    with tempfile.TemporaryDirectory(prefix="hgkeras-export-") as tmp:
        if isinstance(model, (str, os.PathLike)):
            model_path = Path(model)
            if not model_path.is_file():
                raise FileNotFoundError(f"model file not found: {model_path}")
        else:
            model_path = Path(tmp) / "model.keras"
            model.save(model_path)
        job = Path(tmp) / "job.json"
        answer = Path(tmp) / "result.json"
        io.atomic_write_json(job, {
            "model": str(model_path), "out_dir": str(out_dir), "options": options.to_json(),
            "result": str(answer),
        })  # fmt: skip
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        code = "import sys; from hgkeras.deploy.export import run_export_job; run_export_job(sys.argv[1])"
        result = subprocess.run(
            [sys.executable, "-c", code, str(job)], env=env, capture_output=True, text=True
        )
        for line in result.stdout.splitlines():
            log(line)
        if result.returncode != 0:
            raise ExportError(
                f"export under TensorFlow failed (exit {result.returncode}): "
                + (result.stderr.strip().splitlines() or ["no message"])[-1]
            )
        done = json.loads(io.read_text(answer))
    checks = {
        fmt: value if fmt == SAVED_MODEL else FormatCheck(**value)
        for fmt, value in done["checks"].items()
    }
    config_path = None if done["models_config"] is None else Path(done["models_config"])
    return _result(out_dir, options, config_path, checks, done["calibration_crops"])


def run_export_job(job_path: str | os.PathLike) -> None:
    """Run the export described by a job file of :func:`export_model`'s subprocess (model path,
    output folder, :class:`ExportOptions` as JSON) and write its result beside it."""
    job = json.loads(io.read_text(job_path))
    result = export_model(
        job["model"], job["out_dir"], ExportOptions.from_json(job["options"]), log=print
    )
    checks = {
        fmt: check if fmt == SAVED_MODEL else dataclasses.asdict(check)
        for fmt, check in result.checks.items()
    }
    io.atomic_write_json(job["result"], {
        "checks": checks, "calibration_crops": result.calibration_crops,
        "models_config": None if result.models_config is None else str(result.models_config),
    })  # fmt: skip
