"""The model servers' side: the shared models.config file and each TF Serving target's gRPC API.

Rules both tensorflow/serving and deploy/modelserver impose (see deploy/modelserver):
HandleReloadConfigRequest replaces the WHOLE config, so every reload sends the file's
full content (all models, not only ours), each entry with `model_platform: "tensorflow"`
and an absolute base path; the server re-reads the file periodically and that replaces
anything pushed over gRPC, so the file is written (atomically) before every reload.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from recstream.stream import retry
from recstream.stream.contracts.signatures import PREVIOUS_LABEL, RECOMMEND, STABLE_LABEL
from recstream.updater.errors import SwapFailed, Unavailable, one_line
from recstream.updater.locks import file_lock
from recstream.updater.validate import SMOKE_K, SMOKE_USERS, Invalid, check_recommendations

log = logging.getLogger(__name__)

STABLE, PREVIOUS = STABLE_LABEL, PREVIOUS_LABEL  # the labels the scorer and operators follow
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE,)
STALE_STATE_S = 3.0  # how long an END seen before a reload may still be reported after it


@dataclass(frozen=True)
class Entry:
    """Our model's entry in models.config: which versions are loaded, which labels name which."""

    versions: frozenset[int]
    labels: Mapping[str, int] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Entry)
            and self.versions == other.versions
            and dict(self.labels) == dict(other.labels)
        )

    def __hash__(self) -> int:
        return hash((self.versions, tuple(sorted(self.labels.items()))))

    def describe(self) -> str:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"versions {sorted(self.versions)}" + (f", labels {labels}" if labels else "")


def entry_of(config: model_server_config_pb2.ModelServerConfig, name: str) -> Entry | None:
    for model in config.model_config_list.config:
        if model.name == name:
            policy = model.model_version_policy
            versions = (
                frozenset(policy.specific.versions)
                if policy.WhichOneof("policy_choice") == "specific"
                else frozenset()
            )
            return Entry(versions, dict(model.version_labels))
    return None


def with_entry(
    config: model_server_config_pb2.ModelServerConfig, name: str, base_path: Path, entry: Entry | None
) -> model_server_config_pb2.ModelServerConfig:
    """A copy of `config` with our model's entry replaced (None: removed); other models as they are."""
    result = model_server_config_pb2.ModelServerConfig()
    models = result.model_config_list  # set even when empty, as `model_config_list {}`
    models.SetInParent()
    replaced = False
    for model in config.model_config_list.config:
        if model.name != name:
            models.config.add().CopyFrom(model)
        elif entry is not None:
            models.config.add().CopyFrom(_model_config(name, base_path, entry))
            replaced = True
    if entry is not None and not replaced:
        models.config.add().CopyFrom(_model_config(name, base_path, entry))
    return result


def _model_config(name: str, base_path: Path, entry: Entry) -> model_server_config_pb2.ModelConfig:
    model = model_server_config_pb2.ModelConfig(
        name=name, base_path=str(Path(base_path).absolute()), model_platform="tensorflow"
    )
    model.model_version_policy.specific.versions.extend(sorted(entry.versions, reverse=True))
    for label, version in sorted(entry.labels.items()):
        model.version_labels[label] = version
    return model


