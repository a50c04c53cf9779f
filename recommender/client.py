"""A small client for services that consume recommendations: send a request, await its answer.

Requests are keyed by user_id (so the scorer that holds the user's purchases answers), sent
at once (no linger) to REQUESTS_KAFKA_BOOTSTRAP, where answers are read with the request
path's fetch wait (KAFKA_REQUEST_FETCH_MAX_WAIT_MS); `recommend_http` asks the scorer's HTTP
view instead. Answers are read from every partition of `recommendations` without a consumer group,
starting at the end as it was before the first request, and matched by request_id;
others' answers are skipped. An answer that is redelivered is returned once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

from kafka import TopicPartition

from recstream.stream.consumers import kafka_consumer
from recstream.stream.contracts.records import DEFAULT_K, RecommendationRequest
from recstream.stream.errors import RecstreamError
from recstream.stream.producer import EventProducer
from recstream.stream.settings import Settings


class NoAnswer(RecstreamError):
    """The scorer did not answer in time (is `recstream scorer` running?)."""


class RecommendationClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        bootstrap = settings.requests_kafka_bootstrap
        self.producer = EventProducer(
            settings, client_id="recstream-request", bootstrap=bootstrap, linger_ms=0
        )
        self.consumer = kafka_consumer(  # no group: every partition, from the end
            settings=settings,
            bootstrap=bootstrap,
            fetch_max_wait_ms=settings.kafka_request_fetch_max_wait_ms,
        )
        topic = settings.recommendations_topic
        partitions = self.consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise RecstreamError(f"topic {topic} does not exist: is the stack up?")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(assigned)
        self.consumer.seek_to_end(*assigned)
        for tp in assigned:
            self.consumer.position(tp)  # resolve the end now, before any request is sent
        self.sent: set[str] = set()  # awaited request ids: only their answers are kept
        self.received: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self.producer.close()
        self.consumer.close()

    def __enter__(self) -> RecommendationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, user_id: str, k: int = DEFAULT_K, request_id: str | None = None) -> str:
        request = RecommendationRequest(request_id or uuid.uuid4().hex, user_id, k)
        self.sent.add(request.request_id)  # before sending: the answer may be read at once
        self.producer.send(self.settings.requests_topic, request.to_json(), key=user_id)
        return request.request_id

    def send_raw(self, value: bytes, request_id: str | None = None, key: str | None = None) -> None:
        """Send bytes as they are (to check the scorer's error answers); await them by `request_id`."""
        self.producer.send(self.settings.requests_topic, value, key=key)
        if request_id is not None:
            self.sent.add(request_id)

    def wait(self, request_ids: Iterable[str], timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
        """The answers to these requests, by request_id; NoAnswer if some are missing at the deadline."""
        wanted = set(request_ids)
        self.producer.flush()
        deadline = time.monotonic() + timeout_s
        while not wanted <= self.received.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                missing = len(wanted - self.received.keys())
                raise NoAnswer(f"no answer to {missing} of {len(wanted)} requests within {timeout_s:g}s")
            self._read(min(left, 1.0))
        self.sent -= wanted
        return {request_id: self.received.pop(request_id) for request_id in wanted}

    def poll(self, timeout_s: float = 1.0) -> list[dict[str, Any]]:
        """The answers to any sent request that arrived by now (each once), for streaming callers."""
        self._read(timeout_s)
        arrived = [self.received.pop(request_id) for request_id in list(self.received)]
        self.sent.difference_update(answer["request_id"] for answer in arrived)
        return arrived

    def _read(self, timeout_s: float) -> None:
        for records in self.consumer.poll(timeout_ms=int(timeout_s * 1000)).values():
            for record in records:
                self._keep(record.value)

    def request(self, user_id: str, k: int = DEFAULT_K, timeout_s: float = 30.0) -> dict[str, Any]:
        request_id = self.send(user_id, k)
        return self.wait([request_id], timeout_s)[request_id]

    def _keep(self, value: bytes | None) -> None:
        try:
            answer = json.loads(value or b"")
        except ValueError:
            return
        if isinstance(answer, dict) and answer.get("request_id") in self.sent:
            self.received.setdefault(answer["request_id"], answer)


def recommend_http(
    settings: Settings, user_id: str, k: int = DEFAULT_K, timeout_s: float = 10.0
) -> dict[str, Any]:
    """One user's answer from the scorer's HTTP view (any worker: it routes to the owner)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"k": k})
    url = (
        f"http://{settings.scorer_http_host}:{settings.scorer_http_port}"
        f"/recommendations/{urllib.parse.quote(user_id, safe='')}?{query}"
    )
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read(1 << 20))
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read(1 << 20))
        except ValueError:
            raise RecstreamError(f"scorer HTTP view: {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise NoAnswer(f"the scorer's HTTP view at {url} does not answer: {exc}") from None
