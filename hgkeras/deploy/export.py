"""Export a pose model for production: a TF Serving SavedModel, an ONNX file and ``models.config``.

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

Bad requests (empty batch, values outside [0, 1], non-finite numbers, undecodable bytes, images above
the decoded-size limit ``max_pixels`` (default 100 MP, read from the header before decoding), crop
boxes outside the image or not between 1 px and 10x its longer side) fail inside the graph with
``InvalidArgumentError`` (gRPC ``INVALID_ARGUMENT`` in TF Serving).
With ``flip=True`` the flip test (docs/method.md "Inference") is part of every signature.

TensorFlow is imported lazily: the module imports under every Keras backend, and a model loaded under
jax or torch is exported by re-running the export in a TensorFlow subprocess.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hgkeras import io
from hgkeras.data.images import DEFAULT_MAX_PIXELS

#: Signature names.
SERVING_DEFAULT = "serving_default"
SERVING_UINT8 = "serving_uint8"
PREDICT_IMAGE = "predict_image"
SIGNATURES = (SERVING_DEFAULT, SERVING_UINT8, PREDICT_IMAGE)
#: File name of the ONNX model inside the version folder.
ONNX_FILENAME = "model.onnx"
#: Default ONNX opset.
ONNX_OPSET = 17
#: Parity limits of the exported graphs against Keras (issue 6): heatmaps max abs difference.
HEATMAP_TOLERANCE = 1e-4


class ExportError(ValueError):
    """The export cannot proceed or the exported graph disagrees with the Keras model."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    version_dir: Path
    signatures: dict[str, dict[str, Any]]
    onnx_path: Path | None = None
    models_config: Path | None = None
    checks: dict[str, float] = field(default_factory=dict)


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


def model_num_joints(model) -> int:
    return int(model.outputs[-1].shape[-1])


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
    model, flip: bool = False, validate: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> dict[str, Callable]:
    """The ``tf.function``s of the three signatures for ``model`` (a Keras model under TensorFlow).

    ``validate=False`` leaves out the graph-side request checks (used for ONNX conversion);
    ``max_pixels`` is ``predict_image``'s decoded-size limit (None = no limit).
    """
    _require_tensorflow_backend()
    import tensorflow as tf

    from hgkeras.codec import decode_to_image, decode_to_input, heatmaps_with_flip
    from hgkeras.crop import crop_tf
    from hgkeras.data.images import encoded_image_size_tf
    from hgkeras.inference.boxes import crop_box_checks_tf
    from hgkeras.spec import pose_of

    height, width = model_input_size(model)
    perm = pose_of(model).flip_permutation

    def predict(images):
        heatmaps = heatmaps_with_flip(model, images, perm, flip=flip)
        keypoints, scores = decode_to_input(heatmaps, (height, width))
        return {"heatmaps": heatmaps, "keypoints": keypoints, "scores": scores}

    @tf.function(
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="images")]
    )
    def serving_default(images):
        checks = _validate_images(images, 1.0) if validate else []
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        return predict(images)

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name="images")])
    def serving_uint8(images):
        checks = _validate_images(images, 255.0) if validate else []
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
        checks = []
        if validate:
            checks = [
                tf.debugging.assert_greater(
                    tf.strings.length(image_bytes), 0, message="image_bytes: empty string"
                ),
                tf.debugging.assert_all_finite(center, message="center: contains NaN or Inf"),
                tf.debugging.assert_all_finite(scale, message="scale: contains NaN or Inf"),
                tf.debugging.assert_positive(scale, message="scale: must be > 0 (box side / 200)"),
            ]
        with tf.control_dependencies(checks):
            if validate:
                size = encoded_image_size_tf(image_bytes)
                checks = crop_box_checks_tf(center, scale, size, width / height)
        with tf.control_dependencies(checks):
            image = decode_image_bytes(image_bytes, max_pixels if validate else None)
        crop = crop_tf(tf.cast(image, tf.float32) / 255.0, center, scale, (height, width))
        heatmaps = heatmaps_with_flip(model, crop[None], perm, flip=flip)
        keypoints, scores = decode_to_image(heatmaps, center[None], scale[None])
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
    model, path: Path, flip: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> None:
    """Write the SavedModel with the three signatures to ``path`` (which must not exist)."""
    import keras

    functions = build_serving_functions(model, flip=flip, max_pixels=max_pixels)
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


