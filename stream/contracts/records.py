"""The single definition of a valid transaction and a valid recommendation request.

Every program that reads these topics or files validates through this module, so a
message is accepted or rejected (with the same reason) everywhere. Rejections carry a
short reason naming the field; the stream processor puts it in the dead-letter
`error` header and the scorer in the error response.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

MAX_ID_LENGTH = 256
MAX_MESSAGE_BYTES = 64 * 1024  # larger values are rejected before JSON parsing
MAX_QUANTITY = 1_000_000
# Event time: any time from the epoch (a years-old backfill is legitimate) to the last second a
# date can represent (9999-12-31T23:59:59Z); callers add a future window (EVENT_MAX_FUTURE_S).
MAX_TS = 253_402_300_799.0
DEFAULT_K = 10
MAX_K = 100

_CONTROL_CHARACTERS = frozenset(chr(code) for code in [*range(0x20), 0x7F])


class InvalidMessage(ValueError):
    """A message broke the contract; str(exc) is the reason, safe to show or put in a header.

    `request_id` is set for requests whose request_id could be read even though another
    field is invalid, so the scorer can still answer that request with an error.
    """

    def __init__(self, reason: str, *, request_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Transaction:
    """One purchase; `ts` is epoch seconds."""

    event_id: str
    user_id: str
    item_id: str
    quantity: int
    ts: float

    def to_dict(self) -> dict[str, object]:
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "quantity": self.quantity,
            "ts": self.ts,
        }

    def to_json(self) -> bytes:
        return _dump(self.to_dict())


@dataclass(frozen=True, slots=True)
class RecommendationRequest:
    """Ask for the top `k` items for one user; the answer is correlated by `request_id`."""

    request_id: str
    user_id: str
    k: int

    def to_dict(self) -> dict[str, object]:
        return {"request_id": self.request_id, "user_id": self.user_id, "k": self.k}

    def to_json(self) -> bytes:
        return _dump(self.to_dict())


def derive_event_id(topic: str, partition: int, offset: int) -> str:
    """Id for an event sent without one: a redelivered record gets the same id, so dedup works."""
    return f"{topic}-{partition}-{offset}"


def transaction_from_dict(
    obj: object,
    *,
    default_event_id: str | None = None,
    default_ts: float | None = None,
    key: bytes | None = None,
    max_ts: float | None = None,
) -> Transaction:
    """Validate an already-parsed object (file readers parse themselves) with the wire rules.

    Optional fields (event_id, quantity, ts) that are absent or null take their defaults;
    `default_ts` is normally the broker record timestamp in epoch seconds. `ts` must lie in
    (0, MAX_TS], and at most `max_ts` when given (the caller's future window: `future_limit`).
    """
    if not isinstance(obj, dict):
        raise InvalidMessage(f"value: must be a JSON object, got {_type_name(obj)}")
    user_id = _required_id(obj, "user_id")
    item_id = _required_id(obj, "item_id")
    quantity = _quantity(obj.get("quantity"))
    ts = _ts(obj.get("ts"), default_ts, max_ts)
    event_id = _event_id(obj.get("event_id"), default_event_id)
    if key is not None:
        _check_key(key, user_id)
    return Transaction(event_id=event_id, user_id=user_id, item_id=item_id, quantity=quantity, ts=ts)


def parse_transaction(
    value: bytes | None,
    *,
    key: bytes | None = None,
    default_event_id: str | None = None,
    default_ts: float | None = None,
    max_ts: float | None = None,
) -> Transaction:
    """Decode and validate a `transactions` record value (and its key, if given)."""
    return transaction_from_dict(
        _load_object(value), default_event_id=default_event_id, default_ts=default_ts, key=key, max_ts=max_ts
    )


def future_limit(max_future_s: float, now: float, record_ts: float | None = None) -> float:
    """The latest event time accepted: `max_future_s` after the record was produced.

    The reference is the record's broker timestamp when it is valid and not ahead of `now`,
    else `now`: a batch redelivered after a crash is then judged exactly as the first time
    (same rows, same dead letters), however much later it is consumed again.
    """
    reference = now
    if record_ts is not None and math.isfinite(record_ts) and 0 < record_ts < now:
        reference = record_ts
    return reference + max_future_s


def load_json(
    value: bytes | None, *, max_bytes: int = MAX_MESSAGE_BYTES, max_depth: int | None = None
) -> object:
    """Bytes from outside to a JSON value, or InvalidMessage: the size is checked before parsing,
    and nesting deeper than `max_depth` (or than the parser can take) is a rejection."""
    obj = _load_object(value, max_bytes)
    if max_depth is not None and _depth_exceeds(obj, max_depth):
        raise InvalidMessage(f"value: nested deeper than {max_depth} levels")
    return obj


def finite_number(value: object, name: str, expected: str | None = None) -> float:
    """A JSON number as a finite float: NaN, an infinity or an integer too large for a float (JSON
    allows thousands of digits) is a rejection, never an OverflowError. The reason names the fault,
    or is `{name}: {expected}` when `expected` is given (the control contracts' one message)."""

    def reject(fault: str) -> InvalidMessage:
        return InvalidMessage(f"{name}: {expected or fault}")

    if isinstance(value, bool) or not isinstance(value, int | float):
        raise reject(f"must be a number, got {_type_name(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise reject("out of range") from None
    if not math.isfinite(number):
        raise reject(f"must be finite, got {number}")
    return number


def parse_request(value: bytes | None) -> RecommendationRequest:
    """Decode and validate a `recommendation-requests` record value.

    The request_id is read first so that, if anything else is wrong, the error can
    still be sent back under that id.
    """
    obj = _load_object(value)
    if not isinstance(obj, dict):
        raise InvalidMessage(f"value: must be a JSON object, got {_type_name(obj)}")
    request_id = _required_id(obj, "request_id")
    try:
        user_id = _required_id(obj, "user_id")
        k = _k(obj.get("k"))
    except InvalidMessage as exc:
        raise InvalidMessage(exc.reason, request_id=request_id) from None
    return RecommendationRequest(request_id=request_id, user_id=user_id, k=k)


def _dump(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _load_object(value: bytes | None, max_bytes: int = MAX_MESSAGE_BYTES) -> object:
    if not value:
        raise InvalidMessage("value: empty")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidMessage(f"value: must be bytes, got {type(value).__name__}")
    if len(value) > max_bytes:
        raise InvalidMessage(f"value: larger than {max_bytes} bytes")
    value = bytes(value)
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"value: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidMessage("value: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, and integers beyond the digit limit
        raise InvalidMessage(f"value: not valid JSON ({_short(str(exc))})") from None


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _depth_exceeds(obj: object, max_depth: int) -> bool:
    """Iterative, so a value the parser accepted cannot blow the stack here either."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > max_depth:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return False


def _type_name(value: object) -> str:
    # JSON vocabulary where Python's would confuse ("list", "NoneType"), Python's for numbers.
    names = {type(None): "null", bool: "bool", int: "int", float: "float", str: "string"}
    names |= {list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _show_int(value: int) -> str:
    # Keeps reasons short: JSON allows integers of thousands of digits.
    return str(value) if abs(value) < 10**18 else "an integer of more than 18 digits"


def _required_id(obj: dict[str, object], field: str) -> str:
    if field not in obj:
        raise InvalidMessage(f"{field}: missing")
    return _check_id(obj[field], field)


def _check_id(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidMessage(f"{field}: must be a string, got {_type_name(value)}")
    if not value:
        raise InvalidMessage(f"{field}: empty")
    if not value.strip():
        raise InvalidMessage(f"{field}: empty (whitespace only)")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidMessage(f"{field}: longer than {MAX_ID_LENGTH} characters ({len(value)})")
    if not _CONTROL_CHARACTERS.isdisjoint(value):
        index, char = next((i, c) for i, c in enumerate(value) if c in _CONTROL_CHARACTERS)
        raise InvalidMessage(f"{field}: contains control character {char!r} at index {index}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape such as "\ud800"
        raise InvalidMessage(f"{field}: not encodable as UTF-8 (lone surrogate)") from None
    return value


def _quantity(value: object) -> int:
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidMessage(f"quantity: must be an integer, got {_type_name(value)}")
    if value < 1:
        raise InvalidMessage(f"quantity: must be an integer >= 1, got {_show_int(value)}")
    if value > MAX_QUANTITY:
        raise InvalidMessage(f"quantity: larger than {MAX_QUANTITY}")
    return value


def _ts(value: object, default_ts: float | None, max_ts: float | None) -> float:
    if value is None:
        if default_ts is None:
            raise InvalidMessage("ts: missing and no record timestamp")
        try:
            ts = float(default_ts)
        except (OverflowError, TypeError, ValueError):
            raise InvalidMessage("ts: missing and record timestamp is not valid") from None
        if not (math.isfinite(ts) and 0 < ts <= MAX_TS):
            raise InvalidMessage(f"ts: missing and record timestamp is not valid ({ts})")
        what = "record timestamp"
    else:
        ts = finite_number(value, "ts")
        if ts <= 0:
            raise InvalidMessage(f"ts: must be > 0, got {ts}")
        if ts > MAX_TS:
            raise InvalidMessage(f"ts: after 9999-12-31T23:59:59Z, no date can hold it ({ts:.6g})")
        what = "ts"
    if max_ts is not None and ts > max_ts:
        raise InvalidMessage(f"ts: {what} {ts:.3f} is more than the allowed window in the future")
    return ts


def _event_id(value: object, default_event_id: str | None) -> str:
    if value is not None:
        return _check_id(value, "event_id")
    if default_event_id is None:
        raise InvalidMessage("event_id: missing and not derivable")
    return _check_id(default_event_id, "event_id")


def _check_key(key: bytes, user_id: str) -> None:
    try:
        key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"key: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if key != user_id.encode("utf-8"):
        raise InvalidMessage("key: does not match user_id")


def _k(value: object) -> int:
    if value is None:
        return DEFAULT_K
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidMessage(f"k: must be an integer, got {_type_name(value)}")
    if not 1 <= value <= MAX_K:
        raise InvalidMessage(f"k: must be between 1 and {MAX_K}, got {_show_int(value)}")
    return value
