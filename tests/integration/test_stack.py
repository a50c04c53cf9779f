"""`up` / `down` / `status` of a second, independent home: reuse, clean stop, one-line failures."""

from __future__ import annotations

import pytest

from recstream.deploy.local.processes import StackError, pid_alive
from recstream.deploy.local.stack import Stack
from recstream.deploy.modelserver import rest_healthy
from recstream.stream.net import split_hostport
from recstream.stream.settings import Settings, load_settings, read_env_file
from recstream.stream.topics import existing_topics

pytestmark = pytest.mark.integration


def _stack(home, **env: str) -> Stack:
    return Stack(load_settings({"RECSTREAM_HOME": str(home), **env}, environ={}, use_stack_env=False))


def test_up_reuses_a_running_stack_and_down_leaves_no_process(tmp_path) -> None:
    stack = _stack(tmp_path)
    try:
        settings = stack.up()
        first = {p.name: p for p in stack.status()}
        assert all(p.healthy and p.managed for p in first.values())
        env = read_env_file(tmp_path / "stack.env")
        assert env["KAFKA_BOOTSTRAP"] == settings.kafka_bootstrap == first["broker"].endpoint
        assert env["MINIO_ENDPOINT"] == settings.minio_endpoint == first["objectstore"].endpoint
        assert env["TF_SERVING_GRPC"] == settings.tf_serving_grpc == first["modelserver"].endpoint
        # Requests and answers have a broker of their own (memory engine); everything else the main one.
        requests = env["REQUESTS_KAFKA_BOOTSTRAP"]
        assert requests == settings.requests_kafka_bootstrap == first["request-broker"].endpoint
        assert requests != settings.kafka_bootstrap
        ephemeral = {settings.requests_topic, settings.recommendations_topic}
        assert ephemeral <= existing_topics(requests)
        assert not ephemeral & existing_topics(settings.kafka_bootstrap)
        assert settings.transactions_topic in existing_topics(settings.kafka_bootstrap)
        assert rest_healthy(env["TF_SERVING_REST"], settings.model_name)
        # The model server starts on an empty config file that the updater will fill.
        assert settings.model_config_file.read_text().strip() == "model_config_list {}"
        assert {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_SECURE", "MODEL_BASE_PATH"} <= set(env)
        for name in (
            "KAFKA_BOOTSTRAP",
            "REQUESTS_KAFKA_BOOTSTRAP",
            "MINIO_ENDPOINT",
            "TF_SERVING_GRPC",
            "TF_SERVING_REST",
        ):
            assert split_hostport(env[name])[0] == "127.0.0.1"

        _stack(tmp_path).up()  # a second `up` from another process's point of view

        second = {p.name: p for p in stack.status()}
        assert {n: p.pid for n, p in second.items()} == {n: p.pid for n, p in first.items()}
    finally:
        stopped = stack.down()
    assert sorted(stopped) == ["broker", "modelserver", "objectstore", "request-broker"]
    assert not any(pid_alive(p.pid) for p in first.values())
    assert not (tmp_path / "stack.env").exists()
    assert all(not p.healthy and p.pid is None for p in stack.status())


def test_taken_port_is_a_one_line_error_and_nothing_is_left_running(tmp_path, settings: Settings) -> None:
    taken = split_hostport(settings.kafka_bootstrap)[1]  # the session broker holds it
    stack = _stack(tmp_path, BROKER_PORT=str(taken))
    with pytest.raises(StackError) as error:
        stack.up()
    message = str(error.value)
    assert "\n" not in message and f"BROKER_PORT {taken} is taken" in message
    assert stack.down() == []  # the object store this `up` had started was stopped already
    assert all(p.pid is None for p in stack.status())


def test_configured_endpoint_replaces_and_stops_an_embedded_part(tmp_path, settings: Settings) -> None:
    own = _stack(tmp_path)
    try:
        own.up()
        parts = {p.name: p for p in own.status()}
        # The same home, now configured to use the session's broker instead of its own.
        _stack(tmp_path, KAFKA_BOOTSTRAP=settings.kafka_bootstrap).up()
        assert not pid_alive(parts["broker"].pid), (
            "the replaced embedded broker must be stopped, not orphaned"
        )
        # With a configured Kafka, requests live there too: the embedded request broker goes.
        assert not pid_alive(parts["request-broker"].pid)
        env = read_env_file(tmp_path / "stack.env")
        assert env["KAFKA_BOOTSTRAP"] == settings.kafka_bootstrap and "REQUESTS_KAFKA_BOOTSTRAP" not in env
    finally:
        own.down()
    assert all(p.pid is None for p in own.status())


def test_configured_endpoint_that_does_not_answer_is_refused(tmp_path) -> None:
    stack = _stack(tmp_path, MINIO_ENDPOINT="127.0.0.1:1")
    with pytest.raises(StackError, match=r"MINIO_ENDPOINT=127.0.0.1:1 is configured but does not answer"):
        stack.up()
    assert all(p.pid is None for p in stack.status())
