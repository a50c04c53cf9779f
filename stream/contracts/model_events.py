"""The `model-updates` contract: one event per step of a model version's life.

The same events are the model registry's records (stream/registry.py), so the topic and
the registry can never disagree about what an event means.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from recstream.stream.contracts.records import MAX_MESSAGE_BYTES, InvalidMessage, finite_number, load_json

# Control events share the one message bound (checked before parsing; a real event is a few
# hundred bytes); the name stays for the registry's reads of event objects.
MAX_EVENT_BYTES = MAX_MESSAGE_BYTES
MAX_EVENT_DEPTH = 16  # the event object, its metrics and what they hold
MAX_NAME_LENGTH = 256
MAX_VERSION = 2**63 - 1  # TF Serving's versions are int64

PUBLISHED, ACTIVATED, REJECTED, ROLLED_BACK = "published", "activated", "rejected", "rolled_back"
EVENTS = (PUBLISHED, ACTIVATED, REJECTED, ROLLED_BACK)


@dataclass(frozen=True, slots=True)
class ModelEvent:
    """`rolled_back` names the version taken out of service; `to` says which one serves instead.

    A candidate the gate refuses still gets a version number (never exported, never reused),
    so every `rejected` event names a distinct version.
    """

    event: str
    model: str
    version: int
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    to: int | None = None
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event": self.event,
            "model": self.model,
            "version": self.version,
            "metrics": self.metrics,
            "ts": self.ts,
        }
        if self.reason is not None:
            body["reason"] = self.reason
        if self.to is not None:
            body["to"] = self.to
        return body

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()


def parse_model_event(value: bytes | None) -> ModelEvent:
    """Validate a `model-updates` record (or a registry event object); InvalidMessage names the
    field at fault and is the only exception any bytes can raise."""
    obj = load_json(value, max_depth=MAX_EVENT_DEPTH)
    if not isinstance(obj, dict):
        raise InvalidMessage("value: not a JSON object")
    event = obj.get("event")
    if not isinstance(event, str) or event not in EVENTS:
        raise InvalidMessage(f"event: expected one of {', '.join(EVENTS)}")
    model = obj.get("model")
    if not isinstance(model, str) or not model or len(model) > MAX_NAME_LENGTH:
        raise InvalidMessage(f"model: expected a non-empty string of at most {MAX_NAME_LENGTH} characters")
    version = _int(obj.get("version"), "version")
    to = obj.get("to")
    if (to is None) == (event == ROLLED_BACK):
        raise InvalidMessage("to: required on rolled_back events, and only there")
    metrics = obj.get("metrics", {})
    if not isinstance(metrics, dict):
        raise InvalidMessage("metrics: expected an object")
    reason = obj.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidMessage("reason: expected a string")
    ts = finite_number(obj.get("ts"), "ts", "expected epoch seconds")
    return ModelEvent(event, model, version, metrics, reason, None if to is None else _int(to, "to"), ts)


def _int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VERSION:
        raise InvalidMessage(f"{name}: expected a non-negative integer below 2**63")
    return value
