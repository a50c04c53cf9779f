"""Reading topics back in tests with a real consumer."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord


def read_all(
    bootstrap: str,
    topic: str,
    expected: int,
    *,
    timeout_s: float = 30.0,
    alive: Callable[[], bool] = lambda: True,
) -> list[ConsumerRecord]:
    """Every record of `topic` from the beginning, waiting until `expected` arrived, time is up,
    or `alive()` says the producing process is gone."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    deadline = time.monotonic() + timeout_s
    try:
        partitions = consumer.partitions_for_topic(topic)
        while (
            not partitions and time.monotonic() < deadline and alive()
        ):  # a topic a worker has yet to create
            time.sleep(0.5)
            consumer.topics()  # refreshes metadata
            partitions = consumer.partitions_for_topic(topic)
        assert partitions, f"topic {topic} does not exist after {timeout_s:g}s"
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        records: list[ConsumerRecord] = []
        while len(records) < expected and time.monotonic() < deadline and alive():
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        # One more short poll shows whether anything beyond `expected` is there.
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
        return records
    finally:
        consumer.close()


def read_json_until_idle(bootstrap: str, topic: str) -> list[Any]:
    """Every record of `topic` from the beginning, JSON-decoded, once three 1 s polls found nothing."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        out: list[Any] = []
        idle = 0
        while idle < 3:
            batch = consumer.poll(timeout_ms=1000)
            idle = 0 if batch else idle + 1
            out += [json.loads(r.value) for records in batch.values() for r in records]
        return out
    finally:
        consumer.close()


def create_topic(bootstrap: str, name: str, partitions: int = 3) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return name