def write_models_config(
    out_dir: str | Path, base_path: str = "/models", versions: str = "all"
) -> Path:
    """Write ``DIR/models.config`` (TF Serving ``--model_config_file``) for every model under ``DIR``.

    ``base_path`` is where ``DIR`` is mounted in the server (``/models`` in the docker image).
    ``versions``: "all" serves every exported version (``specific`` policy listing them, for a
    roll-out where old and new run side by side), "latest" serves only the newest.
    """
    if versions not in ("all", "latest"):
        raise ValueError(f"versions must be 'all' or 'latest', got {versions!r}")
    out_dir = Path(out_dir)
    blocks = []
    for model_dir in sorted(p for p in out_dir.iterdir() if p.is_dir()):
        numbers = sorted(
            int(p.name)
            for p in model_dir.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
        )
        if not numbers:
            continue
        if versions == "all":
            policy = "specific { " + " ".join(f"versions: {n}" for n in numbers) + " }"
        else:
            policy = "latest { num_versions: 1 }"
        blocks.append(
            "  config {\n"
            f'    name: "{model_dir.name}"\n'
            f'    base_path: "{base_path.rstrip("/")}/{model_dir.name}"\n'
            '    model_platform: "tensorflow"\n'
            f"    model_version_policy {{ {policy} }}\n"
            "  }\n"
        )
    if not blocks:
        raise ExportError(f"no exported model versions under {out_dir}")
    text = "model_config_list {\n" + "".join(blocks) + "}\n"
    path = out_dir / "models.config"
    io.atomic_write_text(path, text)
    return path


# --------------------------------------------------------------------------------------------------
# ONNX


def _patch_tf2onnx() -> None:
    """tf2onnx 1.17 predates numpy 2; Keras ships the compatibility patch it uses for its own export."""
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError:  # pragma: no cover - other Keras versions
        if not hasattr(np, "object"):
            np.object = object  # type: ignore[attr-defined]
        return
    import warnings

    with warnings.catch_warnings():  # the patch probes np.object, which numpy 2 warns about
        warnings.simplefilter("ignore", FutureWarning)
        patch_tf2onnx()


def export_onnx(model, path: str | Path, flip: bool = False, opset: int = ONNX_OPSET) -> Path:
    """Convert the ``serving_default`` graph (float32 ``images``, dynamic batch) to ONNX at ``path``."""
    _require_tensorflow_backend()
    import tensorflow as tf

    _patch_tf2onnx()
    import onnx
    import tf2onnx

    function = build_serving_functions(model, flip=flip, validate=False)[SERVING_DEFAULT]
    height, width = model_input_size(model)
    path = Path(path)
    with io.atomic_path(path) as tmp:
        with _plain_argmax():
            proto, _ = tf2onnx.convert.from_function(
                function,
                input_signature=[
                    tf.TensorSpec([None, height, width, 3], tf.float32, name="images")
                ],
                opset=opset,
            )
        unsupported = sorted(
            {n.op_type for n in proto.graph.node if n.domain in ("", "ai.onnx")}
            - {s.name for s in onnx.defs.get_all_schemas()}
        )
        if unsupported:
            raise ExportError(f"tf2onnx left TensorFlow ops without ONNX equivalent: {unsupported}")
        onnx.checker.check_model(proto)
        Path(tmp).write_bytes(proto.SerializeToString())
    return path


