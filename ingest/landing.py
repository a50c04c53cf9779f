"""Durable writes of a batch to the object store: Parquet objects and the partition's flush marker.

The marker (`_ingest/<topic>/<partition>.json`) is written before the objects and names the
offset range being flushed. A worker that dies before committing leaves it behind; the
next owner of the partition reads it and ends its first batch at the same offset, so the
same objects are rewritten with the same names and rows: exactly once in the store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

from minio import Minio

from recstream.ingest.encoding import Encoded
from recstream.stream import retry, storage
from recstream.stream.contracts import lake

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Marker:
    first: int
    last: int
    objects: list[str]
    dead_lettered: bool = False


class Backoff:
    """A store call retried until it succeeds, never given up on (stream.retry.STORE_CALL),
    because giving up would mean committing offsets of rows that are not stored."""

    def __init__(
        self, policy: retry.Policy = retry.STORE_CALL, on_retry: Callable[[], None] | None = None
    ) -> None:
        self.policy, self.on_retry = policy, on_retry

    def run(self, what: str, call: Callable[[], T]) -> T:
        def log_retry(exc: BaseException, delay: float) -> None:
            # S3Error, urllib3 and socket errors alike: the store is not there
            log.warning("%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay)

        return retry.forever(self.policy, log_retry=log_retry, on_retry=self.on_retry)(call)


class Lander:
    def __init__(self, client: Minio, bucket: str, topic: str, backoff: Backoff) -> None:
        self.client, self.bucket, self.topic, self.backoff = client, bucket, topic, backoff

    def marker_name(self, partition: int) -> str:
        return lake.marker_name(self.topic, partition)

    def read_marker(self, partition: int) -> Marker | None:
        def get() -> Marker | None:
            data = storage.read_object_or_none(self.client, self.bucket, self.marker_name(partition))
            return None if data is None else Marker(**json.loads(data))

        return self.backoff.run(f"read marker of partition {partition}", get)

    def _put(self, name: str, data: bytes, content_type: str) -> None:
        self.backoff.run(
            f"write {name}", lambda: storage.put_object(self.client, self.bucket, name, data, content_type)
        )

    def write_marker(self, partition: int, marker: Marker) -> None:
        self._put(self.marker_name(partition), json.dumps(asdict(marker)).encode(), "application/json")

    def land(self, batch: Encoded) -> Marker:
        """Write the marker, then every object of the batch."""
        marker = Marker(batch.first, batch.last, sorted(batch.objects))
        self.write_marker(batch.partition, marker)
        for name, data in batch.objects.items():
            self._put(name, data, lake.CONTENT_TYPE)
        return marker
