"""Reading events from seed, JSON-lines and CSV files for `recstream produce`."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from recstream.stream.contracts.records import Transaction
from recstream.stream.sources import Rejected, SourceError, detect_format, read_events

SEED_FILE = Path(__file__).resolve().parents[3] / "shared" / "data" / "transactions.csv"
NOW = 1_700_000_000.0


def _read(path: Path) -> list[Transaction | Rejected]:
    return [item for _, item in read_events(path, now=lambda: NOW)]


def _events(items: list[Transaction | Rejected]) -> list[Transaction]:
    return [item for item in items if isinstance(item, Transaction)]


def _rejected(items: list[Transaction | Rejected]) -> list[Rejected]:
    return [item for item in items if isinstance(item, Rejected)]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def test_seed_rows_yield_one_event_per_product_occurrence(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "seed.csv",
        "customerId,products\n"  # line 1
        "0,20\n"  # line 2
        "1,2|2|23|68\n"  # line 3: duplicates are separate purchases
        "\n"  # line 4: blank
        "2,5||7\n"  # line 5: an empty product
        ",9|10\n"  # line 6: an empty customer
        "3,11\n",  # line 7
    )
    assert detect_format(path) == "seed"
    items = _read(path)
    events = _events(items)
    assert [(e.user_id, e.item_id) for e in events] == [
        ("0", "20"),
        ("1", "2"),
        ("1", "2"),
        ("1", "23"),
        ("1", "68"),
        ("2", "5"),
        ("2", "7"),
        ("3", "11"),
    ]
    assert all(e.quantity == 1 and e.ts == NOW for e in events)
    assert [e.event_id for e in events if e.user_id in {"1", "2"}] == [
        "seed.csv:3:0",
        "seed.csv:3:1",
        "seed.csv:3:2",
        "seed.csv:3:3",
        "seed.csv:5:0",
        "seed.csv:5:2",
    ]
    rejected = _rejected(items)
    assert [r.line for r in rejected] == [5, 6]  # one rejection for the whole customer-less row
    assert rejected[0].reason.startswith("item_id: empty")
    assert rejected[1].reason.startswith("user_id: empty")
    # Items stay in file order: the rejected product sits between the row's two events.
    assert items.index(rejected[0]) == items.index(events[5]) + 1


def test_seed_row_with_wrong_column_count_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "seed.csv", "customerId,products\r\n1,2,3\r\n4,5\r\n")
    items = _read(path)
    assert [(r.line, r.reason) for r in _rejected(items)] == [
        (2, "expected 2 columns (customerId,products), got 3")
    ]
    assert [(e.user_id, e.item_id) for e in _events(items)] == [("4", "5")]


def test_event_ids_are_identical_across_reads(tmp_path: Path) -> None:
    path = _write(tmp_path, "seed.csv", "customerId,products\n7,1|1|2\n8,3\n")
    first = [e.event_id for e in _events(_read(path))]
    second = [e.event_id for _, e in read_events(path)]  # a different clock does not change ids
    assert first == second
    assert len(set(first)) == 4


def test_jsonl_converts_int_ids_and_rejects_bad_lines(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "events.jsonl",
        '{"user_id": 12, "item_id": 34, "event_id": 56, "quantity": 2, "ts": 1600000000}\n'
        "\n"
        "{not json}\n"
        '{"user_id": "u", "item_id": 1.5}\n'
        '{"user_id": true, "item_id": "i"}\n'
        "[1, 2]\n"
        '{"user_id": "u", "item_id": "i", "quantity": 0}\n'
        '{"user_id": "u2", "item_id": "i2", "color": "red"}\n',
    )
    assert detect_format(path) == "jsonl"
    items = _read(path)
    assert _events(items) == [
        Transaction(event_id="56", user_id="12", item_id="34", quantity=2, ts=1_600_000_000.0),
        Transaction(event_id="events.jsonl:8:0", user_id="u2", item_id="i2", quantity=1, ts=NOW),
    ]
    rejected = [(r.line, r.reason.split(":")[0]) for r in _rejected(items)]
    assert rejected == [(3, "value"), (4, "item_id"), (5, "user_id"), (6, "value"), (7, "quantity")]


def test_csv_with_optional_columns(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "data.csv",
        "ts,user_id,item_id,quantity,event_id,note\n"
        "1700000000.5,u1,i1,3,ev-1,first\n"
        ",u2,i2,,,\n"
        "1700000001,u3,i3,2.5,,bad quantity\n"
        "1700000002,u4,i4,abc,,\n"
        "1700000003,u5,i5,0,,\n"
        "nan,u6,i6,1,,\n"
        "1700000004,,i7,1,,\n"
        "1700000005,u8,i8\n"
        '1700000006,"u,9","i\n9",1,,quoted\n',
    )
    assert detect_format(path) == "csv"
    items = _read(path)
    assert _events(items) == [
        Transaction(event_id="ev-1", user_id="u1", item_id="i1", quantity=3, ts=1_700_000_000.5),
        Transaction(event_id="data.csv:3:0", user_id="u2", item_id="i2", quantity=1, ts=NOW),
    ]
    rejected = [(r.line, r.reason) for r in _rejected(items)]
    assert rejected[0] == (4, "quantity: must be an integer, got '2.5'")
    assert rejected[1] == (5, "quantity: must be an integer, got 'abc'")
    assert rejected[2] == (6, "quantity: must be an integer >= 1, got 0")
    assert rejected[3][0] == 7 and rejected[3][1].startswith("ts: must be finite")
    assert rejected[4] == (8, "user_id: missing")
    assert rejected[5] == (9, "expected 6 columns, got 3")
    # The quoted newline makes the record span lines 10-11; it is invalid because of it.
    assert rejected[6][0] == 11 and rejected[6][1].startswith("item_id: contains control character")
    assert len(rejected) == 7


def test_csv_header_needs_user_and_item_columns(tmp_path: Path) -> None:
    path = _write(tmp_path, "data.csv", "user,item\nu1,i1\n")
    with pytest.raises(SourceError, match=r"data\.csv: unrecognised format: "):
        detect_format(path)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("hello world\n", id="prose"),
        pytest.param("customerId,products,extra\n1,2,3\n", id="seed-like-header"),
        pytest.param("\n\n  \n", id="only-blank-lines"),
        pytest.param("", id="empty-file"),
    ],
)
def test_unrecognised_format_raises(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, "odd.txt", text)
    with pytest.raises(SourceError, match=r"odd\.txt: unrecognised format: ") as caught:
        read_events(path)  # raised before iterating
    assert "\n" not in str(caught.value)


def test_missing_file_raises_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    with pytest.raises(SourceError) as caught:
        read_events(path)
    assert str(caught.value) == f"cannot read {path}: No such file or directory"


def test_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"cannot read .*: Is a directory"):
        detect_format(tmp_path)


def test_binary_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(SourceError, match=r"cannot read .*image\.png: not UTF-8 text at line 1"):
        read_events(path)


def test_invalid_utf8_later_in_file_raises_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "seed.csv"
    path.write_bytes(b"customerId,products\n1,2\n3,\xff\n")
    items = read_events(path)
    assert isinstance(next(items)[1], Transaction)
    with pytest.raises(SourceError, match="not UTF-8 text at line 3"):
        next(items)


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"\xef\xbb\xbfuser_id,item_id\nu1,i1\n")
    assert [(e.user_id, e.item_id) for e in _events(_read(path))] == [("u1", "i1")]


def test_progress_bytes_increase_and_end_at_file_size(tmp_path: Path) -> None:
    lines = ["customerId,products"] + [f"{n},{n}|{n + 1}|x{n}" for n in range(200)]
    path = _write(tmp_path, "seed.csv", "\n".join(lines) + "\n")
    progress = [consumed for consumed, _ in read_events(path)]
    assert len(progress) == 600
    assert all(a <= b for a, b in itertools.pairwise(progress))
    per_row = progress[::3]  # the first event of each row
    assert all(a < b for a, b in itertools.pairwise(per_row))
    assert progress[0] == len(lines[0]) + 1 + len(lines[1]) + 1
    assert progress[-1] == os.path.getsize(path)


def test_real_seed_file() -> None:
    items = [item for _, item in read_events(SEED_FILE, now=lambda: NOW)]
    events = _events(items)
    assert len(events) == 211_478
    assert len(_rejected(items)) == 0
    assert len({e.event_id.split(":")[1] for e in events}) == 62_483  # one line per row
    assert len({e.event_id for e in events}) == 211_478
    # The 62,483 rows belong to 24,429 customers: customers appear on several rows.
    assert len({e.user_id for e in events}) == 24_429
    assert len({e.item_id for e in events}) == 300
