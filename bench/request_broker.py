"""The request broker's cost as requests pile up: Tansu's memory engine keeps every batch.

The request path's broker (deploy/local/broker.memory_command) never deletes anything: Tansu 0.6
has no retention on its memory engine and answers DeleteRecords by closing the connection. This
measures what that does to the request path: a step of 300 records/s, each produced alone (as a
client's request is) and read at the tail by a consumer with the request path's fetch wait,
first on a fresh broker, then after each 10,000 more single-record produce requests. Per step:
the broker's CPU (cores) and the hop from produce to consume (p50, p99). The figure is the
broker's CPU for the last step, the limit the same step on the fresh broker; their ratio is
how much dearer the same load has become.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.common import setup_logging, write_result
from bench.serving import percentile
from recstream.deploy.local import broker
from recstream.deploy.local.processes import cpu_seconds, free_port, stop_child
from recstream.stream.settings import load_settings

log = logging.getLogger("bench.request_broker")
RATE = 300  # requests/s, the step bench/scorer holds to p99 <= 50 ms
STEP = 1500  # records a step: 5 s
FILLS = 2  # times FILL single-record produce requests between steps (a third: minutes saturated)
FILL = 10_000
TOPIC = "bench-requests"


async def step(
    pid: int, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer, stored: int
) -> dict[str, Any]:
    """RATE records/s for STEP records, each its own produce request, read at the tail."""
    hops: list[float] = []

    async def read() -> None:
        while len(hops) < STEP:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                now = time.time() * 1000
                hops.extend(now - record.timestamp for record in records)

    before, started = cpu_seconds(pid), time.monotonic()
    reader = asyncio.create_task(read())
    for index in range(STEP):
        await producer.send(TOPIC, b"r" * 200, key=str(index).encode())
        await asyncio.sleep(max(0.0, started + (index + 1) / RATE - time.monotonic()))
    await asyncio.wait_for(reader, timeout=300)
    cores = (cpu_seconds(pid) - before) / (time.monotonic() - started)
    result = {
        "batches_stored_before": stored,
        "broker_cores": round(cores, 3),
        "hop_p50_ms": round(percentile(hops, 50), 1),
        "hop_p99_ms": round(percentile(hops, 99), 1),
    }
    log.info("after %d stored batches: %s", stored, result)
    return result


async def at_end(consumer: AIOKafkaConsumer) -> None:
    """Resolve the consumer's position to the end now: a lazy one would skip the step's first records."""
    await consumer.seek_to_end()
    for tp in consumer.assignment():
        await consumer.position(tp)


async def measure(pid: int, bootstrap: str, partitions: int, fetch_wait_ms: int) -> list[dict[str, Any]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id="bench-request-broker",
        auto_offset_reset="latest",
        fetch_max_wait_ms=fetch_wait_ms,
    )
    await producer.start()
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
        await at_end(consumer)
        steps, stored = [], 0
        for fill in range(FILLS + 1):
            steps.append(await step(pid, producer, consumer, stored))
            stored += STEP
            if fill == FILLS:
                break
            for index in range(FILL):  # one request each, as clients send them
                await producer.send_and_wait(TOPIC, b"f" * 200, key=str(index).encode())
            stored += FILL
            await at_end(consumer)
        return steps
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    settings = load_settings({}, environ={}, use_stack_env=False)
    port = free_port()
    argv, env = broker.memory_command(port)
    with open(os.devnull, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        time.sleep(1.0)
        steps = asyncio.run(
            measure(
                proc.pid,
                f"127.0.0.1:{port}",
                settings.topic_partitions,
                settings.kafka_request_fetch_max_wait_ms,
            )
        )
    finally:
        stop_child(proc, timeout=10)
    path = write_result(
        "request_broker",
        steps[-1]["broker_cores"],
        f"request broker CPU cores at {RATE} requests/s after {steps[-1]['batches_stored_before']:,} batches",
        steps[0]["broker_cores"],
        f"the same step on a fresh broker, same run ({settings.topic_partitions} partitions, "
        f"fetch wait {settings.kafka_request_fetch_max_wait_ms} ms)",
        steps=steps,
    )
    print(path.read_text())


if __name__ == "__main__":
    setup_logging()
    main()
