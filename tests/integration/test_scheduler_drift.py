"""The scheduler's drift trigger over the real broker: an alert on `drift-alerts` starts a retrain."""

from __future__ import annotations

import dataclasses
import time

import pytest
from control_helpers import scheduler_on_alerts

from recstream.stream.contracts.alerts import DriftAlert
from recstream.stream.producer import EventProducer
from recstream.stream.settings import Settings

pytestmark = pytest.mark.integration


def test_drift_alert_on_the_topic_retrains_and_invalid_alerts_are_ignored(
    settings: Settings, fresh_topic: str, caplog
) -> None:
    alert_settings = dataclasses.replace(settings, drift_alerts_topic=fresh_topic)
    with scheduler_on_alerts(alert_settings, cooldown_s=3600) as running:
        calls = running.calls
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
    assert "ignoring invalid drift alert" in caplog.text and "kind: expected one of" in caplog.text
