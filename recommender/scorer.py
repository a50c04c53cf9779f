"""`recstream scorer`: the worker answering recommendation requests (DESIGN flows 5 and 6).

- The `purchases` Faust agent consumes `transactions` into the `bought` table (user -> their
  latest SCORER_HISTORY_ITEMS products, changelogged, so a restarted scorer still knows them)
  and feeds the drift monitor.
- Requests do not go through Faust: `recommender.request_path` consumes them in a thread of
  its own with its own consumer (its own short fetch wait, possibly on a faster broker), on
  the same partitions as this worker's share of `transactions`, so a backlog of purchases, a
  changelog recovery or a retrain beside it never queues a request behind them. The thread
  reads the table (values are replaced, never changed in place) and hands what it served to
  the drift monitor on the worker's loop. Each fetched batch is
  one Predict with each user's live history (`recommend_history`; versions without it get
  `serving_default`); the lists are re-ranked by the item mix of the latest purchases against
  the version's training mix (`recommender.live_prior`, SCORER_PRIOR_WINDOW); answers go to
  `recommendations`, an invalid request gets an error record. While the model server is
  unavailable the batch is retried with backoff; a request still unanswered SCORER_DEADLINE_S
  after it was produced gets an error record instead.
- The HTTP view `GET /recommendations/<user_id>?k=N` answers one user with the same record,
  routed by Faust (`table_route`) to the worker that owns the user's table partition.
A task follows `model-updates` (no consumer group: every scorer sees every event) to call
the version of the latest `activated` / `rolled_back`; a timer checks drift and publishes
to `drift-alerts`.

Requests must be keyed by user_id, as transactions are (recommender.client does so): with
several scorer workers, a request then lands on the worker holding that user's purchases.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from recstream.recommender import answers as records
from recstream.recommender.drift import DriftConfig, DriftMonitor, Reference
from recstream.recommender.live_prior import LivePrior, shift
from recstream.recommender.predict import PredictFailed, Predictor, Retryable
from recstream.recommender.request_path import RequestPath
from recstream.stream import retry
from recstream.stream.consumers import aio_consumer
from recstream.stream.contracts import metrics as metric_names
from recstream.stream.contracts import recommendations
from recstream.stream.contracts.model_events import parse_model_event
from recstream.stream.contracts.records import (
    MAX_K,
    InvalidMessage,
    RecommendationRequest,
    parse_request,
    parse_transaction,
)
from recstream.stream.faust_app import create_app
from recstream.stream.settings import Settings

log = logging.getLogger(__name__)

REQUESTS = Counter(metric_names.SCORER_REQUESTS, "Requests answered", ["result"])
LATENCY = Histogram(
    metric_names.SCORER_LATENCY,
    "From a request being produced to its answer being sent",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH = Histogram(
    metric_names.SCORER_BATCH_SIZE, "Requests per Predict", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
PREDICT = Histogram(
    metric_names.SCORER_PREDICT_SECONDS,
    "One Predict call",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
RETRIES = Counter(metric_names.SCORER_PREDICT_RETRIES, "Predict calls retried (server unavailable)")
PURCHASES = Counter(metric_names.SCORER_PURCHASES, "Transactions seen by the scorer", ["result"])
SERVED_VERSION = Gauge(metric_names.SCORER_MODEL_VERSION, "Version of the last answer (0: none yet)")
HIT_RATE = Gauge(metric_names.DRIFT_HIT_RATE, "Hit rate of resolved recommendations", ["version"])
OUTCOMES = Gauge("recstream_drift_outcomes", "Resolved recommendations", ["version", "result"])
STATISTIC = Gauge(metric_names.DRIFT_STATISTIC, "Last value of each drift statistic", ["statistic"])
ALERTS = Counter(metric_names.DRIFT_ALERTS, "Drift alerts published", ["kind", "statistic"])

Answer = tuple[str, dict[str, object]]  # (key: the user id, or the request id of an invalid one; record)


class Scorer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        advertised = settings.scorer_http_advertised_host or settings.scorer_http_host
        self.app = create_app(
            "scorer",
            settings,
            fetch_max_wait_ms=settings.scorer_fetch_max_wait_ms,
            web_enabled=True,
            web_bind=settings.scorer_http_host,
            web_port=settings.scorer_http_port,
            # Where other workers route a user's HTTP request that this worker owns.
            canonical_url=f"http://{advertised}:{settings.scorer_http_port}",
            # RocksDB (rocksdict) under the worker's data dir: a restart recovers from local state
            # plus the changelog's tail instead of replaying all of it (SCORER_TABLE_STORE).
            store=settings.scorer_table_store,
        )
        self.transactions = self.app.topic(
            settings.transactions_topic, key_serializer="raw", value_serializer="raw"
        )
        self.alerts = self.app.topic(
            settings.drift_alerts_topic, key_serializer="raw", value_serializer="raw"
        )
        # Keys are user_id bytes, values JSON lists of item ids. `key_type=bytes` makes the changelog's
        # keys raw both ways: Faust writes bytes keys raw but, without a key type, reads them back as
        # JSON, so recovery failed on any user id that is not a JSON literal ("u1") and stalled, and
        # HTTP routing hashed the JSON-quoted id to another worker's partition.
        self.bought = self.app.Table(
            "bought", default=list, partitions=settings.topic_partitions, key_type=bytes
        )
        self.monitor = DriftMonitor(DriftConfig.from_settings(settings))
        # The item mix of the latest purchases, which re-ranks the model's answers (SCORER_PRIOR_WINDOW).
        self.prior = LivePrior(settings.scorer_prior_window) if settings.scorer_prior_window else None
        self.version: int | None = None  # the version to call (None: the `stable` label)
        self.predictors: dict[asyncio.AbstractEventLoop, Predictor] = {}  # one per event loop
        self.loop: asyncio.AbstractEventLoop | None = None  # the worker's: the drift monitor's
        self.references: dict[int, Reference | None] = {}
        self.fetching: dict[int, asyncio.Task[None]] = {}  # reference downloads in flight
        # Partitions whose table share is recovered: only their requests are answered here.
        self.ready: set[int] = set()
        self.app.on_partitions_revoked.connect(self._revoked)
        self.app.on_rebalance_complete.connect(self._recovered)
        self.request_path = RequestPath(settings, self._owned_partitions, self.serve)
        self.app.agent(self.transactions, name="purchases")(self._purchases)
        self.app.task(self._answer_requests)
        self.app.task(self._follow_model_updates)
        self.app.timer(interval=settings.drift_check_s)(self._check_drift)
        self.app.page("/recommendations/{user_id}")(
            self.app.table_route(table=self.bought, match_info="user_id")(self._http_view)
        )

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
            before = self.bought[key]
            history = [item for item in before if item != purchase.item_id]
            repeat = len(history) < len(before)
            history.append(purchase.item_id)
            self.bought[key] = history[-limit:]
            self.monitor.purchased(
                purchase.user_id, purchase.item_id, message.timestamp, repeat=repeat, event_ts=purchase.ts
            )
            if self.prior is not None:
                self.prior.add(purchase.item_id)
            PURCHASES.labels("valid").inc()

    def history(self, user_id: str) -> list[str]:
        """The user's purchases the scorer has seen, most recent first."""
        return self.bought[user_id.encode()][::-1]

    def _owned_partitions(self) -> set[int]:
        """The partitions of `transactions` this worker holds with their table recovered: its requests
        are on the same ones. None while Faust rebalances, so that a partition moving away is not
        answered by two workers, and one moving here is not answered before its purchases are known."""
        return set() if self.app.rebalancing else self.ready

    async def _revoked(self, *args: Any, **kwargs: Any) -> None:
        self.ready = set()

    async def _recovered(self, *args: Any, **kwargs: Any) -> None:
        topic = self.settings.transactions_topic
        self.ready = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}

    # -- requests --------------------------------------------------------------------------------

    async def _answer_requests(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.request_path.run()

    async def serve(self, messages: Sequence[tuple[bytes | None, float]]) -> list[Answer]:
        """Answer a batch of raw requests (value, produced at); every request gets one record."""
        out: list[Answer] = []
        pending: list[tuple[RecommendationRequest, float]] = []
        for value, produced in messages:
            try:
                request = parse_request(value)
            except InvalidMessage as exc:
                REQUESTS.labels("invalid").inc()
                out.append(
                    (
                        exc.request_id or "",
                        recommendations.error(exc.request_id, f"invalid request: {exc.reason}"),
                    )
                )
            else:
                pending.append((request, produced))
        try:
            if pending:
                out.extend(await self._recommend(pending))
        except Exception:  # a bug must not drop the batch: its offsets are committed regardless
            log.exception("answering a batch failed")
            answered = {record.get("request_id") for _, record in out}
            for request, _ in pending:
                if request.request_id not in answered:
                    REQUESTS.labels("error").inc()
                    out.append((request.user_id, recommendations.error(request.request_id, "scorer failure")))
        return out

    async def _http_view(self, web: Any, request: Any, user_id: str) -> Any:
        """GET /recommendations/<user_id>?k=N: the answer record as JSON (400 for a bad request)."""
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        fields: dict[str, object] = {"request_id": request_id, "user_id": user_id}
        if "k" in request.query:
            k = request.query["k"]
            fields["k"] = int(k) if k.isdigit() and len(k) <= 6 else k  # anything else is refused as k
        try:
            parsed = parse_request(json.dumps(fields).encode())
        except InvalidMessage as exc:
            REQUESTS.labels("invalid").inc()
            return web.json(recommendations.error(request_id, f"invalid request: {exc.reason}"), status=400)
        ((_, record),) = await self._recommend([(parsed, time.time())])
        return web.json(record, status=200 if "error" not in record else 503)

    async def _recommend(self, pending: list[tuple[RecommendationRequest, float]]) -> list[Answer]:
        """Answers for valid requests: retried while the model server is unavailable, then errors."""
        predictor = self._predictor()
        out: list[Answer] = []

        def log_retry(exc: BaseException, delay: float) -> None:
            log.warning("Predict failed (%s); retrying %d requests in %.1fs", exc, len(pending), delay)

        async for attempt in retry.forever_async(retry.PREDICT, log_retry=log_retry, retry_on=Retryable):
            with attempt:
                if not pending:
                    return out
                requests = [request for request, _ in pending]
                histories = [self.history(request.user_id) for request in requests]
                k = max(request.k for request in requests)
                # Without the history signature the model cannot leave out what the user bought
                # since training: ask for enough to keep k after the scorer filters it.
                fallback_k = min(
                    records.model_k(requests, histories), MAX_K + self.settings.scorer_history_items
                )
                if self.prior is not None:  # the live item mix re-ranks more than k of the model's items
                    k = max(k, self.settings.scorer_prior_candidates)
                    fallback_k = max(fallback_k, self.settings.scorer_prior_candidates)
                started = time.perf_counter()
                try:
                    ranked = await predictor.recommend(
                        [r.user_id for r in requests],
                        k,
                        histories if self.settings.scorer_live_history else None,
                        fallback_k=fallback_k,
                    )
                except Retryable as exc:
                    RETRIES.inc()
                    now = time.time()
                    late = [(r, ts) for r, ts in pending if now - ts >= self.settings.scorer_deadline_s]
                    for request, _ in late:
                        REQUESTS.labels("expired").inc()
                        out.append(
                            (
                                request.user_id,
                                recommendations.error(request.request_id, f"unanswered in time: {exc}"),
                            )
                        )
                    pending = [p for p in pending if p not in late]
                    if pending:
                        raise  # retried after the policy's delay
                    return out
                except PredictFailed as exc:
                    log.error("Predict failed: %s", exc)
                    for request, _ in pending:
                        REQUESTS.labels("error").inc()
                        out.append((request.user_id, recommendations.error(request.request_id, str(exc))))
                    return out
                PREDICT.observe(time.perf_counter() - started)
                BATCH.observe(len(requests))
                ranked = self._shifted(ranked)
                now = time.time()
                latencies = [(now - ts) * 1000 for _, ts in pending]
                answered = records.answers(requests, ranked, histories, latencies)
                served = []
                for record, (request, ts), latency in zip(answered, pending, latencies, strict=True):
                    out.append((request.user_id, record))
                    LATENCY.observe(latency / 1000)
                    REQUESTS.labels("fallback" if record["fallback"] else "model").inc()
                    served.append((request.user_id, record["items"], bool(record["fallback"]), ts))
                SERVED_VERSION.set(ranked.version)
                if self.loop is None or self.loop is asyncio.get_running_loop():
                    self._served(ranked.version, served)
                else:
                    self.loop.call_soon_threadsafe(self._served, ranked.version, served)
                return out
        return out

    def _shifted(self, ranked: records.Ranked) -> records.Ranked:
        """The model's lists re-ranked by the live item mix, once the version's training mix is known
        (its reference arrives shortly after its first answers, which go out as the model ranked them)."""
        reference = self.references.get(ranked.version)
        if self.prior is None or reference is None:
            return ranked
        return shift(ranked, self.prior, reference.item_share)

    def _served(self, version: int, served: list[tuple[str, Any, bool, float]]) -> None:
        """On the worker's loop: what was served, for the drift join (which compares record
        timestamps: the request's here, the purchase's there)."""
        for user_id, items, fallback, ts in served:
            self.monitor.served(user_id, items, version, fallback, ts)
        self._want_reference(version)

    # -- the served version and its training reference ---------------------------------------

    async def _follow_model_updates(self) -> None:
        consumer = aio_consumer(
            self.settings.model_updates_topic,
            settings=self.settings,
            fetch_max_wait_ms=self.settings.kafka_fetch_max_wait_ms,  # a control topic
            offset_reset="earliest",  # no group: every scorer reads every event
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
        """This event loop's client (grpc.aio channels belong to the loop that made them)."""
        loop = asyncio.get_running_loop()
        predictor = self.predictors.get(loop)
        if predictor is None:
            predictor = self.predictors[loop] = Predictor(
                self.settings.require("tf_serving_grpc"),
                self.settings.model_name,
                self.settings.scorer_predict_timeout_s,
            )
            predictor.version = self.version
        return predictor

    def _serve_version(self, version: int) -> None:
        if self.version != version:
            log.info("answering with version %d", version)
        self.version = version
        for predictor in list(self.predictors.values()):
            predictor.version = version
        self._want_reference(version)

    def _want_reference(self, version: int) -> None:
        reference = self.references.get(version)
        if reference is not None:
            self.monitor.set_reference(reference)
        elif version not in self.references and version not in self.fetching:
            self.fetching[version] = asyncio.ensure_future(self._fetch_reference(version))

    async def _fetch_reference(self, version: int) -> None:
        from recstream.stream.registry import ModelRegistry
        from recstream.stream.storage import make_client

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

    from recstream.stream.faust_app import run_worker
    from recstream.stream.metrics import serve_metrics

    serve_metrics(settings.metrics_host, settings.scorer_metrics_port)
    run_worker(Scorer(settings).app, settings)
