"""Test helpers: a small exported model and loopback TF Serving look-alikes (gRPC and REST).

The gRPC server implements tensorflow-serving-api's generated ``PredictionServiceServicer`` by running
the loaded SavedModel's signatures (``Predict``, ``GetModelMetadata``) and ``ModelServiceServicer``'s
``GetModelStatus`` (every loaded version AVAILABLE), with TF Serving's status codes: requests whose tensors do not
match the signature (names, dtype, shape) or that the graph rejects (``InvalidArgumentError``) get
``INVALID_ARGUMENT``; unknown models, versions and signatures get ``NOT_FOUND``. Loopback only.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from hgkeras import StackedHourglass
from hgkeras.deploy.export import export_model

NAME = "hourglass"
IMAGE_SIZE = 64


def small_model(seed: int = 0, features: int = 32, depth: int = 2) -> StackedHourglass:
    """1 stack, depth 2 (or ``depth``), 64x64 input, with non-trivial BatchNorm statistics."""
    import keras

    keras.utils.set_random_seed(seed)
    model = StackedHourglass(
        num_stacks=1, num_features=features, num_joints=16, depth=depth, image_shape=(64, 64, 3)
    )
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
    return model


@functools.cache
def exported(root: str) -> tuple[StackedHourglass, Path]:
    """The small model and its export (flip test baked in, with ONNX) under ``root`` (once per run)."""
    model = small_model()
    result = export_model(
        model, Path(root) / "models", name=NAME, flip=True, formats="saved_model,onnx", verify=False
    )
    return model, result.version_dir


class LoopbackPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's ``Predict`` over SavedModels loaded in this process: ``{name: {version: dir}}``."""

    def __init__(self, models: dict[str, dict[int, Path]]) -> None:
        self.paths = models
        self.models = {
            name: {v: tf.saved_model.load(str(p)) for v, p in versions.items()}
            for name, versions in models.items()
        }

    def find_version(self, name: str, version: int | None):
        """The served version number, or (code, message)."""
        if name not in self.models:
            return grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})"
        versions = self.models[name]
        version = max(versions) if version is None else version
        if version not in versions:
            return (
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Specific({name}, {version})",
            )
        return version

    def resolve(self, name: str, version: int | None, signature: str):
        """The signature's concrete function, or (code, message)."""
        version = self.find_version(name, version)
        if isinstance(version, tuple):
            return version
        signatures = self.models[name][version].signatures
        if signature not in signatures:
            return grpc.StatusCode.NOT_FOUND, f'Serving signature key "{signature}" not found.'
        return signatures[signature]

    def run(self, function, arrays: dict[str, np.ndarray]):
        """Run ``function`` on numpy inputs: a dict of numpy outputs, or (code, message)."""
        specs = function.structured_input_signature[1]
        if set(arrays) != set(specs):
            return grpc.StatusCode.INVALID_ARGUMENT, (
                f"input names {sorted(arrays)} do not match the signature's {sorted(specs)}"
            )
        tensors = {}
        for key, spec in specs.items():
            value = arrays[key]
            if value.dtype == object or value.dtype.kind == "S":
                tensor = tf.constant(value, tf.string)
            else:
                tensor = tf.constant(value)
            if tensor.dtype != spec.dtype:
                return grpc.StatusCode.INVALID_ARGUMENT, (
                    f"Expects arg[{key}] to be {spec.dtype.name} but {tensor.dtype.name} is provided"
                )
            if not spec.shape.is_compatible_with(tensor.shape):
                return grpc.StatusCode.INVALID_ARGUMENT, (
                    f"input '{key}' has shape {tensor.shape}, the signature expects {spec.shape}"
                )
            tensors[key] = tensor
        try:
            outputs = function(**tensors)
        except tf.errors.InvalidArgumentError as error:
            return grpc.StatusCode.INVALID_ARGUMENT, error.message
        return {k: v.numpy() for k, v in outputs.items()}

    def Predict(self, request, context):  # noqa: N802 - the generated servicer's name
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        function = self.resolve(spec.name, version, spec.signature_name or "serving_default")
        if isinstance(function, tuple):
            context.abort(*function)
        arrays = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        outputs = self.run(function, arrays)
        if isinstance(outputs, tuple):
            context.abort(*outputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(spec)
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def signature_defs(self, name: str, version: int):
        """The SignatureDefs of a served version, read from its saved_model.pb."""
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((Path(self.paths[name][version]) / "saved_model.pb").read_bytes())
        return proto.meta_graphs[0].signature_def

    def GetModelMetadata(self, request, context):  # noqa: N802
        spec = request.model_spec
        version = self.find_version(
            spec.name, spec.version.value if spec.HasField("version") else None
        )
        if isinstance(version, tuple):
            context.abort(*version)
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "Metadata field signature_def is required"
            )
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in self.signature_defs(spec.name, version).items():
            signature_map.signature_def[key].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(signature_map)
        return response


