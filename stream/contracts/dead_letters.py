"""The `transactions-dlq` record: the original key and value bytes, and two headers.

`error` holds the reason and `source` the record's `topic/partition/offset`, which is also how
ingest finds the dead letters it already sent after a crash (so none is sent twice).
"""

from __future__ import annotations

ERROR_HEADER = "error"
SOURCE_HEADER = "source"


def source(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}/{partition}/{offset}".encode()


def offset_of(source_header: bytes) -> int:
    """The offset in a `source` header written by `source`."""
    return int(source_header.rsplit(b"/", 1)[1])


def headers(reason: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [(ERROR_HEADER, reason.encode()), (SOURCE_HEADER, source(topic, partition, offset))]
