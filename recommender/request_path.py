"""The scorer's request path: requests consumed and answered apart from Faust's fetcher.

Faust feeds every agent of a worker from one fetch loop; a backlog of purchases (a bulk
load, a changelog recovery) fills it, and a request waits behind thousands of purchases.
Here requests have their own aiokafka consumer and producer:
- its own fetch wait (KAFKA_REQUEST_FETCH_MAX_WAIT_MS), and its own bootstrap
  (REQUESTS_KAFKA_BOOTSTRAP), so the request topics may live on a faster broker;
- the same partitions as the worker's share of `transactions` (requests and purchases are
  both keyed by user_id, with the same partition count), followed as Faust rebalances, so a
  request is answered by the worker whose table holds that user's purchases;
- each fetch is answered as one batch, the answers are flushed, then the offsets committed
  under the group `recstream-scorer-requests`: every request answered at least once. A cycle
  that fails (the request broker overloaded or restarting) is retried with backoff from the
  committed offsets, never abandoned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import Counter

from stream.settings import Settings

log = logging.getLogger(__name__)

GROUP = "recstream-scorer-requests"
IDLE_S = 0.1  # wait between looks at the assignment while this worker owns no partition
RETRY_MIN_S, RETRY_MAX_S = 0.1, 5.0  # after a failed cycle (the request broker timed out, restarted)

FAILURES = Counter(
    "recstream_scorer_request_path_failures_total", "Request cycles that failed and were retried"
)

Serve = Callable[[Sequence[tuple[bytes | None, float]]], Awaitable[list[tuple[str, dict[str, object]]]]]


class RequestPath:
    def __init__(self, settings: Settings, owned: Callable[[], set[int]], serve: Serve) -> None:
        self.settings, self.owned, self.serve = settings, owned, serve
        self.assigned: set[int] = set()

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        settings = self.settings
        bootstrap = settings.requests_kafka_bootstrap
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=GROUP,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # requests older than SCORER_DEADLINE_S get an error answer
            fetch_max_wait_ms=settings.kafka_request_fetch_max_wait_ms,
        )
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
        await consumer.start()
        await producer.start()
        delay = RETRY_MIN_S
        try:
            while True:
                try:
                    await self._cycle(consumer, producer)
                    delay = RETRY_MIN_S
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a broker that times out or restarts: never the end of answering
                    FAILURES.inc()
                    log.warning("request path: %s: %s; again from the committed offsets in %.1fs",
                                type(exc).__name__, exc, delay)  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    await self._rewind(consumer)
        finally:
            await producer.stop()
            await consumer.stop()

    async def _cycle(self, consumer: Any, producer: Any) -> None:
        """Follow the assignment, answer one fetch, flush the answers, commit."""
        from aiokafka import TopicPartition

        from recommender.answers import encode

        settings = self.settings
        wanted = self.owned()
        if wanted != self.assigned:
            consumer.assign([TopicPartition(settings.requests_topic, p) for p in sorted(wanted)])
            log.info("answering requests of partitions %s", sorted(wanted))
            self.assigned = wanted
        if not self.assigned:
            await asyncio.sleep(IDLE_S)
            return
        fetched = await consumer.getmany(timeout_ms=200, max_records=settings.scorer_batch_size)
        batch = [record for records in fetched.values() for record in records]
        if not batch:
            return
        answers = await self.serve([(record.value, record.timestamp / 1000) for record in batch])
        sent = [
            await producer.send(settings.recommendations_topic, encode(record), key=key.encode())
            for key, record in answers
        ]
        await asyncio.gather(*sent)
        await consumer.commit({tp: records[-1].offset + 1 for tp, records in fetched.items()})

    async def _rewind(self, consumer: Any) -> None:
        """Back to the committed offsets: requests fetched but not known answered are answered again
        (clients keep the first answer by request_id)."""
        for tp in consumer.assignment():
            try:
                committed = await consumer.committed(tp)
            except Exception as exc:  # the broker is still away: the next failure rewinds again
                log.warning("request path: no committed offset for %s yet: %s", tp, exc)
                return
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