class LoopbackModelService(model_service_pb2_grpc.ModelServiceServicer):
    """TF Serving's ``GetModelStatus``: every version of ``service`` is AVAILABLE."""

    def __init__(self, service: LoopbackPredictionService) -> None:
        self.service = service

    def GetModelStatus(self, request, context):  # noqa: N802
        spec = request.model_spec
        asked = spec.version.value if spec.HasField("version") else None
        version = self.service.find_version(spec.name, asked)
        if isinstance(version, tuple):
            context.abort(*version)
        versions = [version] if asked is not None else sorted(self.service.models[spec.name])
        response = get_model_status_pb2.GetModelStatusResponse()
        for number in versions:
            status = response.model_version_status.add()
            status.version = number
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


def start_grpc_server(servicer) -> tuple[grpc.Server, str]:
    """Serve ``servicer`` (and its ModelService) on 127.0.0.1; returns (server, "127.0.0.1:port")."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        LoopbackModelService(servicer), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


_REST_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:predict$")
_REST_MODEL = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(/metadata)?$")
_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def _from_json(value, dtype: tf.DType):
    if dtype == tf.string:
        if isinstance(value, dict) and "b64" in value:
            return np.array(base64.b64decode(value["b64"]), dtype=object)
        return np.array(str(value).encode(), dtype=object)
    return np.asarray(value, dtype=dtype.as_numpy_dtype)


def start_rest_server(service: LoopbackPredictionService) -> tuple[ThreadingHTTPServer, str]:
    """TF Serving's REST ``:predict`` (columnar ``inputs``) on 127.0.0.1; returns (server, base URL)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def reply(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - status and metadata, as TF Serving's REST API
            from google.protobuf import json_format

            match = _REST_MODEL.match(self.path)
            if not match:
                return self.reply(404, {"error": f"Malformed request: GET {self.path}"})
            name, asked = match.group(1), int(match.group(2)) if match.group(2) else None
            version = service.find_version(name, asked)
            if isinstance(version, tuple):
                return self.reply(_HTTP[version[0]], {"error": version[1]})
            if match.group(3):
                signatures = {
                    key: json_format.MessageToDict(sig, preserving_proto_field_name=True)
                    for key, sig in service.signature_defs(name, version).items()
                }
                return self.reply(
                    200,
                    {
                        "model_spec": {"name": name, "version": str(version)},
                        "metadata": {"signature_def": {"signature_def": signatures}},
                    },
                )
            versions = [version] if asked is not None else sorted(service.models[name])
            status = {"error_code": "OK", "error_message": ""}
            self.reply(
                200,
                {
                    "model_version_status": [
                        {"version": str(v), "state": "AVAILABLE", "status": status}
                        for v in versions
                    ]
                },
            )

        def do_POST(self):  # noqa: N802
            match = _REST_PATH.match(self.path)
            if not match:
                return self.reply(404, {"error": f"Malformed request: POST {self.path}"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            version = int(match.group(2)) if match.group(2) else None
            signature = body.get("signature_name", "serving_default")
            function = service.resolve(match.group(1), version, signature)
            if isinstance(function, tuple):
                return self.reply(_HTTP[function[0]], {"error": function[1]})
            specs = function.structured_input_signature[1]
            try:
                arrays = {
                    k: _from_json(v, specs[k].dtype if k in specs else tf.float32)
                    for k, v in body["inputs"].items()
                }
            except (ValueError, TypeError, KeyError) as error:
                return self.reply(400, {"error": f"cannot parse inputs: {error}"})
            outputs = service.run(function, arrays)
            if isinstance(outputs, tuple):
                return self.reply(_HTTP[outputs[0]], {"error": outputs[1]})
            self.reply(200, {"outputs": {k: v.tolist() for k, v in outputs.items()}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
