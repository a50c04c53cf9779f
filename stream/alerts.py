"""The `drift-alerts` contract: what the drift tracker publishes and the scheduler consumes."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from stream.schemas import InvalidMessage

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
    try:
        obj = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        raise InvalidMessage("value: not a JSON object") from None
    if not isinstance(obj, dict):
        raise InvalidMessage("value: not a JSON object")
    if obj.get("kind") not in KINDS:
        raise InvalidMessage(f"kind: expected one of {', '.join(KINDS)}")
    if not isinstance(obj.get("statistic"), str):
        raise InvalidMessage("statistic: expected a string")
    numbers = {name: obj.get(name) for name in ("value", "threshold", "ts")}
    for name, number in numbers.items():
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
            raise InvalidMessage(f"{name}: expected a finite number")
    version = obj.get("model_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidMessage("model_version: expected a non-negative integer")
    window = obj.get("window", {})
    if not isinstance(window, dict):
        raise InvalidMessage("window: expected an object")
    return DriftAlert(
        obj["kind"],
        obj["statistic"],
        float(numbers["value"]),
        float(numbers["threshold"]),
        version,
        window,
        float(numbers["ts"]),
    )
