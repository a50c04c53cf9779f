"""Running `recstream ingest` in tests: the worker subprocess and what it landed."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from recstream.deploy.local.processes import child_pids, stop_child
from recstream.stream.settings import Settings
from recstream.stream.storage import make_client


class Worker:
    """A `recstream` service (`ingest` unless told) in a subprocess of its own process group,
    on the test's topics, buckets and model name."""

    def __init__(self, settings: Settings, log: Path, command: str = "ingest", **extra_env: str) -> None:
        env = {
            **os.environ,
            "RECSTREAM_HOME": str(settings.home),
            "TRANSACTIONS_TOPIC": settings.transactions_topic,
            "DLQ_TOPIC": settings.dlq_topic,
            "REQUESTS_TOPIC": settings.requests_topic,
            "RECOMMENDATIONS_TOPIC": settings.recommendations_topic,
            "MODEL_UPDATES_TOPIC": settings.model_updates_topic,
            "DRIFT_ALERTS_TOPIC": settings.drift_alerts_topic,
            "MODEL_NAME": settings.model_name,
            "DATA_BUCKET": settings.data_bucket,
            "TOPIC_PARTITIONS": str(settings.topic_partitions),
            "INGEST_FLUSH_EVENTS": "1000",
            "INGEST_FLUSH_S": "2",
            "INGEST_METRICS_PORT": "0",
            "SCORER_METRICS_PORT": "0",
            "SCORER_HTTP_PORT": "0",
            "LOG_LEVEL": "INFO",
            **extra_env,
        }
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "recstream.deploy.cli", command],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        stop_child(self.proc, timeout=20, sig=sig)

    def children(self, command: str = "") -> list[int]:
        """Live child processes of the worker whose command line has `command` (ingest's encoder
        process: "spawn_main"; multiprocessing's resource tracker is one too)."""
        found = []
        for pid in child_pids(self.proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue  # gone meanwhile
            if command in cmdline:
                found.append(pid)
        return found


def stored_rows(settings: Settings) -> list[dict]:
    """Every row of every object, without any dedupe: what is really in the store."""
    client = make_client(settings)
    rows = []
    for obj in client.list_objects(settings.data_bucket, prefix="transactions/", recursive=True):
        response = client.get_object(settings.data_bucket, obj.object_name)
        try:
            rows.extend(pq.read_table(io.BytesIO(response.read())).to_pylist())
        finally:
            response.close()
            response.release_conn()
    return rows


def wait_for(condition, timeout_s: float, worker: Worker, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        assert worker.alive(), f"worker died while waiting for {what}: {worker.log.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {worker.log.read_text()[-3000:]}")
