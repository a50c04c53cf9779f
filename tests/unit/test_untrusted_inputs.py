"""Property tests of every parser that faces bytes from outside: transactions, requests, control
events (model-updates, drift-alerts) and the registry's event objects.

Any input either parses to a value within the contract's bounds or is rejected with
InvalidMessage and a one-line reason; nothing else may escape (an escaping exception is what
stalled a partition or wedged a consumer on the same record).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from recstream.stream.contracts.alerts import KINDS, parse_drift_alert
from recstream.stream.contracts.lake import event_date
from recstream.stream.contracts.model_events import EVENTS, MAX_VERSION, parse_model_event
from recstream.stream.contracts.records import (
    MAX_ID_LENGTH,
    MAX_K,
    MAX_QUANTITY,
    MAX_TS,
    InvalidMessage,
    parse_request,
    parse_transaction,
)
from recstream.stream.registry import ModelRegistry

PROPERTY = settings(max_examples=300, deadline=None)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, 1, -1, 1.5, MAX_TS, MAX_TS + 1, 2**63, 10**400, -(10**400), 253_402_300_800])
    | st.text(max_size=40)
    | st.sampled_from([*EVENTS, *KINDS, "u1", "i1", "m", "", " ", "\x00", "\ud800"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def _objects(*keys: str) -> st.SearchStrategy[bytes]:
    """JSON objects using the contract's field names with any values: reaches every field check."""
    return st.fixed_dictionaries({}, optional={key: json_values for key in keys}).map(
        lambda obj: json.dumps(obj, allow_nan=True).encode()
    )


nested = st.tuples(st.integers(1, 40_000), st.sampled_from([b"[", b'{"a":', b'{"metrics":{"x":'])).map(
    lambda depth_open: depth_open[1] * depth_open[0]
)


def untrusted(*keys: str) -> st.SearchStrategy[bytes | None]:
    return st.one_of(
        st.none(),
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
        _objects(*keys),
        nested,
        st.integers(60_000, 70_000).map(lambda n: b'{"pad": "' + b"x" * n + b'"}'),
    )


def _rejected_or(parse: Callable[[Any], Any], value: Any, check: Callable[[Any], None]) -> None:
    try:
        parsed = parse(value)
    except InvalidMessage as exc:
        assert exc.reason and str(exc) == exc.reason
        assert "\n" not in exc.reason and len(exc.reason) < 300, exc.reason
        assert exc.reason.split(":", 1)[0].replace("_", "").isalpha(), exc.reason  # names its field
        return
    check(parsed)


def _valid_id(value: str) -> None:
    assert isinstance(value, str) and value.strip() and len(value) <= MAX_ID_LENGTH


@PROPERTY
@given(untrusted("event_id", "user_id", "item_id", "quantity", "ts"), st.none() | st.floats() | st.integers())
def test_parse_transaction(value: bytes | None, record_ts: float | None) -> None:
    def check(event: Any) -> None:
        for field in (event.event_id, event.user_id, event.item_id):
            _valid_id(field)
        assert 1 <= event.quantity <= MAX_QUANTITY
        assert 0 < event.ts <= MAX_TS and event.ts <= 2_000_000_000
        event_date(event.ts)  # what a flush does with it: never raises

    _rejected_or(
        lambda v: parse_transaction(v, default_event_id="t-0-1", default_ts=record_ts, max_ts=2_000_000_000),
        value,
        check,
    )


@PROPERTY
@given(untrusted("request_id", "user_id", "k"))
def test_parse_request(value: bytes | None) -> None:
    def check(request: Any) -> None:
        _valid_id(request.request_id)
        _valid_id(request.user_id)
        assert 1 <= request.k <= MAX_K

    _rejected_or(parse_request, value, check)


@PROPERTY
@given(untrusted("event", "model", "version", "metrics", "reason", "to", "ts"))
def test_parse_model_event(value: bytes | None) -> None:
    def check(event: Any) -> None:
        assert event.event in EVENTS and event.model and 0 <= event.version <= MAX_VERSION
        assert math.isfinite(event.ts) and isinstance(event.metrics, dict)
        assert parse_model_event(event.to_json()) == event  # what the registry writes back reads again

    _rejected_or(parse_model_event, value, check)


@PROPERTY
@given(untrusted("kind", "statistic", "value", "threshold", "model_version", "window", "ts"))
def test_parse_drift_alert(value: bytes | None) -> None:
    def check(alert: Any) -> None:
        assert alert.kind in KINDS and 0 <= alert.model_version <= MAX_VERSION
        assert all(math.isfinite(x) for x in (alert.value, alert.threshold, alert.ts))
        assert parse_drift_alert(alert.to_json()) == alert

    _rejected_or(parse_drift_alert, value, check)


# -- the registry's event objects -----------------------------------------------------------------
@dataclass
class _Object:
    object_name: str


class _Response(io.BytesIO):
    def release_conn(self) -> None:
        pass


class _Bucket:
    """Pure-logic stand-in for the object store's two calls state() makes (the integration test
    tests/integration/test_poison.py does the same on the real store)."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def list_objects(self, bucket: str, prefix: str, recursive: bool = False) -> list[_Object]:
        return [_Object(name) for name in sorted(self.objects) if name.startswith(prefix)]

    def get_object(self, bucket: str, name: str) -> _Response:
        return _Response(self.objects[name])


GOOD = b'{"event": "published", "model": "m", "version": 1, "metrics": {}, "ts": 1}'


@PROPERTY
@given(untrusted("event", "model", "version", "metrics", "reason", "to", "ts"))
def test_registry_state_skips_whatever_an_event_object_holds(value: bytes | None) -> None:
    objects = {"m/_events/0001-good.json": GOOD, "m/_events/0002-any.json": value or b""}
    state = ModelRegistry(_Bucket(objects), "models", "m").state()  # type: ignore[arg-type]
    assert state.status.get(1) is not None  # the good event is always applied
    assert 1 <= len(state.events) <= 2
