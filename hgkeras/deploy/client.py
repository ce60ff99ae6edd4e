"""Clients for a pose model served by TensorFlow Serving (gRPC and REST).

The server runs a SavedModel written by :mod:`hgkeras.deploy.export`. :class:`PoseClient` talks gRPC
(``tensorflow-serving-api``'s ``PredictionService`` and ``ModelService``, port 8500),
:class:`RestPoseClient` the REST API (port 8501). Both offer ``predict*``, ``status()`` (the
versions the server holds and their state, ``GetModelStatus``) and ``metadata()`` (the signatures,
``GetModelMetadata``). Both retry a request while the server is ``UNAVAILABLE`` (exponential
backoff) and turn ``INVALID_ARGUMENT`` / ``NOT_FOUND`` answers into :class:`InvalidRequestError` /
:class:`ModelNotFoundError` carrying the server's message.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hgkeras.data.images import DEFAULT_MAX_PIXELS

#: Signature names written by :mod:`hgkeras.deploy.export` (kept here so the client does not import it).
SERVING_DEFAULT = "serving_default"
SERVING_UINT8 = "serving_uint8"
PREDICT_IMAGE = "predict_image"


class ServingError(RuntimeError):
    """A request to the model server failed; ``code`` is the gRPC status name (e.g. "INTERNAL")."""

    def __init__(self, code: str, message: str, target: str = "") -> None:
        self.code = code
        self.message = message
        self.target = target
        where = f" from {target}" if target else ""
        super().__init__(f"{code}{where}: {message}")


class InvalidRequestError(ServingError, ValueError):
    """The server rejected the request (``INVALID_ARGUMENT``): wrong shape, dtype, bytes or box."""


class ModelNotFoundError(ServingError, LookupError):
    """The server does not serve that model, version or signature (``NOT_FOUND``)."""


class ServerUnavailableError(ServingError, ConnectionError):
    """The server stayed ``UNAVAILABLE`` through every retry."""


def _error_for(code: str, message: str, target: str) -> ServingError:
    if code == "INVALID_ARGUMENT":
        return InvalidRequestError(code, message, target)
    if code == "NOT_FOUND":
        return ModelNotFoundError(code, message, target)
    if code == "UNAVAILABLE":
        return ServerUnavailableError(code, message, target)
    return ServingError(code, message, target)


def _check_box(center: Sequence[float], scale: float) -> tuple[np.ndarray, np.float32]:
    center = np.asarray(center, np.float32).reshape(-1)
    if center.shape != (2,) or not np.all(np.isfinite(center)):
        raise ValueError(f"center must be two finite numbers (x, y), got {center!r}")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number (box side / 200), got {scale!r}")
    return center, np.float32(scale)


class _RetryingClient:
    """Shared request plumbing: the model spec, retries with exponential backoff on UNAVAILABLE."""

    def __init__(
        self,
        target: str,
        model_name: str,
        version: int | None,
        signature: str,
        timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        sleep: Callable[[float], None],
    ) -> None:
        if not model_name:
            raise ValueError("model_name must be a non-empty string")
        if version is not None and (isinstance(version, bool) or int(version) < 1):
            raise ValueError(f"version must be None or an integer >= 1, got {version!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        self.target = target
        self.model_name = model_name
        self.version = None if version is None else int(version)
        self.signature = signature
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._sleep = sleep

    def _send(self, inputs: Mapping[str, np.ndarray], signature: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _status(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _metadata(self) -> dict[str, Any]:
        raise NotImplementedError

    def _retrying(self, call: Callable[[], Any]) -> Any:
        """``call()``, retried with exponential backoff while the server is UNAVAILABLE."""
        attempt = 0
        while True:
            try:
                return call()
            except ServerUnavailableError:
                if attempt >= self.retries:
                    raise
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                self._sleep(delay * (0.5 + random.random() / 2))  # jitter: 50-100% of the step
                attempt += 1

    def predict(
        self, inputs: Mapping[str, Any], signature: str | None = None
    ) -> dict[str, np.ndarray]:
        """Send named input tensors to ``signature`` (default: the client's); returns named outputs."""
        signature = signature or self.signature
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        return self._retrying(lambda: self._send(arrays, signature))

    def status(self) -> list[dict[str, Any]]:
        """The model's versions on the server (the client's version only, when it has one).

        Each is ``{"version": int, "state": "AVAILABLE" | "LOADING" | "UNLOADING" | "END" | ...,
        "error_code": "OK" | ..., "error_message": str}``, newest first.
        """
        return sorted(self._retrying(self._status), key=lambda s: -s["version"])

    def metadata(self) -> dict[str, Any]:
        """``{"version": int, "signatures": {name: {"inputs": {...}, "outputs": {...}}}}``.

        Each tensor is ``{"dtype": "DT_FLOAT", "shape": (-1, 256, 256, 3)}`` (-1: any size).
        """
        return self._retrying(self._metadata)

    def predict_image(
        self,
        image_bytes: bytes,
        center: Sequence[float],
        scale: float,
        signature: str | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (J, 2) in original image pixels and scores (J,) for one person box.

        ``image_bytes``: an encoded JPEG/PNG; ``center`` (x, y) in 0-based pixels of the upright
        image; ``scale`` = box side / 200 (see :mod:`hgkeras.geometry`). Before sending, the bytes
        are checked (truncated files and images above ``max_pixels`` are ValueErrors), turned
        upright by their EXIF orientation (:func:`hgkeras.data.images.upright_bytes`) and
        the box is checked against the image size.
        """
        from hgkeras.data.images import upright_bytes
        from hgkeras.inference.boxes import check_crop_box

        if not isinstance(image_bytes, (bytes, bytearray)):
            raise TypeError(f"image_bytes must be bytes, got {type(image_bytes).__name__}")
        center, scale = _check_box(center, scale)
        image_bytes, info = upright_bytes(bytes(image_bytes), max_pixels=max_pixels)
        if info.height is not None and info.width is not None:
            height, width = (
                (info.width, info.height) if info.transposed else (info.height, info.width)
            )
            check_crop_box(center, scale, height, width)
        signature = signature or (
            self.signature
            if self.signature not in (SERVING_DEFAULT, SERVING_UINT8)
            else PREDICT_IMAGE
        )
        outputs = self.predict(
            {"image_bytes": np.array(bytes(image_bytes), dtype=object), "center": center,
             "scale": np.array(scale, np.float32)},
            signature,
        )  # fmt: skip
        return outputs["keypoints"], outputs["scores"]

    def predict_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``heatmaps``, ``keypoints`` (input pixels) and ``scores`` for a batch of model-sized crops.

        float32 images in [0, 1] go to ``serving_default``, uint8 images to ``serving_uint8``.
        """
        images = np.asarray(images)
        if images.dtype == np.uint8:
            return self.predict({"images": images}, SERVING_UINT8)
        return self.predict({"images": images.astype(np.float32, copy=False)}, SERVING_DEFAULT)


class PoseClient(_RetryingClient):
    """gRPC client of TensorFlow Serving's ``PredictionService`` for an exported pose model.

    Args:
        target: "host:port" of the gRPC endpoint (TF Serving's default port is 8500).
        model_name: the served model's name (``--name`` of ``hgkeras export``).
        version: a model version, or None for the server's latest.
        signature: default signature of :meth:`predict` / :meth:`predict_image`.
        timeout: seconds per attempt.
        retries: extra attempts while the server is UNAVAILABLE; waits ``backoff * 2**k`` seconds
            (at most ``max_backoff``, with jitter) before attempt k + 1.
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        version: int | None = None,
        signature: str = PREDICT_IMAGE,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(
            target, model_name, version, signature, timeout, retries, backoff, max_backoff, sleep
        )
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self._grpc = grpc
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except self._grpc.RpcError as error:
            code = error.code().name if error.code() is not None else "UNKNOWN"
            raise _error_for(code, error.details() or "", self.target) from None

    def _model_spec(self, spec) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version

    def _status(self) -> list[dict[str, Any]]:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._call(self._model_stub.GetModelStatus, request)
        state = get_model_status_pb2.ModelVersionStatus.State
        codes = get_model_status_pb2.ModelVersionStatus().status.DESCRIPTOR.fields_by_name
        code_names = codes["error_code"].enum_type.values_by_number
        return [
            {
                "version": int(s.version),
                "state": state.Name(s.state),
                "error_code": code_names[s.status.error_code].name,
                "error_message": s.status.error_message,
            }
            for s in response.model_version_status
        ]

    def _metadata(self) -> dict[str, Any]:
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._model_spec(request.model_spec)
        request.metadata_field.append("signature_def")
        response = self._call(self._stub.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)

        def tensors(infos) -> dict[str, dict[str, Any]]:
            return {
                key: {
                    "dtype": types_pb2.DataType.Name(info.dtype),
                    "shape": None
                    if info.tensor_shape.unknown_rank
                    else tuple(int(d.size) for d in info.tensor_shape.dim),
                }
                for key, info in sorted(infos.items())
            }

        return {
            "version": int(response.model_spec.version.value),
            "signatures": {
                name: {"inputs": tensors(sig.inputs), "outputs": tensors(sig.outputs)}
                for name, sig in sorted(signature_map.signature_def.items())
                if not name.startswith("__")
            },
        }

    def _send(self, inputs: Mapping[str, np.ndarray], signature: str) -> dict[str, np.ndarray]:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec)
        request.model_spec.signature_name = signature
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(self._stub.Predict, request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PoseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: HTTP status -> gRPC status name, as TF Serving's REST API maps them.
_HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 503: "UNAVAILABLE", 504: "UNAVAILABLE"}


def _to_json(value: np.ndarray) -> Any:
    if value.dtype == object or value.dtype.kind in "SV":
        if value.ndim:
            return [_to_json(v) for v in value]
        item = value.item()
        data = item if isinstance(item, (bytes, bytearray)) else str(item).encode()
        return {"b64": base64.b64encode(bytes(data)).decode("ascii")}
    return value.tolist()


class RestPoseClient(_RetryingClient):
    """TF Serving REST ``:predict`` client (columnar ``inputs`` format); same API as :class:`PoseClient`.

    ``base_url`` is e.g. "http://localhost:8501" (TF Serving's default REST port).
    """

    def __init__(
        self,
        base_url: str,
        model_name: str,
        version: int | None = None,
        signature: str = PREDICT_IMAGE,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        super().__init__(
            base_url.rstrip("/"), model_name, version, signature, timeout, retries, backoff,
            max_backoff, sleep,
        )  # fmt: skip

    @property
    def model_url(self) -> str:
        version = f"/versions/{self.version}" if self.version is not None else ""
        return f"{self.target}/v1/models/{self.model_name}{version}"

    @property
    def url(self) -> str:
        return f"{self.model_url}:predict"

    def _request(self, url: str, body: dict | None = None) -> dict[str, Any]:
        """GET ``url`` (or POST ``body`` as JSON); the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("error", "")
            except (ValueError, AttributeError):
                message = str(error)
            raise _error_for(_HTTP_CODES.get(error.code, "UNKNOWN"), message, url) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            raise ServerUnavailableError("UNAVAILABLE", str(reason), url) from None

    def _status(self) -> list[dict[str, Any]]:
        payload = self._request(self.model_url)
        return [
            {
                "version": int(s["version"]),
                "state": s["state"],
                "error_code": s.get("status", {}).get("error_code", "OK"),
                "error_message": s.get("status", {}).get("error_message", ""),
            }
            for s in payload.get("model_version_status", [])
        ]

    def _metadata(self) -> dict[str, Any]:
        payload = self._request(f"{self.model_url}/metadata")
        signatures = payload["metadata"]["signature_def"]["signature_def"]

        def tensors(infos: dict) -> dict[str, dict[str, Any]]:
            out = {}
            for key, info in sorted(infos.items()):
                shape = info.get("tensor_shape", {})
                out[key] = {
                    "dtype": info["dtype"],
                    "shape": None
                    if shape.get("unknown_rank")
                    else tuple(int(d["size"]) for d in shape.get("dim", [])),
                }
            return out

        return {
            "version": int(payload["model_spec"]["version"]),
            "signatures": {
                name: {"inputs": tensors(sig["inputs"]), "outputs": tensors(sig["outputs"])}
                for name, sig in sorted(signatures.items())
                if not name.startswith("__")
            },
        }

    def _send(self, inputs: Mapping[str, np.ndarray], signature: str) -> dict[str, np.ndarray]:
        payload = self._request(
            self.url,
            {"signature_name": signature, "inputs": {k: _to_json(v) for k, v in inputs.items()}},
        )
        outputs = payload.get("outputs")
        if outputs is None:
            raise ServingError("INTERNAL", f"response without 'outputs': {payload!r}", self.url)
        if not isinstance(outputs, dict):  # a signature with one output returns it bare
            outputs = {"output": outputs}
        return {k: np.asarray(v, np.float32) for k, v in outputs.items()}


# --------------------------------------------------------------------------------------------------
# ``python serving/client.py IMAGE --box ...``


def client_main(argv: Sequence[str] | None = None) -> int:
    """Send one image and person box to a server, print the keypoints and write an overlay PNG."""
    parser = argparse.ArgumentParser(
        prog="serving/client.py",
        description="Ask a TF Serving pose model (the predict_image signature) for the keypoints of "
        "one person and draw them.",
    )
    parser.add_argument("image", help="a JPEG or PNG file")
    box = parser.add_mutually_exclusive_group(required=True)
    box.add_argument(
        "--box",
        nargs=4,
        type=float,
        metavar=("X1", "Y1", "X2", "Y2"),
        help="person box in 0-based pixels; the crop is its longer side x --padding",
    )
    box.add_argument("--center", nargs=2, type=float, metavar=("X", "Y"), help="box centre")
    parser.add_argument("--scale", type=float, help="box side / 200 (with --center)")
    parser.add_argument("--padding", type=float, default=1.25, help="box enlargement (1.25)")
    parser.add_argument("--target", default="localhost:8500", help="gRPC host:port")
    parser.add_argument("--rest", help="use REST at this base URL (e.g. http://localhost:8501)")
    parser.add_argument("--model-name", default="hourglass")
    parser.add_argument("--version", type=int, help="model version (default: latest)")
    parser.add_argument("--signature", default=PREDICT_IMAGE)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per attempt")
    parser.add_argument(
        "--pose",
        default="mpii",
        help="the model's keypoint set, for names and skeleton: mpii (default), flic, coco, a pose "
        "spec .json, or the export's pose.json",
    )
    parser.add_argument("--threshold", type=float, default=0.0, help="hide joints scoring below")
    parser.add_argument("--out", help="overlay PNG (default IMAGE_pose.png beside the image)")
    args = parser.parse_args(argv)

    from hgkeras import geometry
    from hgkeras.spec import read_pose_json

    try:
        path = Path(args.image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        if args.box is not None:
            center, scale = geometry.box_to_center_scale(args.box, padding=args.padding)
        elif args.scale is None:
            raise ValueError("--center needs --scale")
        else:
            center, scale = np.asarray(args.center), args.scale
        skeleton = read_pose_json(args.pose)
        cls = RestPoseClient if args.rest else PoseClient
        client = cls(
            args.rest or args.target, args.model_name, args.version, args.signature, args.timeout
        )
        keypoints, scores = client.predict_image(path.read_bytes(), center, scale)
        if keypoints.shape[0] != skeleton.num_joints:
            raise ValueError(
                f"the model returned {keypoints.shape[0]} joints; --pose {args.pose} "
                f"({skeleton.name}) has {skeleton.num_joints}: give the export's pose.json"
            )
        from hgkeras.vis.draw import write_overlay

        out = Path(args.out) if args.out else path.with_name(f"{path.stem}_pose.png")
        write_overlay(out, path, keypoints, scores, skeleton, threshold=args.threshold)
    except (ServingError, ValueError, OSError) as error:
        print(f"client: error: {error}", file=sys.stderr)
        return 2
    print(f"{'joint':12s} {'x':>8s} {'y':>8s} {'score':>7s}")
    for name, (x, y), s in zip(skeleton.joint_names, keypoints, scores, strict=True):
        print(f"{name:12s} {x:8.1f} {y:8.1f} {s:7.3f}")
    print(f"overlay: {out}")
    return 0
