"""The supervisor's restart policy and stop, with real child processes; status figures from metrics."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from deploy import observe
from deploy.processes import free_port, pid_alive
from deploy.supervisor import Supervisor, read_state
from stream.settings import load_settings


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
