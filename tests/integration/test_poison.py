"""Poison on the real stack: no input stalls the ingest partition or wedges the updater or the scheduler.

Each test sends the bad input to the running part, then shows the rejection (dead letter with its
reason, a logged and counted skip) and that the valid traffic behind it landed or was acted on.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time
import uuid
from pathlib import Path

import pytest
from control_helpers import ModelUpdates, scheduler_on_alerts, wait_until
from ingest_helpers import Worker, stored_rows, wait_for
from kafka_helpers import create_topic, read_all
from prometheus_client import REGISTRY

from recstream.stream.contracts.alerts import DriftAlert
from recstream.stream.contracts.model_events import ACTIVATED, PUBLISHED, ModelEvent
from recstream.stream.contracts.records import MAX_MESSAGE_BYTES, Transaction
from recstream.stream.producer import EventProducer
from recstream.stream.registry import ModelRegistry
from recstream.stream.settings import Settings
from recstream.stream.storage import ensure_buckets, make_client

pytestmark = pytest.mark.integration

YEAR_10000 = 253_402_300_800  # seconds: 10000-01-01T00:00:00Z, a time no date can hold
DAY = 86_400

# What a hostile or broken producer can put on a control topic.
CONTROL_POISON = [
    b'{"pad": "' + b"x" * (MAX_MESSAGE_BYTES + 10) + b'"}',  # oversized
    b"[" * 50_000,  # nested far deeper than the parser can go (a RecursionError before)
    b'{"metrics": ' + b'{"a": ' * 40 + b"1" + b"}" * 41,  # parseable, but deeper than the bound
    b"{not json",
    # Numbers beyond a float: ts of a model event, value of a drift alert.
    b'{"event": "published", "model": "m", "version": 1, "kind": "data", "statistic": "s", "threshold": 1,'
    b' "model_version": 1, "value": 1%s, "ts": 1%s}' % (b"0" * 400, b"0" * 400),
]
# A valid drift alert whose free-form window starts at a 400-digit time: the updater rejects it (not
# a model event); the scheduler must act on it as an alert with no measured start, not crash on it.
WINDOW_POISON = (
    b'{"kind": "concept", "statistic": "s", "value": 0.4, "threshold": 0.2, "model_version": 1,'
    b' "window": {"from": 1%s}, "ts": 1}' % (b"0" * 400)
)
CONTROL_POISON.append(WINDOW_POISON)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- (a) ingest ------------------------------------------------------------------------------------
def test_the_partition_keeps_landing_behind_poison_events(settings: Settings, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    s = dataclasses.replace(
        settings,
        transactions_topic=create_topic(settings.kafka_bootstrap, f"poison-{suffix}", partitions=1),
        dlq_topic=create_topic(settings.kafka_bootstrap, f"poison-dlq-{suffix}", partitions=1),
        data_bucket=f"poison-{suffix}",
        topic_partitions=1,
    )
    ensure_buckets(make_client(s), [s.data_bucket])
    now = time.time()
    before = [Transaction(f"a-{i}", f"u{i}", f"i{i}", 1, now - i * DAY) for i in range(30)]
    backfill = Transaction("backfill", "u-old", "i-old", 1, 1_000_000_000.0)  # 2001: years old, lands
    after = [Transaction(f"b-{i}", f"u{i}", f"i{i}", 1, now - 60 - i) for i in range(30)]
    poison = [  # (value, record timestamp in ms or None)
        (b'{"user_id": "u1", "item_id": "i1", "ts": %d}' % YEAR_10000, None),
        (b'{"user_id": "u1", "item_id": "i1", "ts": %d}' % int(now + 30 * DAY), None),
        (b'{"user_id": "u1", "item_id": "i1"}', YEAR_10000 * 1000),  # no ts: the record's is used
        (b'{"user_id": "u1", "item_id": "i1"}', int((now + 30 * DAY) * 1000)),
    ]
    with EventProducer(s) as producer:
        for event in [*before, backfill]:
            producer.send_transaction(event)
        for value, timestamp_ms in poison:
            producer._producer.send(s.transactions_topic, key=b"u1", value=value, timestamp_ms=timestamp_ms)
        for event in after:
            producer.send_transaction(event)
        producer.flush()

    worker = Worker(s, tmp_path / "ingest.log", INGEST_FLUSH_S="1")
    try:
        wait_for(lambda: len(stored_rows(s)) >= 61, 90, worker, "the events behind the poison to land")
        dead = read_all(s.kafka_bootstrap, s.dlq_topic, len(poison), timeout_s=30, alive=worker.alive)
    finally:
        worker.kill()
    rows = stored_rows(s)
    assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in [*before, backfill, *after])
    assert [r.value for r in dead] == [value for value, _ in poison]  # nothing lost, in order
    reasons = [dict(r.headers)["error"].decode() for r in dead]
    assert reasons[0].startswith("ts: after 9999-12-31T23:59:59Z, no date can hold it"), reasons
    assert reasons[1].startswith("ts: ts ") and reasons[1].endswith("in the future"), reasons
    assert reasons[2].startswith("ts: missing and record timestamp is not valid"), reasons
    assert reasons[3].startswith("ts: record timestamp ") and reasons[3].endswith("in the future"), reasons
    client = make_client(s)
    names = [o.object_name for o in client.list_objects(s.data_bucket, "transactions/", recursive=True)]
    assert any(name.startswith("transactions/date=2001-09-09/") for name in names)


# -- (b) + (d) updater and registry --------------------------------------------------------------
def test_updater_skips_poison_records_and_malformed_registry_events(
    settings: Settings, tmp_path: Path
) -> None:
    from saved_models import build_version

    from recstream.updater.service import UpdaterService

    model = f"poison-{uuid.uuid4().hex[:8]}"
    topic = create_topic(settings.kafka_bootstrap, f"model-updates-{model}", partitions=1)
    s = dataclasses.replace(settings, model_name=model, model_updates_topic=topic, updater_metrics_port=0)
    registry = ModelRegistry(make_client(s), s.models_bucket, model)

    # (d) Malformed objects under _events/: state() skips, logs and counts them.
    malformed = {
        "0-bad.json": b"{",
        "1-deep.json": b"[" * 50_000,
        "2-big.json": b" " * (MAX_MESSAGE_BYTES + 1),
    }
    for name, data in malformed.items():
        registry.client.put_object(s.models_bucket, f"{model}/_events/{name}", io.BytesIO(data), len(data))
    invalid_before = metric("recstream_registry_invalid_events_total", model=model)
    assert registry.state().events == []
    assert metric("recstream_registry_invalid_events_total", model=model) == invalid_before + 3

    # (b) Poison on model-updates before a valid published version.
    stop = threading.Event()
    service = UpdaterService(s, group_id=f"updater-{model}")
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    events = ModelUpdates(s, skip_invalid=True)
    try:
        with EventProducer(s) as producer:
            for value in CONTROL_POISON:
                producer.send(topic, value, key=model)
            producer.flush()
            registry.upload_version(build_version(tmp_path / "v1", 1), 1)
            registry.announce(ModelEvent(PUBLISHED, model, 1, {"hr@10": 0.1}), producer, topic)
        wait_until(lambda: events.find(ACTIVATED, 1), "version 1 activated behind the poison")
        assert thread.is_alive()
        assert metric("recstream_updater_invalid_records_total", model=model) == len(CONTROL_POISON)
        # Each poison record was committed (skipped once), not handed back for a retry.
        wait_until(lambda: service.handled >= len(CONTROL_POISON) + 2, "the records to be committed")
        assert metric("recstream_updater_errors_total", model=model) == 0
        assert registry.state().active == 1
    finally:
        stop.set()
        thread.join(timeout=60)
        events.consumer.close()
    assert not thread.is_alive()


# -- (c) scheduler -------------------------------------------------------------------------------
def test_scheduler_consumes_poison_alerts_and_still_triggers(settings: Settings, caplog) -> None:
    topic = create_topic(settings.kafka_bootstrap, f"drift-poison-{uuid.uuid4().hex[:8]}", partitions=1)
    s = dataclasses.replace(settings, drift_alerts_topic=topic)
    data = DriftAlert("data", "psi_items", 0.4, 0.2, 1).to_json()  # to see the consumer reads
    concept = DriftAlert("concept", "page_hinkley_hit_rate", 20.0, 15.0, 1).to_json()  # behind the poison

    def alerts(kind: str, action: str) -> float:
        return metric("recstream_scheduler_drift_alerts_total", kind=kind, action=action)

    def concepts_acted() -> float:  # cooldown 0: each one is a retrain (or a follow-up run)
        return alerts("concept", "retrain") + alerts("concept", "follow_up")

    invalid_before, concepts_before = alerts("invalid", "ignored"), concepts_acted()
    with scheduler_on_alerts(s, cooldown_s=0) as running, EventProducer(s) as producer:
        # The group starts at the latest offset once joined: alerts until one retrains shows it reads.
        deadline = time.monotonic() + 60
        while not running.calls and time.monotonic() < deadline:
            producer.send(topic, data)
            producer.flush()
            time.sleep(0.5)
        assert running.calls, "no retrain within 60 s of drift alerts"
        runs = len(running.calls)
        for value in CONTROL_POISON:
            producer.send(topic, value)
        producer.send(topic, concept)
        producer.flush()
        # The window alert (a concept alert with no usable start) and the alert behind the poison.
        wait_until(
            lambda: concepts_acted() - concepts_before >= 2 or not running.consumer.is_alive(),
            "the alerts behind the poison to be acted on",
            30,
        )
        assert running.consumer.is_alive()
        wait_until(lambda: len(running.calls) > runs, "a retrain behind the poison", 30)
    assert concepts_acted() - concepts_before == 2
    assert alerts("invalid", "ignored") - invalid_before == len(CONTROL_POISON) - 1  # all but the window one
    for reason in (
        "value: larger than",
        "nested too deeply",
        "nested deeper than 16",
        "not valid JSON",
        "value: expected a finite number",
    ):
        assert reason in caplog.text, reason
