"""The Faust app factory against the real broker: a worker joins its group and processes records."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka_helpers import read_all

from recstream.deploy.local.processes import stop_child
from recstream.stream.producer import EventProducer
from recstream.stream.settings import Settings

pytestmark = pytest.mark.integration
APP = Path(__file__).with_name("faust_echo_app.py")


def test_worker_joins_and_echoes(settings: Settings, fresh_topic: str) -> None:
    out_topic = f"echo-out-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "IN_TOPIC": fresh_topic,
        "OUT_TOPIC": out_topic,
        "RECSTREAM_HOME": str(settings.home),
    }
    log = settings.home / "logs" / f"{out_topic}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, str(APP), "worker", "--loglevel", "warn"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with EventProducer(settings) as producer:
            for i in range(50):
                producer.send(fresh_topic, f"v{i}".encode(), key=f"k{i % 7}")
            producer.flush()
        started = time.monotonic()
        records = read_all(
            settings.kafka_bootstrap, out_topic, 50, timeout_s=90, alive=lambda: worker.poll() is None
        )
        elapsed = time.monotonic() - started
        assert worker.poll() is None, log.read_text()[-2000:]
        assert sorted(r.value for r in records) == sorted(f"echo:v{i}".encode() for i in range(50)), (
            log.read_text()[-2000:]
        )
        print(f"group joined and 50 records echoed {elapsed:.1f}s after they were sent")
    finally:
        stop_child(worker, timeout=20)
