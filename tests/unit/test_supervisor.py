"""The supervisor's restart policy, ports and stop, with real child processes; status figures from metrics."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from port_helpers import held_port

from recstream.deploy import cli
from recstream.deploy.console import observe
from recstream.deploy.local.processes import StackError, free_port, pid_alive
from recstream.deploy.local.supervisor import (
    METRICS_PORT,
    SERVICE_PORTS,
    SERVICES,
    Supervisor,
    last_error,
    read_state,
    service_ports,
)
from recstream.stream.settings import ENV_NAMES, FIELDS, load_settings


def _settings(home: Path):
    return dataclasses.replace(
        load_settings({"RECSTREAM_HOME": str(home)}, environ={}), ingest_metrics_port=0
    )


def test_a_crashing_service_is_restarted_with_growing_backoff(tmp_path: Path) -> None:
    # No broker is configured in this home: `recstream ingest` exits at once with an error.
    supervisor = Supervisor(_settings(tmp_path), ("ingest",), stable_after_s=60, max_backoff_s=2)
    supervisor.start()
    service = supervisor.services[0]
    delays = []
    deadline = time.monotonic() + 60
    while service.restarts < 3 and time.monotonic() < deadline:
        for event in supervisor.poll():
            delays.append(float(event.rsplit(" in ", 1)[1].rstrip("s")))
        time.sleep(0.05)
    assert service.restarts == 3 and service.exits[:3] == [1, 1, 1]
    assert delays[:3] == [1.0, 2.0, 2.0]  # doubled, capped
    state = json.loads((tmp_path / "run" / "services.json").read_text())
    assert state["services"]["ingest"]["restarts"] == 3 and read_state(tmp_path)  # this process supervises
    assert "KAFKA_BOOTSTRAP" in (tmp_path / "logs" / "ingest.log").read_text()
    supervisor.stop()
    assert not (tmp_path / "run" / "services.json").exists()


def test_stop_ends_every_running_service(tmp_path: Path) -> None:
    # `recstream modelserver` serves until it is signalled.
    env = {"TF_SERVING_GRPC": f"127.0.0.1:{free_port()}", "TF_SERVING_REST": f"127.0.0.1:{free_port()}"}
    supervisor = Supervisor(_settings(tmp_path), ("modelserver",), env, grace_s=20)
    supervisor.start()
    pid = supervisor.services[0].proc.pid
    time.sleep(2)
    assert supervisor.poll() == [] and pid_alive(pid)
    supervisor.stop()
    assert not pid_alive(pid)


def test_figures_from_metrics_pages() -> None:
    page = "\n".join(
        [
            'recstream_scorer_latency_seconds_bucket{le="0.05"} 90.0',
            'recstream_scorer_latency_seconds_bucket{le="0.1"} 99.0',
            'recstream_scorer_latency_seconds_bucket{le="0.25"} 100.0',
            'recstream_scorer_latency_seconds_bucket{le="+Inf"} 100.0',
        ]
    )
    samples = observe.parse_metrics(page + "\n")
    assert observe.histogram_quantile(samples, "recstream_scorer_latency_seconds", 0.99) == 0.1
    assert observe.histogram_quantile(samples, "recstream_scorer_latency_seconds", 0.5) == 0.05
    before = observe.Snapshot(at=10.0, events_in=100, requests=50)
    after = observe.Snapshot(at=12.0, events_in=500, requests=10)  # the scorer restarted
    assert observe.rates(before, after) == {
        "events_per_s": 200.0,
        "ingested_per_s": 0.0,
        "requests_per_s": 0.0,
    }
    after.versions = {"1": {"status": "previous", "hr@10": 0.2}, "2": {"status": "active", "hr@10": 0.25}}
    after.active_version = 2
    shown = observe.figures(after, observe.rates(before, after))
    assert shown["models"].startswith("active v2 (HR@10 0.250)") and "previous 1" in shown["models"]


def _wait_exit(supervisor: Supervisor, restarts: int = 0) -> list[str]:
    events: list[str] = []
    deadline = time.monotonic() + 60
    service = supervisor.services[0]
    while len(service.exits) <= restarts and time.monotonic() < deadline:
        events += supervisor.poll()
        time.sleep(0.05)
    assert len(service.exits) > restarts, "the service did not exit"
    return events


def test_every_port_setting_of_a_service_is_in_the_port_table() -> None:
    # A new <SERVICE>_..._PORT setting (say the scorer's web view) must be chosen free under `up`.
    for name in SERVICES:
        declared = {f.env for f in FIELDS if f.env.startswith(f"{name.upper()}_") and f.env.endswith("_PORT")}
        assert declared <= set(SERVICE_PORTS[name]), name
        assert set(service_ports(name)) == declared


def test_unpinned_ports_are_chosen_free_and_distinct_not_the_defaults(tmp_path: Path, monkeypatch) -> None:
    # The defaults (9401-9404) are what another stack on this machine would take first.
    for env in METRICS_PORT.values():
        monkeypatch.delenv(env, raising=False)
    settings = load_settings({"RECSTREAM_HOME": str(tmp_path)}, environ={})
    assert settings.ingest_metrics_port == 9401
    supervisor = Supervisor(settings)
    ports = [port for s in supervisor.services for port in s.ports.values()]
    assert len(ports) == len(set(ports)) >= len(SERVICES)
    assert not {9401, 9402, 9403, 9404} & set(ports)
    for service in supervisor.services:
        port = service.ports[METRICS_PORT[service.name]]
        assert service.env[METRICS_PORT[service.name]] == str(port) and service.metrics == f"127.0.0.1:{port}"
    assert supervisor.pinned == {}


def test_a_pinned_port_that_is_taken_or_pinned_twice_is_one_line(tmp_path: Path) -> None:
    with held_port() as port, pytest.raises(StackError) as taken:
        Supervisor(_settings(tmp_path), env={"UPDATER_METRICS_PORT": str(port)})
    assert f"UPDATER_METRICS_PORT {port} is taken" in str(taken.value) and "\n" not in str(taken.value)
    free = free_port()
    with pytest.raises(StackError, match=f"SCORER_METRICS_PORT and INGEST_METRICS_PORT are both {free}"):
        Supervisor(
            _settings(tmp_path), env={"INGEST_METRICS_PORT": str(free), "SCORER_METRICS_PORT": str(free)}
        )
    pinned = Supervisor(_settings(tmp_path), ("ingest",), env={"INGEST_METRICS_PORT": str(free)})
    assert pinned.services[0].ports == {"INGEST_METRICS_PORT": free}
    assert not (tmp_path / "logs").exists()  # nothing was started


def test_up_checks_the_pinned_ports_of_services_and_infrastructure_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A service port and a part's port pinned to one free port: each half alone would pass."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    monkeypatch.setenv("RECSTREAM_HOME", str(tmp_path))
    monkeypatch.setenv("BROKER_PORT", str(port))
    monkeypatch.setenv("INGEST_METRICS_PORT", str(port))
    assert cli.main(["up"]) != 0
    error = capsys.readouterr().err.strip()
    assert f"INGEST_METRICS_PORT and BROKER_PORT are both {port}" in error and "\n" not in error, error
    assert not (tmp_path / "logs").exists() and not (tmp_path / "run" / "stack.json").exists()


def test_a_failing_service_shows_its_last_error_in_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No broker is configured in this home: `recstream ingest` fails at start, every time.
    supervisor = Supervisor(_settings(tmp_path), ("ingest",), stable_after_s=60, max_backoff_s=1)
    supervisor.start()
    try:
        events = _wait_exit(supervisor)
        assert "KAFKA_BOOTSTRAP" in events[0] and events[0].startswith("ingest exited (exit 1: recstream: ")
        for name in ENV_NAMES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("RECSTREAM_HOME", str(tmp_path))
        assert cli.main(["status", "--json"]) == 1  # no stack in this home
        ingest = json.loads(capsys.readouterr().out)["services"]["ingest"]
        assert ingest["last_error"].startswith("exit 1: recstream: KAFKA_BOOTSTRAP is not set"), ingest
        assert ingest["ports"] == supervisor.services[0].ports
        cli.main(["status"])
        assert "last error: exit 1: recstream: KAFKA_BOOTSTRAP is not set" in capsys.readouterr().out
    finally:
        supervisor.stop()


def test_an_unpinned_port_taken_while_its_service_was_down_is_replaced(tmp_path: Path) -> None:
    supervisor = Supervisor(_settings(tmp_path), ("ingest",), stable_after_s=60, max_backoff_s=1)
    supervisor.start()
    service = supervisor.services[0]
    old = service.ports["INGEST_METRICS_PORT"]
    try:
        _wait_exit(supervisor)
        with held_port(old):  # another program takes the port during the backoff
            deadline = time.monotonic() + 30
            while service.restarts < 1 and time.monotonic() < deadline:
                supervisor.poll()
                time.sleep(0.05)
            new = service.ports["INGEST_METRICS_PORT"]
            assert service.restarts == 1 and new != old and service.env["INGEST_METRICS_PORT"] == str(new)
        state = read_state(tmp_path)["services"]["ingest"]
        assert state["ports"] == {"INGEST_METRICS_PORT": new} and state["metrics"] == f"127.0.0.1:{new}"
        targets = json.loads((tmp_path / "prometheus" / "targets.json").read_text())
        assert targets == [
            {"targets": [f"127.0.0.1:{new}"], "labels": {"job": "ingest", "recstream_home": str(tmp_path)}}
        ]
    finally:
        supervisor.stop()
    assert json.loads((tmp_path / "prometheus" / "targets.json").read_text()) == []


def test_last_error_prefers_the_cli_line_of_the_latest_run(tmp_path: Path) -> None:
    log = tmp_path / "ingest.log"
    log.write_text(
        "\n--- 2026-01-01 00:00:00 start ingest\nrecstream: old failure\n"
        "\n--- 2026-01-01 00:00:05 start ingest\nINFO starting\n"
        "recstream: cannot serve /metrics on 127.0.0.1:9401: Address already in use\nINFO shutting down\n"
    )
    assert (
        last_error(log, "ingest")
        == "recstream: cannot serve /metrics on 127.0.0.1:9401: Address already in use"
    )
    log.write_text(
        "\n--- 2026-01-01 00:00:05 start ingest\nTraceback (most recent call last):\n  x\nOSError: boom\n"
    )
    assert last_error(log, "ingest") == "OSError: boom"
    assert last_error(tmp_path / "missing.log", "ingest") == ""


def test_workers_settings_start_that_many_workers_each_with_its_own_ports_and_data_dir(
    tmp_path: Path,
) -> None:
    settings = dataclasses.replace(_settings(tmp_path), ingest_workers=2, scorer_workers=3)
    pinned = free_port()
    supervisor = Supervisor(settings, env={"SCORER_HTTP_PORT": str(pinned)})
    by_name = {s.name: s for s in supervisor.services}
    assert list(by_name) == [
        "ingest-1",
        "ingest-2",
        "updater",
        "scheduler",
        "scorer-1",
        "scorer-2",
        "scorer-3",
    ]
    assert {s.service for s in supervisor.services if s.name.startswith("scorer")} == {"scorer"}
    assert [by_name[f"scorer-{i}"].env.get("WORKER_NAME") for i in (1, 2, 3)] == [
        "scorer-1",
        "scorer-2",
        "scorer-3",
    ]
    assert "WORKER_NAME" not in by_name["updater"].env  # a service of one worker keeps its plain data dir
    ports = [port for s in supervisor.services for port in s.ports.values()]
    assert len(ports) == len(set(ports))  # every worker its own metrics and HTTP port
    assert by_name["scorer-1"].ports["SCORER_HTTP_PORT"] == pinned  # a pinned port goes to the first
    assert by_name["ingest-2"].log_path.name == "ingest-2.log"
    supervisor._save()
    state = json.loads((tmp_path / "run" / "services.json").read_text())["services"]
    assert state["ingest-2"]["service"] == "ingest" and state["scorer-1"]["pinned"] == ["SCORER_HTTP_PORT"]
    assert state["scorer-2"]["pinned"] == []
    targets = json.loads((tmp_path / "prometheus" / "targets.json").read_text())
    assert {(t["labels"]["job"], t["labels"].get("worker")) for t in targets} >= {("ingest", "ingest-2")}


def test_status_shows_each_worker_with_its_partitions_and_lag_and_sums_the_service() -> None:
    one = observe.parse_metrics(
        'recstream_ingest_events_total{result="valid"} 10.0\n'
        'recstream_worker_partition_lag{topic="transactions",partition="0"} 3.0\n'
        'recstream_worker_partition_lag{topic="transactions",partition="1"} NaN\n'
    )
    two = observe.parse_metrics(
        'recstream_ingest_events_total{result="valid"} 5.0\n'
        'recstream_worker_partition_lag{topic="transactions",partition="2"} 0.0\n'
    )
    merged = observe.merge([one, two])
    assert observe.total(merged, "recstream_ingest_events_total") == 15.0
    assert observe.partitions(one) == {0: 3.0, 1: None} and observe.partitions(two) == {2: 0.0}
    snap = observe.Snapshot(at=1.0)
    snap.services = {"ingest": {"pid": 1, "restarts": 0, "metrics": True, "workers": 2}}
    snap.workers = {
        "ingest-1": {"service": "ingest", "pid": 1, "metrics": True, "partitions": observe.partitions(one)},
        "ingest-2": {"service": "ingest", "pid": 2, "metrics": True, "partitions": observe.partitions(two)},
    }
    shown = observe.figures(snap)
    assert shown["services"] == "ingest up x2"
    assert shown["workers"] == "ingest-1 p0 lag 3, p1 lag ?; ingest-2 p2 lag 0"
