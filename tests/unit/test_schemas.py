"""The transaction and request contracts: every invalid shape is rejected with a reason naming its field."""

from __future__ import annotations

import json
import math

import pytest

from recstream.stream.contracts.lake import event_date
from recstream.stream.contracts.records import (
    DEFAULT_K,
    MAX_MESSAGE_BYTES,
    MAX_TS,
    InvalidMessage,
    RecommendationRequest,
    Transaction,
    derive_event_id,
    future_limit,
    parse_request,
    parse_transaction,
    transaction_from_dict,
)

VALID = {"event_id": "e-1", "user_id": "u1", "item_id": "i1", "quantity": 2, "ts": 1_700_000_000.5}


def _wire(**changes: object) -> bytes:
    """A valid transaction value with fields replaced (or removed when the change is ...)."""
    obj = {name: value for name, value in {**VALID, **changes}.items() if value is not ...}
    return json.dumps(obj).encode("utf-8")


INVALID_VALUES = [
    pytest.param(b'{"user_id": "u1", "item_id": ', "value", id="bad-json"),
    pytest.param(b'[{"user_id": "u1", "item_id": "i1"}]', "value", id="json-array"),
    pytest.param(b'"u1,i1"', "value", id="json-string"),
    pytest.param(b"null", "value", id="json-null"),
    pytest.param(b'{"user_id": "\xff\xfe", "item_id": "i1"}', "value", id="non-utf8-bytes"),
    pytest.param(b"", "value", id="empty-value"),
    pytest.param(None, "value", id="none-value"),
    pytest.param(_wire(note="x" * MAX_MESSAGE_BYTES), "value", id="oversize-value"),
    pytest.param(b"[" * 50_000 + b"]" * 50_000, "value", id="oversize-deep-nesting"),
    pytest.param(b"[" * 30_000, "value", id="deep-nesting"),
    pytest.param(_wire(user_id=...), "user_id", id="missing-user_id"),
    pytest.param(_wire(item_id=...), "item_id", id="missing-item_id"),
    pytest.param(_wire(user_id=42), "user_id", id="user_id-int"),
    pytest.param(_wire(user_id=True), "user_id", id="user_id-bool"),
    pytest.param(_wire(user_id=4.5), "user_id", id="user_id-float"),
    pytest.param(_wire(user_id=["u1"]), "user_id", id="user_id-list"),
    pytest.param(_wire(item_id=None), "item_id", id="item_id-null"),
    pytest.param(_wire(user_id=""), "user_id", id="empty-user_id"),
    pytest.param(_wire(item_id=" \t "), "item_id", id="whitespace-only-item_id"),
    pytest.param(_wire(user_id="u" * 257), "user_id", id="257-char-user_id"),
    pytest.param(_wire(user_id="u\x00"), "user_id", id="nul-in-user_id"),
    pytest.param(_wire(item_id="a\nb"), "item_id", id="newline-in-item_id"),
    pytest.param(_wire(item_id="a\x7fb"), "item_id", id="del-in-item_id"),
    pytest.param(b'{"user_id": "\\ud800", "item_id": "i1", "ts": 1}', "user_id", id="lone-surrogate"),
    pytest.param(_wire(quantity=-1), "quantity", id="quantity-negative"),
    pytest.param(_wire(quantity=0), "quantity", id="quantity-zero"),
    pytest.param(_wire(quantity=2.0), "quantity", id="quantity-float"),
    pytest.param(_wire(quantity="3"), "quantity", id="quantity-string"),
    pytest.param(_wire(quantity=True), "quantity", id="quantity-bool"),
    pytest.param(_wire(quantity=1_000_001), "quantity", id="quantity-huge"),
    pytest.param(
        b'{"user_id": "u1", "item_id": "i1", "quantity": 1' + b"0" * 5000 + b"}", "value", id="5000-digits"
    ),
    pytest.param(_wire(ts="1700000000"), "ts", id="ts-string"),
    pytest.param(_wire(ts=-5), "ts", id="ts-negative"),
    pytest.param(_wire(ts=0), "ts", id="ts-zero"),
    pytest.param(b'{"user_id": "u1", "item_id": "i1", "ts": NaN}', "ts", id="ts-nan"),
    pytest.param(b'{"user_id": "u1", "item_id": "i1", "ts": Infinity}', "ts", id="ts-infinity"),
    pytest.param(b'{"user_id": "u1", "item_id": "i1", "ts": 1e400}', "ts", id="ts-overflowing-float"),
    pytest.param(
        b'{"user_id": "u1", "item_id": "i1", "ts": 1' + b"0" * 400 + b"}", "ts", id="ts-overflowing-int"
    ),
    pytest.param(_wire(ts=True), "ts", id="ts-bool"),
    pytest.param(_wire(event_id=""), "event_id", id="event_id-empty"),
    pytest.param(_wire(event_id=7), "event_id", id="event_id-int"),
]


