"""`recstream up --demo --for` from an empty home, as a user runs it (what `make run` does).

Empty stack -> seed purchases produced -> ingested -> retrained (RETRAIN_INTERVAL_S=60) ->
activated -> requests answered, none failing, through every swap; then everything stops and
the summary is written. The launch-of-new-products loop is test_closed_loop.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from deploy.processes import pid_alive
from retrain.registry import ModelRegistry
from stream.alerts import parse_drift_alert
from stream.settings import ENV_NAMES, load_settings
from stream.storage import make_client

pytestmark = pytest.mark.e2e

RUN_S = 180


def test_up_demo_turns_the_loop_and_stops_cleanly(tmp_path: Path, seed_file: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env |= {"RECSTREAM_HOME": str(home), "LOG_LEVEL": "INFO"}
    env |= {f"{name}_METRICS_PORT": "0" for name in ("INGEST", "SCORER", "UPDATER", "SCHEDULER")}
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stream.cli",
                "up",
                "--demo",
                "--for",
                str(RUN_S),
                "--seed",
                str(seed_file),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        code = proc.wait(timeout=RUN_S + 240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"up --demo did not end: {log.read_text()[-3000:]}")
    output = log.read_text()
    assert code == 0, output[-3000:]

    summary = json.loads((home / "demo-summary.json").read_text())
    assert summary["events_produced"] > 10_000
    assert 0.8 * summary["events_produced"] < summary["events_ingested"] <= summary["events_produced"]
    assert summary["versions_activated"] >= 1, summary
    assert summary["recommendations_served"] > 200 and summary["request_errors"] == 0, summary
    assert 0.05 < summary["hit_rate"] < 1

    # Everything it started is gone: services, broker, object store, model server.
    state = json.loads((home / "run" / "stack.json").read_text())
    assert not any(pid_alive(entry.get("pid")) for entry in state.values() if isinstance(entry, dict))
    assert not (home / "run" / "services.json").exists()

    # Bring the infrastructure back to check what the loop left in it.
    subprocess.run(
        [sys.executable, "-m", "stream.cli", "up", "--infra"], env=env, check=True, capture_output=True
    )
    try:
        settings = load_settings({"RECSTREAM_HOME": str(home)}, environ={})
        registry = ModelRegistry(make_client(settings), settings.models_bucket, settings.model_name)
        state = registry.state()
        activated = [e.version for e in state.events if e.event == "activated"]
        assert len(activated) == summary["versions_activated"] and state.active == activated[-1]
        alerts = _records(settings.kafka_bootstrap, settings.drift_alerts_topic)
        assert all(parse_drift_alert(value).model_version in activated for value in alerts)
    finally:
        subprocess.run([sys.executable, "-m", "stream.cli", "down"], env=env, check=True, capture_output=True)


def _records(bootstrap: str, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        values, idle = [], 0
        while idle < 3:
            batch = consumer.poll(timeout_ms=1000)
            idle = 0 if batch else idle + 1
            values += [r.value for records in batch.values() for r in records]
        return values
    finally:
        consumer.close()
