"""The streaming scorer end to end: answers/s and latency at rising rates, right after a bulk load of
purchases, and through the HTTP view, against the model in-process.

Everything is real: the embedded stack (broker, the request broker, object store, model server)
in a temporary RECSTREAM_HOME; a CF model (`retrain/cf_model.py`, a few epochs on the first
SEED_ROWS rows of the seed) exported with `retrain/savedmodel.py`, uploaded, announced
`published` and activated on the stack's model server by `updater.activate.publish_and_activate`
(the registry's upload and announce, then `updater.core.Updater`); `recstream scorer` as a
subprocess in its own process group with its default settings (SCORER_BATCH_SIZE,
KAFKA_REQUEST_FETCH_MAX_WAIT_MS, ...: reported in the result). Stack and scorer are stopped
whatever happens.

Load: an open-loop producer (a thread with the project's EventProducer, linger 0, keyed by
user_id as recommender.client sends) at fixed rates rising step by step (RATES, STEP_S each).
Request i of a step is due at step start + i/rate and sent then, whatever the answers do; when
the sender falls behind it sends at once and the lag is reported. Users are real seed customer
ids: mostly customers of the training slice, UNKNOWN_SHARE of them customers that appear only
later in the seed; k = 10. An answer consumer (kafka-python, no group, every partition of
`recommendations`, from the end as it was before the first request, with the request path's
fetch wait: as recommender.client reads) matches answers by request_id.

Latency = the time the answer was consumed minus the request's due time (not its send time, so
a sender or scorer that falls behind cannot hide its backlog: no coordinated omission). After a
step's last request is due, the bench waits up to DRAIN_S for its answers before the next step
starts. Per step: offered rate, achieved answer rate (answers to this step's requests consumed
between STEADY_FROM_S and the step's end, per second), p50/p99/max latency, answered /
unanswered / error / duplicate counts (counted at the end of the run), the scorer's own
`latency_ms` and the answer hop, the scorer's batch sizes and Predict times (its /metrics), and
the CPU each process used. The rates stop rising after two steps behind in a row, after a step
that left requests unanswered, or when RUN_BUDGET_S have passed.

After the rising steps (and the backlog of requests an overloaded step left, up to
DRAIN_BEFORE_BULK_S), BULK_EVENTS purchases (the seed rows after the slice) are sent as fast
as the producer goes, and a step of BULK_STEP_RATE requests/s starts at once, while the scorer
is still taking the backlog into its table: requests must not wait behind purchases. Then the
HTTP view (`GET /recommendations/<user>?k=10`) is loaded open loop at HTTP_RATES.

Figure: the highest achieved answer rate of a step that was kept up with (every request of the
step answered exactly once without error, at >= 90 % of the offered rate) with p99 <= 1 s;
beside it the highest with p99 <= 250 ms, and at 300 requests/s, warm and right after the bulk
load, whether p99 <= 50 ms with every request answered once.

Limit: the same SavedModel loaded here (tf.saved_model.load, `recommend_history` with each
user's history, as the scorer calls it), called in one thread in a closed loop with batches of
known users of size 16 and 64 (SCORER_BATCH_SIZE), every output `.numpy()`, LIMIT_PHASE_S each,
once before the load steps and once after. The limit is the best users/s at batch 64.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import SEED, recstream_child, setup_logging, temporary_stack, write_result
from bench.serving import percentile
from recstream.deploy.console import observe
from recstream.deploy.local import processes
from recstream.deploy.local.processes import stop_child
from recstream.stream.contracts import metrics as metric_names
from recstream.stream.contracts.signatures import RECOMMEND_HISTORY
from recstream.stream.settings import FIELDS, Settings

if TYPE_CHECKING:
    import pandas as pd

    from recstream.stream.producer import EventProducer

log = logging.getLogger("bench.scorer")

SEED_ROWS = 20_000
EPOCHS = 3
K = 10
UNKNOWN_SHARE = 0.1
RATES = (100, 300, 500, 800, 1000, 1200, 1500)
STEP_S = 15.0
STEADY_FROM_S = 2.0  # the first seconds of a step are not counted in its answer rate
DRAIN_S = 10.0  # longest wait for a step's answers after its last request was due
FINAL_WAIT_S = 20.0  # after the step after the bulk load: how long its backlog may still be answered
# After the rising steps: how long their backlog may take to drain before the bulk load, so that
# the step after it measures the bulk load, not requests queued by an overloaded step.
DRAIN_BEFORE_BULK_S = 120.0
PAUSE_S = 1.0
P99_BOUND_S = 1.0  # the figure's bound
P99_STRICT_S = 0.25  # also reported: the highest rate with p99 under 250 ms
P99_AT_300_S = 0.05  # the goal at 300 requests/s, warm and right after a bulk load
BEHIND_SHARE = 0.9  # below this share of the offered rate the rates stop rising
RUN_BUDGET_S = 420.0  # no further step starts after this long (the whole run stays under ~10 min)
EXACTLY_ONCE_RATE = 300  # the done-when: every request answered once at this rate
LIMIT_BATCHES = (16, 64)
LIMIT_PHASE_S = 5.0
LIMIT_DISTINCT_BATCHES = 32
SCORER_START_TIMEOUT_S = 180.0
WARMUP_REQUESTS = 64
IDLE_S = 5.0  # CPU of every process with the scorer up and no requests
BULK_EVENTS = 40_000  # purchases loaded at once before the after-bulk step (seed rows after the slice)
BULK_STEP_RATE = 300
HTTP_RATES = (100, 300)  # GET /recommendations/<user> steps, open loop
HTTP_STEP_S = 10.0
HTTP_THREADS = 32
# What the steps compare from the scorer's /metrics: counters and histogram sums/counts.
BATCH_SIZE_SUM = f"{metric_names.SCORER_BATCH_SIZE}_sum"
BATCH_SIZE_COUNT = f"{metric_names.SCORER_BATCH_SIZE}_count"
PREDICT_SUM = f"{metric_names.SCORER_PREDICT_SECONDS}_sum"
PREDICT_COUNT = f"{metric_names.SCORER_PREDICT_SECONDS}_count"
SCORER_METRICS = (
    BATCH_SIZE_SUM,
    BATCH_SIZE_COUNT,
    PREDICT_SUM,
    PREDICT_COUNT,
    metric_names.SCORER_PREDICT_RETRIES,
    metric_names.SCORER_PURCHASES,
)


# -- the model ----------------------------------------------------------------------------------
@dataclass
class Model:
    export: Path
    known: list[str]  # customers of the training slice
    unknown: list[str]  # real seed customers seen only after the slice
    histories: dict[str, list[str]]  # a known customer's purchases, most recent first
    bulk: pd.DataFrame  # seed rows after the slice: the bulk load (user_id, item_id)


def train_and_export(workdir: Path, model_name: str) -> Model:
    from recstream.retrain import cf_model, savedmodel
    from recstream.retrain.dataset import build_interactions, read_seed
    from recstream.retrain.job import reference_distributions

    frame = read_seed(SEED)
    train = build_interactions(frame.iloc[:SEED_ROWS])
    params = dataclasses.replace(cf_model.Params(), epochs=EPOCHS)
    log.info("training on %d seed rows: %d users, %d items, %d epochs", SEED_ROWS, train.n_users,
             train.n_items, EPOCHS)  # fmt: skip
    started = time.monotonic()
    trained = cf_model.train(train, params)
    log.info("trained in %.1fs", time.monotonic() - started)
    metadata = {
        "model": model_name,
        "version": 1,
        "parameters": params.as_dict(),
        "source": "bench.scorer",
        "reference": reference_distributions(train),
    }
    export = savedmodel.export(trained, workdir / "export-1", 1, metadata, model_name)
    known = set(train.users.ids)
    later = [u for u in dict.fromkeys(frame["user_id"].iloc[SEED_ROWS:]) if u not in known]
    histories = {
        user: [train.item_vocab.ids[i] for i in train.sequence(u)[::-1]]
        for u, user in enumerate(train.users.ids)
    }
    bulk = frame.iloc[SEED_ROWS : SEED_ROWS + BULK_EVENTS]
    return Model(export, train.users.ids, later, histories, bulk)


# -- the limit: the SavedModel in-process --------------------------------------------------------
def in_process_rate(function: Any, histories: dict[str, list[str]], batch: int) -> dict[str, Any]:
    """`recommend_history` called as the scorer calls it: users with their histories, padded."""
    import tensorflow as tf

    rng = np.random.default_rng(batch)
    users = np.asarray(list(histories), dtype=object)
    picked = rng.choice(users, size=batch * LIMIT_DISTINCT_BATCHES, replace=False)
    batches = []
    for i in range(LIMIT_DISTINCT_BATCHES):
        chosen = picked[i * batch : (i + 1) * batch]
        width = max(len(histories[u]) for u in chosen)
        padded = [histories[u] + [""] * (width - len(histories[u])) for u in chosen]
        batches.append((tf.constant(list(chosen), tf.string), tf.constant(padded, tf.string)))
    k = tf.constant(K, tf.int32)

    def call(i: int) -> None:
        users_, history = batches[i % len(batches)]
        out = function(user_id=users_, history=history, k=k)
        arrays = {name: tensor.numpy() for name, tensor in out.items()}
        if arrays["items"].shape != (batch, K):
            raise ValueError(f"items of shape {arrays['items'].shape}")

    for i in range(10):
        call(i)
    times = []
    start = time.perf_counter()
    i = 0
    while (now := time.perf_counter()) - start < LIMIT_PHASE_S:
        call(i)
        times.append(time.perf_counter() - now)
        i += 1
    seconds = time.perf_counter() - start
    return {
        "batch": batch,
        "calls": i,
        "seconds": round(seconds, 3),
        "users_per_s": round(i * batch / seconds, 1),
        "call_p50_ms": round(percentile(times, 50) * 1000, 3),
        "call_p99_ms": round(percentile(times, 99) * 1000, 3),
    }


def measure_limit(function: Any, histories: dict[str, list[str]], when: str) -> dict[str, Any]:
    out = {}
    for batch in LIMIT_BATCHES:
        out[str(batch)] = figures = in_process_rate(function, histories, batch)
        log.info("in-process (%s) batch %d: %.0f users/s (call p50 %.2f ms)", when, batch,
                 figures["users_per_s"], figures["call_p50_ms"])  # fmt: skip
    return out


# -- the scorer subprocess -----------------------------------------------------------------------
@contextlib.contextmanager
def scorer_process(
    settings: Settings, log_path: Path, metrics_port: int, http_port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """`recstream scorer` on the temporary stack (its stack.env), in its own process group."""
    env = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
    env.update(
        {
            "RECSTREAM_HOME": str(settings.home),
            "SCORER_METRICS_PORT": str(metrics_port),
            "SCORER_HTTP_PORT": str(http_port),
            "LOG_LEVEL": "INFO",
        }
    )
    with open(log_path, "ab") as out:
        proc = recstream_child("scorer", env, out)
    log.info("scorer pid %d (log %s)", proc.pid, log_path)
    try:
        yield proc
    finally:
        stop_child(proc, timeout=20)
        log.info("scorer pid %d stopped (exit %s)", proc.pid, proc.returncode)


def scorer_metrics(port: int) -> dict[str, float]:
    """The scorer's counters and histogram sums/counts that the steps compare (0 when absent)."""
    page = observe.scrape(f"127.0.0.1:{port}", timeout_s=5.0)
    if not page:
        log.warning("scorer metrics unreadable on port %d", port)
    out = {name: float(observe.total(page, name)) for name in SCORER_METRICS}
    for labels, value in page.get(metric_names.SCORER_REQUESTS, []):
        key = f"requests_{labels.get('result')}"
        out[key] = out.get(key, 0.0) + value
    return out