@contextlib.contextmanager
def _plain_argmax():
    """Trace ``keras.ops.argmax`` as a plain ``tf.argmax`` while converting to ONNX.

    Keras' TensorFlow argmax orders -0.0 below +0.0 through a float->int bitcast, which ONNX cannot
    express; the two differ only when a heatmap's maximum is exactly zero and a -0.0 precedes it.
    The ONNX parity check against Keras guards the result.
    """
    import keras
    import tensorflow as tf

    original = keras.ops.argmax

    def argmax(x, axis=None, keepdims=False):
        x = tf.convert_to_tensor(x)
        if axis is None:
            x, axis = tf.reshape(x, [-1]), 0
        y = tf.argmax(x, axis=axis, output_type=tf.int32)
        return tf.expand_dims(y, axis) if keepdims else y

    keras.ops.argmax = argmax
    try:
        yield
    finally:
        keras.ops.argmax = original


def _reference_outputs(model, images: np.ndarray, flip: bool) -> dict[str, np.ndarray]:
    from keras import ops

    from hgkeras.codec import decode_to_input, heatmaps_with_flip
    from hgkeras.spec import pose_of

    heatmaps = heatmaps_with_flip(model, images, pose_of(model).flip_permutation, flip=flip)
    keypoints, scores = decode_to_input(heatmaps, model_input_size(model))
    return {
        "heatmaps": ops.convert_to_numpy(heatmaps),
        "keypoints": ops.convert_to_numpy(keypoints),
        "scores": ops.convert_to_numpy(scores),
    }


