"""The dataset reader for the retrain stage: a time window of landed transactions as pandas.

Only the date partitions that overlap the window are listed and read, only the asked
columns are decoded, and rows are deduplicated by event_id as a last guard (the ingest
path already writes each record exactly once).
"""

from __future__ import annotations

import io
import logging

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from minio import Minio

from ingest.batches import COLUMNS, PREFIX, event_date
from ingest.landing import SCHEMA

log = logging.getLogger(__name__)


def _dates(client: Minio, bucket: str) -> list[str]:
    prefixes = client.list_objects(bucket, prefix=f"{PREFIX}/", recursive=False)
    return sorted(p.object_name.removeprefix(f"{PREFIX}/date=").rstrip("/") for p in prefixes if p.is_dir)


def read_transactions(
    client: Minio,
    bucket: str,
    *,
    start: float | None = None,
    end: float | None = None,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """Transactions with start <= ts < end (epoch seconds; None = unbounded), one row per event_id."""
    columns = list(columns or COLUMNS)
    unknown = set(columns) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown columns: {sorted(unknown)}")
    wanted = list(dict.fromkeys([*columns, "event_id", "ts", "offset"]))  # needed to filter and dedupe
    first_day = event_date(start) if start is not None else None
    last_day = event_date(end) if end is not None else None
    tables = []
    for day in _dates(client, bucket):
        if (first_day and day < first_day) or (last_day and day > last_day):
            continue
        for obj in client.list_objects(bucket, prefix=f"{PREFIX}/date={day}/", recursive=True):
            response = client.get_object(bucket, obj.object_name)
            try:
                data = response.read()
            finally:
                response.close()
                response.release_conn()
            tables.append(pq.read_table(io.BytesIO(data), columns=wanted))
    if not tables:
        return pd.DataFrame(
            {name: pd.Series(dtype=SCHEMA.field(name).type.to_pandas_dtype()) for name in columns}
        )
    frame = pa.concat_tables(tables).to_pandas()
    if start is not None:
        frame = frame[frame["ts"] >= start]
    if end is not None:
        frame = frame[frame["ts"] < end]
    frame = frame.sort_values(["ts", "offset"], kind="stable").drop_duplicates("event_id", keep="last")
    log.info("read %d transactions from %d objects", len(frame), len(tables))
    return frame[columns].reset_index(drop=True)