# -- CPU per process -----------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float | None:
    """None once the process is gone."""
    try:
        return processes.cpu_seconds(pid)
    except OSError:
        return None


def watched_pids(settings: Settings, scorer_pid: int) -> dict[str, int]:
    state = json.loads((settings.home / "run" / "stack.json").read_text())
    pids = {part: entry["pid"] for part, entry in state.items() if entry.get("pid")}
    return {"scorer": scorer_pid, **pids, "bench": os.getpid()}


# -- load and answers ----------------------------------------------------------------------------
@dataclass
class Request:
    step: int
    due: float  # perf_counter time the request was due
    known: bool
    sent: float = math.nan


@dataclass
class Answer:
    at: float  # perf_counter time it was consumed
    error: str | None
    scorer_ms: float | None
    fallback: bool | None
    version: int | None
    items: int


@dataclass
class Ledger:
    """Requests by request_id and every answer to them (duplicates included)."""

    requests: dict[str, Request] = field(default_factory=dict)
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    foreign: int = 0  # answers to request ids this run never sent
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, ids: Sequence[str]) -> int:
        with self.lock:
            return sum(1 for i in ids if i in self.answers)


class AnswerConsumer(threading.Thread):
    """Reads every partition of `recommendations` (no group) from its end as it is now."""

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        from kafka import KafkaConsumer, TopicPartition

        super().__init__(name="answers", daemon=True)
        self.ledger = ledger
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.requests_kafka_bootstrap,
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=settings.kafka_request_fetch_max_wait_ms,
        )
        topic = settings.recommendations_topic
        partitions = [
            TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            raise RuntimeError(f"topic {topic} does not exist")
        self.consumer.assign(partitions)
        self.consumer.seek_to_end(*partitions)
        for tp in partitions:
            self.consumer.position(tp)

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                for records in self.consumer.poll(timeout_ms=200).values():
                    at = time.perf_counter()
                    for record in records:
                        self._keep(at, record.value)
        except BaseException as exc:
            self.failure = exc
            log.exception("answer consumer failed")
        finally:
            self.consumer.close()

    def _keep(self, at: float, value: bytes | None) -> None:
        try:
            record = json.loads(value or b"")
            request_id = record["request_id"]
        except (ValueError, TypeError, KeyError):
            with self.ledger.lock:
                self.ledger.foreign += 1
            return
        answer = Answer(
            at,
            record.get("error"),
            record.get("latency_ms"),
            record.get("fallback"),
            record.get("model_version"),
            len(record.get("items") or ()),
        )
        with self.ledger.lock:
            if request_id in self.ledger.requests:
                self.ledger.answers.setdefault(request_id, []).append(answer)
            else:
                self.ledger.foreign += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


class Users:
    def __init__(self, model: Model, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.known, self.unknown = model.known, model.unknown

    def next(self) -> tuple[str, bool]:
        if self.unknown and self.rng.random() < UNKNOWN_SHARE:
            return self.unknown[int(self.rng.integers(len(self.unknown)))], False
        return self.known[int(self.rng.integers(len(self.known)))], True


def send_step(producer: EventProducer, topic: str, ledger: Ledger, users: Users, step: int, rate: float,
              seconds: float, start: float) -> list[str]:  # fmt: skip
    """Open loop: request i is due at start + i/rate and sent then (or at once when behind)."""
    from recstream.stream.contracts.records import RecommendationRequest

    ids = []
    n = round(rate * seconds)
    next_log = start + 5.0
    for i in range(n):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        user, known = users.next()
        request_id = f"b{step}-{i}-{uuid.uuid4().hex[:8]}"
        request = Request(step, due, known)
        with ledger.lock:
            ledger.requests[request_id] = request
        producer.send(topic, RecommendationRequest(request_id, user, K).to_json(), key=user)
        request.sent = time.perf_counter()
        ids.append(request_id)
        if request.sent >= next_log:
            next_log += 5.0
            log.info("  %.0f/s: %d sent, %d answered", rate, len(ids), ledger.answered(ids))
    return ids


def wait_answers(ledger: Ledger, ids: Sequence[str], seconds: float) -> int:
    """Wait until every id has an answer or `seconds` pass; returns the ones still unanswered."""
    deadline = time.perf_counter() + seconds
    while (missing := len(ids) - ledger.answered(ids)) and time.perf_counter() < deadline:
        time.sleep(0.1)
    return missing


def warm_up(producer: EventProducer, settings: Settings, ledger: Ledger, users: Users,
            scorer: subprocess.Popen[bytes], log_path: Path) -> float:  # fmt: skip
    """One request until it is answered (group join, first Predict), then a burst; seconds taken."""
    from recstream.stream.contracts.records import RecommendationRequest

    started = time.perf_counter()
    deadline = started + SCORER_START_TIMEOUT_S
    ids: list[str] = []
    while True:
        user, known = users.next()
        request_id = f"warmup-{uuid.uuid4().hex}"
        with ledger.lock:
            ledger.requests[request_id] = Request(-1, time.perf_counter(), known)
        producer.send(settings.requests_topic, RecommendationRequest(request_id, user, K).to_json(), key=user)
        producer.flush()
        ids.append(request_id)
        if wait_answers(ledger, ids, 1.0) < len(ids):
            break
        if scorer.poll() is not None or time.perf_counter() > deadline:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the scorer did not answer (exit {scorer.returncode}): {tail}")
    first = time.perf_counter() - started
    log.info("scorer answered its first request %.1fs after the first was sent", first)
    burst = []
    for _ in range(WARMUP_REQUESTS):
        user, known = users.next()
        request_id = f"warmup-{uuid.uuid4().hex}"
        with ledger.lock:
            ledger.requests[request_id] = Request(-1, time.perf_counter(), known)
        producer.send(settings.requests_topic, RecommendationRequest(request_id, user, K).to_json(), key=user)
        burst.append(request_id)
    producer.flush()
    if wait_answers(ledger, burst, 60):
        raise RuntimeError("the scorer did not answer the warm-up burst")
    return first


def bulk_load(settings: Settings, model: Model) -> dict[str, Any]:
    """BULK_EVENTS purchases sent as fast as the producer goes (a backlog for the scorer's table)."""
    from recstream.stream.contracts.records import Transaction
    from recstream.stream.producer import EventProducer

    started = time.perf_counter()
    now = time.time()
    with EventProducer(settings, client_id="bench-bulk") as producer:
        for i, (user, item) in enumerate(zip(model.bulk["user_id"], model.bulk["item_id"], strict=True)):
            producer.send_transaction(
                Transaction(f"bulk-{i}-{uuid.uuid4().hex[:6]}", str(user), str(item), 1, now)
            )
        producer.flush()
    seconds = time.perf_counter() - started
    log.info("bulk load: %d purchases sent in %.1fs", len(model.bulk), seconds)
    return {"events": len(model.bulk), "send_seconds": round(seconds, 2)}


class HttpLoad:
    """Open-loop GET /recommendations/<user>?k=K from a thread pool; latency = response - due time."""

    def __init__(self, port: int, users: Users) -> None:
        self.base = f"http://127.0.0.1:{port}/recommendations"
        self.users = users
        self.local = threading.local()

    def _get(self, user: str, due: float) -> tuple[float, str | None, int]:
        import requests

        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        try:
            response = session.get(f"{self.base}/{user}", params={"k": K}, timeout=10)
            body = response.json()
        except (requests.RequestException, ValueError) as exc:
            return time.perf_counter() - due, type(exc).__name__, 0
        error = None if response.status_code == 200 else f"{response.status_code}: {body.get('error')}"
        return time.perf_counter() - due, error, len(body.get("items") or ())

    def step(self, rate: float, seconds: float) -> dict[str, Any]:
        from concurrent.futures import ThreadPoolExecutor

        n = round(rate * seconds)
        start = time.perf_counter() + 0.05
        with ThreadPoolExecutor(HTTP_THREADS) as pool:
            futures = []
            for i in range(n):
                due = start + i / rate
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                futures.append(pool.submit(self._get, self.users.next()[0], due))
            results = [f.result() for f in futures]
        elapsed = time.perf_counter() - start
        latencies = [latency for latency, error, _ in results if error is None]
        return {
            "offered_per_s": rate,
            "requests": n,
            "answered_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": ms(percentile(latencies, 50)),
            "p99_ms": ms(percentile(latencies, 99)),
            "max_ms": ms(max(latencies, default=math.nan)),
            "errors": n - len(latencies),
            "error_examples": sorted({error for _, error, _ in results if error})[:3],
            "short_answers": sum(1 for _, error, items in results if error is None and items != K),
        }


# -- per-step figures ----------------------------------------------------------------------------
def ms(seconds: float | None) -> float | None:
    return None if seconds is None or math.isnan(seconds) else round(seconds * 1000, 1)


def step_figures(ledger: Ledger, ids: Sequence[str], rate: float, start: float) -> dict[str, Any]:
    with ledger.lock:
        requests = [ledger.requests[i] for i in ids]
        answers = [ledger.answers.get(i, []) for i in ids]
    firsts = [(r, a[0]) for r, a in zip(requests, answers, strict=True) if a]
    ok = [(r, a) for r, a in firsts if a.error is None]
    latencies = [a.at - r.due for r, a in ok]
    window_end = start + STEP_S
    in_window = sum(1 for _, a in firsts if start + STEADY_FROM_S <= a.at <= window_end)
    lags = [r.sent - r.due for r in requests]
    last_sent = max((r.sent for r in requests), default=start)
    scorer_ms = [a.scorer_ms / 1000 for _, a in ok if a.scorer_ms is not None]
    # What comes after the scorer computed the answer: its send, the broker, this consumer's fetch.
    answer_hop = [a.at - r.sent - a.scorer_ms / 1000 for r, a in ok if a.scorer_ms is not None]
    # Known customers never get the fallback; an unknown one does until they buy a known product.
    wrong_fallback = sum(1 for r, a in ok if r.known and a.fallback)
    return {
        "offered_per_s": rate,
        "requests": len(ids),
        "sent_per_s": round(len(ids) / max(last_sent - start, 1e-9), 1),
        "send_lag_p99_ms": ms(percentile(lags, 99)),
        "send_lag_max_ms": ms(max(lags, default=math.nan)),
        "answer_rate_per_s": round(in_window / (STEP_S - STEADY_FROM_S), 1),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(max(latencies, default=math.nan)),
        "answered": len(ok),
        "unanswered": len(ids) - len(firsts),
        "errors": len(firsts) - len(ok),
        "duplicates": sum(max(len(a) - 1, 0) for a in answers),
        "requests_with_duplicates": sum(1 for a in answers if len(a) > 1),
        "error_examples": sorted({a.error for _, a in firsts if a.error})[:3],
        "unknown_users": sum(1 for r in requests if not r.known),
        "known_users_with_fallback": wrong_fallback,
        "unknown_users_personalised": sum(1 for r, a in ok if not r.known and a.fallback is False),
        "short_answers": sum(1 for _, a in ok if a.items != K),
        "versions": sorted({a.version for _, a in ok if a.version is not None}),
        "scorer_latency_p50_ms": ms(percentile(scorer_ms, 50)),
        "scorer_latency_p99_ms": ms(percentile(scorer_ms, 99)),
        "answer_hop_p50_ms": ms(percentile(answer_hop, 50)),
        "answer_hop_p99_ms": ms(percentile(answer_hop, 99)),
    }


def metric_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = delta(BATCH_SIZE_COUNT)
    predicts = delta(PREDICT_COUNT)
    return {
        "predict_calls": int(predicts),
        "mean_batch": round(delta(BATCH_SIZE_SUM) / batches, 2) if batches else None,
        "mean_predict_ms": (round(delta(PREDICT_SUM) / predicts * 1000, 2) if predicts else None),
        "predict_retries": int(delta(metric_names.SCORER_PREDICT_RETRIES)),
    }


def cpu_shares(pids: dict[str, int], before: dict[str, float | None], seconds: float) -> dict[str, float]:
    """Share of one core each process used over `seconds` (1.0 = one core busy)."""
    out = {}
    for name, pid in pids.items():
        now, then = cpu_seconds(pid), before.get(name)
        if now is not None and then is not None:
            out[name] = round((now - then) / seconds, 2)
    return out


def behind(figures: dict[str, Any]) -> str | None:
    rate = figures["offered_per_s"]
    if figures["answer_rate_per_s"] < BEHIND_SHARE * rate:
        return f"answers at {figures['answer_rate_per_s']}/s, below {BEHIND_SHARE:.0%} of {rate}/s"
    if figures["unanswered"]:
        return f"{figures['unanswered']} requests unanswered {DRAIN_S:g}s after the step"
    return None


def kept_up(figures: dict[str, Any], p99_bound_s: float = P99_BOUND_S) -> bool:
    return (
        figures["unanswered"] == 0
        and figures["errors"] == 0
        and figures["duplicates"] == 0
        and figures["answer_rate_per_s"] >= BEHIND_SHARE * figures["offered_per_s"]
        and figures["p99_ms"] is not None
        and figures["p99_ms"] <= p99_bound_s * 1000
    )


# -- main ---------------------------------------------------------------------------------------
def run_steps(settings: Settings, model: Model, scorer: subprocess.Popen[bytes], metrics_port: int,
              http_port: int, log_path: Path, function: Any, deadline: float) -> dict[str, Any]:  # fmt: skip
    """Warm the scorer up, measure the limit while it idles, run the steps, a step right after a bulk
    load of purchases, the HTTP steps, and measure the limit again."""
    from recstream.stream.producer import EventProducer

    ledger = Ledger()
    users = Users(model)
    consumer = AnswerConsumer(settings, ledger)
    consumer.start()
    producer = EventProducer(
        settings, client_id="bench-scorer", bootstrap=settings.requests_kafka_bootstrap, linger_ms=0
    )

    def run_step(step: int, rate: float, pids: dict[str, int]) -> dict[str, Any]:
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        metrics_before = scorer_metrics(metrics_port)
        start = time.perf_counter() + 0.05
        ids = send_step(producer, settings.requests_topic, ledger, users, step, rate, STEP_S, start)
        producer.flush()
        missing = wait_answers(ledger, ids, max(0.0, start + STEP_S + DRAIN_S - time.perf_counter()))
        elapsed = time.perf_counter() - start
        figures = step_figures(ledger, ids, rate, start)
        figures["unanswered_after_drain"] = missing
        figures["cpu_cores"] = cpu_shares(pids, cpu_before, elapsed)
        figures["scorer"] = metric_deltas(metrics_before, scorer_metrics(metrics_port))
        log.info(
            "step %d: %d/s offered, %.1f/s answered; p50 %s ms, p99 %s ms, max %s ms; %d unanswered, "
            "%d errors, %d duplicates; mean batch %s; cpu %s",
            step, rate, figures["answer_rate_per_s"], figures["p50_ms"], figures["p99_ms"],
            figures["max_ms"], missing, figures["errors"], figures["duplicates"],
            figures["scorer"]["mean_batch"], figures["cpu_cores"],
        )  # fmt: skip
        return {"ids": ids, "start": start, "figures": figures}

    try:
        first_answer_s = warm_up(producer, settings, ledger, users, scorer, log_path)
        limit_before = measure_limit(function, model.histories, "before the load")
        pids = watched_pids(settings, scorer.pid)
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        time.sleep(IDLE_S)
        idle_cpu = cpu_shares(pids, cpu_before, IDLE_S)
        log.info("idle (scorer up, no requests) cpu cores: %s", idle_cpu)
        steps: list[dict[str, Any]] = []
        stopped_because = None
        for step, rate in enumerate(RATES):
            if scorer.poll() is not None:
                raise RuntimeError(f"the scorer exited with {scorer.returncode}")
            if time.monotonic() > deadline:
                stopped_because = f"time budget: {RUN_BUDGET_S:g}s passed before the {rate}/s step"
                log.info("%s", stopped_because)
                break
            log.info("step %d: %d requests/s for %.0fs", step, rate, STEP_S)
            steps.append(run_step(step, rate, pids))
            figures = steps[-1]["figures"]
            missing = figures["unanswered_after_drain"]
            reason = behind(figures)
            figures["behind"] = reason
            if reason:
                # Clearly saturated: requests left unanswered, or behind at two rates in a row.
                if missing or (len(steps) > 1 and steps[-2]["figures"]["behind"]):
                    stopped_because = f"step {step} ({rate}/s): {reason}"
                    log.info("the scorer fell behind at %d/s (%s): rates stop rising", rate, reason)
                    break
                log.info("behind at %d/s (%s): one more step to confirm", rate, reason)
            time.sleep(PAUSE_S)
        everything = [i for s in steps for i in s["ids"]]
        fell_behind = any(s["figures"]["behind"] for s in steps)
        late = wait_answers(ledger, everything, DRAIN_BEFORE_BULK_S if fell_behind else 2.0)
        log.info("end of the load: %d requests of the steps still unanswered", late)
        time.sleep(PAUSE_S)
        purchases_before = scorer_metrics(metrics_port)[metric_names.SCORER_PURCHASES]
        bulk = bulk_load(settings, model)
        log.info("step after the bulk load: %d requests/s for %.0fs", BULK_STEP_RATE, STEP_S)
        after_bulk = run_step(len(RATES), BULK_STEP_RATE, pids)
        taken = scorer_metrics(metrics_port)[metric_names.SCORER_PURCHASES] - purchases_before
        bulk["scorer_backlog_at_step_end"] = int(bulk["events"] - taken)
        wait_answers(ledger, after_bulk["ids"], FINAL_WAIT_S)
        http = HttpLoad(http_port, users)
        http_steps = []
        for rate in HTTP_RATES:
            log.info("HTTP step: %d requests/s for %.0fs", rate, HTTP_STEP_S)
            http_steps.append(http.step(rate, HTTP_STEP_S))
            log.info("HTTP %d/s: %s", rate, http_steps[-1])
        limit_after = measure_limit(function, model.histories, "after the load")
    finally:
        try:
            producer.close()
        finally:
            consumer.stop()
    if consumer.failure is not None:
        raise RuntimeError(f"the answer consumer failed: {consumer.failure}")
    # Final counts: answers and duplicates that came after a step's drain count too.
    table = []
    for s in steps:
        final = step_figures(ledger, s["ids"], s["figures"]["offered_per_s"], s["start"])
        final["unanswered_after_drain"] = s["figures"]["unanswered_after_drain"]
        final["cpu_cores"] = s["figures"]["cpu_cores"]
        final["scorer"] = s["figures"]["scorer"]
        final["behind"] = s["figures"]["behind"]
        final["kept_up"] = kept_up(final)
        final[f"kept_up_p99_{P99_STRICT_S:g}s"] = kept_up(final, P99_STRICT_S)
        table.append(final)
    final = step_figures(ledger, after_bulk["ids"], BULK_STEP_RATE, after_bulk["start"])
    final.update({k: after_bulk["figures"][k] for k in ("unanswered_after_drain", "cpu_cores", "scorer")})
    return {
        "steps": table,
        "after_bulk_load": {"bulk": bulk, "step": final},
        "http_steps": http_steps,
        "stopped_because": stopped_because,
        "unanswered_before_bulk_load": late,
        "first_answer_after_s": round(first_answer_s, 1),
        "foreign_answers": ledger.foreign,
        "idle_cpu_cores": idle_cpu,
        "limit_before": limit_before,
        "limit_after": limit_after,
    }


def main() -> None:
    started = time.monotonic()
    load_before = os.getloadavg()  # the machine is shared: how busy it was when the run began
    previous_term = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():  # so that `finally` stops what we started
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with (
            tempfile.TemporaryDirectory(prefix="recstream-bench-scorer-") as tmp,
            temporary_stack() as settings,
        ):
            work = Path(tmp)
            model = train_and_export(work, settings.model_name)
            from recstream.updater.activate import publish_and_activate

            activating = time.monotonic()
            publish_and_activate(settings, model.export, 1)
            log.info("version 1 published and activated in %.1fs", time.monotonic() - activating)

            import tensorflow as tf

            function = tf.saved_model.load(str(model.export)).signatures[RECOMMEND_HISTORY]
            metrics_port, http_port = _free_port(), _free_port()
            log_path = settings.home / "logs" / "scorer.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with scorer_process(settings, log_path, metrics_port, http_port) as scorer:
                load = run_steps(
                    settings,
                    model,
                    scorer,
                    metrics_port,
                    http_port,
                    log_path,
                    function,
                    started + RUN_BUDGET_S,
                )
                scorer_exit = scorer.poll()
            batching = {
                "SCORER_BATCH_SIZE": settings.scorer_batch_size,
                "KAFKA_FETCH_MAX_WAIT_MS": settings.kafka_fetch_max_wait_ms,
                "KAFKA_REQUEST_FETCH_MAX_WAIT_MS": settings.kafka_request_fetch_max_wait_ms,
                "requests_broker": "separate"
                if settings.requests_kafka_bootstrap_setting
                else "the main broker",
            }
            scorer_log = log_path.read_text(errors="replace").splitlines()
            # Warnings, errors, and the request path following Faust's rebalances.
            problems = [
                line for line in scorer_log if any(w in line for w in ("WARNING", "ERROR", "partitions"))
            ]
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous_term)
    machine = {"loadavg_at_start": [round(x, 2) for x in load_before],
               "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    report(load, model, batching, machine, scorer_exit, problems, time.monotonic() - started)


def _free_port() -> int:
    from recstream.deploy.local.processes import free_port

    return free_port()


def report(load: dict[str, Any], model: Model, batching: dict[str, Any], machine: dict[str, Any],
           scorer_exit: int | None, problems: list[str], seconds: float) -> None:  # fmt: skip
    limit_before, limit_after = load["limit_before"], load["limit_after"]
    steps = load["steps"]

    def best(bound_s: float) -> dict[str, Any] | None:
        good = [s for s in steps if kept_up(s, bound_s)]
        return max(good, key=lambda s: s["answer_rate_per_s"], default=None)

    top, strict = best(P99_BOUND_S), best(P99_STRICT_S)
    figure = top["answer_rate_per_s"] if top else 0.0
    big = str(LIMIT_BATCHES[-1])
    limit = max(limit_before[big]["users_per_s"], limit_after[big]["users_per_s"])
    warm = next((s for s in steps if s["offered_per_s"] == EXACTLY_ONCE_RATE), None)
    after_bulk = load["after_bulk_load"]["step"]

    def goal(step: dict[str, Any] | None) -> dict[str, Any] | None:
        if step is None:
            return None
        once = step["unanswered"] == 0 and step["errors"] == 0 and step["duplicates"] == 0
        return {
            "p50_ms": step["p50_ms"],
            "p99_ms": step["p99_ms"],
            "every_request_answered_once": once,
            f"p99_under_{P99_AT_300_S * 1000:g}ms": step["p99_ms"] is not None
            and step["p99_ms"] <= P99_AT_300_S * 1000,
        }

    log.info("%-10s %-9s %-8s %-8s %-8s %-9s %-6s %-6s %-5s", "offered", "answered", "p50 ms", "p99 ms",
             "max ms", "answered", "unans", "errors", "dups")  # fmt: skip
    for s in [*steps, after_bulk]:
        name = str(s["offered_per_s"]) + (" bulk" if s is after_bulk else "")
        log.info("%-10s %-9.1f %-8s %-8s %-8s %-9d %-6d %-6d %-5d", name, s["answer_rate_per_s"],
                 s["p50_ms"], s["p99_ms"], s["max_ms"], s["answered"], s["unanswered"], s["errors"],
                 s["duplicates"])  # fmt: skip
    for h in load["http_steps"]:
        log.info("HTTP %-5s p50 %s ms p99 %s ms, %d errors", h["offered_per_s"], h["p50_ms"], h["p99_ms"],
                 h["errors"])  # fmt: skip
    log.info("figure %.1f answers/s (p99 <= %gs), %s with p99 <= %gms; limit %.0f users/s (batch %s)",
             figure, P99_BOUND_S, strict["answer_rate_per_s"] if strict else 0.0, P99_STRICT_S * 1000, limit,
             big)  # fmt: skip
    path = write_result(
        "scorer",
        figure,
        f"answers/s: highest sustained rate with every request answered once, p99 <= {P99_BOUND_S:g} s",
        limit,
        f"the same SavedModel in-process (tf.saved_model.load, {RECOMMEND_HISTORY}, users' histories), "
        f"batch {big} (SCORER_BATCH_SIZE), one caller, users/s; best of before and after the load, same run",
        figure_definition=(
            "highest achieved answer rate (answers to a step's requests consumed from "
            f"{STEADY_FROM_S:g}s to the end of the {STEP_S:g}s step, per second) among steps where every "
            f"request was answered exactly once without error, the rate was >= {BEHIND_SHARE:.0%} of the "
            f"offered rate and p99 (answer consumed - request due) <= {P99_BOUND_S:g} s"
        ),
        figure_step_offered_per_s=top["offered_per_s"] if top else None,
        figure_with_p99_under_250ms=strict["answer_rate_per_s"] if strict else 0.0,
        figure_with_p99_under_250ms_step_offered_per_s=strict["offered_per_s"] if strict else None,
        at_300_per_s={"warm": goal(warm), "right_after_bulk_load": goal(after_bulk)},
        stopped_because=load["stopped_because"],
        unanswered_before_bulk_load=load["unanswered_before_bulk_load"],
        steps=steps,
        after_bulk_load=load["after_bulk_load"],
        http_steps=load["http_steps"],
        in_process={"before_load": limit_before, "after_load": limit_after},
        load={
            "kind": "open loop; latency = answer consumed - request due (no coordinated omission)",
            "rates": list(RATES),
            "step_seconds": STEP_S,
            "drain_seconds": DRAIN_S,
            "k": K,
            "unknown_user_share": UNKNOWN_SHARE,
            "bulk_events": BULK_EVENTS,
            "producer": "recstream.stream.producer.EventProducer (kafka-python, linger 0), key = user_id",
            "consumer": "kafka-python, no group, every partition of recommendations",
            "http": f"GET /recommendations/<user>?k={K}, {HTTP_THREADS} threads with keep-alive, open loop",
        },
        scorer_settings=batching,
        model={
            "seed_rows": SEED_ROWS,
            "epochs": EPOCHS,
            "known_users": len(model.known),
            "unknown_users_available": len(model.unknown),
        },
        idle_cpu_cores=load["idle_cpu_cores"],
        machine_load=machine,
        first_answer_after_s=load["first_answer_after_s"],
        foreign_answers=load["foreign_answers"],
        scorer_exit_during_run=scorer_exit,
        scorer_log_warnings_and_errors={"count": len(problems), "first": problems[:10]},
        total_seconds=round(seconds, 1),
    )
    print(path.read_text())


if __name__ == "__main__":
    setup_logging()
    main()
