"""Ingest on the real stack: exactly once across kill -9, malformed records to the DLQ, reader windows."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
from ingest_helpers import Worker, stored_rows, wait_for
from kafka_helpers import create_topic, read_all
from urllib3.exceptions import MaxRetryError

from recstream.deploy.local.processes import pid_alive
from recstream.stream.contracts.records import Transaction
from recstream.stream.lake import read_transactions
from recstream.stream.producer import EventProducer
from recstream.stream.settings import Settings
from recstream.stream.storage import ensure_buckets, make_client

pytestmark = pytest.mark.integration

DAY = 86400.0
T0 = 1_790_000_000.0  # 2026-09-21 UTC; events spread over three dates

# Ten-plus kinds of malformed record: (key, value).
MALFORMED: list[tuple[bytes | None, bytes | None]] = [
    (b"u1", b"{not json"),
    (b"u1", b"[1, 2, 3]"),
    (b"u1", b'"just a string"'),
    (b"u1", b'{"user_id": 5, "item_id": "i1"}'),
    (b"u1", b'{"item_id": "i1"}'),
    (b"u1", b'{"user_id": "u1"}'),
    (b"", b'{"user_id": "", "item_id": "i1"}'),
    (b"u1", b'{"user_id": "u1", "item_id": "i1", "quantity": -2}'),
    (b"u1", b'{"user_id": "u1", "item_id": "i1", "quantity": 1.5}'),
    (b"x" * 102400, json.dumps({"user_id": "x" * 102400, "item_id": "i1"}).encode()),
    (b"u1", b"\xff\xfe\xfa not utf-8"),
    (b"u1", None),
    (b"u1", b'{"user_id": "u1", "item_id": "i1", "ts": "yesterday"}'),
    (b"someone-else", b'{"user_id": "u1", "item_id": "i1"}'),
]


@pytest.fixture
def ingest_settings(settings: Settings, fresh_topic: str) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    bucket = f"ingest-{suffix}"
    dlq = f"dlq-{suffix}"
    ensure_buckets(make_client(settings), [bucket])
    create_topic(settings.kafka_bootstrap, dlq)
    return dataclasses.replace(
        settings, transactions_topic=fresh_topic, dlq_topic=dlq, data_bucket=bucket, topic_partitions=3
    )


@pytest.fixture
def workers(ingest_settings: Settings) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill(signal.SIGTERM)


def test_exactly_once_across_kill_9_with_malformed_records(
    ingest_settings: Settings, workers, tmp_path
) -> None:
    s = ingest_settings
    valid = [
        Transaction(f"ev-{i}", f"u{i % 997}", f"i{i % 300}", 1 + i % 3, T0 + (i / 20000) * 2.5 * DAY)
        for i in range(20000)
    ]
    bad = [MALFORMED[i % len(MALFORMED)] for i in range(200)]
    with EventProducer(s) as producer:
        for i, event in enumerate(valid):
            producer.send_transaction(event)
            if i % 100 == 50:
                key, value = bad[i // 100]
                producer._producer.send(s.transactions_topic, key=key, value=value)
        producer.flush()

    first = Worker(s, tmp_path / "worker-1.log")
    workers.append(first)
    wait_for(lambda: len(stored_rows(s)) >= 4000, 120, first, "a first part to land")
    encoders = first.children()
    assert encoders, "the worker has no encoder process"
    os.kill(first.proc.pid, signal.SIGKILL)  # the worker alone, not its process group
    first.proc.wait(timeout=20)
    landed_before_kill = len(stored_rows(s))
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in encoders) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(pid) for pid in encoders), "an orphaned encoder outlived kill -9"
    assert landed_before_kill < 20000, "the kill came too late to test anything"

    second = Worker(s, tmp_path / "worker-2.log")
    workers.append(second)
    wait_for(lambda: len(stored_rows(s)) >= 20000, 180, second, "all rows")
    dead = read_all(s.kafka_bootstrap, s.dlq_topic, 200, timeout_s=60, alive=second.alive)
    time.sleep(3)  # anything extra would have landed by now
    rows = stored_rows(s)

    ids = [row["event_id"] for row in rows]
    assert len(ids) == 20000 and len(set(ids)) == 20000, "rows lost or duplicated"
    assert set(ids) == {e.event_id for e in valid}
    by_id = {e.event_id: e for e in valid}
    for row in rows[:500]:
        event = by_id[row["event_id"]]
        assert (row["user_id"], row["item_id"], row["quantity"], row["ts"]) == (
            event.user_id,
            event.item_id,
            event.quantity,
            event.ts,
        )
    dead = read_all(s.kafka_bootstrap, s.dlq_topic, 201, timeout_s=3)
    assert len(dead) == 200, "dead letters lost or duplicated"
    headers = [dict(record.headers) for record in dead]
    assert len({h["source"] for h in headers}) == 200
    assert all(h["error"] for h in headers)
    assert {record.value for record in dead} == {value for _, value in bad}
    reasons = {h["error"].decode().split(":")[0] for h in headers}
    assert {"value", "user_id", "item_id", "quantity", "ts", "key"} <= reasons

    frame = read_transactions(make_client(s), s.data_bucket)
    assert len(frame) == 20000
    day_two = read_transactions(
        make_client(s), s.data_bucket, start=T0 + DAY, end=T0 + 2 * DAY, columns=["user_id", "ts"]
    )
    expected = [e for e in valid if T0 + DAY <= e.ts < T0 + 2 * DAY]
    assert list(day_two.columns) == ["user_id", "ts"]
    assert len(day_two) == len(expected) and sorted(day_two["user_id"]) == sorted(e.user_id for e in expected)


def test_a_killed_encoder_is_replaced_and_every_event_lands_once(
    ingest_settings: Settings, workers, tmp_path
) -> None:
    s = ingest_settings
    events = [Transaction(f"enc-{i}", f"u{i % 101}", f"i{i % 50}", 1, T0 + i) for i in range(8000)]
    with EventProducer(s) as producer:
        for event in events:
            producer.send_transaction(event)
        producer.flush()
    worker = Worker(s, tmp_path / "worker.log", INGEST_FLUSH_EVENTS="500")
    workers.append(worker)
    wait_for(lambda: len(stored_rows(s)) >= 500, 120, worker, "a first batch to land")
    (encoder,) = worker.children("spawn_main")
    os.kill(encoder, signal.SIGKILL)
    wait_for(lambda: len(stored_rows(s)) >= 8000, 120, worker, "all rows")
    time.sleep(2)  # anything extra would have landed by now
    ids = [row["event_id"] for row in stored_rows(s)]
    assert len(ids) == 8000 and set(ids) == {e.event_id for e in events}, "rows lost or duplicated"
    assert worker.alive()
    assert worker.children("spawn_main") not in ([], [encoder]), "no new encoder process"
    assert "the encoder process died" in worker.log.read_text()


def test_uncommitted_flush_is_rewritten_with_the_same_boundaries(
    ingest_settings: Settings, workers, tmp_path
) -> None:
    """A marker left by a worker that died mid-flush makes the next owner end its batch at the same
    offset, and dead letters it had already sent are not sent again."""
    from recstream.ingest.landing import Backoff, Lander, Marker
    from recstream.stream.contracts.lake import event_date, object_name, parse_object_name

    s = ingest_settings
    bad = {100, 700, 1200, 2000}  # offsets of malformed records (all on one partition)
    with EventProducer(s) as producer:
        for i in range(3000):
            value = (
                b"{not json" if i in bad else Transaction(f"m-{i}", "same-user", "i1", 1, T0 + i).to_json()
            )
            producer.send(s.transactions_topic, value, key="same-user")
        producer.flush()
    partition = read_all(s.kafka_bootstrap, s.transactions_topic, 1)[0].partition
    crashed = object_name(event_date(T0), partition, 0, 1499)
    Lander(make_client(s), s.data_bucket, s.transactions_topic, Backoff()).write_marker(
        partition, Marker(0, 1499, [crashed])
    )
    # The dead worker had sent two of the batch's three dead letters before it died.
    with EventProducer(s) as producer:
        for offset in (100, 700):
            producer.send(
                s.dlq_topic,
                b"{not json",
                key="same-user",
                headers={
                    "error": b"value: not JSON",
                    "source": f"{s.transactions_topic}/{partition}/{offset}".encode(),
                },
            )
        producer.flush()

    worker = Worker(s, tmp_path / "worker.log")
    workers.append(worker)
    wait_for(lambda: len(stored_rows(s)) >= 3000 - len(bad), 120, worker, "all rows")
    time.sleep(3)

    names = sorted(
        o.object_name for o in make_client(s).list_objects(s.data_bucket, "transactions/", recursive=True)
    )
    ranges = sorted(parse_object_name(name)[2:] for name in names)
    assert crashed in names
    assert ranges[0] == (0, 1499), ranges  # not 0-999, which the size limit alone would give
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges)), ranges
    assert len(stored_rows(s)) == 3000 - len(bad)
    log = worker.log.read_text()
    assert "rewriting uncommitted batch 0-1499" in log
    assert "2 dead letters were already sent" in log
    assert "Faust's Monitor sensor is off" in log  # dropped as the worker started, without a crash
    sources = [
        dict(r.headers)["source"].decode() for r in read_all(s.kafka_bootstrap, s.dlq_topic, 5, timeout_s=10)
    ]
    assert sorted(sources) == sorted(f"{s.transactions_topic}/{partition}/{o}" for o in bad)


@pytest.fixture
def separate_store(settings: Settings, tmp_path) -> Iterator[dict]:
    """A second object store just for the landed data, so stopping it leaves the broker's store alone."""
    from recstream.deploy.local import objectstore
    from recstream.deploy.local.processes import start_daemon, stop_pid, wait_healthy
    from recstream.stream.storage import store_healthy

    home = tmp_path / "data-store"
    ports = objectstore.choose_ports()
    endpoint = f"127.0.0.1:{ports['s3']}"
    store = {"endpoint": endpoint, "pid": None}

    def start() -> None:
        argv, env = objectstore.command(settings, home, ports)
        store["pid"] = start_daemon(argv, env, home / "weed.log")
        client = make_client(dataclasses.replace(settings, minio_endpoint=endpoint), retries=0, timeout_s=2)
        wait_healthy("data store", store["pid"], lambda: store_healthy(client), 60, home / "weed.log")

    def stop() -> None:
        stop_pid(store["pid"])

    store.update(start=start, stop=stop)
    start()
    yield store
    stop()


