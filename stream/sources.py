"""Read transaction events from files for `recstream produce`.

Three formats, told apart by the first non-empty line:
- "seed": the reference data set, header `customerId,products`, one row per customer with
  `|`-separated products; every product occurrence is one purchase of quantity 1.
- "jsonl": one JSON object per line with the transaction fields.
- "csv": a header with at least `user_id` and `item_id` (optional quantity, ts, event_id).

Files are streamed line by line, so size is not limited by memory. Invalid rows become
`Rejected` items (with the line number) instead of stopping the read, so the caller can
report them; only problems with the file itself raise `SourceError`.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from recstream.stream.contracts.records import InvalidMessage, Transaction, transaction_from_dict
from recstream.stream.errors import RecstreamError

SEED_HEADER = "customerId,products"
# A guard against binary or newline-free files being read into memory as one "line".
MAX_LINE_BYTES = 4 * 1024 * 1024
_CSV_FIELDS = ("event_id", "user_id", "item_id", "quantity", "ts")
_ID_FIELDS = ("event_id", "user_id", "item_id")


class SourceError(RecstreamError):
    """The file cannot be used at all (missing, unreadable, not UTF-8 text, unknown format).

    The message is one line and names the path.
    """


@dataclass(frozen=True, slots=True)
class Rejected:
    """An invalid row or product, kept so nothing is dropped without a report."""

    line: int  # 1-based physical line in the file (the last one, for a multi-line CSV record)
    reason: str


def detect_format(path: Path) -> str:
    """Return "seed", "jsonl" or "csv" from the first non-empty line."""
    with _open(path) as handle:
        for text in _LineReader(handle, path):
            if text.strip():
                return _classify(path, text)
    raise SourceError(f"{path}: unrecognised format: the file has no non-empty line")


def read_events(
    path: Path, *, now: Callable[[], float] | None = None
) -> Iterator[tuple[int, Transaction | Rejected]]:
    """Yield (bytes consumed so far, event or rejection) in file order.

    The format is detected before returning, so a missing or unrecognised file raises
    SourceError here rather than on the first iteration.

    Events without event_id get `f"{path.name}:{line}:{index}"` (index = position of the
    product in a seed row, 0 otherwise), so re-sending a file yields the same ids and
    the pipeline deduplicates them. Events without ts get `now()` (default `time.time`)
    at read time: the producer sends ts explicitly, and this is as close to the broker
    record timestamp as a file reader can get. Blank lines are skipped.
    """
    file_format = detect_format(path)
    clock = now if now is not None else time.time
    return _read(path, file_format, clock)


def _read(
    path: Path, file_format: str, clock: Callable[[], float]
) -> Iterator[tuple[int, Transaction | Rejected]]:
    with _open(path) as handle:
        lines = _LineReader(handle, path)
        if file_format == "jsonl":
            yield from _read_jsonl(path, lines, clock)
        elif file_format == "seed":
            yield from _read_seed(path, lines, clock)
        else:
            yield from _read_csv(path, lines, clock)


class _LineReader:
    """Decodes one line at a time and counts bytes and lines, so progress is exact."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle = handle
        self.path = path
        self.bytes_read = 0
        self.line = 0

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                raw = self.handle.readline(MAX_LINE_BYTES + 1)
            except OSError as exc:
                raise SourceError(_cannot_read(self.path, exc)) from None
            if not raw:
                return
            self.line += 1
            if len(raw) > MAX_LINE_BYTES:
                raise SourceError(f"{self.path}: line {self.line} is longer than {MAX_LINE_BYTES} bytes")
            self.bytes_read += len(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SourceError(
                    f"cannot read {self.path}: not UTF-8 text at line {self.line} ({exc.reason})"
                ) from None
            if self.line == 1:
                text = text.removeprefix("\ufeff")  # spreadsheet exports often start with a BOM
            yield text


def _open(path: Path) -> BinaryIO:
    # Binary so that progress counts real bytes; _LineReader decodes each line as UTF-8.
    try:
        return path.open("rb")
    except OSError as exc:
        raise SourceError(_cannot_read(path, exc)) from None


def _cannot_read(path: Path, exc: OSError) -> str:
    return f"cannot read {path}: {exc.strerror or exc}"


def _classify(path: Path, text: str) -> str:
    stripped = text.strip()
    if stripped == SEED_HEADER:
        return "seed"
    if stripped.startswith("{"):
        return "jsonl"
    columns = {name.strip() for name in next(csv.reader([stripped]), [])}
    if {"user_id", "item_id"} <= columns:
        return "csv"
    raise SourceError(
        f"{path}: unrecognised format: first line {stripped[:80]!r} is not {SEED_HEADER!r}, "
        "a JSON object, or a CSV header with user_id and item_id"
    )


def _is_blank(row: list[str]) -> bool:
    return len(row) <= 1 and not "".join(row).strip()


def _csv_rows(lines: _LineReader) -> Iterator[list[str] | Rejected]:
    """Non-blank CSV records; a malformed record becomes a Rejected and reading goes on."""
    reader = csv.reader(lines)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Rejected(lines.line, f"csv: {exc}")
            continue
        if not _is_blank(row):
            yield row


def _read_seed(
    path: Path, lines: _LineReader, clock: Callable[[], float]
) -> Iterator[tuple[int, Transaction | Rejected]]:
    rows = _csv_rows(lines)
    for row in rows:
        if not isinstance(row, Rejected):
            break  # the header, already recognised by detect_format
        yield lines.bytes_read, row
    for row in rows:
        line = lines.line
        if isinstance(row, Rejected):
            yield lines.bytes_read, row
            continue
        if len(row) != 2:
            yield lines.bytes_read, Rejected(line, f"expected 2 columns ({SEED_HEADER}), got {len(row)}")
            continue
        customer, products = row
        ts = clock()
        for index, product in enumerate(products.split("|")):
            record = {"user_id": customer, "item_id": product, "quantity": 1}
            try:
                event = transaction_from_dict(
                    record, default_event_id=f"{path.name}:{line}:{index}", default_ts=ts
                )
            except InvalidMessage as exc:
                if exc.reason.startswith("user_id:"):
                    # The customer is checked before any product: one rejection for the row.
                    yield lines.bytes_read, Rejected(line, f"{exc.reason} (customerId)")
                    break
                yield lines.bytes_read, Rejected(line, f"{exc.reason} (product {index + 1})")
                continue
            yield lines.bytes_read, event


def _read_csv(
    path: Path, lines: _LineReader, clock: Callable[[], float]
) -> Iterator[tuple[int, Transaction | Rejected]]:
    rows = _csv_rows(lines)
    header: list[str] | None = None
    for row in rows:
        if not isinstance(row, Rejected):
            header = [name.strip() for name in row]
            break
        yield lines.bytes_read, row
    if header is None:
        return
    for name in _CSV_FIELDS:
        if header.count(name) > 1:
            raise SourceError(f"{path}: column {name!r} appears more than once in the header")
    for row in rows:
        line = lines.line
        if isinstance(row, Rejected):
            yield lines.bytes_read, row
            continue
        if len(row) != len(header):
            yield lines.bytes_read, Rejected(line, f"expected {len(header)} columns, got {len(row)}")
            continue
        cells = {name: cell for name, cell in zip(header, row, strict=True) if name in _CSV_FIELDS and cell}
        try:
            record: dict[str, object] = dict(cells)
            if "quantity" in cells:
                record["quantity"] = _int_from_text("quantity", cells["quantity"])
            if "ts" in cells:
                record["ts"] = _float_from_text("ts", cells["ts"])
            event = transaction_from_dict(
                record, default_event_id=f"{path.name}:{line}:0", default_ts=clock()
            )
        except InvalidMessage as exc:
            yield lines.bytes_read, Rejected(line, exc.reason)
            continue
        yield lines.bytes_read, event


def _read_jsonl(
    path: Path, lines: _LineReader, clock: Callable[[], float]
) -> Iterator[tuple[int, Transaction | Rejected]]:
    for text in lines:
        if not text.strip():
            continue
        line = lines.line
        try:
            obj = _load_json(text)
            if isinstance(obj, dict):
                obj = _ids_to_strings(obj)
            event = transaction_from_dict(obj, default_event_id=f"{path.name}:{line}:0", default_ts=clock())
        except InvalidMessage as exc:
            yield lines.bytes_read, Rejected(line, exc.reason)
            continue
        yield lines.bytes_read, event


def _load_json(text: str) -> object:
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidMessage("value: not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise InvalidMessage(f"value: not valid JSON ({exc})") from None


def _ids_to_strings(obj: dict[str, object]) -> dict[str, object]:
    # Files written by hand or by pandas often have numeric ids; on the wire they must be strings.
    converted = dict(obj)
    for name in _ID_FIELDS:
        value = converted.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            converted[name] = str(value)
    return converted


def _int_from_text(field: str, text: str) -> int:
    # ASCII digits only: int() would also accept other scripts' digits and "1_000".
    stripped = text.strip()
    digits = stripped[1:] if stripped[:1] in ("+", "-") else stripped
    try:
        if not (digits.isascii() and digits.isdigit()):
            raise ValueError(stripped)
        return int(stripped)
    except ValueError:  # also integers beyond Python's digit limit
        raise InvalidMessage(f"{field}: must be an integer, got {text[:40]!r}") from None


def _float_from_text(field: str, text: str) -> float:
    stripped = text.strip()
    try:
        if not stripped.isascii() or "_" in stripped:
            raise ValueError(stripped)
        return float(stripped)
    except ValueError:
        raise InvalidMessage(f"{field}: must be a number, got {text[:40]!r}") from None
