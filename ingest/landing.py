"""Durable writes of a batch to the object store: Parquet objects and the partition's flush marker.

The marker (`_ingest/<topic>/<partition>.json`) is written before the objects and names the
offset range being flushed. A worker that dies before committing leaves it behind; the
next owner of the partition reads it and ends its first batch at the same offset, so the
same objects are rewritten with the same names and rows: exactly once in the store.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from minio import Minio
from minio.error import S3Error

from ingest.batches import Batch
from stream.schemas import Transaction

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("quantity", pa.int32()),
        ("ts", pa.float64()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
    ]
)


def to_parquet(rows: list[tuple[int, Transaction]], partition: int) -> bytes:
    table = pa.table(
        {
            "event_id": [e.event_id for _, e in rows],
            "user_id": [e.user_id for _, e in rows],
            "item_id": [e.item_id for _, e in rows],
            "quantity": [e.quantity for _, e in rows],
            "ts": [e.ts for _, e in rows],
            "partition": [partition] * len(rows),
            "offset": [offset for offset, _ in rows],
        },
        schema=SCHEMA,
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class Marker:
    first: int
    last: int
    objects: list[str]
    dead_lettered: bool = False


class Backoff:
    """Capped exponential backoff: a store call is retried until it succeeds, never given up on,
    because giving up would mean committing offsets of rows that are not stored."""

    def __init__(
        self, initial_s: float = 0.2, cap_s: float = 5.0, on_retry: Callable[[], None] | None = None
    ):
        self.initial_s, self.cap_s, self.on_retry = initial_s, cap_s, on_retry

    def run(self, what: str, call: Callable[[], T]) -> T:
        delay = self.initial_s
        while True:
            try:
                return call()
            except Exception as exc:  # S3Error, urllib3 and socket errors alike: the store is not there
                log.warning("%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay)
                if self.on_retry:
                    self.on_retry()
                time.sleep(delay)
                delay = min(delay * 2, self.cap_s)


class Lander:
    def __init__(self, client: Minio, bucket: str, topic: str, backoff: Backoff) -> None:
        self.client, self.bucket, self.topic, self.backoff = client, bucket, topic, backoff

    def marker_name(self, partition: int) -> str:
        return f"_ingest/{self.topic}/{partition:05d}.json"

    def read_marker(self, partition: int) -> Marker | None:
        def get() -> Marker | None:
            try:
                response = self.client.get_object(self.bucket, self.marker_name(partition))
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    return None
                raise
            try:
                return Marker(**json.loads(response.read()))
            finally:
                response.close()
                response.release_conn()

        return self.backoff.run(f"read marker of partition {partition}", get)

    def _put(self, name: str, data: bytes, content_type: str) -> None:
        self.backoff.run(
            f"write {name}",
            lambda: self.client.put_object(
                self.bucket, name, io.BytesIO(data), len(data), content_type=content_type
            ),
        )

    def write_marker(self, partition: int, marker: Marker) -> None:
        self._put(self.marker_name(partition), json.dumps(asdict(marker)).encode(), "application/json")

    def land(self, batch: Batch) -> Marker:
        """Write the marker, then every object of the batch."""
        assert batch.first is not None and batch.last is not None
        objects = batch.objects()
        marker = Marker(batch.first, batch.last, sorted(objects))
        self.write_marker(batch.partition, marker)
        for name, rows in objects.items():
            self._put(name, to_parquet(rows, batch.partition), "application/vnd.apache.parquet")
        return marker
