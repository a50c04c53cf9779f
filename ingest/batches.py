"""Per-partition batches of consumed records, and when to flush them.

Pure logic (no I/O), so the exactly-once rules can be tested without a broker: a batch
covers a contiguous offset range of one partition. It holds the records as they came off
the topic; validating and encoding them is the flush's work (ingest.encoding), off the
event loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# A consumed record as the flush needs it: offset, key, value, broker timestamp (epoch seconds).
# A plain tuple: one is built per record on the event loop, where every microsecond counts.
Record = tuple[int, bytes | None, bytes | None, float | None]


@dataclass
class Batch:
    """Records of one partition from `first` to `last` offset, in offset order."""

    partition: int
    records: list[Record] = field(default_factory=list)
    first: int | None = None
    last: int | None = None
    started: float = field(default_factory=time.monotonic)
    updated: float = field(default_factory=time.monotonic)  # when the last record was added

    def __len__(self) -> int:
        return len(self.records)

    def add(self, offset: int, key: bytes | None, value: bytes | None, timestamp: float | None) -> None:
        self.updated = time.monotonic()
        if self.first is None:
            self.first = offset
            self.started = self.updated
        self.last = offset
        self.records.append((offset, key, value, timestamp))

    def due(
        self,
        max_events: int,
        max_age_s: float,
        boundary: int | None,
        now: float | None = None,
        idle_s: float | None = None,
    ) -> bool:
        """Flush at the size or age limit, once idle for `idle_s` (the end of a burst need not wait
        for the age limit), or exactly at a boundary left by an unfinished earlier flush."""
        if self.first is None:
            return False
        if boundary is not None and self.first <= boundary:
            return self.last is not None and self.last >= boundary
        now = now if now is not None else time.monotonic()
        return (
            len(self.records) >= max_events
            or now - self.started >= max_age_s
            or (idle_s is not None and now - self.updated >= idle_s)
        )