def test_object_store_down_for_20s_loses_nothing(
    ingest_settings: Settings, separate_store, workers, tmp_path
) -> None:
    s = dataclasses.replace(ingest_settings, minio_endpoint=separate_store["endpoint"])
    ensure_buckets(make_client(s), [s.data_bucket])
    events = [Transaction(f"o-{i}", f"u{i % 101}", f"i{i % 300}", 1, T0 + i) for i in range(6000)]
    with EventProducer(s) as producer:
        for event in events[:3000]:
            producer.send_transaction(event)
        producer.flush()
        worker = Worker(s, tmp_path / "worker.log", MINIO_ENDPOINT=s.minio_endpoint)
        workers.append(worker)
        wait_for(lambda: len(stored_rows(s)) >= 1000, 120, worker, "a first part to land")

        separate_store["stop"]()
        for event in events[3000:]:
            producer.send_transaction(event)
        producer.flush()
        time.sleep(20)
        assert worker.alive(), worker.log.read_text()[-3000:]
        separate_store["start"]()

    def all_landed() -> bool:
        try:
            return len(stored_rows(s)) >= 6000
        except MaxRetryError:  # the restarted store still answers 500 for a moment: look again
            return False

    wait_for(all_landed, 180, worker, "all rows after the outage")
    time.sleep(3)
    ids = [row["event_id"] for row in stored_rows(s)]
    assert len(ids) == 6000 and set(ids) == {e.event_id for e in events}
    assert "retrying" in worker.log.read_text()


