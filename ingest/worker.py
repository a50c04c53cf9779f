"""`recstream ingest`: the Faust worker that lands `transactions` in the object store exactly once.

Per partition, records are buffered into a batch; a batch is flushed when it reaches
INGEST_FLUSH_EVENTS or INGEST_FLUSH_S, when no record has arrived on the partition for
INGEST_IDLE_FLUSH_S (a burst's tail lands at once), or exactly at the end of a flush that an earlier
owner of the partition did not commit (see ingest.landing). A flush writes the marker and
the Parquet objects (retrying while the store is down: consumption pauses, nothing is
committed), sends invalid records to the dead-letter topic with their reason, and only
then commits their offsets. The event loop only buffers records: validation and Parquet
building run in the encoder process (ingest.encoder).

Faust's acks are off for `transactions` (`acks=False`): a flush commits its batch's end offset
itself, so Faust neither tracks each record as unacked nor is asked to ack it, and a record's
Faust event is dropped as soon as it is buffered. With that, and without Faust's Monitor sensor
(stream.faust_app), one worker takes records at about 0.9 of the rate of a Faust agent that only
counts (README, ingest throughput).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import time
from collections import defaultdict
from typing import Any, cast

from faust.types import TP
from prometheus_client import Counter, Gauge, Histogram

from recstream.ingest.batches import Batch
from recstream.ingest.encoder import Encoder
from recstream.ingest.encoding import Encoded
from recstream.ingest.landing import Backoff, Lander, Marker
from recstream.stream.contracts import dead_letters
from recstream.stream.contracts import metrics as metric_names
from recstream.stream.faust_app import create_app
from recstream.stream.settings import Settings
from recstream.stream.storage import make_client

log = logging.getLogger(__name__)
DLQ_SCAN_IDLE_POLLS = 60
COMMIT_ATTEMPTS = 500  # about 10 s of retries while a rebalance refuses commits (IngestWorker._commit)
FLUSH_FAILED_EXIT = 70  # EX_SOFTWARE


RECEIVED = Counter(metric_names.INGEST_RECEIVED, "Records taken from transactions (before validation)")
RECEIVED_EXPORT_S = 0.25  # how often the records taken are added to RECEIVED (IngestWorker.received)
EVENTS = Counter(metric_names.INGEST_EVENTS, "Records of flushed batches, by validation", ["result"])
ROWS = Counter(metric_names.INGEST_ROWS_WRITTEN, "Rows written to Parquet objects")
OBJECTS = Counter("recstream_ingest_objects_written_total", "Parquet objects written")
DEAD = Counter(metric_names.INGEST_DLQ, "Records sent to the dead-letter topic", ["reason"])
STORE_RETRIES = Counter("recstream_ingest_store_retries_total", "Object store calls retried")
FLUSH = Histogram(
    "recstream_ingest_flush_seconds",
    "Time to land a batch, dead-letter and commit",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
VALID, INVALID = EVENTS.labels("valid"), EVENTS.labels("invalid")
LAG = Gauge(
    metric_names.INGEST_CONSUMER_LAG, "Records behind the high watermark at the last flush", ["partition"]
)
REDELIVERED = Counter(
    "recstream_ingest_redelivered_batches_total", "Batches rewritten after an uncommitted flush"
)


def _reason_kind(reason: str) -> str:
    """A bounded label for metrics: the field the reason names."""
    return reason.split(":", 1)[0][:32]


def _stop_on_failure(task: asyncio.Task[None]) -> None:
    """A failed flush stops the worker at once, as a kill -9 would.

    Offsets are committed per batch (acks are off), so a later batch of the partition would commit
    past the failed one's records. Restarted (by `recstream up`'s supervisor or the orchestrator),
    the worker resumes from the committed offset and the partition's marker: the path the kill -9
    tests cover. A flush fails only past the retries (the store's are endless): a DLQ send the
    broker refused, a batch that killed two encoder processes."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("flush failed; stopping so that nothing past it is committed", exc_info=task.exception())
        os._exit(FLUSH_FAILED_EXIT)


class IngestWorker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Buffered records are committed only when flushed, so Faust must not wait for them before a
        # rebalance or shutdown (with acks on, it waited forever); they are redelivered instead.
        self.app = create_app("ingest", settings, stream_wait_empty=False, faust_monitor=False)
        self.source = self.app.topic(
            settings.transactions_topic, key_serializer="raw", value_serializer="raw", acks=False
        )
        self.dlq = self.app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
        self.encoder = Encoder(settings.transactions_topic, settings.event_max_future_s)
        self.lander = Lander(
            make_client(settings),
            settings.data_bucket,
            settings.transactions_topic,
            Backoff(on_retry=STORE_RETRIES.inc),
        )
        self.batches: dict[int, Batch] = {}
        # Records taken, counted as a plain int on the hot path (a Counter's inc() took 0.8 µs of a
        # record's 65, for its lock) and added to RECEIVED every RECEIVED_EXPORT_S.
        self.received = self.exported = 0
        # The marker found when a partition's first record arrived after assignment; None once we own it.
        self.markers: dict[int, Marker | None] = {}
        # At most one flush in flight per partition, so consumption goes on while a batch is written
        # and flushes (hence commits) of one partition stay in offset order.
        self.flushing: dict[int, asyncio.Task[None]] = {}
        self.locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.app.agent(self.source, name="land-transactions")(self._agent)
        # Often enough that an idle batch waits little past INGEST_IDLE_FLUSH_S.
        interval = min(1.0, settings.ingest_flush_s, settings.ingest_idle_flush_s) / 4
        self.app.timer(interval=interval)(self._flush_aged)
        self.app.timer(interval=RECEIVED_EXPORT_S)(self._export_received)
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]  # (sender, revoked)

    async def _agent(self, stream: Any) -> None:
        # One loop, no call per record: this is the worker's hot path (README, ingest throughput).
        batches, locks = self.batches, self.locks
        stream = stream.noack()
        async for _value in stream:
            message = stream.current_event.message
            partition = message.partition
            self.received += 1
            batch = batches.get(partition)
            if batch is None or locks[partition].locked():  # a new batch, or a flush starting
                batch = await self._open(partition)
            # Most records take no lock: nothing awaits from here to the flush check, so no flush
            # starts or ends in between.
            batch.add(message.offset, message.key, message.value, message.timestamp)
            if self._due(partition):
                async with locks[partition]:  # a task woken for it may take it first and flush it
                    if partition in batches and self._due(partition):
                        await self._start_flush(partition)

    async def _open(self, partition: int) -> Batch:
        """The partition's batch, started if there is none, once a flush starting has taken the last."""
        async with self.locks[partition]:
            if partition not in self.markers:
                self.markers[partition] = await asyncio.to_thread(self.lander.read_marker, partition)
            return self.batches.setdefault(partition, Batch(partition))

    async def _export_received(self) -> None:
        RECEIVED.inc(self.received - self.exported)
        self.exported = self.received

    def _due(self, partition: int) -> bool:
        marker = self.markers.get(partition)
        return self.batches[partition].due(
            self.settings.ingest_flush_events,
            self.settings.ingest_flush_s,
            marker.last if marker else None,
            idle_s=self.settings.ingest_idle_flush_s,
        )

    async def _flush_aged(self) -> None:
        for partition in list(self.batches):
            async with self.locks[partition]:
                if partition in self.batches and self._due(partition):
                    await self._start_flush(partition)

    async def _start_flush(self, partition: int) -> None:
        """Hand the partition's batch to a flush task; the caller holds the partition's lock.

        Waits for the partition's previous flush first, which bounds memory to one batch being
        written and one being filled per partition.
        """
        await self._wait_flushed(partition)
        batch = self.batches.pop(partition)
        previous, self.markers[partition] = self.markers.get(partition), None
        task = asyncio.create_task(self._flush(batch, previous))
        task.add_done_callback(_stop_on_failure)
        self.flushing[partition] = task

    async def _wait_flushed(self, partition: int) -> None:
        task = self.flushing.pop(partition, None)
        if task is not None:
            await task

    async def _flush(self, buffered: Batch, previous: Marker | None) -> None:
        """Encode, land, dead-letter, commit."""
        started = time.monotonic()
        partition = buffered.partition
        tp = TP(self.settings.transactions_topic, partition)
        batch = await self.encoder.encode(partition, buffered.records)
        highwater = self.app.consumer.highwater(tp)
        if highwater is not None:
            LAG.labels(str(partition)).set(max(0, highwater - batch.last - 1))
        redelivered = previous is not None and (previous.first, previous.last) == (batch.first, batch.last)
        if redelivered:
            REDELIVERED.inc()
            log.info("partition %d: rewriting uncommitted batch %d-%d", partition, batch.first, batch.last)
        marker = await asyncio.to_thread(self.lander.land, batch)
        if batch.dead and not (redelivered and previous is not None and previous.dead_lettered):
            # A redelivered batch may have had its dead letters sent just before the crash.
            await self._dead_letter(batch, skip=await self._sent_before(batch) if redelivered else set())
            await asyncio.to_thread(
                self.lander.write_marker, partition, dataclasses.replace(marker, dead_lettered=True)
            )
        await self._commit(tp, batch.last + 1)
        VALID.inc(batch.rows)
        INVALID.inc(len(batch.dead))
        ROWS.inc(batch.rows)
        OBJECTS.inc(len(marker.objects))
        FLUSH.observe(time.monotonic() - started)
        log.info(
            "partition %d: landed offsets %d-%d (%d rows in %d objects, %d dead-lettered)",
            partition,
            batch.first,
            batch.last,
            batch.rows,
            len(marker.objects),
            len(batch.dead),
        )

    async def _commit(self, tp: TP, next_offset: int) -> None:
        """Commit the partition's offset past the flushed batch; the flush is done only after it.

        Faust commits acked offsets only, and acks are off for this topic, so this calls the step
        Faust's own commit ends in, `Consumer._commit_offsets` (no public call takes offsets). It
        returns False for a partition no longer assigned, and while a rebalance refuses commits;
        a partition still ours is committed again until the rebalance is over, since a next batch
        landed before this one is committed would leave the marker naming only the next.
        """
        consumer = cast(Any, self.app.consumer)
        for _ in range(COMMIT_ATTEMPTS):
            if await consumer._commit_offsets({tp: next_offset}):
                return
            if tp not in consumer.assignment():
                log.info(
                    "partition %d: offset %d not committed: the partition moved", tp.partition, next_offset
                )
                return
            await asyncio.sleep(0.02)
        raise RuntimeError(
            f"partition {tp.partition}: offset {next_offset} not committed in {COMMIT_ATTEMPTS} tries"
        )

    def _dlq_partition(self, partition: int) -> int:
        return partition % self.settings.topic_partitions

    async def _sent_before(self, batch: Encoded) -> set[int]:
        """Offsets of this batch's dead letters already in the DLQ (read from its partition's start).

        Only a batch redelivered after a crash between sending its dead letters and marking them
        sent needs this, and the DLQ holds only invalid records, so the scan stays short.
        """
        from aiokafka import TopicPartition

        from recstream.stream.consumers import aio_consumer

        topic = self.settings.transactions_topic
        wanted = {dead_letters.source(topic, batch.partition, d.offset) for d in batch.dead}
        tp = TopicPartition(self.settings.dlq_topic, self._dlq_partition(batch.partition))
        consumer = aio_consumer(
            settings=self.settings, fetch_max_wait_ms=self.settings.kafka_fetch_max_wait_ms
        )
        await consumer.start()
        found: set[int] = set()
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            # Tansu's ListOffsets can lag behind; the high watermark of each fetch corrects it.
            end = (await consumer.end_offsets([tp]))[tp]
            idle = 0
            while idle < DLQ_SCAN_IDLE_POLLS:
                records = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
                idle = 0 if records else idle + 1
                for record in records:
                    source = dict(record.headers).get(dead_letters.SOURCE_HEADER)
                    if source in wanted:
                        found.add(dead_letters.offset_of(source))
                end = max(end, consumer.highwater(tp) or 0)
                if not records and await consumer.position(tp) >= end:
                    break
            else:
                raise RuntimeError(f"the DLQ partition {tp.partition} could not be read to its end")
        finally:
            await consumer.stop()
        if found:
            log.info("partition %d: %d dead letters were already sent", batch.partition, len(found))
        return found

    async def _dead_letter(self, batch: Encoded, skip: set[int]) -> None:
        topic = self.settings.transactions_topic
        pending = []
        for letter in batch.dead:
            if letter.offset in skip:
                continue
            pending.append(
                await self.dlq.send(
                    key=letter.key,
                    value=letter.value,
                    partition=self._dlq_partition(batch.partition),
                    headers=dead_letters.headers(letter.reason, topic, batch.partition, letter.offset),
                )
            )
            DEAD.labels(_reason_kind(letter.reason)).inc()
        await asyncio.gather(*pending)  # delivery confirmed before the offsets are committed

    async def _on_revoked(self, sender: Any, revoked: set[Any], **_: Any) -> None:
        """Drop what was buffered for partitions we lost: the new owner gets those records again."""
        for tp in revoked:
            if tp.topic != self.settings.transactions_topic:
                continue
            async with self.locks[tp.partition]:
                await self._wait_flushed(tp.partition)  # it commits while we still own the partition
                self.batches.pop(tp.partition, None)
                self.markers.pop(tp.partition, None)
            with contextlib.suppress(KeyError):  # its lag is the new owner's to report now
                LAG.remove(str(tp.partition))


def run(settings: Settings) -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM."""
    from recstream.stream.faust_app import run_worker
    from recstream.stream.metrics import serve_metrics

    serve_metrics(settings.metrics_host, settings.ingest_metrics_port)
    worker = IngestWorker(settings)
    # What start-up built lives as long as the process: out of the collector's way, a full
    # collection walks only the records held in batches (README, ingest throughput); the scorer's
    # bench showed no gain, so only ingest does it.
    gc.freeze()
    try:
        run_worker(worker.app, settings)
    finally:
        worker.encoder.close()