@pytest.mark.parametrize(("value", "field"), INVALID_VALUES)
def test_invalid_transaction_is_rejected_with_reason_naming_the_field(
    value: bytes | None, field: str
) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_transaction(value, default_event_id="t-0-1", default_ts=1.0)
    assert caught.value.reason.startswith(f"{field}: ")
    assert str(caught.value) == caught.value.reason
    assert caught.value.request_id is None
    assert "\n" not in caught.value.reason and len(caught.value.reason) < 200


@pytest.mark.parametrize(
    ("obj", "field", "reason"),
    [
        pytest.param({"user_id": "u" * 102_400, "item_id": "i1"}, "user_id", None, id="100KB-user_id"),
        pytest.param({"user_id": "u1", "item_id": ["i1"]}, "item_id", None, id="item_id-list"),
        pytest.param(["u1", "i1"], "value", "value: must be a JSON object, got array", id="list-object"),
        pytest.param(
            {"user_id": "u1", "item_id": "i1", "quantity": -(10**40)}, "quantity", None, id="huge-neg"
        ),
    ],
)
def test_transaction_from_dict_applies_the_same_rules(obj: object, field: str, reason: str | None) -> None:
    with pytest.raises(InvalidMessage) as caught:
        transaction_from_dict(obj, default_event_id="t-0-1", default_ts=1.0)
    assert caught.value.reason.startswith(f"{field}: ")
    assert len(caught.value.reason) < 200
    if reason is not None:
        assert caught.value.reason == reason


def test_reasons_are_specific() -> None:
    def reason(value: bytes, **kwargs: object) -> str:
        with pytest.raises(InvalidMessage) as caught:
            parse_transaction(value, **{"default_event_id": "t-0-1", "default_ts": 1.0, **kwargs})
        return caught.value.reason

    assert reason(_wire(user_id=...)) == "user_id: missing"
    assert reason(_wire(user_id=42)) == "user_id: must be a string, got int"
    assert reason(_wire(item_id=None)) == "item_id: must be a string, got null"
    assert reason(_wire(user_id="")) == "user_id: empty"
    assert reason(_wire(quantity=-1)) == "quantity: must be an integer >= 1, got -1"
    assert reason(_wire(quantity=2.0)) == "quantity: must be an integer, got float"
    assert reason(_wire(quantity=1_000_001)) == "quantity: larger than 1000000"
    assert reason(b"[1]") == "value: must be a JSON object, got array"
    assert reason(b"") == "value: empty"
    assert reason(b"x" * (MAX_MESSAGE_BYTES + 1)) == f"value: larger than {MAX_MESSAGE_BYTES} bytes"
    assert reason(b"{").startswith("value: not valid JSON (")
    assert reason(b"\xff").startswith("value: not valid UTF-8 (")
    assert reason(_wire(), key=b"someone-else") == "key: does not match user_id"
    assert reason(_wire(), key=b"\xff").startswith("key: not valid UTF-8")
    assert reason(_wire(ts=...), default_ts=None) == "ts: missing and no record timestamp"
    assert reason(_wire(event_id=...), default_event_id=None) == "event_id: missing and not derivable"
    with pytest.raises(InvalidMessage, match=r"^user_id: longer than 256 characters \(102400\)$"):
        transaction_from_dict(
            {"user_id": "u" * 102_400, "item_id": "i"}, default_event_id="e", default_ts=1.0
        )


def test_message_of_exactly_the_size_limit_is_parsed() -> None:
    base = _wire(note="")
    value = _wire(note="x" * (MAX_MESSAGE_BYTES - len(base)))
    assert len(value) == MAX_MESSAGE_BYTES
    assert parse_transaction(value).user_id == "u1"