def test_sigterm_with_buffered_records_stops_and_loses_nothing(
    ingest_settings: Settings, workers, tmp_path
) -> None:
    import urllib.request

    from recstream.deploy.local.processes import free_port

    s = ingest_settings
    events = [Transaction(f"t-{i}", f"u{i % 13}", "i1", 1, T0 + i) for i in range(50)]
    with EventProducer(s) as producer:
        for event in events:
            producer.send_transaction(event)
        producer.flush()
    port = free_port()
    never = {"INGEST_FLUSH_S": "600", "INGEST_IDLE_FLUSH_S": "600"}  # buffered until stopped
    worker = Worker(s, tmp_path / "worker-1.log", INGEST_METRICS_PORT=str(port), **never)
    workers.append(worker)

    def consumed() -> bool:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            return False
        return "recstream_ingest_received_total 50.0" in text

    wait_for(consumed, 120, worker, "the 50 records to be buffered")
    assert stored_rows(s) == []  # buffered, not flushed
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=60) == 0, worker.log.read_text()[-3000:]

    second = Worker(s, tmp_path / "worker-2.log")
    workers.append(second)
    wait_for(lambda: len(stored_rows(s)) >= 50, 120, second, "the redelivered records")
    time.sleep(3)
    assert sorted(row["event_id"] for row in stored_rows(s)) == sorted(e.event_id for e in events)


def test_wait_until_landed_returns_once_every_record_sent_is_in_the_store(
    ingest_settings: Settings, workers, tmp_path
) -> None:
    from recstream.stream.lake import wait_until_landed

    s = ingest_settings
    with EventProducer(s) as producer:
        for i in range(3000):
            producer.send_transaction(Transaction(f"ev-{i}", f"u{i % 97}", f"i{i % 30}", 1, T0 + i))
    assert wait_until_landed(s, timeout_s=2) is None  # nothing ingests yet
    worker = Worker(s, tmp_path / "ingest.log")
    workers.append(worker)
    reached = wait_until_landed(s, timeout_s=120)
    assert reached, (tmp_path / "ingest.log").read_text()[-3000:]
    # Every record below the end offsets it waited for is readable the moment it returns.
    stored = {(row["partition"], row["offset"]) for row in stored_rows(s)}
    assert {(p, o) for p, end in reached.items() for o in range(end)} <= stored
    wait_for(lambda: len(stored_rows(s)) >= 3000, 60, worker, "the rest")  # Tansu's ends may lag
