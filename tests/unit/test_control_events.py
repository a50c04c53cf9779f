"""The `model-updates` and `drift-alerts` contracts: round trips and one reason per bad field."""

from __future__ import annotations

import json

import pytest

from recstream.stream.contracts.alerts import DriftAlert, parse_drift_alert
from recstream.stream.contracts.model_events import MAX_EVENT_BYTES, ModelEvent, parse_model_event
from recstream.stream.contracts.records import InvalidMessage


def test_model_event_round_trip() -> None:
    event = ModelEvent("rolled_back", "recommender", 3, {"hr@10": 0.25}, reason="operator", to=2, ts=5.0)
    assert parse_model_event(event.to_json()) == event
    assert json.loads(event.to_json()) == {
        "event": "rolled_back",
        "model": "recommender",
        "version": 3,
        "metrics": {"hr@10": 0.25},
        "reason": "operator",
        "to": 2,
        "ts": 5.0,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "value"),
        (b"[]", "value"),
        (b'{"event": "promoted", "model": "m", "version": 1, "ts": 1}', "event"),
        (b'{"event": "published", "model": "", "version": 1, "ts": 1}', "model"),
        (b'{"event": "published", "model": "m", "version": -1, "ts": 1}', "version"),
        (b'{"event": "published", "model": "m", "version": true, "ts": 1}', "version"),
        (b'{"event": "published", "model": "m", "version": 1, "ts": "now"}', "ts"),
        (b'{"event": "published", "model": "m", "version": 1, "ts": 1, "metrics": []}', "metrics"),
        (b'{"event": "rejected", "model": "m", "version": 1, "ts": 1, "reason": 3}', "reason"),
        (b'{"event": "rolled_back", "model": "m", "version": 2, "ts": 1}', "to"),
        (b'{"event": "activated", "model": "m", "version": 2, "ts": 1, "to": 1}', "to"),
    ],
)
def test_model_event_rejects_with_the_field(body: bytes, field: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_model_event(body)
    assert caught.value.reason.startswith(f"{field}:")


VALID_ALERT = {"kind": "concept", "statistic": "ph", "value": 1, "threshold": 1, "ts": 1, "model_version": 1}


def test_drift_alert_round_trip_and_rejections() -> None:
    alert = DriftAlert("data", "psi_items", 0.31, 0.2, 4, {"events": 5000}, ts=7.0)
    assert parse_drift_alert(alert.to_json()) == alert
    for body, field in [
        (b'{"kind": "mood"}', "kind"),
        (b'{"kind": "concept", "statistic": 1}', "statistic"),
        (b'{"kind": "concept", "statistic": "ph", "value": "x", "threshold": 1, "ts": 1}', "value"),
        (json.dumps({**VALID_ALERT, "model_version": -1}).encode(), "model_version"),
    ]:
        with pytest.raises(InvalidMessage) as caught:
            parse_drift_alert(body)
        assert caught.value.reason.startswith(f"{field}:"), body


VALID_EVENT = {"event": "published", "model": "m", "version": 1, "ts": 1, "metrics": {"hr@10": 0.2}}
POISON = [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "value: larger than", id="oversized-deep-nesting"),
    pytest.param(b"[" * 30_000, "value: not valid JSON (nested too deeply)", id="deep-nesting"),
    pytest.param(json.dumps({"pad": "x" * MAX_EVENT_BYTES}).encode(), "value: larger than", id="oversized"),
    pytest.param(b'{"metrics": ' + b'{"a": ' * 20 + b"1" + b"}" * 21, "value: nested deeper", id="nested-20"),
    pytest.param(b"\xff\xfe", "value: not valid UTF-8", id="not-utf8"),
    pytest.param(b"", "value: empty", id="empty"),
    pytest.param(None, "value: empty", id="none"),
]


@pytest.mark.parametrize(("body", "reason"), POISON)
def test_poison_control_records_are_invalid_messages(body: bytes | None, reason: str) -> None:
    for parse in (parse_model_event, parse_drift_alert):
        with pytest.raises(InvalidMessage) as caught:
            parse(body)
        assert caught.value.reason.startswith(reason), caught.value.reason


def test_numbers_beyond_a_float_or_int64_are_rejected_not_raised() -> None:
    huge = 10**400
    for changes, field in [
        ({"ts": huge}, "ts"),
        ({"version": 2**63}, "version"),
        ({"event": "rolled_back", "to": huge}, "to"),
        ({"model": "m" * 257}, "model"),
        ({"event": ["published"]}, "event"),
    ]:
        with pytest.raises(InvalidMessage) as caught:
            parse_model_event(json.dumps({**VALID_EVENT, **changes}).encode())
        assert caught.value.reason.startswith(f"{field}:"), changes
    for changes, field in [
        ({"value": huge}, "value"),
        ({"threshold": -huge}, "threshold"),
        ({"model_version": 2**63}, "model_version"),
        ({"kind": {"concept": 1}}, "kind"),
        ({"statistic": "s" * 257}, "statistic"),
    ]:
        with pytest.raises(InvalidMessage) as caught:
            parse_drift_alert(json.dumps({**VALID_ALERT, **changes}).encode())
        assert caught.value.reason.startswith(f"{field}:"), changes
    assert parse_model_event(json.dumps({**VALID_EVENT, "version": 2**63 - 1}).encode()).version == 2**63 - 1
