"""The lake's contract: where landed transactions live and the Parquet they are written in.

Naming and format are separate from storage (as in Kafka Connect's S3 sink), and shared by
the writer (ingest) and every reader (the retrain dataset, lineage, the console), so neither
can drift from the other.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from recstream.stream.contracts.records import Transaction

PREFIX = "transactions"
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
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
CONTENT_TYPE = "application/vnd.apache.parquet"

_EPOCH = date(1970, 1, 1)
_FIRST_DAY, _LAST_DAY = (date.min - _EPOCH).days, (date.max - _EPOCH).days


def event_date(ts: float) -> str:
    """The UTC date of an epoch time, YYYY-MM-DD. Total: a flush must never fail on a row, so a
    time beyond what a date can hold maps to the first or last date, and NaN to the first
    (validated events never do either: records bound ts to (0, MAX_TS] and reject NaN)."""
    try:
        day = datetime.fromtimestamp(ts, tz=UTC).date()
    except (OverflowError, ValueError, OSError):
        days = _LAST_DAY if ts > 0 else _FIRST_DAY  # NaN > 0 is False
        if math.isfinite(ts):
            days = min(max(math.floor(ts / 86400), _FIRST_DAY), _LAST_DAY)
        day = _EPOCH + timedelta(days=days)
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}"


def date_prefix(day: str | None = None) -> str:
    """The prefix listing every date folder (None) or one date's objects."""
    return f"{PREFIX}/" if day is None else f"{PREFIX}/date={day}/"


def date_of_prefix(prefix: str) -> str:
    """The date of a folder listed under `date_prefix()`."""
    return prefix.removeprefix(f"{PREFIX}/date=").rstrip("/")


def object_name(date: str, partition: int, first: int, last: int) -> str:
    """DESIGN's name: a function of the offsets only, so a redelivered batch rewrites the same object."""
    return f"{PREFIX}/date={date}/part-{partition:05d}-{first:020d}-{last:020d}.parquet"


def parse_object_name(name: str) -> tuple[str, int, int, int]:
    """(date, partition, first, last) of an object written by `object_name`."""
    date_part, _, file_part = name.removeprefix(f"{PREFIX}/").partition("/")
    stem = file_part.removesuffix(".parquet")
    _, partition, first, last = stem.split("-")
    return date_part.removeprefix("date="), int(partition), int(first), int(last)


def marker_name(topic: str, partition: int) -> str:
    """The flush marker of one partition: the offset range being landed (ingest.landing)."""
    return f"_ingest/{topic}/{partition:05d}.json"


def to_parquet(rows: Sequence[tuple[int, Transaction]], partition: int) -> bytes:
    """One object's bytes: (offset, transaction) rows of one partition."""
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


def from_parquet(data: bytes, columns: Sequence[str] | None = None) -> pa.Table:
    """An object's rows, only the asked columns decoded."""
    return pq.read_table(io.BytesIO(data), columns=list(columns or COLUMNS))


def empty_frame_dtypes(columns: Sequence[str]) -> dict[str, object]:
    """The pandas dtype of each asked column, for a read that found no object."""
    return {name: SCHEMA.field(name).type.to_pandas_dtype() for name in columns}
