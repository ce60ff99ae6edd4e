"""TF Serving files: ``models.config`` (protobuf text of ``ModelServerConfig``) and warm-up requests.

``models.config`` is read and written with ``tensorflow_serving.config.model_server_config_pb2`` and
``google.protobuf.text_format``, so everything a user added to it (other models, versions, version
labels, logging settings) survives a new export. The warm-up file
``VERSION/assets.extra/tf_serving_warmup_requests`` is a TFRecord of ``PredictionLog`` protos that the
server replays when it loads a version, so the first real request does not pay for graph set-up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hgkeras import io

#: Where TF Serving looks for warm-up requests inside a SavedModel version folder.
WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
#: Header comment written on top of ``models.config``.
CONFIG_HEADER = (
    "# TF Serving --model_config_file (ModelServerConfig text format), updated by `hgkeras export`:\n"
    "# models, versions and version_labels added by hand are kept.\n"
)


def read_models_config(path: str | Path):
    """Parse ``path`` into a ``ModelServerConfig``; an absent file gives an empty config."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    if not io.exists(path):
        return config
    try:
        text_format.Parse(io.read_text(path), config)
    except text_format.ParseError as error:
        raise ValueError(
            f"{path}: not a TF Serving ModelServerConfig text proto: {error}"
        ) from None
    if config.WhichOneof("config") == "custom_model_config":
        raise ValueError(f"{path}: holds a custom_model_config; expected a model_config_list")
    return config


def exported_versions(model_dir: Path) -> list[int]:
    """Version numbers under ``model_dir`` that hold a SavedModel (``N/saved_model.pb``)."""
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
    )


def update_models_config(
    config, models: dict[str, Iterable[int]], base_path: str = "/models", versions: str = "all"
):
    """Add ``models`` ({name: exported versions}) to ``config`` in place and return it.

    A model not yet in the config gets ``base_path/name`` and a ``specific`` policy listing its
    versions (``versions="all"``) or ``latest { num_versions: 1 }`` (``"latest"``). A model already in
    it keeps its base path, labels and other fields; a ``specific`` policy gains the new versions
    (versions listed before stay), any other policy is left as the user set it.
    """
    if versions not in ("all", "latest"):
        raise ValueError(f"versions must be 'all' or 'latest', got {versions!r}")
    entries = {c.name: c for c in config.model_config_list.config}
    for name, numbers in sorted(models.items()):
        numbers = sorted(set(int(n) for n in numbers))
        entry = entries.get(name)
        if entry is None:
            entry = config.model_config_list.config.add()
            entry.name = name
            entry.base_path = f"{base_path.rstrip('/')}/{name}"
            entry.model_platform = "tensorflow"
            if versions == "latest":
                entry.model_version_policy.latest.num_versions = 1
            else:
                entry.model_version_policy.specific.versions.extend(numbers)
            entries[name] = entry
        elif entry.model_version_policy.WhichOneof("policy_choice") == "specific":
            listed = entry.model_version_policy.specific.versions
            listed.extend(n for n in numbers if n not in listed)
            merged = sorted(listed)
            del listed[:]
            listed.extend(merged)
    return config


def format_models_config(config) -> str:
    """``config`` as TF Serving's text format, with the header comment."""
    from google.protobuf import text_format

    return CONFIG_HEADER + text_format.MessageToString(config)


def write_models_config(
    out_dir: str | Path, base_path: str = "/models", versions: str = "all"
) -> Path:
    """Update ``DIR/models.config`` with every exported SavedModel version under ``DIR``.

    ``base_path`` is where ``DIR`` is mounted in the server (``/models`` in the docker image).
    Existing entries keep what they hold (see :func:`update_models_config`).
    """
    out_dir = Path(out_dir)
    models = {}
    for model_dir in sorted(p for p in out_dir.iterdir() if p.is_dir()):
        numbers = exported_versions(model_dir)
        if numbers:
            models[model_dir.name] = numbers
    if not models:
        raise ValueError(f"no exported model versions (NAME/N/saved_model.pb) under {out_dir}")
    path = out_dir / "models.config"
    config = update_models_config(read_models_config(path), models, base_path, versions)
    io.atomic_write_text(path, format_models_config(config))
    return path


# --------------------------------------------------------------------------------------------------
# Warm-up requests


def warmup_requests(model_name: str, crop: np.ndarray, batch_sizes: Iterable[int] = (1, 8)):
    """``PredictionLog`` protos for every signature, built from one person crop (H, W, 3) in [0, 1].

    ``serving_default`` and ``serving_uint8`` get one request per batch size (so the batching
    queue's shapes are warm too); ``predict_image`` gets the crop encoded as a PNG with its box.
    """
    import cv2
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    crop = np.asarray(crop, np.float32)
    height, width = crop.shape[:2]
    logs = []

    def add(signature: str, inputs: dict) -> None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )

    pixels = np.clip(np.rint(crop * 255.0), 0, 255).astype(np.uint8)
    for batch in batch_sizes:
        add("serving_default", {"images": np.repeat(crop[None], batch, axis=0)})
        add("serving_uint8", {"images": np.repeat(pixels[None], batch, axis=0)})
    ok, png = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise ValueError("cannot encode the warm-up crop as PNG")
    add(
        "predict_image",
        {
            "image_bytes": np.array(png.tobytes(), dtype=object),
            "center": np.array([(width - 1) / 2.0, (height - 1) / 2.0], np.float32),
            "scale": np.array(max(height, width) / 200.0, np.float32),
        },
    )
    return logs


def write_warmup_file(version_dir: str | Path, logs) -> Path:
    """Write ``logs`` as ``version_dir/assets.extra/tf_serving_warmup_requests`` (a TFRecord)."""
    import tensorflow as tf

    path = Path(version_dir) / WARMUP_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path) as temp, tf.io.TFRecordWriter(temp) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_file(path: str | Path) -> list:
    """The ``PredictionLog`` protos of a warm-up file (a clear error when it is not one)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    if not io.exists(path):
        raise FileNotFoundError(f"warm-up file not found: {path}")
    logs = []
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            logs.append(prediction_log_pb2.PredictionLog.FromString(record.numpy()))
    except (tf.errors.DataLossError, ValueError) as error:
        raise ValueError(f"{path}: not a TFRecord of PredictionLog protos: {error}") from None
    return logs
