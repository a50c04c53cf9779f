"""`recstream scorer`: the Faust worker answering `recommendation-requests` (DESIGN flows 5 and 6).

Agents:
- `purchases` consumes `transactions` into the `bought` table (user -> their latest
  SCORER_HISTORY_ITEMS products, changelogged, so a restarted scorer still knows them)
  and feeds the drift monitor;
- `requests` takes micro-batches (SCORER_BATCH_SIZE, SCORER_BATCH_WAIT_S) into one
  Predict each and answers on `recommendations`; an invalid request gets an error record.
  While the model server is unavailable the batch is retried with backoff and nothing
  further is consumed; a request still unanswered SCORER_DEADLINE_S after it was produced
  gets an error record instead. Offsets are committed after the answers are flushed, so
  every request is answered at least once (exactly once unless the worker dies between
  the two; a client keys its wait on request_id).
A task follows `model-updates` (no consumer group: every scorer sees every event) to call
the version of the latest `activated` / `rolled_back`; a timer checks drift and publishes
to `drift-alerts`.

Requests must be keyed by user_id, as transactions are (recommender.client does so): with
several scorer workers, a request then lands on the worker holding that user's purchases.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from recommender import answers as records
from recommender.drift import DriftConfig, DriftMonitor, Reference
from recommender.predict import PredictFailed, Predictor, Retryable
from stream.faust_app import create_app
from stream.model_events import parse_model_event
from stream.schemas import MAX_K, InvalidMessage, RecommendationRequest, parse_request, parse_transaction
from stream.settings import Settings

log = logging.getLogger(__name__)

REQUESTS = Counter("recstream_scorer_requests_total", "Requests answered", ["result"])
LATENCY = Histogram(
    "recstream_scorer_latency_seconds",
    "From a request being produced to its answer being sent",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH = Histogram(
    "recstream_scorer_batch_size", "Requests per Predict", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
PREDICT = Histogram(
    "recstream_scorer_predict_seconds",
    "One Predict call",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
RETRIES = Counter("recstream_scorer_predict_retries_total", "Predict calls retried (server unavailable)")
PURCHASES = Counter("recstream_scorer_purchases_total", "Transactions seen by the scorer", ["result"])
SERVED_VERSION = Gauge("recstream_scorer_model_version", "Version of the last answer (0: none yet)")
HIT_RATE = Gauge("recstream_drift_online_hit_rate", "Hit rate of resolved recommendations", ["version"])
OUTCOMES = Gauge("recstream_drift_outcomes", "Resolved recommendations", ["version", "result"])
STATISTIC = Gauge("recstream_drift_statistic", "Last value of each drift statistic", ["statistic"])
ALERTS = Counter("recstream_drift_alerts_total", "Drift alerts published", ["kind", "statistic"])


class Scorer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app("scorer", settings)
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.requests = self.app.topic(settings.requests_topic, **raw)
        self.transactions = self.app.topic(settings.transactions_topic, **raw)
        self.answers = self.app.topic(settings.recommendations_topic, **raw)
        self.alerts = self.app.topic(settings.drift_alerts_topic, **raw)
        # Keys are user_id bytes (the app's raw key serializer), values JSON lists of item ids.
        self.bought = self.app.Table("bought", default=list, partitions=settings.topic_partitions)
        self.monitor = DriftMonitor(DriftConfig.from_settings(settings))
        self.predictor: Predictor | None = None
        self.references: dict[int, Reference | None] = {}
        self.fetching: dict[int, asyncio.Task[None]] = {}  # reference downloads in flight
        self.app.agent(self.transactions, name="purchases")(self._purchases)
        self.app.agent(self.requests, name="requests")(self._requests)
        self.app.task(self._follow_model_updates)
        self.app.timer(interval=settings.drift_check_s)(self._check_drift)

    # -- purchases -------------------------------------------------------------------------------

    async def _purchases(self, stream: Any) -> None:
        limit = self.settings.scorer_history_items
        async for event in stream.events():
            message = event.message
            try:
                purchase = parse_transaction(message.value, key=message.key, default_ts=message.timestamp)
            except InvalidMessage:
                PURCHASES.labels("invalid").inc()  # the ingest worker dead-letters it
                continue
            key = purchase.user_id.encode()
            history = [item for item in self.bought[key] if item != purchase.item_id]
            history.append(purchase.item_id)
            self.bought[key] = history[-limit:]
            self.monitor.purchased(purchase.user_id, purchase.item_id, message.timestamp)
            PURCHASES.labels("valid").inc()

    # -- requests --------------------------------------------------------------------------------

    async def _requests(self, stream: Any) -> None:
        async for events in stream.take_events(
            self.settings.scorer_batch_size, within=self.settings.scorer_batch_wait_s
        ):
            await self._serve(events)

    async def _serve(self, events: list[Any]) -> None:
        out: list[tuple[str, dict[str, object]]] = []
        pending: list[tuple[RecommendationRequest, float]] = []
        for event in events:
            try:
                request = parse_request(event.message.value)
            except InvalidMessage as exc:
                REQUESTS.labels("invalid").inc()
                out.append(
                    (exc.request_id or "", records.error(exc.request_id, f"invalid request: {exc.reason}"))
                )
            else:
                pending.append((request, event.message.timestamp))
        try:
            if pending:
                out.extend(await self._recommend(pending))
        except Exception as exc:  # a bug must not drop the batch: take_events acks it regardless
            log.exception("answering a batch failed")
            answered = {record.get("request_id") for _, record in out}
            for request, _ in pending:
                if request.request_id not in answered:
                    REQUESTS.labels("error").inc()
                    out.append((request.user_id, records.error(request.request_id, f"scorer failure: {exc}")))
        for key, record in out:
            await self.answers.send(key=key.encode(), value=records.encode(record))

    async def _recommend(
        self, pending: list[tuple[RecommendationRequest, float]]
    ) -> list[tuple[str, dict[str, object]]]:
        """Answers for valid requests: retried while the model server is unavailable, then errors."""
        predictor = self._predictor()
        out: list[tuple[str, dict[str, object]]] = []
        delay = 0.1
        while pending:
            requests = [request for request, _ in pending]
            bought = [self.bought[request.user_id.encode()] for request in requests]
            k = min(records.model_k(requests, bought), MAX_K + self.settings.scorer_history_items)
            started = time.perf_counter()
            try:
                ranked = await predictor.recommend([r.user_id for r in requests], k)
            except Retryable as exc:
                RETRIES.inc()
                now = time.time()
                late = [(r, ts) for r, ts in pending if now - ts >= self.settings.scorer_deadline_s]
                for request, _ in late:
                    REQUESTS.labels("expired").inc()
                    out.append(
                        (request.user_id, records.error(request.request_id, f"unanswered in time: {exc}"))
                    )
                pending = [p for p in pending if p not in late]
                if pending:
                    log.warning(
                        "Predict failed (%s); retrying %d requests in %.1fs", exc, len(pending), delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                continue
            except PredictFailed as exc:
                log.error("Predict failed: %s", exc)
                for request, _ in pending:
                    REQUESTS.labels("error").inc()
                    out.append((request.user_id, records.error(request.request_id, str(exc))))
                return out
            PREDICT.observe(time.perf_counter() - started)
            BATCH.observe(len(requests))
            now = time.time()
            latencies = [(now - ts) * 1000 for _, ts in pending]
            answered = records.answers(requests, ranked, bought, latencies)
            # The drift join compares record timestamps: the request's here, the purchase's there.
            for record, (request, ts), latency in zip(answered, pending, latencies, strict=True):
                out.append((request.user_id, record))
                LATENCY.observe(latency / 1000)
                REQUESTS.labels("fallback" if record["fallback"] else "model").inc()
                self.monitor.served(
                    request.user_id, record["items"], ranked.version, bool(record["fallback"]), ts
                )
            SERVED_VERSION.set(ranked.version)
            self._want_reference(ranked.version)
            return out
        return out

    # -- the served version and its training reference ---------------------------------------

    async def _follow_model_updates(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            self.settings.model_updates_topic,
            bootstrap_servers=self.settings.require("kafka_bootstrap"),
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            async for record in consumer:
                try:
                    event = parse_model_event(record.value)
                except InvalidMessage as exc:
                    log.warning("ignoring an invalid model-updates record: %s", exc)
                    continue
                if event.model != self.settings.model_name:
                    continue
                target = {"activated": event.version, "rolled_back": event.to}.get(event.event)
                if target is not None:
                    self._serve_version(target)
        finally:
            await consumer.stop()

    def _predictor(self) -> Predictor:
        if self.predictor is None:  # created on first use: grpc.aio needs the running loop
            self.predictor = Predictor(
                self.settings.require("tf_serving_grpc"),
                self.settings.model_name,
                self.settings.scorer_predict_timeout_s,
            )
        return self.predictor

    def _serve_version(self, version: int) -> None:
        predictor = self._predictor()
        if predictor.version != version:
            log.info("answering with version %d", version)
        predictor.version = version
        self._want_reference(version)

    def _want_reference(self, version: int) -> None:
        reference = self.references.get(version)
        if reference is not None:
            self.monitor.set_reference(reference)
        elif version not in self.references and version not in self.fetching:
            self.fetching[version] = asyncio.ensure_future(self._fetch_reference(version))

    async def _fetch_reference(self, version: int) -> None:
        from retrain.registry import ModelRegistry
        from stream.storage import make_client

        try:
            registry = ModelRegistry(
                make_client(self.settings), self.settings.models_bucket, self.settings.model_name
            )
            metadata = await asyncio.to_thread(registry.metadata, version)
        except Exception as exc:  # the store may be down: the next answer asks again
            log.warning("no training reference for version %d yet: %s", version, exc)
        else:
            self.references[version] = Reference.from_metadata(version, metadata)
            if self.references[version] is None:
                log.warning("version %d has no reference distribution: no data drift for it", version)
        finally:
            self.fetching.pop(version, None)

    # -- drift -------------------------------------------------------------------------------------

    async def _check_drift(self) -> None:
        now = time.time()
        for alert in self.monitor.check(now):
            log.warning(
                "drift alert: %s %s=%.4f (threshold %g) on version %d",
                alert.kind,
                alert.statistic,
                alert.value,
                alert.threshold,
                alert.model_version,
            )
            await self.alerts.send(key=self.settings.model_name.encode(), value=alert.to_json())
            ALERTS.labels(alert.kind, alert.statistic).inc()
        for statistic, value in self.monitor.last.items():
            STATISTIC.labels(statistic).set(value)
        for version, (hits, misses) in self.monitor.outcomes.items():
            HIT_RATE.labels(str(version)).set(hits / (hits + misses))
            OUTCOMES.labels(str(version), "hit").set(hits)
            OUTCOMES.labels(str(version), "miss").set(misses)


def run(settings: Settings) -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM."""
    import tensorflow  # noqa: F401  (the Predict protos need it: load it before the event loop runs)

    from stream.faust_app import run_worker
    from stream.metrics import serve_metrics

    serve_metrics(settings.metrics_host, settings.scorer_metrics_port)
    run_worker(Scorer(settings).app, settings)
