"""The lake's reader and landing barrier, shared by every stage that reads landed transactions.

`read_transactions` gives a time window as pandas. Only the date partitions that overlap the
window are listed and read, only the asked columns are decoded, and rows are deduplicated by
event_id as a last guard (the ingest path already writes each record exactly once).

`wait_until_landed` is the landing barrier: ingest commits a record's offset only once its
object is written, so a committed offset at the topic's end means every purchase sent so far
can be read from the store. A drift retrain waits for it before it reads its window: the
purchases that raised the alert must be in the data it learns from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa
from minio import Minio

from recstream.stream import storage
from recstream.stream.contracts.lake import (
    COLUMNS,
    date_of_prefix,
    date_prefix,
    empty_frame_dtypes,
    event_date,
    from_parquet,
)
from recstream.stream.faust_app import group_id
from recstream.stream.settings import Settings

log = logging.getLogger(__name__)


def object_names(
    client: Minio, bucket: str, first_day: str | None = None, last_day: str | None = None
) -> list[str]:
    """Names of the landed objects filed under the dates from `first_day` to `last_day` (None: open)."""
    days = (date_of_prefix(p.object_name) for p in client.list_objects(bucket, date_prefix()) if p.is_dir)
    names: list[str] = []
    for day in sorted(days):
        if (first_day and day < first_day) or (last_day and day > last_day):
            continue
        names.extend(o.object_name for o in client.list_objects(bucket, date_prefix(day), recursive=True))
    return names


def read_objects(client: Minio, bucket: str, names: list[str], columns: Sequence[str]) -> pd.DataFrame:
    """The rows of the objects `names`, only `columns` decoded (typed columns when there is none)."""
    tables = [from_parquet(storage.read_object(client, bucket, name), columns) for name in names]
    if not tables:
        return pd.DataFrame(
            {name: pd.Series(dtype=dtype) for name, dtype in empty_frame_dtypes(columns).items()}
        )
    return pa.concat_tables(tables).to_pandas()


def latest_per_event(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per event_id (the last landed), in event-time then offset order."""
    return frame.sort_values(["ts", "offset"], kind="stable").drop_duplicates("event_id", keep="last")


def read_transactions(
    client: Minio,
    bucket: str,
    *,
    start: float | None = None,
    end: float | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Transactions with start <= ts < end (epoch seconds; None = unbounded), one row per event_id."""
    columns = list(columns or COLUMNS)
    unknown = set(columns) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown columns: {sorted(unknown)}")
    wanted = list(dict.fromkeys([*columns, "event_id", "ts", "offset"]))  # needed to filter and dedupe
    names = object_names(
        client,
        bucket,
        event_date(start) if start is not None else None,
        event_date(end) if end is not None else None,
    )
    frame = read_objects(client, bucket, names, wanted)
    if start is not None:
        frame = frame[frame["ts"] >= start]
    if end is not None:
        frame = frame[frame["ts"] < end]
    frame = latest_per_event(frame)
    log.info("read %d transactions from %d objects", len(frame), len(names))
    return frame[columns].reset_index(drop=True)


def wait_until_landed(
    settings: Settings, timeout_s: float, poll_s: float = 0.5, stop: threading.Event | None = None
) -> dict[int, int] | None:
    """Wait until ingest has committed every `transactions` record sent before this call.

    Returns the end offset reached per partition (as the broker's ListOffsets gave it at the
    call: Tansu's can lag behind the log, and then the wait ends early). None (logged) when
    `timeout_s` passed first, e.g. with ingest down, or when `stop` is set: the caller goes on
    with what has landed.
    """
    from kafka import TopicPartition

    from recstream.stream.consumers import kafka_consumer

    consumer = kafka_consumer(
        settings=settings,
        group_id=group_id("ingest"),  # only reads the group's offsets: never subscribes nor joins
    )
    try:
        topic = settings.transactions_topic
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        target = consumer.end_offsets(partitions) if partitions else {}
        deadline = time.monotonic() + timeout_s
        while True:
            committed = {tp: consumer.committed(tp) or 0 for tp in target}
            behind = {tp.partition: end - committed[tp] for tp, end in target.items() if committed[tp] < end}
            if not behind:
                return {tp.partition: end for tp, end in target.items()}
            if stop is not None and stop.is_set():
                return None
            if time.monotonic() >= deadline:
                log.warning("ingest is still behind after %gs (records by partition: %s)", timeout_s, behind)
                return None
            time.sleep(poll_s)
    finally:
        consumer.close()