class ConfigFile:
    """models.config, shared by every model (and every updater) a model server serves.

    Each read-modify-write holds a lock file beside it, so updaters of different models
    sharing one server never lose each other's entries.
    """

    def __init__(self, path: Path, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_path = self.path.parent / ".locks" / f"{self.path.name}.lock"
        self.lock_timeout_s = lock_timeout_s

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with file_lock(self.lock_path, self.lock_timeout_s, f"the lock of {self.path}"):
            yield

    def read(self) -> model_server_config_pb2.ModelServerConfig:
        config = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(self.path.read_text(), config)
        except FileNotFoundError:
            config.model_config_list.SetInParent()
        return config

    def entry(self, name: str) -> Entry | None:
        return entry_of(self.read(), name)

    def set_entry(self, name: str, base_path: Path, entry: Entry | None) -> None:
        with self.locked():
            self._write(with_entry(self.read(), name, base_path, entry))

    def _write(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Atomically: a server polling the file never reads half of it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text_format.MessageToString(config) or "model_config_list {\n}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


class Target:
    """One TF Serving replica, reached over gRPC."""

    def __init__(self, endpoint: str, rpc_timeout_s: float = 30.0) -> None:
        self.endpoint = endpoint
        self.rpc_timeout_s = rpc_timeout_s
        self._channel = grpc.insecure_channel(endpoint)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def __repr__(self) -> str:
        return f"Target({self.endpoint})"

    def close(self) -> None:
        self._channel.close()

    def reload(self, config: model_server_config_pb2.ModelServerConfig, model: str, timeout_s: float) -> None:
        """HandleReloadConfigRequest; errors about other models in the file are only logged."""
        request = model_management_pb2.ReloadConfigRequest(config=config)
        try:
            response = self._models.HandleReloadConfigRequest(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            code, message = exc.code(), exc.details() or ""
        else:
            if response.status.error_code == 0:
                return
            code, message = _code(response.status.error_code), response.status.error_message
        if code in _UNREACHABLE:
            raise Unavailable(f"model server {self.endpoint} is unavailable: {one_line(message)}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise SwapFailed("load", f"{self.endpoint}: reload did not finish within {timeout_s:g}s")
        if "did not become available" in message and f"name: {model} " not in message:
            log.warning("reload on %s: another model failed to load: %s", self.endpoint, one_line(message))
            return
        kind = "load" if "did not become available" in message else "reload"
        raise SwapFailed(kind, f"{self.endpoint}: {code.name}: {message}")

    def state(self, model: str, version: int) -> tuple[str | None, str]:
        """(state name, or None if the server does not know the version; error, "" if none)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        request.model_spec.version.value = version
        try:
            response = self._models.GetModelStatus(request, timeout=self.rpc_timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None, ""
            raise self._error(exc, "GetModelStatus") from None
        for status in response.model_version_status:
            if status.version == version:
                state = get_model_status_pb2.ModelVersionStatus.State.Name(status.state)
                code = status.status.error_code
                error = f"{_code(code).name}: {status.status.error_message}" if code else ""
                return state, error
        return None, ""

    def wait_available(
        self, model: str, version: int, deadline: float, before: tuple[str | None, str] = (None, "")
    ) -> None:
        """Poll GetModelStatus until AVAILABLE; a version that ENDs with an error or is late fails.

        `before` is the state seen before the reload: tensorflow/serving starts loading
        asynchronously, so for a short while it can still report an earlier attempt's END.
        """
        started = time.monotonic()

        def available() -> bool:
            state, error = self.state(model, version)
            if state == "AVAILABLE":
                return True
            stale = (state, error) == before and time.monotonic() - started < STALE_STATE_S
            if state == "END" and error and not stale:
                raise SwapFailed("load", f"version {version} failed to load on {self.endpoint}: {error}")
            if time.monotonic() > deadline:
                raise SwapFailed(
                    "load", f"version {version} not AVAILABLE on {self.endpoint} in time (state {state})"
                )
            return False

        retry.poll(retry.MODEL_LOAD, available)

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        try:
            return self._predictions.Predict(request, timeout=self.rpc_timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc, "Predict") from None

    def stable_version(self, model: str) -> int | None:
        """The version answering through the `stable` label, or None if none answers correctly."""
        try:
            outputs = _outputs(self.predict(recommend_request(model, label=STABLE)))
            version = int(outputs["model_version"].ravel()[0])
            check_recommendations(outputs, version, len(SMOKE_USERS), SMOKE_K, what="stable")
        except (SwapFailed, Invalid, KeyError, IndexError):
            return None
        return version

    def canary(self, model: str, version: int, *, label: str | None, requests: int) -> float:
        """Predict through `label` (or the version itself); every answer must come from `version`,
        complete and finite. Returns the median latency in ms."""
        latencies = []
        where = f"label {label}" if label else f"version {version}"
        for _ in range(max(requests, 1)):
            request = recommend_request(model, label=label, version=None if label else version)
            started = time.perf_counter()
            try:
                response = self.predict(request)
            except SwapFailed as exc:
                raise SwapFailed("canary", f"{where} on {self.endpoint}: {exc.reason}") from None
            latencies.append((time.perf_counter() - started) * 1000)
            answered = response.model_spec.version.value
            try:
                if answered and answered != version:
                    raise Invalid(f"version {answered} answered, expected {version}")
                check_recommendations(_outputs(response), version, len(SMOKE_USERS), SMOKE_K, what=where)
            except Invalid as exc:
                raise SwapFailed("canary", f"{self.endpoint}: {exc.reason}") from None
        return statistics.median(latencies)

    def _error(self, exc: grpc.RpcError, call: str) -> Exception:
        if exc.code() in _UNREACHABLE:
            return Unavailable(
                f"model server {self.endpoint} is unavailable: {one_line(exc.details() or '')}"
            )
        return SwapFailed(
            "canary" if call == "Predict" else "reload", f"{call}: {exc.code().name}: {exc.details()}"
        )


def recommend_request(model: str, *, label: str | None = None, version: int | None = None) -> Any:
    import tensorflow as tf

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = RECOMMEND
    if label:
        request.model_spec.version_label = label
    elif version is not None:
        request.model_spec.version.value = version
    request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(list(SMOKE_USERS), dtype=tf.string))
    request.inputs["k"].CopyFrom(tf.make_tensor_proto(SMOKE_K, dtype=tf.int32))
    return request


def _outputs(response: predict_pb2.PredictResponse) -> dict[str, Any]:
    import tensorflow as tf

    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def _code(value: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)
