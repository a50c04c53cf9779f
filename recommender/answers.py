"""From a batch of requests and the model's ranked lists to the `recommendations` records.

The served model already leaves out what a customer bought before it was trained; the
scorer also leaves out what they bought since (the scorer's table), so it asks the model
for k plus that many items and the list is still k long while the catalogue allows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stream.schemas import RecommendationRequest


@dataclass(frozen=True, slots=True)
class Ranked:
    """The model's answer for a batch: items and scores [N, K], the version, fallback per user."""

    items: np.ndarray
    scores: np.ndarray
    version: int
    fallback: np.ndarray


def model_k(requests: Sequence[RecommendationRequest], bought: Sequence[Sequence[str]]) -> int:
    """The k to ask the model for so that every request still has k items after filtering."""
    return max(request.k + len(items) for request, items in zip(requests, bought, strict=True))


def answer(
    request: RecommendationRequest,
    items: Sequence[str],
    scores: Sequence[float],
    *,
    bought: Sequence[str],
    version: int,
    fallback: bool,
    latency_ms: float,
) -> dict[str, object]:
    exclude = set(bought)
    chosen = [(item, float(score)) for item, score in zip(items, scores, strict=True) if item not in exclude]
    chosen = chosen[: request.k]
    return {
        "request_id": request.request_id,
        "user_id": request.user_id,
        "items": [item for item, _ in chosen],
        "scores": [round(score, 6) for _, score in chosen],
        "model_version": version,
        "fallback": fallback,
        "latency_ms": round(latency_ms, 3),
    }


def answers(
    requests: Sequence[RecommendationRequest],
    ranked: Ranked,
    bought: Sequence[Sequence[str]],
    latencies_ms: Sequence[float],
) -> list[dict[str, object]]:
    return [
        answer(
            request,
            [item.decode() if isinstance(item, bytes) else str(item) for item in ranked.items[i]],
            ranked.scores[i].tolist(),
            bought=bought[i],
            version=ranked.version,
            fallback=bool(ranked.fallback[i]),
            latency_ms=latencies_ms[i],
        )
        for i, request in enumerate(requests)
    ]


def error(request_id: str | None, message: str) -> dict[str, object]:
    """An invalid or unanswerable request's record (request_id null when it had none)."""
    return {"request_id": request_id, "error": message}


def encode(record: dict[str, object]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