def _compare(name: str, got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """Max abs heatmap difference; raises ExportError beyond tolerance or on differing keypoints."""
    diff = float(np.max(np.abs(got["heatmaps"] - want["heatmaps"])))
    if diff > HEATMAP_TOLERANCE:
        raise ExportError(
            f"{name}: heatmaps differ from Keras by {diff:.3g} (> {HEATMAP_TOLERANCE:g})"
        )
    if not np.array_equal(got["keypoints"], want["keypoints"]):
        raise ExportError(f"{name}: decoded keypoints differ from Keras")
    return diff


def check_parity(
    model, version_dir: Path, flip: bool, onnx_path: Path | None, seed: int = 0
) -> dict[str, float]:
    """Run the SavedModel (and ONNX model) on a random batch and compare with Keras.

    Returns the max abs heatmap differences; raises :class:`ExportError` on a mismatch.
    """
    import tensorflow as tf

    height, width = model_input_size(model)
    images = np.random.default_rng(seed).random((2, height, width, 3), dtype=np.float32)
    want = _reference_outputs(model, images, flip)
    loaded = tf.saved_model.load(str(version_dir))
    got = {
        k: v.numpy()
        for k, v in loaded.signatures[SERVING_DEFAULT](images=tf.constant(images)).items()
    }
    checks = {"saved_model": _compare("SavedModel serving_default", got, want)}
    if onnx_path is not None:
        try:
            import onnxruntime
        except ImportError:  # onnxruntime is a test extra
            print("onnxruntime is not installed: ONNX parity not checked", file=sys.stderr)
            return checks
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        result = dict(zip(names, session.run(None, {"images": images}), strict=True))
        checks["onnx"] = _compare("ONNX", result, want)
    return checks


# --------------------------------------------------------------------------------------------------
# Entry point


def export_model(
    model: Any,
    out_dir: str | Path,
    name: str = "hourglass",
    version: int = 1,
    *,
    flip: bool = False,
    onnx: bool = False,
    force: bool = False,
    verify: bool = True,
    models_config: bool = True,
    base_path: str = "/models",
    fold: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ExportResult:
    """Export ``model`` (anything :func:`hgkeras.models.loading.load_model` takes: a model, a
    ``PoseTrainer`` or a ``.keras`` path) to ``out_dir/name/version``.

    Writes the SavedModel (and with ``onnx=True`` ``model.onnx`` inside the version folder) into a
    temporary folder, checks parity with Keras (``verify``), then renames it into place. An existing
    version is an error unless ``force``. With ``fold`` (the default) the exported graphs are those
    of :func:`hgkeras.models.fold.fold_batch_norms` (batch norms folded into the convolutions before them:
    the same outputs, faster); the parity check compares them with the model as given.
    ``max_pixels`` is the decoded-size limit of ``predict_image`` (None = no limit). Under a jax
    or torch backend the export re-runs in a TensorFlow subprocess (the ``.keras`` file is backend
    independent).
    """
    import keras

    out_dir = Path(out_dir)
    final = version_path(out_dir, name, version)
    if final.exists() and not force:
        raise FileExistsError(
            f"{final} already exists; choose another --version or pass --force to replace it"
        )
    if keras.backend.backend() != "tensorflow":
        return _export_in_tensorflow(
            model, out_dir, name, version, flip=flip, onnx=onnx, force=force, verify=verify,
            models_config=models_config, base_path=base_path, fold=fold, max_pixels=max_pixels,
        )  # fmt: skip
    from hgkeras.models.loading import load_model

    model = load_model(model)  # a trainer (PoseTrainer) gives its .hourglass
    network = load_model(model, fold_batch_norms=True) if fold else model
    with io.atomic_path(final) as tmp:
        save_signatures(network, Path(tmp), flip=flip, max_pixels=max_pixels)
        onnx_tmp = export_onnx(network, Path(tmp) / ONNX_FILENAME, flip=flip) if onnx else None
        checks = check_parity(model, Path(tmp), flip, onnx_tmp) if verify else {}
    config_path = write_models_config(out_dir, base_path=base_path) if models_config else None
    return ExportResult(
        version_dir=final,
        signatures=signature_summary(final),
        onnx_path=final / ONNX_FILENAME if onnx else None,
        models_config=config_path,
        checks=checks,
    )


def _export_in_tensorflow(model, out_dir: Path, name: str, version: int, **options) -> ExportResult:
    """Re-run :func:`export_model` in a ``KERAS_BACKEND=tensorflow`` subprocess."""
    with tempfile.TemporaryDirectory(prefix="hgkeras-export-") as tmp:
        if isinstance(model, (str, Path)):
            model_path = Path(model)
            if not model_path.is_file():
                raise FileNotFoundError(f"model file not found: {model_path}")
        else:
            model_path = Path(tmp) / "model.keras"
            model.save(model_path)
        argv = export_argv(model_path, out_dir, name, version, **options)
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        result = subprocess.run(
            [sys.executable, "-m", "hgkeras", *argv], env=env, capture_output=True, text=True
        )
    if result.returncode != 0:
        raise ExportError(
            f"export under TensorFlow failed (exit {result.returncode}): "
            + (result.stderr.strip().splitlines() or ["no message"])[-1]
        )
    final = version_path(out_dir, name, version)
    return ExportResult(
        version_dir=final,
        signatures=signature_summary(final),
        onnx_path=final / ONNX_FILENAME if options.get("onnx") else None,
        models_config=out_dir / "models.config" if options.get("models_config", True) else None,
    )


def export_argv(
    model_path: str | Path,
    out_dir: str | Path,
    name: str,
    version: int,
    *,
    flip: bool = False,
    onnx: bool = False,
    force: bool = False,
    verify: bool = True,
    models_config: bool = True,
    base_path: str = "/models",
    fold: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> list[str]:
    """The ``hgkeras export`` arguments equivalent to :func:`export_model`'s."""
    argv = ["export", "--model", str(model_path), "--out", str(out_dir), "--name", name]
    argv += ["--version", str(int(version)), "--base-path", base_path]
    argv += ["--max-pixels", str(0 if max_pixels is None else int(max_pixels))]
    flags: Iterable[tuple[bool, str]] = (
        (flip, "--flip"),
        (onnx, "--onnx"),
        (force, "--force"),
        (not verify, "--no-verify"),
        (not models_config, "--no-models-config"),
        (not fold, "--no-fold"),
    )
    return argv + [flag for on, flag in flags if on]
