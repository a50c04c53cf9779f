"""kafka-python producer for the contract's events: key = user_id, batched, confirmed delivery.

One request in flight per connection keeps each partition in send order across retries.
Idempotence stays off: Tansu 0.6's S3 engine rejects idempotent produce requests
(UnknownError, "producer=None epoch=None"), so a retry after a lost ack may duplicate a
record; consumers dedupe by event_id. `flush()` raises if any record was not
acknowledged, so callers never report an unconfirmed send as done.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, NoBrokersAvailable

from recstream.stream.contracts.records import Transaction
from recstream.stream.errors import RecstreamError
from recstream.stream.settings import Settings

log = logging.getLogger(__name__)


class BrokerUnavailable(RecstreamError):
    """No broker answers at the configured bootstrap address."""


class DeliveryError(RecstreamError):
    """Some records were not acknowledged by the broker."""


class EventProducer:
    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str = "recstream-producer",
        bootstrap: str | None = None,
        linger_ms: int | None = None,
    ) -> None:
        self.bootstrap = bootstrap or settings.require("kafka_bootstrap")
        self.timeout_s = settings.producer_timeout_s
        self.transactions_topic = settings.transactions_topic
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id=client_id,
                acks="all",
                max_in_flight_requests_per_connection=1,
                retries=5,
                linger_ms=settings.producer_linger_ms if linger_ms is None else linger_ms,
                max_block_ms=int(self.timeout_s * 1000),
                request_timeout_ms=int(self.timeout_s * 1000),
            )
        except (NoBrokersAvailable, KafkaTimeoutError) as exc:
            raise BrokerUnavailable(f"no Kafka broker answers at {self.bootstrap}") from exc
        self._lock = threading.Lock()
        self.failed = 0
        self.last_error: str | None = None

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"

    def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        try:
            future = self._producer.send(
                topic,
                value=value,
                key=key.encode() if key is not None else None,
                headers=list(headers.items()) if headers else None,
            )
        except KafkaTimeoutError as exc:
            raise BrokerUnavailable(
                f"broker at {self.bootstrap} did not answer within {self.timeout_s:g}s"
            ) from exc
        future.add_errback(self._on_error)

    def send_transaction(self, event: Transaction) -> None:
        self.send(self.transactions_topic, event.to_json(), key=event.user_id)

    def flush(self) -> None:
        """Wait for every pending record; raise DeliveryError if any was not acknowledged."""
        try:
            self._producer.flush(timeout=self.timeout_s)
        except KafkaError as exc:
            raise DeliveryError(f"records still pending after {self.timeout_s:g}s: {exc}") from exc
        if self.failed:
            raise DeliveryError(f"{self.failed} records not acknowledged; last error: {self.last_error}")

    def close(self) -> None:
        self._producer.close(timeout=self.timeout_s)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
