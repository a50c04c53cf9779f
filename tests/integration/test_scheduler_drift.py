"""The scheduler's drift trigger over the real broker: an alert on `drift-alerts` starts a retrain."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from retrain.scheduler import RetrainScheduler, consume_alerts
from stream.alerts import DriftAlert
from stream.producer import EventProducer
from stream.settings import Settings

pytestmark = pytest.mark.integration


def test_drift_alert_on_the_topic_retrains_and_invalid_alerts_are_ignored(
    settings: Settings, fresh_topic: str, caplog
) -> None:
    alert_settings = dataclasses.replace(settings, drift_alerts_topic=fresh_topic)
    calls: list[float] = []
    scheduler = RetrainScheduler(lambda: calls.append(time.time()), interval_s=3600, cooldown_s=3600)
    scheduler.start()
    stop = threading.Event()
    consumer = threading.Thread(target=consume_alerts, args=(alert_settings, scheduler, stop), daemon=True)
    consumer.start()
    try:
        with EventProducer(alert_settings) as producer:
            # The group starts at the latest offset once it has joined: send an invalid alert,
            # then a valid one, until a retrain shows the consumer is reading.
            deadline = time.monotonic() + 60
            while not calls and time.monotonic() < deadline:
                producer.send(fresh_topic, b'{"kind": "weather"}')
                producer.send(fresh_topic, DriftAlert("data", "psi_items", 0.4, 0.2, 1).to_json())
                producer.flush()
                time.sleep(1.0)
            assert calls, "no retrain within 60 s of drift alerts"
            time.sleep(1.0)
            # Every later alert falls in the cooldown: still one run.
            assert len(calls) == 1
    finally:
        stop.set()
        consumer.join(timeout=10)
        scheduler.shutdown()
    assert not consumer.is_alive()
    assert "ignoring invalid drift alert" in caplog.text and "kind: expected one of" in caplog.text
