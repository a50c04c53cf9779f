"""Batch rules of the ingest worker: flush triggers, validation, date split, object names."""

from __future__ import annotations

import pytest

from recstream.ingest.batches import Batch
from recstream.ingest.encoding import encode
from recstream.stream.contracts.lake import from_parquet, object_name, parse_object_name
from recstream.stream.contracts.records import Transaction

DAY = 86400.0
T0 = 1_790_000_000.0  # 2026-09-21 UTC


def tx(i: int, ts: float) -> Transaction:
    return Transaction(f"e{i}", "u", "i", 1, ts)


def add(batch: Batch, offset: int, ts: float = T0) -> None:
    batch.add(offset, b"u", tx(offset, ts).to_json(), T0)


def test_object_names_are_zero_padded_and_parse_back() -> None:
    name = object_name("2026-09-21", 3, 17, 1234)
    assert name == "transactions/date=2026-09-21/part-00003-00000000000000000017-00000000000000001234.parquet"
    assert parse_object_name(name) == ("2026-09-21", 3, 17, 1234)


def test_rows_split_by_event_date_each_named_by_its_own_offsets() -> None:
    batch = Batch(2)
    add(batch, 10, T0)
    add(batch, 11, T0 + DAY)
    batch.add(12, b"k", b"bad", T0)
    add(batch, 13, T0 + 60)
    encoded = encode("transactions", 2, batch.records, max_future_s=2 * DAY, now=T0)
    objects = encoded.objects.items()
    offsets = {name: from_parquet(data).column("offset").to_pylist() for name, data in objects}
    assert offsets == {
        object_name("2026-09-21", 2, 10, 13): [10, 13],
        object_name("2026-09-22", 2, 11, 11): [11],
    }
    (letter,) = encoded.dead
    assert (letter.offset, letter.key, letter.value) == (12, b"k", b"bad")
    assert letter.reason.startswith("value: not valid JSON")
    assert (encoded.first, encoded.last, encoded.rows) == (10, 13, 3)
    assert (batch.first, batch.last, len(batch)) == (10, 13, 4)


def test_validation_judges_a_record_by_its_own_broker_time_and_fills_in_what_it_lacks() -> None:
    """A batch encoded long after it was consumed (a redelivery) is judged as the first time."""
    late = b'{"user_id":"u","item_id":"i","quantity":1,"ts":%d}' % int(T0 + 7200)
    records = [(5, b"u", late, T0), (6, b"u", b'{"user_id":"u","item_id":"i","quantity":1}', T0 + 1)]
    encoded = encode("transactions", 0, records, max_future_s=3600, now=T0 + 10 * DAY)
    assert [(d.offset, d.reason.split(":")[0]) for d in encoded.dead] == [(5, "ts")]
    (table,) = [from_parquet(data) for data in encoded.objects.values()]
    assert table.column("ts").to_pylist() == [T0 + 1]  # the broker's time when the event has none
    assert table.column("event_id").to_pylist()[0].startswith("transactions")


def test_an_empty_batch_is_never_encoded() -> None:
    with pytest.raises(ValueError):
        encode("transactions", 0, [], max_future_s=3600)


def test_flush_on_size_or_age() -> None:
    batch = Batch(0)
    assert not batch.due(2, 5.0, None)
    add(batch, 0)
    assert not batch.due(2, 5.0, None, now=batch.started + 1)
    assert batch.due(2, 5.0, None, now=batch.started + 5)
    add(batch, 1)
    assert batch.due(2, 5.0, None, now=batch.started)


def test_flush_once_idle() -> None:
    """The end of a burst lands once no record has come for `idle_s`, not at the age limit."""
    batch = Batch(0)
    add(batch, 0)
    add(batch, 1)
    assert not batch.due(100, 10.0, None, now=batch.updated + 0.5, idle_s=1.0)
    assert batch.due(100, 10.0, None, now=batch.updated + 1.0, idle_s=1.0)
    assert not batch.due(100, 10.0, None, now=batch.updated + 1.0)  # without idle_s: size and age only
    batch.updated = batch.started + 9.5  # a record just came: busy, though the batch is old
    assert not batch.due(100, 10.0, None, now=batch.started + 9.9, idle_s=1.0)


def test_boundary_of_an_uncommitted_flush_overrides_size_and_age() -> None:
    batch = Batch(0)
    for offset in range(5):
        add(batch, offset)
    assert not batch.due(2, 0.1, boundary=6, now=batch.started + 100)  # neither size nor age may cut it short
    assert not batch.due(2, 0.1, boundary=6, now=batch.updated + 100, idle_s=1.0)  # nor idleness
    add(batch, 5)
    add(batch, 6)
    assert batch.due(2, 0.1, boundary=6)
    late = Batch(0)
    add(late, 7)  # past the boundary: the old flush was committed, normal rules apply
    assert late.due(1, 5.0, boundary=6)
