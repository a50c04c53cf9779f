"""Batch rules of the ingest worker: flush triggers, date split, object names."""

from __future__ import annotations

from recstream.ingest.batches import Batch, DeadLetter
from recstream.stream.contracts.lake import object_name, parse_object_name
from recstream.stream.contracts.records import Transaction

DAY = 86400.0
T0 = 1_790_000_000.0  # 2026-09-21 UTC


def tx(i: int, ts: float) -> Transaction:
    return Transaction(f"e{i}", "u", "i", 1, ts)


def test_object_names_are_zero_padded_and_parse_back() -> None:
    name = object_name("2026-09-21", 3, 17, 1234)
    assert name == "transactions/date=2026-09-21/part-00003-00000000000000000017-00000000000000001234.parquet"
    assert parse_object_name(name) == ("2026-09-21", 3, 17, 1234)


def test_rows_split_by_event_date_each_named_by_its_own_offsets() -> None:
    batch = Batch(2)
    batch.add(10, tx(0, T0))
    batch.add(11, tx(1, T0 + DAY))
    batch.add_dead(DeadLetter(12, b"k", b"bad", "value: not valid JSON"))
    batch.add(13, tx(3, T0 + 60))
    objects = batch.objects()
    assert {name: [o for o, _ in rows] for name, rows in objects.items()} == {
        object_name("2026-09-21", 2, 10, 13): [10, 13],
        object_name("2026-09-22", 2, 11, 11): [11],
    }
    assert (batch.first, batch.last, len(batch)) == (10, 13, 4)


def test_flush_on_size_or_age() -> None:
    batch = Batch(0)
    assert not batch.due(2, 5.0, None)
    batch.add(0, tx(0, T0))
    assert not batch.due(2, 5.0, None, now=batch.started + 1)
    assert batch.due(2, 5.0, None, now=batch.started + 5)
    batch.add(1, tx(1, T0))
    assert batch.due(2, 5.0, None, now=batch.started)


def test_flush_once_idle() -> None:
    """The end of a burst lands once no record has come for `idle_s`, not at the age limit."""
    batch = Batch(0)
    batch.add(0, tx(0, T0))
    batch.add(1, tx(1, T0))
    assert not batch.due(100, 10.0, None, now=batch.updated + 0.5, idle_s=1.0)
    assert batch.due(100, 10.0, None, now=batch.updated + 1.0, idle_s=1.0)
    assert not batch.due(100, 10.0, None, now=batch.updated + 1.0)  # without idle_s: size and age only
    batch.updated = batch.started + 9.5  # a record just came: busy, though the batch is old
    assert not batch.due(100, 10.0, None, now=batch.started + 9.9, idle_s=1.0)


def test_boundary_of_an_uncommitted_flush_overrides_size_and_age() -> None:
    batch = Batch(0)
    for offset in range(5):
        batch.add(offset, tx(offset, T0))
    assert not batch.due(2, 0.1, boundary=6, now=batch.started + 100)  # neither size nor age may cut it short
    assert not batch.due(2, 0.1, boundary=6, now=batch.updated + 100, idle_s=1.0)  # nor idleness
    batch.add(5, tx(5, T0))
    batch.add(6, tx(6, T0))
    assert batch.due(2, 0.1, boundary=6)
    late = Batch(0)
    late.add(7, tx(7, T0))  # past the boundary: the old flush was committed, normal rules apply
    assert late.due(1, 5.0, boundary=6)
