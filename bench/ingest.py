"""Ingest throughput: a pre-filled topic landed in the object store, against a bare consumer's read rate.

The figure is events per second from the start of `recstream ingest` (group join
included) until every offset of the topic is covered by a landed object. The limit is
a bare aiokafka consumer reading the same topic from the beginning in the same run: the
rate at which the broker can hand the records out at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import subprocess
import sys
import tempfile
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import SEED, recstream_child, setup_logging, temporary_stack, write_result
from recstream.deploy.local.processes import stop_child
from recstream.stream.contracts.lake import date_prefix, parse_object_name
from recstream.stream.produce import produce_file
from recstream.stream.producer import EventProducer
from recstream.stream.settings import Settings
from recstream.stream.storage import make_client

log = logging.getLogger("bench.ingest")
EVENTS = 100_000


async def bare_read_rate(bootstrap: str, topic: str, total: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        start, seen = time.monotonic(), 0
        while seen < total:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
                seen += len(records)
        return seen / (time.monotonic() - start)
    finally:
        await consumer.stop()


def faust_floor_rate(env: dict[str, str]) -> float:
    """Events/s of a Faust agent that does nothing but count, on the same topic."""
    probe = subprocess.run(
        [sys.executable, "-m", "bench.faust_floor", "worker"],
        env={**env, "FLOOR_EVENTS": str(EVENTS)},
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )
    # Faust's worker routes stdout through its logger, so the line may arrive on stderr.
    rates = re.findall(r"RATE ([0-9.]+)", probe.stdout + probe.stderr)
    if not rates:
        raise RuntimeError(f"Faust probe failed: {probe.stderr[-2000:]}")
    return float(rates[0])


def landed_offsets(settings: Settings) -> int:
    """Offsets covered by landed objects (the seed's events all fall on one date per batch)."""
    ends: dict[int, int] = {}
    for obj in make_client(settings).list_objects(settings.data_bucket, date_prefix(), recursive=True):
        _, partition, _, last = parse_object_name(obj.object_name)
        ends[partition] = max(ends.get(partition, -1), last)
    return sum(last + 1 for last in ends.values())


def main() -> None:
    with temporary_stack() as settings:
        target = dataclasses.replace(settings, transactions_topic="bench-ingest")
        with EventProducer(target) as producer:
            produce_file(producer, SEED, limit=EVENTS)
        limit = asyncio.run(
            bare_read_rate(settings.require("kafka_bootstrap"), target.transactions_topic, EVENTS)
        )
        log.info("bare aiokafka read: %.0f events/s", limit)
        env = {
            **os.environ,
            "RECSTREAM_HOME": str(settings.home),
            "TRANSACTIONS_TOPIC": target.transactions_topic,
            "INGEST_METRICS_PORT": "0",
            "LOG_LEVEL": "WARNING",
        }
        floor = faust_floor_rate(env)
        log.info("bare Faust agent: %.0f events/s", floor)
        with tempfile.TemporaryFile() as out:
            start = time.monotonic()
            worker = recstream_child("ingest", env, out)
            try:
                first_landing, landed_first = None, 0
                while (landed := landed_offsets(target)) < EVENTS:
                    if worker.poll() is not None:
                        out.seek(0)
                        raise RuntimeError(
                            f"ingest worker died: {out.read()[-2000:].decode(errors='replace')}"
                        )
                    if landed and first_landing is None:
                        first_landing, landed_first = time.monotonic() - start, landed
                    time.sleep(0.25)
                seconds = time.monotonic() - start
            finally:
                stop_child(worker, timeout=30)
    rate = EVENTS / seconds
    steady = (EVENTS - landed_first) / (seconds - (first_landing or 0))
    log.info("ingest: %.0f events/s (%.1fs, first object after %.1fs)", rate, seconds, first_landing or 0)
    path = write_result(
        "ingest",
        rate,
        "events/s",
        limit,
        "bare aiokafka consumer reading the same topic, same run",
        events=EVENTS,
        seconds=round(seconds, 2),
        first_object_after_s=round(first_landing or 0, 2),
        flush_events=settings.ingest_flush_events,
        # From the first landed object on: start-up and group join excluded, as in the Faust probe.
        steady_events_per_s=round(steady, 1),
        bare_faust_agent_events_per_s=round(floor, 1),
        steady_ratio_to_bare_faust_agent=round(steady / floor, 3),
    )
    print(path.read_text())


if __name__ == "__main__":
    setup_logging()
    main()
