"""Per-partition batches of consumed records: what to write, what to dead-letter, when to flush.

Pure logic (no I/O), so the exactly-once rules can be tested without a broker: a batch
covers a contiguous offset range of one partition, and its rows are split by the UTC
date of each event's time into objects whose names derive from the offsets they hold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from recstream.stream.contracts.lake import event_date, object_name
from recstream.stream.contracts.records import Transaction


@dataclass(frozen=True, slots=True)
class DeadLetter:
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str


@dataclass
class Batch:
    """Records of one partition from `first` to `last` offset, in offset order."""

    partition: int
    rows: list[tuple[int, Transaction]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    first: int | None = None
    last: int | None = None
    started: float = field(default_factory=time.monotonic)
    updated: float = field(default_factory=time.monotonic)  # when the last record was added

    def __len__(self) -> int:
        return len(self.rows) + len(self.dead)

    def _track(self, offset: int) -> None:
        self.updated = time.monotonic()
        if self.first is None:
            self.first = offset
            self.started = self.updated
        self.last = offset

    def add(self, offset: int, event: Transaction) -> None:
        self._track(offset)
        self.rows.append((offset, event))

    def add_dead(self, letter: DeadLetter) -> None:
        self._track(letter.offset)
        self.dead.append(letter)

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
            len(self) >= max_events
            or now - self.started >= max_age_s
            or (idle_s is not None and now - self.updated >= idle_s)
        )

    def objects(self) -> dict[str, list[tuple[int, Transaction]]]:
        """Rows grouped into objects by event date; each object named by its own first/last offset."""
        by_date: dict[str, list[tuple[int, Transaction]]] = {}
        for offset, event in self.rows:
            by_date.setdefault(event_date(event.ts), []).append((offset, event))
        return {
            object_name(date, self.partition, rows[0][0], rows[-1][0]): rows
            for date, rows in sorted(by_date.items())
        }
