"""Faust's aiokafka transport with the fetch wait as a setting (KAFKA_FETCH_MAX_WAIT_MS).

Faust's aiokafka driver hard-codes `fetch_max_wait_ms=1500` for worker consumers. Against a
broker that completes a fetch as soon as records arrive (Apache Kafka) that only bounds idle
polling; the embedded broker (Tansu 0.6) holds every fetch until the wait runs out, so the
wait is added to every hop. This driver is registered under the URL scheme `recstream://`
through Faust's own `faust.transports` entry point (pyproject.toml), so no site-packages
edit is needed; `stream.faust_app.create_app` uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "recstream"
KAFKA_DEFAULT_WAIT_MS = 500  # Kafka's own fetch.max.wait.ms, for an app that did not set one


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka passes this attribute to its Fetcher at start(); the consumer is not started yet.
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", KAFKA_DEFAULT_WAIT_MS)
        return consumer

    async def _highwaters(self, partitions: list[Any]) -> Mapping[Any, int]:
        """The end offsets table recovery reads up to, as a fetch reports them.

        Tansu 0.6 answers ListOffsets with an end that can stay several records short until the
        next write (40 records written, 35 listed, for good). Faust's recovery would stop short of
        a changelog's last records (a moved user's last purchases forgotten) and, with a RocksDB
        store whose persisted offset is past that end, crash (ConsistencyError). A fetch carries
        the true high watermark, so each listed end is checked with one."""
        listed = dict(await super()._highwaters(partitions))
        if not listed or self.consumer.in_transaction:
            return listed
        transport = cast(faust_aiokafka.Transport, self.transport)  # the driver this thread belongs to
        servers = faust_aiokafka.server_list(transport.url, transport.default_port)
        return await fetched_highwaters(servers, listed)


HIGHWATER_FETCH_WAIT_MS = 100
HIGHWATER_TIMEOUT_S = 10.0


async def fetched_highwaters(servers: list[str], listed: Mapping[Any, int]) -> dict[Any, int]:
    """`listed` (partition -> end offset) raised to the high watermark a fetch near it returns."""
    import asyncio

    from recstream.stream.consumers import aio_consumer

    consumer = aio_consumer(bootstrap=servers, fetch_max_wait_ms=HIGHWATER_FETCH_WAIT_MS)
    await consumer.start()
    try:
        consumer.assign(list(listed))
        for tp, end in listed.items():
            consumer.seek(tp, max(end - 1, 0))
        deadline = asyncio.get_running_loop().time() + HIGHWATER_TIMEOUT_S
        while any(consumer.highwater(tp) is None for tp in listed):
            if asyncio.get_running_loop().time() > deadline:
                break  # the listed ends then: what Faust would have used anyway
            await consumer.getmany(timeout_ms=200, max_records=1)
        return {tp: max(end, consumer.highwater(tp) or 0) for tp, end in listed.items()}
    finally:
        await consumer.stop()


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
