"""The embedded broker: seed rows round-trip, and data plus committed offsets survive a restart."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka_helpers import read_all

from recstream.deploy.local.processes import pid_alive
from recstream.deploy.local.stack import BROKER, Stack
from recstream.stream.contracts.records import Transaction, parse_transaction
from recstream.stream.produce import produce_file
from recstream.stream.producer import EventProducer
from recstream.stream.settings import Settings
from recstream.stream.sources import read_events

pytestmark = pytest.mark.integration


def test_seed_rows_round_trip(topic_settings: Settings, seed_file) -> None:
    expected = [item for _, item in read_events(seed_file) if isinstance(item, Transaction)][:2000]

    with EventProducer(topic_settings) as producer:
        report = produce_file(producer, seed_file, limit=2000)

    assert report.sent == 2000 and not report.rejected
    records = read_all(topic_settings.kafka_bootstrap, topic_settings.transactions_topic, 2000)
    assert len(records) == 2000
    received = {}
    for record in records:
        event = parse_transaction(record.value, key=record.key)  # key = user_id is enforced here
        received[event.event_id] = event
    assert set(received) == {e.event_id for e in expected}
    for event in expected:
        got = received[event.event_id]
        assert (got.user_id, got.item_id, got.quantity) == (event.user_id, event.item_id, 1)
    # One user's events land in one partition, in file order.
    by_user: dict[str, list[tuple[int, int, str]]] = {}
    for record in records:
        by_user.setdefault(record.key.decode(), []).append(
            (record.partition, record.offset, json.loads(record.value)["event_id"])
        )
    for user, seen in by_user.items():
        assert len({p for p, _, _ in seen}) == 1, user
        in_offset_order = [eid for _, _, eid in sorted(seen)]
        in_file_order = [e.event_id for e in expected if e.user_id == user]
        assert in_offset_order == in_file_order


def _consume(bootstrap: str, topic: str, group: str, count: int) -> list[str]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=count,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    ids: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while len(ids) < count:
            assert time.monotonic() < deadline, f"only {len(ids)} of {count} records arrived"
            for batch in consumer.poll(timeout_ms=1000, max_records=count - len(ids)).values():
                ids.extend(json.loads(r.value)["event_id"] for r in batch)
        consumer.commit()
    finally:
        consumer.close()
    return ids


def _committed(bootstrap: str, topic: str, group: str) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(3)}
    finally:
        consumer.close()


def test_broker_restart_keeps_topic_data_and_committed_offsets(
    stack: Stack, topic_settings: Settings
) -> None:
    bootstrap, topic = topic_settings.kafka_bootstrap, topic_settings.transactions_topic
    with EventProducer(topic_settings) as producer:
        for i in range(600):
            producer.send_transaction(Transaction(f"e{i}", f"u{i % 37}", f"i{i % 11}", 1, 1.0 + i))
        producer.flush()
    first = _consume(bootstrap, topic, "restart-group", 250)
    committed_before = _committed(bootstrap, topic, "restart-group")
    pid_before = next(p.pid for p in stack.status() if p.name == BROKER)

    stack.stop_part(BROKER)
    assert not pid_alive(pid_before)
    stack.start_part(BROKER)

    status = {p.name: p for p in stack.status()}
    assert status[BROKER].healthy and status[BROKER].pid != pid_before
    assert status[BROKER].endpoint == bootstrap  # same endpoint: clients and stack.env stay valid
    assert _committed(bootstrap, topic, "restart-group") == committed_before
    rest = _consume(bootstrap, topic, "restart-group", 350)
    assert len(set(first) | set(rest)) == 600, "records lost or re-delivered across the restart"
    assert not set(first) & set(rest)
    assert len(read_all(bootstrap, topic, 600)) == 600


def test_killed_broker_is_restarted_by_up(stack: Stack, settings: Settings) -> None:
    broker = next(p for p in stack.status() if p.name == BROKER)
    os.kill(broker.pid, signal.SIGKILL)
    stack.up()  # finds the pid gone and starts the broker again at the same endpoint
    after = next(p for p in stack.status() if p.name == BROKER)
    assert after.healthy and after.pid != broker.pid and after.endpoint == broker.endpoint
