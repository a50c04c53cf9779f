"""The scorer's request path: requests consumed and answered apart from Faust, in a thread of their own.

Faust feeds every agent of a worker from one fetch loop and one event loop: a backlog of
purchases (a bulk load, a changelog recovery) keeps both busy, and a request waits behind
thousands of purchases. Here requests have
- their own thread and event loop, so the purchases agent taking a backlog into the table
  cannot hold a request's turn longer than the interpreter's switch interval;
- their own aiokafka consumer and producer, with their own fetch wait
  (KAFKA_REQUEST_FETCH_MAX_WAIT_MS) and bootstrap (REQUESTS_KAFKA_BOOTSTRAP), so the request
  topics may live on a faster broker;
- the same partitions as the worker's share of `transactions` (requests and purchases are both
  keyed by user_id, with the same partition count), followed as Faust rebalances, so a request
  is answered by the worker whose table holds that user's purchases.

Answering is a pipeline: each fetched batch is answered (one Predict) and its answers handed to
the producer in a task of its own, and the next batch is fetched meanwhile, so a request waits
for at most one fetch, not for the Predicts of the batches before it. A committer commits, in
fetch order, the offsets of batches whose answers were all delivered, coalescing what is ready
into one commit; at most IN_FLIGHT batches are being answered or wait for it. Every request is
answered at least once: a failure anywhere (the request broker overloaded or restarting) rewinds
to the committed offsets and answers again after a backoff (stream.retry.REQUEST_CYCLE; clients
keep the first answer by request_id), never abandoning a request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import Counter

from recstream.stream import retry
from recstream.stream.consumers import aio_consumer
from recstream.stream.contracts.recommendations import encode
from recstream.stream.settings import Settings

log = logging.getLogger(__name__)

GROUP = "recstream-scorer-requests"
IDLE_S = 0.1  # wait between looks at the assignment while this worker owns no partition
IN_FLIGHT = 8  # batches fetched but not yet committed
PREDICTING = 2  # batches in Predict at once: more split a load into smaller, dearer Predicts
STOP_TIMEOUT_S = 10.0

FAILURES = Counter(
    "recstream_scorer_request_path_failures_total", "Request cycles that failed and were retried"
)

Serve = Callable[[Sequence[tuple[bytes | None, float]]], Awaitable[list[tuple[str, dict[str, object]]]]]
# A batch being answered (its task returns the answers' delivery futures), offsets to commit after.
Batch = tuple["asyncio.Future[list[asyncio.Future[Any]]]", dict[Any, int]]


class RequestPath:
    """Answers requests in its own thread; `run` (a Faust task) starts the thread and stops it."""

    def __init__(self, settings: Settings, owned: Callable[[], set[int]], serve: Serve) -> None:
        self.settings, self.owned, self.serve = settings, owned, serve
        self.assigned: set[int] = set()

    async def run(self) -> None:
        """Run the request thread for as long as this task runs; a thread that dies ends the worker."""
        loop = asyncio.new_event_loop()
        main: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(target=self._thread, args=(loop, main), name="request-path", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                await asyncio.sleep(0.2)
            raise RuntimeError("the request path's thread ended")
        finally:
            if thread.is_alive():
                loop.call_soon_threadsafe(main.cancel)
                await asyncio.to_thread(thread.join, STOP_TIMEOUT_S)

    def _thread(self, loop: asyncio.AbstractEventLoop, main: asyncio.Future[None]) -> None:
        asyncio.set_event_loop(loop)
        try:
            task = loop.create_task(self._answer_forever())
            main.add_done_callback(lambda _: task.cancel())
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            log.info("request path stopped")
        except Exception:
            log.exception("the request path failed")
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _answer_forever(self) -> None:
        from aiokafka import AIOKafkaProducer

        settings = self.settings
        bootstrap = settings.requests_kafka_bootstrap
        consumer = aio_consumer(
            settings=settings,
            bootstrap=bootstrap,
            group_id=GROUP,  # assigned partitions, never subscribed: the group only keeps offsets
            offset_reset="earliest",  # requests older than SCORER_DEADLINE_S get an error answer
            fetch_max_wait_ms=settings.kafka_request_fetch_max_wait_ms,
        )
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
        await consumer.start()
        await producer.start()

        def log_retry(exc: BaseException, delay: float) -> None:
            name = type(exc).__name__
            log.warning("request path: %s: %s; again from the committed offsets in %.1fs", name, exc, delay)

        try:
            while True:  # a cycle that ends without failing starts again from the first delay
                # A broker that times out or restarts is never the end of answering.
                cycles = retry.forever_async(retry.REQUEST_CYCLE, log_retry=log_retry, on_retry=FAILURES.inc)
                async for attempt in cycles:
                    if attempt.retry_state.attempt_number > 1:
                        await self._rewind(consumer)
                    with attempt:
                        await self._answer(consumer, producer)
        finally:
            await producer.stop()
            await consumer.stop()

    async def _answer(self, consumer: Any, producer: Any) -> None:
        """Fetch, answer and hand over batches while a committer commits them in order."""
        from aiokafka import TopicPartition

        settings = self.settings
        delivered: asyncio.Queue[Batch] = asyncio.Queue(maxsize=IN_FLIGHT)
        predicting = asyncio.Semaphore(PREDICTING)
        committer = asyncio.ensure_future(self._commit_in_order(consumer, delivered))
        try:
            while True:
                wanted = self.owned()
                if wanted != self.assigned:
                    await _drained(delivered, committer)  # what the old owner answered stays answered
                    consumer.assign([TopicPartition(settings.requests_topic, p) for p in sorted(wanted)])
                    log.info("answering requests of partitions %s", sorted(wanted))
                    self.assigned = wanted
                if not self.assigned:
                    await asyncio.sleep(IDLE_S)
                    continue
                fetched = await consumer.getmany(timeout_ms=200, max_records=settings.scorer_batch_size)
                if committer.done():
                    committer.result()  # a failed delivery or commit: raise it here, and rewind
                batch = [record for records in fetched.values() for record in records]
                if not batch:
                    continue
                await predicting.acquire()  # meanwhile requests gather into the next, larger batch
                answering = asyncio.ensure_future(self._answer_batch(producer, batch, predicting))
                offsets = {tp: records[-1].offset + 1 for tp, records in fetched.items()}
                try:
                    await _put(delivered, (answering, offsets), committer)
                except BaseException:  # not queued: the rewind answers it again
                    answering.cancel()
                    raise
        finally:
            if not committer.done():
                committer.cancel()
                await asyncio.gather(committer, return_exceptions=True)
            while not delivered.empty():  # the rewind answers these again
                delivered.get_nowait()[0].cancel()

    async def _answer_batch(
        self, producer: Any, batch: list[Any], predicting: asyncio.Semaphore
    ) -> list[asyncio.Future[Any]]:
        """One Predict for the batch; its answers handed to the producer (their delivery futures)."""
        topic = self.settings.recommendations_topic
        try:
            answers = await self.serve([(record.value, record.timestamp / 1000) for record in batch])
        finally:
            predicting.release()
        return [await producer.send(topic, encode(record), key=key.encode()) for key, record in answers]

    async def _commit_in_order(self, consumer: Any, delivered: asyncio.Queue[Batch]) -> None:
        """Commit batches in fetch order once their answers are delivered, the waiting ones at once."""
        while True:
            batches = [await delivered.get()]
            batches += [delivered.get_nowait() for _ in range(delivered.qsize())]
            ready: dict[Any, int] = {}
            for answering, offsets in batches:
                await asyncio.gather(*await answering)  # raises a failed Predict or delivery
                ready.update(offsets)
            await consumer.commit(ready)
            for _ in batches:
                delivered.task_done()

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


async def _put(queue: asyncio.Queue[Batch], batch: Batch, committer: asyncio.Future[None]) -> None:
    """Queue a batch for the committer, waiting while IN_FLIGHT are undelivered; raise its failure."""
    put = asyncio.ensure_future(queue.put(batch))
    await asyncio.wait([put, committer], return_when=asyncio.FIRST_COMPLETED)
    if committer.done():
        put.cancel()
        committer.result()
        raise RuntimeError("the committer stopped")


async def _drained(queue: asyncio.Queue[Batch], committer: asyncio.Future[None]) -> None:
    """Wait until every queued batch is committed; raise the committer's failure."""
    joined = asyncio.ensure_future(queue.join())
    await asyncio.wait([joined, committer], return_when=asyncio.FIRST_COMPLETED)
    if committer.done():
        joined.cancel()
        committer.result()
        raise RuntimeError("the committer stopped")
