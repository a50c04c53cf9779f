"""The `recommendations` record: the scorer's answer to one request (Kafka and HTTP alike).

`{"request_id", "user_id", "items", "scores", "model_version", "fallback", "latency_ms"}`, or
`{"request_id", "error"}` for a request that is invalid or could not be answered (request_id
null when it had none). Clients keep the first answer per request_id. `scores` go best first:
the model's probabilities, re-weighted by the item mix of the latest purchases and
renormalised over the items the model returned (README, "What sells now").
"""

from __future__ import annotations

import json
from collections.abc import Sequence


def answer(
    request_id: str,
    user_id: str,
    ranked: Sequence[tuple[str, float]],
    *,
    model_version: int,
    fallback: bool,
    latency_ms: float,
) -> dict[str, object]:
    """The answer record of a ranked list of (item, score), best first."""
    return {
        "request_id": request_id,
        "user_id": user_id,
        "items": [item for item, _ in ranked],
        "scores": [round(score, 6) for _, score in ranked],
        "model_version": model_version,
        "fallback": fallback,
        "latency_ms": round(latency_ms, 3),
    }


def error(request_id: str | None, message: str) -> dict[str, object]:
    """An invalid or unanswerable request's record (request_id null when it had none)."""
    return {"request_id": request_id, "error": message}


def encode(record: dict[str, object]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
