"""The embedded TF-Serving-compatible model server, run as a subprocess, over real gRPC and HTTP.

The SavedModels are tiny tf.Modules with the project's two signatures; each version
answers with its own number (items "<user>-v<version>-<j>", scores version + 0.1*j,
model_version), so every answer says which version produced it. Most tests share one
server and each uses its own model name; reloads send the whole config (as the updater
must), kept in `ModelServer.configs`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from saved_models import build_model, recommend_request
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from recstream.deploy.local.processes import free_port
from recstream.deploy.modelserver import grpc_healthy, rest_healthy

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 90.0
WAIT_S = 30.0
STATE_LINE = re.compile(r"model (\S+) version (\d+): ([A-Z]+)")


# -- SavedModels ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Path]:
    """Versions 1-3 with a good warmup request, and a version 2 whose warmup request is wrong."""
    root = tmp_path_factory.mktemp("exports")
    good = recommend_request(["warm"], np.int32(2))
    built: dict[Any, Path] = {}
    for version in (1, 2, 3):
        built[version] = root / f"v{version}"
        build_model(built[version], version, good)
    built["bad-warmup"] = root / "bad-warmup"
    build_model(built["bad-warmup"], 2, recommend_request(["warm"], "two"))  # k must be int32
    return built


def place(export: Path, base: Path, version: int, corrupt: bool = False) -> None:
    """Stage a version the way an updater must: copy beside, then rename into place."""
    staging = base / f".staging-{version}"
    shutil.copytree(export, staging)
    if corrupt:
        (staging / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    staging.rename(base / str(version))


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def build_spinning_model(path: Path, model: str) -> Path:
    """A version whose warmup request never ends (it counts to 10**12): a load that outlives any test."""

    class Spinner(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.int64, name="n")])
        def spin(self, n: tf.Tensor) -> dict[str, tf.Tensor]:
            i = tf.constant(0, tf.int64)
            while i < n:
                i += 1
            return {"count": i}

    module = Spinner()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.spin})
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["n"].CopyFrom(tf.make_tensor_proto(10**12, dtype=tf.int64))
    (path / "assets.extra").mkdir()
    record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    with tf.io.TFRecordWriter(str(path / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        writer.write(record.SerializeToString())
    return path


# -- the server process and its clients ----------------------------------------------------------
class ModelServer:
    def __init__(
        self,
        base: Path,
        log_path: Path,
        model: str = "rec",
        config_file: Path | None = None,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
    ) -> None:
        self.base, self.log_path, self.model, self.host = base, log_path, model, host
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.configs: dict[str, model_server_config_pb2.ModelConfig] = {}
        if config_file:
            self.model_args = [
                "--model-config-file",
                str(config_file),
                "--model-config-file-poll-wait-seconds",
                "0.2",
                "--allow-version-labels-for-unavailable-models",
            ]
        else:
            self.model_args = ["--model-name", model, "--model-base-path", str(base)]
            self.configure(model, base)

    # process
    def start(self) -> None:
        self.grpc_port, self.rest_port = free_port(), free_port()
        argv = [
            sys.executable,
            "-m",
            "recstream.deploy.modelserver",
            *self.model_args,
            "--grpc-port",
            str(self.grpc_port),
            "--rest-port",
            str(self.rest_port),
            "--file-system-poll-wait-seconds",
            "0.2",
            "--max-num-load-retries",
            "0",
            "--host",
            self.host,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env
            )
        self.channel = grpc.insecure_channel(f"{self.host}:{self.grpc_port}")
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def wait_healthy(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"server exited:\n{self.log()[-3000:]}"
            return rest_healthy(f"{self.host}:{self.rest_port}", self.model, timeout=1.0)

        wait_until(ready, "the model server to answer", START_TIMEOUT_S)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.channel.close()
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def state_changes(self, model: str) -> list[tuple[int, str]]:
        return [(int(v), s) for m, v, s in STATE_LINE.findall(self.log()) if m == model]

    # gRPC
    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        return self.predictions.Predict(request, timeout=10)

    def recommend(self, model: str, version: int | None = None, label: str | None = None) -> int:
        """Ask for recommendations; returns the version that answered, checked for consistency."""
        request = recommend_request(["u1", "u2"], np.int32(3), model)
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        return served_version(self.predict(request))

    def error(self, call: Callable[[], Any]) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as error:
            call()
        return error.value

    def status(self, model: str) -> dict[int, tuple[str, int, str]]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        try:
            response = self.models.GetModelStatus(request, timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise
        return {
            s.version: (
                get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
                s.status.error_code,
                s.status.error_message,
            )
            for s in response.model_version_status
        }

    def state(self, model: str, version: int) -> str | None:
        return self.status(model).get(version, (None,))[0]

    def configure(
        self, name: str, base: Path, versions: list[int] | None = None, labels: dict[str, int] | None = None
    ) -> model_server_config_pb2.ModelConfig:
        config = model_server_config_pb2.ModelConfig(
            name=name, base_path=str(base), model_platform="tensorflow"
        )
        if versions is not None:
            config.model_version_policy.specific.versions.extend(versions)
        config.version_labels.update(labels or {})
        self.configs[name] = config
        return config

    def reload(self, *configs: model_server_config_pb2.ModelConfig) -> None:
        """HandleReloadConfigRequest with every model the server has, `configs` replacing theirs."""
        for config in configs:
            self.configs[config.name] = config
        request = model_management_pb2.ReloadConfigRequest()
        request.config.model_config_list.config.extend(self.configs.values())
        response = self.models.HandleReloadConfigRequest(request, timeout=60)
        assert response.status.error_code == 0

    # REST
    def rest(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://{self.host}:{self.rest_port}{path}", data=data, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


def served_version(response: predict_pb2.PredictResponse) -> int:
    """The version that answered, asserting that the spec, the outputs and the items all agree."""
    version = response.model_spec.version.value
    outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    assert int(outputs["model_version"]) == version
    assert all(item.decode().split("-v")[1].startswith(f"{version}-") for item in outputs["items"].ravel())
    np.testing.assert_allclose(outputs["scores"][0], version + 0.1 * np.arange(outputs["scores"].shape[1]))
    return version


# Request limits of the shared server, set the way the stack sets them: MODELSERVER_* settings in
# the environment the server process inherits. Small, so that the tests can cross each one.
LIMITS = {
    "MODELSERVER_MAX_BATCH": "16",
    "MODELSERVER_MAX_STRING_BYTES": "4096",
    "MODELSERVER_MAX_GRPC_MESSAGE_BYTES": str(1 << 20),
    "MODELSERVER_MAX_REST_BODY_BYTES": str(64 << 10),
    "MODELSERVER_REST_TIMEOUT_S": "2",
    "MODELSERVER_REST_WORKERS": "4",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, exports: dict[Any, Path]) -> Iterator[ModelServer]:
    """One server for the module: model `rec` with versions 1 and 2 on disk (latest policy: 2 serves)."""
    root = tmp_path_factory.mktemp("modelserver")
    base = root / "rec"
    base.mkdir()
    place(exports[1], base, 1)
    place(exports[2], base, 2)
    server = ModelServer(base, root / "server.log", env=LIMITS)
    try:
        server.start()
        server.wait_healthy()
        yield server
    finally:
        server.kill()


def new_model(server: ModelServer, exports: dict[Any, Path], name: str, *versions: int) -> Path:
    base = server.base.parent / name
    base.mkdir()
    for version in versions:
        place(exports[version], base, version)
    return base


# -- tests ---------------------------------------------------------------------------------------
def test_predict_latest_by_version_and_errors(server: ModelServer) -> None:
    response = server.predict(recommend_request(["u1"], np.int32(3)))
    assert served_version(response) == 2
    assert response.model_spec.name == "rec"
    assert response.model_spec.signature_name == "serving_default"
    assert [i.decode() for i in tf.make_ndarray(response.outputs["items"])[0]] == [
        "u1-v2-0",
        "u1-v2-1",
        "u1-v2-2",
    ]
    scores = response.outputs["scores"]
    assert (
        list(scores.float_val) == pytest.approx([2.0, 2.1, 2.2]) and not scores.tensor_content
    )  # as TF Serving
    assert server.recommend("rec", version=2) == 2

    not_loaded = server.error(lambda: server.recommend("rec", version=1))  # on disk, not aspired
    assert not_loaded.code() == grpc.StatusCode.NOT_FOUND
    assert not_loaded.details() == "Servable not found for request: Specific(rec, 1)"
    unknown = server.error(lambda: server.recommend("nope"))
    assert (unknown.code(), unknown.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(nope)",
    )
    label = server.error(lambda: server.recommend("rec", label="stable"))
    assert label.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_model_metadata(server: ModelServer) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "rec"
    response = server.predictions.GetModelMetadata(request, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("rec", 2)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    recommend = signatures.signature_def["serving_default"]
    assert {k: tf.dtypes.as_dtype(v.dtype).name for k, v in recommend.inputs.items()} == {
        "user_id": "string",
        "k": "int32",
    }
    assert set(recommend.outputs) == {"items", "scores", "model_version"}
    assert set(signatures.signature_def["score"].inputs) == {"users", "products"}

    del request.metadata_field[:]
    error = server.error(lambda: server.predictions.GetModelMetadata(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    status, body = server.rest("GET", "/v1/models/rec/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "rec", "signature_name": "", "version": "2"}
    assert (
        body["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["k"]["dtype"]
        == "DT_INT32"
    )


def test_malformed_requests_get_tf_serving_codes(server: ModelServer) -> None:
    def mutated(change: Callable[[predict_pb2.PredictRequest], None]) -> grpc.RpcError:
        request = recommend_request(["u1"], np.int32(3))
        change(request)
        return server.error(lambda: server.predict(request))

    cases: list[tuple[Callable[[predict_pb2.PredictRequest], None], grpc.StatusCode, str]] = [
        (lambda r: r.inputs.pop("k"), grpc.StatusCode.INVALID_ARGUMENT, "Missing but required: {k}"),
        (
            lambda r: r.inputs["extra"].CopyFrom(tf.make_tensor_proto([1])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Sent extra: {extra}",
        ),
        (
            lambda r: r.inputs["k"].CopyFrom(tf.make_tensor_proto("3")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "to be int32 but string is provided",
        ),
        (
            lambda r: r.inputs["user_id"].CopyFrom(tf.make_tensor_proto([["u1"]])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "incompatible",
        ),
        (
            lambda r: r.output_filter.append("nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "output tensor alias not found",
        ),
        (lambda r: r.ClearField("model_spec"), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
        # TF Serving answers an unknown signature with FAILED_PRECONDITION (predict_util.cc).
        (
            lambda r: setattr(r.model_spec, "signature_name", "nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
    ]
    for change, code, message in cases:
        error = mutated(change)
        assert error.code() == code, (message, error.details())
        assert message in error.details()

    score = predict_pb2.PredictRequest()
    score.model_spec.name, score.model_spec.signature_name = "rec", "score"
    score.inputs["users"].CopyFrom(tf.make_tensor_proto(["a", "bb"]))
    score.inputs["products"].CopyFrom(tf.make_tensor_proto(["c", "d", "e"]))
    error = server.error(lambda: server.predict(score))  # raised by TensorFlow while running
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    filtered = recommend_request(["u1"], np.int32(2))
    filtered.output_filter.append("scores")
    assert set(server.predict(filtered).outputs) == {"scores"}
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "rec"
    assert server.error(lambda: server.predictions.Classify(classify)).code() == grpc.StatusCode.UNIMPLEMENTED


def test_rest_agrees_with_grpc(server: ModelServer) -> None:
    users = ["ann", "bob"]
    by_grpc = server.predict(recommend_request(users, np.int32(3)))
    expected = {name: tf.make_ndarray(proto) for name, proto in by_grpc.outputs.items()}
    status, body = server.rest(
        "POST",
        "/v1/models/rec:predict",
        {"inputs": {"user_id": ["ann", {"b64": base64.b64encode(b"bob").decode()}], "k": 3}},
    )
    assert status == 200, body
    outputs = body["outputs"]
    assert outputs["items"] == [[i.decode() for i in row] for row in expected["items"]]
    np.testing.assert_allclose(outputs["scores"], expected["scores"], rtol=1e-6)
    assert outputs["model_version"] == int(expected["model_version"]) == 2

    score = predict_pb2.PredictRequest()
    score.model_spec.name, score.model_spec.signature_name = "rec", "score"
    score.inputs["users"].CopyFrom(tf.make_tensor_proto(users))
    score.inputs["products"].CopyFrom(tf.make_tensor_proto(["x", "yy"]))
    grpc_scores = tf.make_ndarray(server.predict(score).outputs["scores"]).tolist()
    instances = [{"users": u, "products": p} for u, p in zip(users, ["x", "yy"], strict=True)]
    status, body = server.rest(
        "POST", "/v1/models/rec/versions/2:predict", {"signature_name": "score", "instances": instances}
    )
    assert (status, body) == (200, {"predictions": grpc_scores})
    assert grpc_scores == [8.0, 10.0]

    status, body = server.rest("GET", "/v1/models/rec")
    grpc_status = server.status("rec")
    assert status == 200
    assert body == {
        "model_version_status": [
            {
                "version": str(v),
                "state": s,
                "status": {"error_code": "OK" if c == 0 else c, "error_message": m},
            }
            for v, (s, c, m) in grpc_status.items()
        ]
    }

    errors = [
        ("GET", "/v1/models/nope", None, 404),
        ("POST", "/v1/models/nope:predict", {"inputs": {}}, 404),
        ("POST", "/v1/models/rec/versions/1:predict", {"inputs": {"user_id": ["a"], "k": 1}}, 404),
        (
            "POST",
            "/v1/models/rec:predict",
            {"signature_name": "nope", "inputs": {"user_id": ["a"], "k": 1}},
            400,
        ),
        ("POST", "/v1/models/rec:predict", {"inputs": {"user_id": ["a"], "k": "1"}}, 400),
        ("POST", "/v1/models/rec:predict", b"{not json", 400),
        # Row format batches every input, so the scalar `k` (and the scalar output) cannot be used with it.
        ("POST", "/v1/models/rec:predict", {"instances": [{"user_id": "a", "k": 1}]}, 400),
        ("POST", "/v1/models/rec/labels/nope:predict", {"inputs": {"user_id": ["a"], "k": 1}}, 400),
        ("POST", "/v1/models/rec:classify", {"examples": []}, 501),
        ("GET", "/v1/models", None, 400),
    ]
    for method, path, payload, code in errors:
        status, body = server.rest(method, path, payload)
        assert (status, sorted(body)) == (code, ["error"]), (method, path, body)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_tiny_request_declaring_a_huge_shape_is_refused_with_memory_flat(server: ModelServer) -> None:
    # One string declared as 2**28 of them: make_ndarray would pad it out to gigabytes.
    hostile = predict_pb2.PredictRequest()
    hostile.model_spec.name = "rec"
    users = hostile.inputs["user_id"]
    users.dtype = tf.string.as_datatype_enum
    users.tensor_shape.dim.add(size=1 << 28)
    users.string_val.append(b"u")
    hostile.inputs["k"].CopyFrom(tf.make_tensor_proto(np.int32(3)))
    assert len(hostile.SerializeToString()) < 64
    wide_k = predict_pb2.PredictRequest()
    wide_k.CopyFrom(hostile)
    wide_k.inputs["user_id"].CopyFrom(tf.make_tensor_proto(["u1"]))
    wide_k.inputs["k"].tensor_shape.dim.add(size=1 << 28)  # the signature's k is a scalar
    served_version(server.predict(recommend_request(["u1"], np.int32(3))))
    before = rss_kib(server.proc.pid)
    for _ in range(10):
        for request, message in [
            (hostile, "has batch size 268435456, more than the limit 16"),
            (wide_k, "input tensor k has shape [268435456], incompatible with the signature's []"),
        ]:
            error = server.error(lambda r=request: server.predict(r))
            assert (error.code(), message in error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, True)
    grown_mib = (rss_kib(server.proc.pid) - before) / 1024
    assert grown_mib < 50, f"RSS grew {grown_mib:.0f} MiB"
    assert served_version(server.predict(recommend_request(["u1", "u2"], np.int32(3)))) == 2


def test_batches_strings_and_messages_over_the_limits_are_refused(server: ModelServer) -> None:
    users = [f"u{i}" for i in range(17)]
    error = server.error(lambda: server.predict(recommend_request(users, np.int32(2))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input tensor user_id has batch size 17, more than the limit 16" in error.details()
    assert served_version(server.predict(recommend_request(users[:16], np.int32(2)))) == 2
    status, body = server.rest("POST", "/v1/models/rec:predict", {"inputs": {"user_id": users, "k": 2}})
    assert (status, body) == (
        400,
        {"error": "input tensor user_id has batch size 17, more than the limit 16"},
    )
    rows = [{"users": u, "products": "p"} for u in users]
    status, body = server.rest(
        "POST", "/v1/models/rec:predict", {"signature_name": "score", "instances": rows}
    )
    assert (status, body) == (400, {"error": "'instances' has 17 items, more than the limit 16"})

    error = server.error(lambda: server.predict(recommend_request(["x" * 5000], np.int32(2))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has a string of 5000 bytes, more than the limit 4096" in error.details()
    # Over the message limit: refused by gRPC itself before the servicer sees it.
    big = recommend_request(["u1"], np.int32(2))
    big.inputs["padding"].string_val.append(b"x" * (1 << 20))
    assert server.error(lambda: server.predict(big)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert served_version(server.predict(recommend_request(["u1"], np.int32(2)))) == 2


def test_an_oversized_rest_body_gets_413_and_the_server_keeps_serving(server: ModelServer) -> None:
    inputs = {"user_id": ["a" * 1000] * 70, "k": 1}  # ~70 KiB, over the 64 KiB limit
    status, body = server.rest("POST", "/v1/models/rec:predict", {"inputs": inputs})
    assert (status, body) == (413, {"error": f"Request body is larger than the limit of {64 << 10} bytes"})
    with socket.create_connection((server.host, server.rest_port), timeout=10) as sock:
        sock.sendall(b"POST /v1/models/rec:predict HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 413 ")  # answered without a byte of the body
    status, body = server.rest("POST", "/v1/models/rec:predict", {"inputs": {"user_id": ["a"], "k": 1}})
    assert status == 200 and body["outputs"]["model_version"] == 2


def test_a_slow_loris_is_cut_off_by_the_timeout_while_others_are_served(server: ModelServer) -> None:
    # Headers trickle in a line every 0.2 s: no single read waits long, but the request as a
    # whole must arrive within MODELSERVER_REST_TIMEOUT_S (2 s) or the connection is closed.
    loris = socket.create_connection((server.host, server.rest_port), timeout=30)
    loris.sendall(b"POST /v1/models/rec:predict HTTP/1.1\r\n")
    closed = threading.Event()
    drips = 0

    def drip() -> None:
        nonlocal drips
        while not closed.wait(0.2):
            try:
                loris.sendall(b"X-Drip: 1\r\n")
                drips += 1
            except OSError:
                return

    def watch() -> None:
        with contextlib.suppress(OSError):
            loris.recv(1024)  # b"" once the server closes it
        closed.set()

    threads = [threading.Thread(target=drip), threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    served = 0
    deadline = time.monotonic() + WAIT_S
    try:
        while not closed.is_set() and time.monotonic() < deadline:
            assert server.rest("GET", "/v1/models/rec")[0] == 200
            served += 1
            time.sleep(0.05)
        assert closed.is_set(), "the slow connection was never closed"
    finally:
        closed.set()
        loris.close()
        for thread in threads:
            thread.join(timeout=10)
    assert served > 0 and drips >= 5  # it kept sending past many reads, and others were answered


def test_new_version_on_disk_is_loaded_then_the_old_one_unloaded(
    server: ModelServer, exports: dict[Any, Path]
) -> None:
    base = new_model(server, exports, "poll", 1)
    server.reload(server.configure("poll", base))  # a new model: the reload returns once it is loaded
    assert server.recommend("poll") == 1
    place(exports[2], base, 2)
    wait_until(lambda: server.state("poll", 1) == "END", "version 1 to be unloaded")
    assert server.status("poll") == {2: ("AVAILABLE", 0, ""), 1: ("END", 0, "")}
    assert server.recommend("poll") == 2
    changes = server.state_changes("poll")
    assert [s for v, s in changes if v == 2] == ["START", "LOADING", "AVAILABLE"]
    assert [s for v, s in changes if v == 1] == ["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]
    assert changes.index((2, "AVAILABLE")) < changes.index((1, "UNLOADING"))


def test_labels_reload_and_instant_rollback(server: ModelServer, exports: dict[Any, Path]) -> None:
    base = new_model(server, exports, "labels", 1, 2)
    server.reload(server.configure("labels", base, versions=[1]))
    both = server.configure("labels", base, versions=[1, 2], labels={"stable": 2, "previous": 1})
    error = server.error(lambda: server.reload(both))  # version 2 is not loaded yet
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Request to assign label to version 2 of model labels" in error.details()
    assert server.state("labels", 2) is None  # the rejected config changed nothing

    server.reload(server.configure("labels", base, versions=[1, 2], labels={"stable": 1}))
    wait_until(lambda: server.state("labels", 2) == "AVAILABLE", "version 2 to load")
    server.reload(server.configure("labels", base, versions=[1, 2], labels={"stable": 2, "previous": 1}))
    assert server.recommend("labels", label="stable") == 2
    assert server.recommend("labels", label="previous") == 1
    status, body = server.rest(
        "POST", "/v1/models/labels/labels/stable:predict", {"inputs": {"user_id": ["a"], "k": 1}}
    )
    assert (status, body["outputs"]["model_version"]) == (200, 2)

    server.reload(server.configure("labels", base, versions=[1, 2], labels={"stable": 1, "previous": 2}))
    assert server.recommend("labels", label="stable") == 1  # the first request after the rollback
    assert server.recommend("labels") == 2  # latest is still the highest loaded version
    error = server.error(lambda: server.recommend("labels", label="canary"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: canary",
    )


def test_swap_under_load_fails_no_request(server: ModelServer, exports: dict[Any, Path]) -> None:
    base = new_model(server, exports, "swap", 1)
    server.reload(server.configure("swap", base))
    answers: list[list[int]] = [[] for _ in range(4)]
    failures: list[BaseException] = []
    stop = threading.Event()

    def client(seen: list[int]) -> None:
        while not stop.is_set():
            try:
                seen.append(server.recommend("swap"))
            except BaseException as exc:  # any failure, including an inconsistent answer
                failures.append(exc)
                return

    threads = [threading.Thread(target=client, args=(seen,)) for seen in answers]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(len(seen) >= 5 for seen in answers) or failures, "every client to be served")
        place(exports[2], base, 2)
        wait_until(lambda: server.state("swap", 1) == "END" or failures, "version 1 to be unloaded")
        counts = [len(seen) for seen in answers]
        wait_until(
            lambda: all(len(s) >= c + 5 for s, c in zip(answers, counts, strict=True)) or failures,
            "more answers",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
    assert not failures, failures[:3]
    for seen in answers:
        assert set(seen) == {1, 2}
        assert seen == sorted(seen)  # each client moves from 1 to 2 once and never back
    assert server.state_changes("swap")[-2:] == [(1, "UNLOADING"), (1, "END")]


def test_corrupt_version_ends_with_an_error_and_the_old_one_keeps_serving(
    server: ModelServer, exports: dict[Any, Path]
) -> None:
    base = new_model(server, exports, "corrupt", 1)
    server.reload(server.configure("corrupt", base))
    place(exports[2], base, 2, corrupt=True)
    wait_until(lambda: server.state("corrupt", 2) == "END", "the corrupt version to fail")
    _, code, message = server.status("corrupt")[2]
    assert code == grpc.StatusCode.DATA_LOSS.value[0] and "as binary proto" in message
    assert server.state("corrupt", 1) == "AVAILABLE"
    assert server.recommend("corrupt") == 1
    assert server.error(lambda: server.recommend("corrupt", version=2)).code() == grpc.StatusCode.NOT_FOUND

    broken = new_model(server, exports, "broken")
    place(exports[1], broken, 1, corrupt=True)
    error = server.error(lambda: server.reload(server.configure("broken", broken)))
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert "1 model(s) did not become available: {{name: broken version: 1} due to error" in error.details()
    assert server.recommend("corrupt") == 1


def test_a_version_whose_warmup_fails_is_never_available(
    server: ModelServer, exports: dict[Any, Path]
) -> None:
    base = new_model(server, exports, "warm", 1)
    server.reload(server.configure("warm", base))
    assert (
        f"{base}/1/assets.extra/tf_serving_warmup_requests. Number of warmup records read: 1" in server.log()
    )
    place(exports["bad-warmup"], base, 2)
    seen: set[str] = set()

    def ended() -> bool:
        seen.add(server.state("warm", 2) or "unknown")
        return "END" in seen

    wait_until(ended, "the version with the bad warmup to fail")
    assert "AVAILABLE" not in seen
    assert [s for v, s in server.state_changes("warm") if v == 2] == ["START", "LOADING", "END"]
    _, code, message = server.status("warm")[2]
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "int32" in message
    assert server.recommend("warm") == 1


def test_restart_serves_what_is_on_disk(tmp_path: Path, exports: dict[Any, Path]) -> None:
    base = tmp_path / "rec"
    base.mkdir()
    server = ModelServer(base, tmp_path / "server.log")
    try:
        server.start()
        server.wait_healthy()  # nothing to serve yet: up anyway, the model has no versions
        assert server.status("rec") == {}
        place(exports[1], base, 1)
        wait_until(lambda: server.state("rec", 1) == "AVAILABLE", "version 1 to be picked up")
        assert server.recommend("rec") == 1
        assert server.stop() == 0
        assert "stopped" in server.log().splitlines()[-1]

        place(exports[2], base, 2)
        place(exports[3], base, 3)
        server.start()
        server.wait_healthy()
        assert server.recommend("rec") == 3  # loaded before the server answered
        assert server.status("rec") == {3: ("AVAILABLE", 0, "")}
        assert server.stop(signal.SIGINT) == 0

        shutil.rmtree(base / "2")
        place(exports[2], base, 4, corrupt=True)
        server.start()
        exit_code = server.proc.wait(timeout=START_TIMEOUT_S)  # a failing latest version stops the start
        assert exit_code == 1
        assert "did not become available" in server.log()
    finally:
        server.kill()


def test_config_file_mode_like_the_production_deployment(tmp_path: Path, exports: dict[Any, Path]) -> None:
    """deploy/compose runs TF Serving on a config file that starts empty and is re-read every poll."""
    config_file = tmp_path / "models.config"
    config_file.write_text("model_config_list {}\n")
    base = tmp_path / "rec"
    base.mkdir()
    place(exports[1], base, 1)
    place(exports[2], base, 2)
    server = ModelServer(base, tmp_path / "server.log", config_file=config_file)
    try:
        server.start()
        server.wait_healthy()
        assert server.error(lambda: server.recommend("rec")).code() == grpc.StatusCode.NOT_FOUND
        config = model_server_config_pb2.ModelServerConfig()
        entry = config.model_config_list.config.add(
            name="rec", base_path=str(base), model_platform="tensorflow"
        )
        entry.model_version_policy.specific.versions.extend([1, 2])
        entry.version_labels.update({"stable": 2, "previous": 1})  # allowed before they load (flag)
        config_file.write_text(text_format.MessageToString(config))
        wait_until(lambda: server.state("rec", 1) == "AVAILABLE", "the file's config to load")
        wait_until(lambda: server.state("rec", 2) == "AVAILABLE", "version 2")
        assert server.recommend("rec", label="stable") == 2
        assert server.recommend("rec", label="previous") == 1

        pushed = model_server_config_pb2.ModelConfig()
        pushed.CopyFrom(entry)
        pushed.version_labels.update({"stable": 1, "previous": 2})
        server.reload(pushed)  # pushed over gRPC only: the next poll of the file undoes it
        wait_until(lambda: server.recommend("rec", label="stable") == 2, "the file's labels to come back")
        assert server.stop() == 0
    finally:
        server.kill()


@pytest.mark.parametrize("when", ["initial load", "new version"])
def test_sigterm_during_a_long_load_does_not_wait_for_it(
    tmp_path: Path, exports: dict[Any, Path], when: str
) -> None:
    base = tmp_path / "rec"
    base.mkdir()
    spinning = build_spinning_model(tmp_path / "spinning", "rec")  # its warmup never ends
    version = 1 if when == "initial load" else 2
    if when == "new version":
        place(exports[1], base, 1)
    else:
        place(spinning, base, 1)
    server = ModelServer(base, tmp_path / "server.log")
    try:
        server.start()
        if when == "new version":
            server.wait_healthy()
            place(spinning, base, 2)
        wait_until(lambda: (version, "LOADING") in server.state_changes("rec"), "the load to start")
        time.sleep(1.0)  # into its warmup
        stopping = time.monotonic()
        assert server.stop() == 0  # within stop()'s 20 s, not after the load
        assert time.monotonic() - stopping < 15
        log = server.log()
        assert f"without waiting for the load or unload of rec version {version} (LOADING)" in log
        assert ("stopped during the initial load" in log) == (when == "initial load")
    finally:
        server.kill()


def test_host_sets_the_address_both_apis_listen_on(tmp_path: Path) -> None:
    base = tmp_path / "rec"
    base.mkdir()
    server = ModelServer(base, tmp_path / "server.log", host="127.0.0.2")
    try:
        server.start()
        server.wait_healthy()  # REST on 127.0.0.2
        assert server.status("rec") == {}  # gRPC on 127.0.0.2
        assert not rest_healthy(f"127.0.0.1:{server.rest_port}", "rec", timeout=1.0)
        assert not grpc_healthy(f"127.0.0.1:{server.grpc_port}", "rec", timeout=1.0)
        assert server.stop() == 0
    finally:
        server.kill()
