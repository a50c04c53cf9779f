"""The `drift-alerts` contract: what the drift tracker publishes and the scheduler consumes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from recstream.stream.contracts.model_events import MAX_EVENT_DEPTH, MAX_NAME_LENGTH, MAX_VERSION
from recstream.stream.contracts.records import InvalidMessage, finite_number, load_json

KINDS = ("concept", "data")


@dataclass(frozen=True, slots=True)
class DriftAlert:
    kind: str
    statistic: str
    value: float
    threshold: float
    model_version: int
    window: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        body = {
            "kind": self.kind,
            "statistic": self.statistic,
            "value": self.value,
            "threshold": self.threshold,
            "model_version": self.model_version,
            "window": self.window,
            "ts": self.ts,
        }
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def parse_drift_alert(value: bytes | None) -> DriftAlert:
    """Validate a `drift-alerts` record; InvalidMessage is the only exception any bytes can raise."""
    obj = load_json(value, max_depth=MAX_EVENT_DEPTH)
    if not isinstance(obj, dict):
        raise InvalidMessage("value: not a JSON object")
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidMessage(f"kind: expected one of {', '.join(KINDS)}")
    statistic = obj.get("statistic")
    if not isinstance(statistic, str) or len(statistic) > MAX_NAME_LENGTH:
        raise InvalidMessage(f"statistic: expected a string of at most {MAX_NAME_LENGTH} characters")
    numbers = {
        name: finite_number(obj.get(name), name, "expected a finite number")
        for name in ("value", "threshold", "ts")
    }
    version = obj.get("model_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_VERSION:
        raise InvalidMessage("model_version: expected a non-negative integer below 2**63")
    window = obj.get("window", {})
    if not isinstance(window, dict):
        raise InvalidMessage("window: expected an object")
    return DriftAlert(kind, statistic, numbers["value"], numbers["threshold"], version, window, numbers["ts"])
