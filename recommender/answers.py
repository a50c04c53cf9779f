"""From a batch of requests and the model's ranked lists to the `recommendations` records
(stream.contracts.recommendations).

The served model already leaves out what a customer bought before it was trained; the
scorer also leaves out what they bought since (the scorer's table), so it asks the model
for k plus that many items and the list is still k long while the catalogue allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recstream.stream.contracts import recommendations
from recstream.stream.contracts.records import RecommendationRequest


@dataclass(frozen=True, slots=True)
class Ranked:
    """The model's answer for a batch: items and scores [N, K], the version, fallback per user."""

    items: np.ndarray
    scores: np.ndarray
    version: int
    fallback: np.ndarray


def item_id(value: bytes | str) -> str:
    """An item of the model's answer (TF Serving's strings arrive as bytes) as the records carry it."""
    return value.decode() if isinstance(value, bytes) else str(value)


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
    return recommendations.answer(
        request.request_id,
        request.user_id,
        chosen[: request.k],
        model_version=version,
        fallback=fallback,
        latency_ms=latency_ms,
    )


def answers(
    requests: Sequence[RecommendationRequest],
    ranked: Ranked,
    bought: Sequence[Sequence[str]],
    latencies_ms: Sequence[float],
) -> list[dict[str, object]]:
    return [
        answer(
            request,
            [item_id(item) for item in ranked.items[i]],
            ranked.scores[i].tolist(),
            bought=bought[i],
            version=ranked.version,
            fallback=bool(ranked.fallback[i]),
            latency_ms=latencies_ms[i],
        )
        for i, request in enumerate(requests)
    ]
