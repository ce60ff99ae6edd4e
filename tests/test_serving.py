"""PoseClient / RestPoseClient against loopback TF Serving look-alikes serving an exported model."""

from __future__ import annotations

import json
import re
import runpy
import sys
import threading

import cv2
import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_loopback import (
    NAME,
    LoopbackPredictionService,
    exported,
    start_grpc_server,
    start_rest_server,
)

from hgkeras.codec import HeatmapCodec
from hgkeras.deploy.client import (
    InvalidRequestError,
    ModelNotFoundError,
    PoseClient,
    RestPoseClient,
    ServerUnavailableError,
)
from hgkeras.spec import MPII


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    _, version_dir = exported(str(tmp_path_factory.getbasetemp()))
    return LoopbackPredictionService({NAME: {1: version_dir}})


@pytest.fixture(scope="module")
def grpc_target(service):
    server, target = start_grpc_server(service)
    yield target
    server.stop(grace=None)


@pytest.fixture(scope="module")
def person(real_data):
    record = json.loads((real_data / "mpii" / "samples.json").read_text())[1]
    s = float(record["scale"])
    center = np.array(record["center"], np.float32) + [0.0, 15.0 * s] - 1.0
    path = real_data / "mpii" / "images" / record["image"]
    return path, center.astype(np.float32), np.float32(1.25 * s)


def local(service, signature, **inputs):
    outputs = service.models[NAME][1].signatures[signature](
        **{k: tf.constant(v) for k, v in inputs.items()}
    )
    return {k: v.numpy() for k, v in outputs.items()}


def test_grpc_predict_image_and_batches_equal_local(service, grpc_target, person):
    path, center, scale = person
    data = path.read_bytes()
    with PoseClient(grpc_target, NAME, version=1, timeout=30) as client:
        keypoints, scores = client.predict_image(data, center, scale)
        want = local(service, "predict_image", image_bytes=data, center=center, scale=scale)
        np.testing.assert_array_equal(keypoints, want["keypoints"])
        np.testing.assert_array_equal(scores, want["scores"])
        assert keypoints.shape == (16, 2) and keypoints.dtype == np.float32
        images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
        got8 = client.predict_images(images)
        gotf = client.predict_images(images.astype(np.float32) / 255)
    np.testing.assert_array_equal(
        got8["keypoints"], local(service, "serving_uint8", images=images)["keypoints"]
    )
    np.testing.assert_allclose(got8["heatmaps"], gotf["heatmaps"], atol=1e-6)
    assert gotf["heatmaps"].shape == (2, 16, 16, 16)


def test_eight_concurrent_clients_get_local_answers(service, grpc_target):
    rng = np.random.default_rng(7)
    requests = [rng.random((1 + i % 2, 64, 64, 3), dtype=np.float32) for i in range(8 * 25)]
    expected = [local(service, "serving_default", images=r) for r in requests]
    failures: list[str] = []
    same: list[float] = []

    def worker(k: int) -> None:
        with PoseClient(grpc_target, NAME, signature="serving_default", timeout=60) as client:
            for i in range(k, len(requests), 8):  # 25 requests each
                got = client.predict({"images": requests[i]})
                # Concurrent oneDNN convolutions may round differently (~1e-7), which can flip a
                # near-tie in the untrained model's flat heatmaps; so the answer must be this
                # request's heatmaps, decoded exactly as the graph decodes them.
                decoded, _ = HeatmapCodec().decode(got["heatmaps"], (64, 64))
                if not (
                    np.allclose(got["heatmaps"], expected[i]["heatmaps"], atol=1e-6)
                    and np.array_equal(got["keypoints"], np.asarray(decoded))
                ):
                    failures.append(f"client {k} request {i}")
                else:
                    same.append(np.mean(got["keypoints"] == expected[i]["keypoints"]))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert np.mean(same) > 0.99  # ties aside, the very same keypoints as a local call


