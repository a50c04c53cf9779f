"""Produce throughput of `recstream produce` on the seed file, against a bare producer's rate.

The figure is the full path (read the seed file, validate, serialize, send, wait for
every acknowledgement). The limit is kafka-python sending the same, already serialized
records with the same delivery settings to the same broker in the same run: what is left
when reading and validation cost nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from kafka import KafkaProducer

from bench.common import SEED, setup_logging, temporary_stack, write_result
from recstream.stream.contracts.records import Transaction
from recstream.stream.produce import produce_file
from recstream.stream.producer import EventProducer
from recstream.stream.sources import read_events

log = logging.getLogger("bench.produce")


def bare_rate(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_in_flight_requests_per_connection=1
    )
    start = time.monotonic()
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    seconds = time.monotonic() - start
    producer.close()
    return len(records) / seconds


def main() -> None:
    events = [e for _, e in read_events(SEED) if isinstance(e, Transaction)]
    records = [(e.user_id.encode(), e.to_json()) for e in events]
    with temporary_stack() as settings:
        limit = bare_rate(settings.require("kafka_bootstrap"), "bench-bare", records)
        log.info("bare producer: %.0f events/s", limit)
        target = dataclasses.replace(settings, transactions_topic="bench-produce")
        with EventProducer(target) as producer:
            report = produce_file(producer, SEED)
        log.info("recstream produce: %.0f events/s", report.rate)
    path = write_result(
        "produce",
        report.rate,
        "events/s",
        limit,
        "bare kafka-python producer, pre-serialized records, same broker and delivery settings",
        events=report.sent,
        seconds=round(report.seconds, 2),
        rejected=len(report.rejected),
    )
    print(path.read_text())


if __name__ == "__main__":
    setup_logging()
    main()