def test_valid_transaction_keeps_values_as_given() -> None:
    event = parse_transaction(_wire(user_id=" u 1 ", item_id="ünï ✓", ts=1_700_000_000), key=b" u 1 ")
    assert event == Transaction(
        event_id="e-1", user_id=" u 1 ", item_id="ünï ✓", quantity=2, ts=1_700_000_000.0
    )
    assert isinstance(event.ts, float)


def test_256_character_id_is_allowed() -> None:
    assert parse_transaction(_wire(user_id="u" * 256)).user_id == "u" * 256


def test_defaults_are_applied() -> None:
    value = b'{"user_id": "u1", "item_id": "i1"}'
    event = parse_transaction(
        value, default_event_id=derive_event_id("transactions", 3, 42), default_ts=1234.5
    )
    assert event == Transaction(
        event_id="transactions-3-42", user_id="u1", item_id="i1", quantity=1, ts=1234.5
    )


def test_null_optional_fields_take_defaults() -> None:
    value = b'{"user_id": "u1", "item_id": "i1", "quantity": null, "ts": null, "event_id": null}'
    event = parse_transaction(value, default_event_id="t-0-7", default_ts=99.0)
    assert (event.event_id, event.quantity, event.ts) == ("t-0-7", 1, 99.0)


def test_explicit_fields_win_over_defaults() -> None:
    event = parse_transaction(_wire(), default_event_id="t-0-7", default_ts=99.0)
    assert (event.event_id, event.ts) == ("e-1", 1_700_000_000.5)


def test_invalid_record_timestamp_is_not_used() -> None:
    with pytest.raises(InvalidMessage, match=r"^ts: "):
        parse_transaction(_wire(ts=...), default_ts=-0.001)


def test_derived_event_id_is_deterministic_and_distinct() -> None:
    assert derive_event_id("transactions", 0, 5) == derive_event_id("transactions", 0, 5)
    assert derive_event_id("transactions", 0, 5) != derive_event_id("transactions", 1, 5)
    assert derive_event_id("transactions", 0, 5) != derive_event_id("transactions", 0, 6)


def test_extra_fields_are_ignored() -> None:
    event = parse_transaction(_wire(price=9.99, store={"id": 3}, schema_version=2))
    assert event.to_dict() == VALID


def test_round_trip_through_json() -> None:
    event = Transaction(
        event_id="e\u00e9", user_id="user-\u4e2d", item_id="42", quantity=3, ts=1_700_000_000.25
    )
    value = event.to_json()
    assert b" " not in value  # compact
    assert json.loads(value) == event.to_dict()
    assert set(event.to_dict()) == {"event_id", "user_id", "item_id", "quantity", "ts"}
    assert parse_transaction(value, key=event.user_id.encode("utf-8")) == event


def test_key_matching_user_id_is_accepted() -> None:
    assert parse_transaction(_wire(user_id="é"), key="é".encode()).user_id == "é"


def test_valid_request_with_default_k() -> None:
    request = parse_request(b'{"request_id": "r1", "user_id": "u1", "extra": 1}')
    assert request == RecommendationRequest(request_id="r1", user_id="u1", k=DEFAULT_K)
    assert parse_request(request.to_json()) == request
    assert json.loads(request.to_json()) == {"request_id": "r1", "user_id": "u1", "k": 10}