def test_malformed_requests_get_invalid_argument_and_server_keeps_serving(
    service, grpc_target, person
):
    path, center, scale = person
    good = np.zeros((1, 64, 64, 3), np.float32)
    client = PoseClient(grpc_target, NAME, timeout=30, retries=0)
    bad = [
        ("serving_default", {"images": np.zeros((1, 32, 32, 3), np.float32)}, "shape"),
        ("serving_default", {"images": np.zeros((1, 64, 64, 3), np.int32)}, "int32"),
        ("serving_default", {"images": np.zeros((1, 64, 64, 3), np.float64)}, "float64"),
        ("serving_default", {"images": np.zeros((0, 64, 64, 3), np.float32)}, "empty"),
        ("serving_default", {"images": good + 255.0}, r"\[0, 1\]"),
        ("serving_default", {"pixels": good}, "input names"),
        ("serving_uint8", {"images": np.zeros((0, 64, 64, 3), np.uint8)}, "empty"),
    ]
    for signature, inputs, match in bad:
        with pytest.raises(InvalidRequestError, match=match) as info:
            client.predict(inputs, signature)
        assert info.value.code == "INVALID_ARGUMENT"
    with pytest.raises(InvalidRequestError, match="Unknown image file format|image"):
        client.predict_image(b"certainly not an image", center, scale)
    with pytest.raises(InvalidRequestError, match="scale"):
        client.predict(
            {"image_bytes": np.array(path.read_bytes(), dtype=object), "center": center,
             "scale": np.float32(-1.0)}, "predict_image",
        )  # fmt: skip
    with pytest.raises(ValueError, match="scale"):  # caught by the client before sending
        client.predict_image(path.read_bytes(), center, 0.0)
    with pytest.raises(ModelNotFoundError, match="nothere"):
        PoseClient(grpc_target, "nothere", retries=0).predict({"images": good}, "serving_default")
    with pytest.raises(ModelNotFoundError, match="7"):
        PoseClient(grpc_target, NAME, version=7, retries=0).predict({"images": good})
    with pytest.raises(ModelNotFoundError, match="no_such_signature"):
        client.predict({"images": good}, "no_such_signature")
    # still serving
    keypoints, _ = client.predict_image(path.read_bytes(), center, scale)
    assert np.isfinite(keypoints).all()
    client.close()


class _FlakyService(LoopbackPredictionService):
    """Answers UNAVAILABLE to the first ``failures`` requests."""

    def __init__(self, inner: LoopbackPredictionService, failures: int) -> None:
        self.models, self.failures = inner.models, failures

    def Predict(self, request, context):  # noqa: N802
        if self.failures > 0:
            self.failures -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return super().Predict(request, context)


def test_retries_with_exponential_backoff_on_unavailable(service):
    server, target = start_grpc_server(_FlakyService(service, failures=2))
    sleeps: list[float] = []
    try:
        client = PoseClient(target, NAME, signature="serving_default", backoff=0.1,
                            retries=3, sleep=sleeps.append)  # fmt: skip
        out = client.predict({"images": np.zeros((1, 64, 64, 3), np.float32)})
        assert out["keypoints"].shape == (1, 16, 2)
    finally:
        server.stop(grace=None)
    assert len(sleeps) == 2 and 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2
    # nothing listens on a stopped server's port: UNAVAILABLE through every retry
    sleeps.clear()
    with pytest.raises(ServerUnavailableError):
        PoseClient(target, NAME, retries=2, timeout=5, sleep=sleeps.append).predict(
            {"images": np.zeros((1, 64, 64, 3), np.float32)}, "serving_default"
        )
    assert len(sleeps) == 2 and sleeps[1] >= sleeps[0]


def test_status_and_metadata_over_grpc_and_rest(service, grpc_target):
    server, base = start_rest_server(service)
    try:
        for client in (PoseClient(grpc_target, NAME, retries=0), RestPoseClient(base, NAME)):
            assert client.status() == [
                {"version": 1, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}
            ]
            meta = client.metadata()
            assert meta["version"] == 1
            assert set(meta["signatures"]) == {"serving_default", "serving_uint8", "predict_image"}
            default = meta["signatures"]["serving_default"]
            assert default["inputs"] == {"images": {"dtype": "DT_FLOAT", "shape": (-1, 64, 64, 3)}}
            assert default["outputs"]["heatmaps"]["shape"] == (-1, 16, 16, 16)
            image = meta["signatures"]["predict_image"]["inputs"]
            assert image["image_bytes"] == {"dtype": "DT_STRING", "shape": ()}
        with pytest.raises(ModelNotFoundError, match="nothere"):
            PoseClient(grpc_target, "nothere", retries=0).status()
        with pytest.raises(ModelNotFoundError):
            RestPoseClient(base, NAME, version=9, retries=0).metadata()
    finally:
        server.shutdown()
        server.server_close()


