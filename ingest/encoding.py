"""A batch's records to what a flush writes: Parquet objects by event date, and dead letters.

Pure (no I/O, no clock but the one passed in), so the rules are tested without a broker, and
the same function runs in the encoder process (ingest.encoder). Validation happens here rather
than as each record arrives: it costs about as much CPU per record as Faust's own path, so it
is done a batch at a time, off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from recstream.ingest.batches import Record
from recstream.stream.contracts import lake
from recstream.stream.contracts.records import (
    InvalidMessage,
    Transaction,
    derive_event_id,
    future_limit,
    parse_transaction,
)

Row = tuple[int, Transaction]  # offset, event
DAY_S = 86400


@dataclass(frozen=True, slots=True)
class DeadLetter:
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str


@dataclass(frozen=True, slots=True)
class Encoded:
    """A batch ready to land: the offsets it covers, its objects (name -> Parquet), its dead letters."""

    partition: int
    first: int
    last: int
    objects: dict[str, bytes]
    rows: int
    dead: list[DeadLetter]


def validate(
    topic: str, partition: int, records: Sequence[Record], max_future_s: float, now: float
) -> tuple[list[Row], list[DeadLetter]]:
    """Valid records as rows; the rest as dead letters with their reason."""
    rows: list[Row] = []
    dead: list[DeadLetter] = []
    for offset, key, value, timestamp in records:
        try:
            event = parse_transaction(
                value,
                key=key,
                default_event_id=derive_event_id(topic, partition, offset),
                default_ts=timestamp,
                # Event time window: a far-future or undatable ts is a dead letter here, never
                # a flush that fails for good and stops the partition.
                max_ts=future_limit(max_future_s, now, timestamp),
            )
        except InvalidMessage as exc:
            dead.append(DeadLetter(offset, key, value, exc.reason))
        else:
            rows.append((offset, event))
    return rows, dead


def by_date(partition: int, rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Rows grouped into objects by event date; each object named by its own first/last offset."""
    dates: dict[int, str] = {}  # day number -> date: a batch spans few days, formatting is the cost
    groups: dict[str, list[Row]] = {}
    for row in rows:
        ts = row[1].ts
        day = int(ts // DAY_S)
        date = dates.get(day)
        if date is None:
            date = dates[day] = lake.event_date(ts)
        groups.setdefault(date, []).append(row)
    return {
        lake.object_name(date, partition, group[0][0], group[-1][0]): group
        for date, group in sorted(groups.items())
    }


def encode(
    topic: str, partition: int, records: Sequence[Record], max_future_s: float, now: float | None = None
) -> Encoded:
    """Validate a batch's records and build its Parquet objects."""
    if not records:
        raise ValueError("a flushed batch is never empty")
    rows, dead = validate(topic, partition, records, max_future_s, time.time() if now is None else now)
    objects = {name: lake.to_parquet(group, partition) for name, group in by_date(partition, rows).items()}
    return Encoded(partition, records[0][0], records[-1][0], objects, len(rows), dead)
