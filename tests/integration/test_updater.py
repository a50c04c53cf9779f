"""The model updater on the real stack: registry in the object store, `model-updates` on the broker,
TF-Serving-compatible model servers reloaded over gRPC.

Versions are the tiny SavedModels of tests/saved_models.py (each answers with its own
number), uploaded and announced `published` the way the retrain job does. Each test
uses its own model name and topic; the session's model server is shared, so the
updater must keep other models' entries in its config file.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from control_helpers import ModelUpdates, wait_until
from kafka_helpers import create_topic
from modelserver_helpers import Servers
from prometheus_client import REGISTRY
from saved_models import build_version, corrupt, recommend_request
from tensorflow_serving.apis import prediction_service_pb2_grpc

from recstream.deploy.local.processes import free_port
from recstream.deploy.local.stack import EMPTY_MODEL_CONFIG
from recstream.stream.contracts.model_events import ACTIVATED, PUBLISHED, REJECTED, ROLLED_BACK, ModelEvent
from recstream.stream.producer import EventProducer
from recstream.stream.registry import ModelRegistry
from recstream.stream.settings import Settings
from recstream.stream.storage import make_client
from recstream.updater.core import Options, Updater, desired_entry
from recstream.updater.errors import NothingToRollBack, RollbackError, Unavailable, UnknownVersion
from recstream.updater.rollback import rollback
from recstream.updater.service import UpdaterService
from recstream.updater.serving import ConfigFile, Target
from recstream.updater.staging import VersionDirs
from recstream.updater.swap import Fleet

pytestmark = pytest.mark.integration


# -- helpers -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Path]:
    root = tmp_path_factory.mktemp("updater-exports")
    built: dict[Any, Path] = {v: build_version(root / f"v{v}", v) for v in (1, 2, 3, 5)}
    built["corrupt-3"] = corrupt(build_version(root / "corrupt-3", 3))
    built["no-score-4"] = build_version(root / "no-score-4", 4, flaw="no-score")
    return built


def model_settings(settings: Settings, **changes: Any) -> Settings:
    name = f"upd-{uuid.uuid4().hex[:8]}"
    topic = create_topic(settings.kafka_bootstrap, f"model-updates-{name}", partitions=1)
    return dataclasses.replace(
        settings, model_name=name, model_updates_topic=topic, updater_metrics_port=0, **changes
    )


def publish(registry: ModelRegistry, producer: EventProducer, topic: str, export: Path, version: int) -> None:
    registry.upload_version(export, version)
    registry.announce(ModelEvent(PUBLISHED, registry.model, version, {"hr@10": 0.1}), producer, topic)


def answer(endpoint: str, model: str, label: str | None = None) -> int:
    """Ask the model server; returns the version that answered, asserting the answer is all its own."""
    with grpc.insecure_channel(endpoint) as channel:
        return served(prediction_service_pb2_grpc.PredictionServiceStub(channel), model, label)


def served(stub: Any, model: str, label: str | None = "stable") -> int:
    request = recommend_request(["u1", "u2"], np.int32(3), model)
    if label:
        request.model_spec.version_label = label
    response = stub.Predict(request, timeout=10)
    version = response.model_spec.version.value
    outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    assert int(outputs["model_version"]) == version
    assert all(item.decode().split("-v")[1].startswith(f"{version}-") for item in outputs["items"].ravel())
    np.testing.assert_allclose(outputs["scores"][0], version + 0.1 * np.arange(3), rtol=1e-6)
    return version


class Running:
    """The updater service in a thread of the test process, as `recstream updater` runs it."""

    def __init__(self, settings: Settings, group: str) -> None:
        self.stop = threading.Event()
        self.service = UpdaterService(settings, group_id=group)
        self.thread = threading.Thread(target=self.service.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- the service on the session's model server -------------------------------------------------------
def test_activate_swap_rollback_reject_and_restart(settings: Settings, exports: dict[Any, Path]) -> None:
    s = model_settings(settings)
    model, endpoint, topic = s.model_name, s.tf_serving_grpc, s.model_updates_topic
    registry = ModelRegistry(make_client(s), s.models_bucket, model)
    config = ConfigFile(s.model_config_file)
    dirs = VersionDirs(s.model_base_path / model)
    others_before = config.read().model_config_list.config  # other tests' models stay untouched
    events = ModelUpdates(s)
    group = f"updater-{model}"
    running = Running(s, group)
    try:
        with EventProducer(s) as producer:
            # First version: only `stable`.
            publish(registry, producer, topic, exports[1], 1)
            activated = events.wait(ACTIVATED, 1)
            assert (
                activated.metrics["hr@10"] == pytest.approx(0.1)
                and activated.metrics["canary_latency_ms"] > 0
            )
            assert answer(endpoint, model, "stable") == 1
            assert config.entry(model) == desired_entry(1, None)
            assert dirs.on_disk() == {1}

            # Second version under load: no request fails, each answer is one version's.
            stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(endpoint))
            answers: list[list[int]] = [[] for _ in range(3)]
            failures: list[BaseException] = []
            stop_clients = threading.Event()

            def client(seen: list[int]) -> None:
                while not stop_clients.is_set():
                    try:
                        seen.append(served(stub, model))
                    except BaseException as exc:
                        failures.append(exc)
                        return

            clients = [threading.Thread(target=client, args=(seen,)) for seen in answers]
            for thread in clients:
                thread.start()
            try:
                wait_until(lambda: all(len(a) >= 3 for a in answers) or failures, "clients to be served")
                publish(registry, producer, topic, exports[2], 2)
                events.wait(ACTIVATED, 2)
                counts = [len(a) for a in answers]
                wait_until(
                    lambda: all(len(a) >= c + 3 for a, c in zip(answers, counts, strict=True)) or failures,
                    "answers after the swap",
                )
            finally:
                stop_clients.set()
                for thread in clients:
                    thread.join(timeout=20)
            assert not failures, failures[:3]
            for seen in answers:
                assert set(seen) == {1, 2} and seen == sorted(seen)  # from 1 to 2 once, never back
            assert (answer(endpoint, model, "stable"), answer(endpoint, model, "previous")) == (2, 1)
            assert config.entry(model) == desired_entry(2, 1) and dirs.on_disk() == {1, 2}

            # Rollback: `stable` is version 1 for the very next request.
            with pytest.raises(UnknownVersion, match=f"model {model} has no version 99"):
                rollback(s, to=99)
            event = rollback(s)
            assert (event.event, event.version, event.to) == (ROLLED_BACK, 2, 1)
            assert answer(endpoint, model, "stable") == 1
            events.wait(ROLLED_BACK, 2)
            assert registry.state().active == 1
            with pytest.raises(NothingToRollBack, match="no previous version"):
                rollback(s)

            # Broken versions are rejected with their reason; version 1 keeps serving, nothing changes.
            entry = config.entry(model)
            publish(registry, producer, topic, exports["corrupt-3"], 3)
            rejected = events.wait(REJECTED, 3)
            assert rejected.reason.startswith("validation: does not load: ")
            publish(registry, producer, topic, exports["no-score-4"], 4)
            assert events.wait(REJECTED, 4).reason == "validation: missing signature(s) score"
            assert answer(endpoint, model, "stable") == 1
            assert config.entry(model) == entry and dirs.on_disk() == {1}
            with pytest.raises(UnknownVersion, match="was never activated \\(rejected\\)"):
                rollback(s, to=3)
            assert metric("recstream_updater_rejections_total", model=model, reason="validation") == 2

            # A restart of the updater: a version published while it was down is activated, once.
            running.close()
            publish(registry, producer, topic, exports[5], 5)
            running = Running(s, group)
            events.wait(ACTIVATED, 5)
            assert (answer(endpoint, model, "stable"), answer(endpoint, model, "previous")) == (5, 1)

            # Rollback to an older version that left the disk: staged again from the bucket.
            event = rollback(s, to=2)
            assert (event.version, event.to) == (5, 2)
            assert answer(endpoint, model, "stable") == 2 and dirs.on_disk() == {2}
            events.wait(ROLLED_BACK, 5)
        running.close()
        written = [(e, v) for e, v in events.settle() if e != PUBLISHED]
        assert written == [
            (ACTIVATED, 1),
            (ACTIVATED, 2),
            (ROLLED_BACK, 2),
            (REJECTED, 3),
            (REJECTED, 4),
            (ACTIVATED, 5),
            (ROLLED_BACK, 5),
        ]
        state = registry.state()
        assert (state.active, state.previous) == (2, None)
        others_after = [m for m in config.read().model_config_list.config if m.name != model]
        assert [m.name for m in others_after] == [m.name for m in others_before]
    finally:
        running.close()
        events.close()


def test_rollback_with_nothing_active(settings: Settings) -> None:
    s = model_settings(settings)
    with pytest.raises(NothingToRollBack, match="has no active version"):
        rollback(s)
    with pytest.raises(RollbackError):
        rollback(s, to=1)


# -- replicas and a model server that loses everything -----------------------------------------------
@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    root = tmp_path / "serving"
    root.mkdir()
    servers = Servers(root, f"upd-{uuid.uuid4().hex[:8]}")
    try:
        yield servers
    finally:
        servers.kill_all()


def test_replicas_a_failing_replica_and_a_server_that_lost_everything(
    settings: Settings, servers: Servers, exports: dict[Any, Path]
) -> None:
    a, b = servers.start(2)
    s = dataclasses.replace(
        model_settings(settings), model_name=servers.model, model_base_path_setting=str(servers.root)
    )
    model = s.model_name
    registry = ModelRegistry(make_client(s), s.models_bucket, model)
    options = Options.from_settings(
        dataclasses.replace(s, tf_serving_targets=f"{a},{b}", updater_load_timeout_s=60)
    )
    with EventProducer(s) as producer:
        for version in (1, 2):
            publish(registry, producer, s.model_updates_topic, exports[version], version)
        updater = Updater(s, options, producer=producer)
        try:
            events = updater.reconcile()  # the versions nobody processed yet, in order
        finally:
            updater.close()
        assert [(e.event, e.version) for e in events] == [(ACTIVATED, 1), (ACTIVATED, 2)]
        for endpoint in (a, b):
            assert (answer(endpoint, model, "stable"), answer(endpoint, model, "previous")) == (2, 1)

        # Version 3 loads on both replicas, then a third one does not answer: all go back.
        config = ConfigFile(servers.config)
        dirs = VersionDirs(servers.root / model)
        dirs.stage(3, lambda dest: shutil.copytree(exports[3], dest))
        dead = Target(f"127.0.0.1:{free_port()}")
        targets = [Target(a), Target(b), dead]
        fleet = Fleet(model, dirs.root, config, targets, load_timeout_s=60)
        with pytest.raises(Unavailable, match="is unavailable"):
            fleet.converge(desired_entry(3, 2), stable=3)
        assert config.entry(model) == desired_entry(2, 1)
        for target in targets[:2]:
            assert answer(target.endpoint, model, "stable") == 2
            wait_until(lambda t=target: t.state(model, 3)[0] == "END", "version 3 to be unloaded")
            target.close()

        # Both servers die and come back with an empty volume: reconcile serves the registry's
        # active version again, then activates the version still waiting (3) on the new server.
        publish(registry, producer, s.model_updates_topic, exports[3], 3)
        servers.kill_all()
        shutil.rmtree(dirs.root)
        servers.config.write_text(EMPTY_MODEL_CONFIG)
        (c,) = servers.start(1)
        restores = metric("recstream_updater_restores_total", model=model)
        replica = dataclasses.replace(s, tf_serving_targets=c, updater_load_timeout_s=60)
        updater = Updater(s, Options.from_settings(replica), producer=producer)
        try:
            events = updater.reconcile()
            assert [(e.event, e.version) for e in events] == [(ACTIVATED, 3)]
            assert metric("recstream_updater_restores_total", model=model) == restores + 1
            assert (answer(c, model, "stable"), answer(c, model, "previous")) == (3, 2)
            assert updater.reconcile() == []  # nothing left to do, nothing done twice
        finally:
            updater.close()
        assert dirs.on_disk() == {2, 3}