def test_rest_client_matches_grpc(service, grpc_target, person):
    server, base = start_rest_server(service)
    path, center, scale = person
    try:
        rest = RestPoseClient(base, NAME, version=1, timeout=30, retries=0)
        keypoints, scores = rest.predict_image(path.read_bytes(), center, scale)
        want_k, want_s = PoseClient(grpc_target, NAME).predict_image(
            path.read_bytes(), center, scale
        )
        np.testing.assert_allclose(keypoints, want_k, atol=1e-4)
        np.testing.assert_allclose(scores, want_s, atol=1e-6)
        images = np.random.default_rng(3).random((2, 64, 64, 3), dtype=np.float32)
        got = rest.predict_images(images)
        np.testing.assert_allclose(
            got["heatmaps"], local(service, "serving_default", images=images)["heatmaps"], atol=1e-6
        )
        with pytest.raises(InvalidRequestError, match="image"):
            rest.predict_image(b"not an image", center, scale)
        with pytest.raises(ModelNotFoundError):
            RestPoseClient(base, "nothere", retries=0).predict_image(
                path.read_bytes(), center, scale
            )
    finally:
        server.shutdown()
        server.server_close()
    sleeps: list[float] = []
    with pytest.raises(ServerUnavailableError):
        RestPoseClient(base, NAME, retries=1, timeout=5, sleep=sleeps.append).predict_image(
            path.read_bytes(), center, scale
        )
    assert len(sleeps) == 1


def test_client_script_prints_keypoints_and_writes_overlay(
    grpc_target, person, repo_root, tmp_path, monkeypatch, capsys
):
    path, center, scale = person
    out = tmp_path / "overlay.png"
    argv = ["client.py", str(path), "--center", *map(str, center), "--scale", str(scale),
            "--target", grpc_target, "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(repo_root / "serving" / "client.py"), run_name="__main__")
    assert info.value.code == 0
    printed = capsys.readouterr().out
    assert "r_ankle" in printed and "head_top" in printed and str(out) in printed
    overlay, original = cv2.imread(str(out)), cv2.imread(str(path))
    assert overlay.shape == original.shape and np.abs(overlay.astype(int) - original).sum() > 0
    # bad request -> one-line error, exit code 2
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    monkeypatch.setattr(sys, "argv", [*argv[:1], str(bad), *argv[2:]])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(repo_root / "serving" / "client.py"), run_name="__main__")
    assert info.value.code == 2 and "INVALID_ARGUMENT" in capsys.readouterr().err
    # the keypoint set from an export's pose.json (spec fields beside the export's own)
    pose_json = tmp_path / "pose.json"
    pose_json.write_text(json.dumps({**MPII.to_config(), "formats": {}, "flip_in_graph": False}))
    monkeypatch.setattr(sys, "argv", [*argv, "--pose", str(pose_json)])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(repo_root / "serving" / "client.py"), run_name="__main__")
    assert info.value.code == 0 and "head_top" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", [*argv, "--pose", "flic"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(repo_root / "serving" / "client.py"), run_name="__main__")
    error = capsys.readouterr().err
    assert info.value.code == 2 and "16 joints; --pose flic (flic) has 11" in error, error


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (RGB): what a decompression bomb looks like to a
    server that reads the header first (the pixel data is never reached)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.faults
def test_oversized_and_non_finite_requests_are_refused_while_other_clients_get_answers(
    service, grpc_target, person
):
    path, center, scale = person
    image = path.read_bytes()
    want = local(
        service, "predict_image", image_bytes=image, center=center, scale=np.float32(scale)
    )
    hostile = [
        (
            {"image_bytes": _png_header_only(12000, 12000), "center": center, "scale": scale},
            "pixels",
        ),
        ({"image_bytes": image, "center": center, "scale": 1e30}, "scale|box"),
        ({"image_bytes": image, "center": np.array([np.nan, 1.0]), "scale": scale}, "center"),
        ({"image_bytes": image, "center": np.array([1e9, 1e9]), "scale": scale}, "image|box"),
    ]
    failures: list[str] = []

    def attacker() -> None:
        client = PoseClient(grpc_target, NAME, timeout=60, retries=0)
        for inputs, match in hostile * 3:
            request = {"image_bytes": np.array(inputs["image_bytes"], dtype=object),
                       "center": np.asarray(inputs["center"], np.float32),
                       "scale": np.float32(inputs["scale"])}  # fmt: skip
            try:
                client.predict(request, "predict_image")  # raw: the client's own checks bypassed
                failures.append(f"accepted {match}")
            except InvalidRequestError as error:
                if error.code != "INVALID_ARGUMENT" or not re.search(match, str(error)):
                    failures.append(f"{match}: {error.code} {error}")
        client.close()

    def honest() -> None:
        client = PoseClient(grpc_target, NAME, timeout=60, retries=0)
        for _ in range(6):
            keypoints, scores = client.predict_image(image, center, scale)
            if not np.allclose(keypoints, want["keypoints"], atol=1e-3):
                failures.append("an honest client got other keypoints")
        client.close()

    threads = [threading.Thread(target=attacker), threading.Thread(target=honest),
               threading.Thread(target=honest)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