@pytest.mark.parametrize("k", [1, 100])
def test_request_k_bounds_are_inclusive(k: int) -> None:
    assert parse_request(json.dumps({"request_id": "r", "user_id": "u", "k": k}).encode()).k == k


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param({"k": 0}, "k: must be between 1 and 100, got 0", id="k-0"),
        pytest.param({"k": 101}, "k: must be between 1 and 100, got 101", id="k-101"),
        pytest.param({"k": "5"}, "k: must be an integer, got string", id="k-string"),
        pytest.param({"k": True}, "k: must be an integer, got bool", id="k-bool"),
        pytest.param({"k": 5.0}, "k: must be an integer, got float", id="k-float"),
        pytest.param({"user_id": 7}, "user_id: must be a string, got int", id="user_id-int"),
        pytest.param({"user_id": ""}, "user_id: empty", id="user_id-empty"),
    ],
)
def test_invalid_request_carries_its_request_id(changes: dict[str, object], reason: str) -> None:
    value = json.dumps({"request_id": "r-9", "user_id": "u1", **changes}).encode()
    with pytest.raises(InvalidMessage) as caught:
        parse_request(value)
    assert caught.value.reason == reason
    assert caught.value.request_id == "r-9"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        pytest.param(b'{"user_id": "u1"}', "request_id", id="missing-request_id"),
        pytest.param(b'{"request_id": 5, "user_id": "u1"}', "request_id", id="request_id-int"),
        pytest.param(b'{"request_id": " ", "user_id": 3}', "request_id", id="blank-request_id"),
        pytest.param(b'{"request_id": "r1", "user_id": "u1"', "value", id="bad-json"),
        pytest.param(b'["r1"]', "value", id="json-array"),
        pytest.param(b"", "value", id="empty"),
    ],
)
def test_request_without_usable_request_id(value: bytes, field: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_request(value)
    assert caught.value.reason.startswith(f"{field}: ")
    assert caught.value.request_id is None


def test_nan_is_never_serialized() -> None:
    event = Transaction(event_id="e", user_id="u", item_id="i", quantity=1, ts=math.nan)
    with pytest.raises(ValueError):
        event.to_json()


# -- event time window ----------------------------------------------------------------------------
YEAR_10000 = 253_402_300_800  # 10000-01-01T00:00:00Z: no date can hold it


@pytest.mark.parametrize(
    ("ts", "accepted"),
    [
        pytest.param(1.0, True, id="1970"),
        pytest.param(946_684_800, True, id="2000-backfill"),
        pytest.param(MAX_TS, True, id="9999-12-31T23:59:59"),
        pytest.param(MAX_TS + 0.5, False, id="9999-12-31T23:59:59.5"),
        pytest.param(YEAR_10000, False, id="year-10000"),
        pytest.param(1e18, False, id="1e18"),
    ],
)
def test_event_time_is_bounded_by_what_a_date_can_hold(ts: float, accepted: bool) -> None:
    if accepted:
        assert parse_transaction(_wire(ts=ts)).ts == ts
        assert event_date(ts) <= "9999-12-31"
    else:
        with pytest.raises(InvalidMessage, match=r"^ts: after 9999-12-31T23:59:59Z, no date can hold it"):
            parse_transaction(_wire(ts=ts))


def test_the_future_window_applies_to_ts_and_to_the_record_timestamp() -> None:
    now = 1_790_000_000.0
    limit = future_limit(86_400, now)
    assert limit == now + 86_400
    assert parse_transaction(_wire(ts=limit), max_ts=limit).ts == limit
    with pytest.raises(InvalidMessage, match=r"^ts: ts .* more than the allowed window in the future$"):
        parse_transaction(_wire(ts=limit + 1), max_ts=limit)
    with pytest.raises(InvalidMessage, match=r"^ts: record timestamp .* in the future$"):
        parse_transaction(_wire(ts=...), default_ts=limit + 1, max_ts=limit)
    for record_ts in (YEAR_10000, 1e300, -1.0, float("nan")):  # what a broker record may carry
        with pytest.raises(InvalidMessage, match=r"^ts: missing and record timestamp is not valid"):
            parse_transaction(_wire(ts=...), default_ts=record_ts)
    # A years-old backfill lands whatever the window.
    assert parse_transaction(_wire(ts=1_000_000_000), max_ts=limit).ts == 1_000_000_000


def test_the_window_is_judged_from_the_record_time_so_a_redelivery_decides_the_same() -> None:
    produced, day = 1_790_000_000.0, 86_400.0
    first, a_week_later = (
        future_limit(day, produced + 5, produced),
        future_limit(day, produced + 7 * day, produced),
    )
    assert first == a_week_later == produced + day
    # A record timestamp ahead of the consumer's clock (skew, or forged) does not widen the window.
    assert future_limit(day, produced, produced + 10 * day) == produced + day
    assert future_limit(day, produced, float("nan")) == produced + day


def test_event_date_is_total() -> None:
    assert event_date(MAX_TS) == "9999-12-31"
    assert event_date(YEAR_10000) == event_date(1e300) == event_date(float("inf")) == "9999-12-31"
    assert event_date(-1e300) == event_date(float("-inf")) == event_date(float("nan")) == "0001-01-01"
    assert event_date(1_790_000_000.0) == "2026-09-21" and event_date(0) == "1970-01-01"
