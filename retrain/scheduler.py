"""`recstream scheduler`: the unattended retrain loop (APScheduler) with the drift trigger.

One APScheduler job does every retrain, so "one run at a time" holds whatever started it:
the interval trigger fires every RETRAIN_INTERVAL_S (coalescing missed runs into one, with
a misfire grace), and a drift alert moves the job's next run to now, at most once per
RETRAIN_COOLDOWN_S. An alert that comes while a run is in progress asks for one more run
right after it: the run in progress read its data before the alert, maybe before the drift
had landed. A drift run first waits (bounded) until ingest has landed every purchase sent
before it starts, so the purchases that raised the alert are in its data. A failing run is
logged and counted; the loop goes on.

The drift boost: the runs after a concept alert (the served model's online hit rate fell) are
told where that drift started (`drift_from`, in event time, see `drift_start`), so they weigh the
purchases since then more and are judged on them (retrain.job.recency_plan). Alerts of one episode
keep its earliest start. Data alerts (item popularity PSI, unknown products or customers) retrain
but do not boost: the traffic moved, which a benign reordering (the seed grouped by customer) also
does; the weights move only when the model got worse. The boost ends once a version trained with it
is the active one (checked before each run), or after MAX_BOOSTED_RUNS runs without a new concept
alert (its versions refused or rolled back), so it does not hold every later run in that episode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import Counter, Gauge, Histogram

from recstream.stream.contracts import metrics as metric_names
from recstream.stream.contracts.alerts import DriftAlert, parse_drift_alert
from recstream.stream.contracts.records import InvalidMessage, finite_number
from recstream.stream.errors import RecstreamError
from recstream.stream.settings import Settings

log = logging.getLogger(__name__)

JOB_ID = "retrain"
RUNS = Counter(
    metric_names.SCHEDULER_RUNS,
    "Retrain runs by trigger and outcome (published, rejected, failed, abandoned)",
    ["trigger", "outcome"],
)
RUN_SECONDS = Histogram(
    "recstream_scheduler_run_duration_seconds",
    "Duration of retrain runs",
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
ALERTS = Counter("recstream_scheduler_drift_alerts_total", "Drift alerts consumed", ["kind", "action"])
LAST_RUN = Gauge("recstream_scheduler_last_run_timestamp_seconds", "End of the last retrain run")


# Runs boosted by one drift start without a new concept alert, at most (see the module docstring).
MAX_BOOSTED_RUNS = 3


def drift_start(alert: DriftAlert) -> float | None:
    """Where the drift behind a concept alert started, in event time (the `ts` of the purchases the
    retrain reads): its window's `from_ts`, the first outcome of the fall. None for a data alert
    (it does not boost) and for a concept alert without one (an older scorer's): an arrival or
    alert time is no start in event time, where replayed purchases may be years old."""
    if alert.kind != "concept":
        return None
    try:  # the window is the alert's free-form part: an int beyond a float must not raise here
        return finite_number(alert.window.get("from_ts"), "window.from_ts")
    except InvalidMessage:
        return None


class Abandoned(RecstreamError):
    """The scheduler is stopping: the run in progress ends at its next epoch, publishing nothing."""


class RetrainScheduler:
    """Owns the APScheduler instance; `retrain()` is the job (a full retrain in production)."""

    def __init__(
        self,
        retrain: Callable[[], Any],
        interval_s: float,
        cooldown_s: float,
        *,
        misfire_grace_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        settle: Callable[[], Any] | None = None,
        episode_s: float = 3600.0,
        boost_served: Callable[[float], bool] | None = None,
    ) -> None:
        self.retrain = retrain
        self.settle = settle  # called before a drift run: wait for the data behind the alert
        # Whether the active version was trained with this drift start: then the boost has done its job.
        self.boost_served = boost_served
        self.interval_s = interval_s
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.last_drift_run: float | None = None
        self.next_trigger = "interval"  # what the next run is for (for metrics and logs)
        self.trigger = "interval"  # what the run in progress is for
        self.running = False
        self.follow_up = False  # an alert came during the run in progress: run again after it
        self.started = 0.0
        self.runs = 0
        # Start (event time) of the latest concept drift, for the runs after it; an alert within
        # `episode_s` of it belongs to the same drift and keeps the earlier start.
        self.drift_from: float | None = None
        self.drift_runs = 0  # runs started with drift_from since its last concept alert
        self.run_drift_from: float | None = None  # what the run in progress was given
        self.episode_s = episode_s
        self._lock = threading.Lock()
        self.scheduler = BackgroundScheduler(timezone=UTC)
        # Drift-only (interval 0): a paused job whose interval never comes; an alert moves it to now.
        drift_only = {"next_run_time": None} if interval_s == 0 else {}
        self.scheduler.add_job(
            self._run,
            IntervalTrigger(seconds=interval_s, timezone=UTC) if interval_s else IntervalTrigger(days=36500),
            **drift_only,
            id=JOB_ID,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=int(
                misfire_grace_s if misfire_grace_s is not None else max(1, interval_s / 2)
            ),
        )
        self.scheduler.add_listener(
            self._on_event, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MAX_INSTANCES
        )

    def start(self) -> None:
        self.scheduler.start()
        every = f"every {self.interval_s:g}s" if self.interval_s else "only on drift alerts"
        log.info("retrain %s; drift retrains at most every %gs", every, self.cooldown_s)

    def shutdown(self) -> None:
        """Waits for the run in progress: give it a way to end soon (see `run`)."""
        self.scheduler.shutdown(wait=True)

    def _run(self) -> Any:
        with self._lock:
            self.trigger, self.next_trigger = self.next_trigger, "interval"
            self.running, self.started = True, time.monotonic()
        self.run_drift_from = self._boost_for_run()
        log.info(
            "retrain started (%s)%s",
            self.trigger,
            "" if self.run_drift_from is None else f", given the drift start ts {self.run_drift_from:.3f}",
        )
        if self.trigger == "drift" and self.settle is not None:
            self.settle()
        try:
            return self.retrain()
        except Abandoned as exc:  # returned, not raised: APScheduler would log it as an error
            return exc

    def _on_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MAX_INSTANCES:
            log.info("retrain already running; this trigger is skipped")
            return
        with self._lock:
            trigger, self.running = self.trigger, False
            follow_up, self.follow_up = self.follow_up, False
        self.runs += 1
        LAST_RUN.set_to_current_time()
        RUN_SECONDS.observe(time.monotonic() - self.started)
        if isinstance(event.retval, Abandoned):
            RUNS.labels(trigger, "abandoned").inc()
            log.info("retrain (%s) abandoned: %s", trigger, event.retval)
        elif event.exception is not None:
            RUNS.labels(trigger, "failed").inc()
            log.error("retrain failed (%s); the loop goes on", trigger, exc_info=event.exception)
        else:
            RUNS.labels(trigger, getattr(event.retval, "event", "done")).inc()
            log.info("retrain done (%s): %s", trigger, event.retval)
        if follow_up and not isinstance(event.retval, Abandoned):
            log.info("a drift alert came during that run: retrain again on the newer data")
            self._run_now()

    def on_alert(self, alert: DriftAlert) -> bool:
        """Retrain now unless a drift retrain started less than the cooldown ago; True if triggered.

        During a run, the retrain is one more run right after it (several alerts: still one).
        """
        now = self.clock()
        # A concept alert with a drift start no run has had yet retrains even within the cooldown
        # (once per start): after a data alert's plain run, the boosted one must not wait for it.
        new_start = self._note_drift(drift_start(alert))
        if not new_start and self.last_drift_run is not None and now - self.last_drift_run < self.cooldown_s:
            ALERTS.labels(alert.kind, "cooldown").inc()
            log.info(
                "%s drift alert (%s=%.4g) within the %gs cooldown: no retrain",
                alert.kind,
                alert.statistic,
                alert.value,
                self.cooldown_s,
            )
            return False
        self.last_drift_run = now
        with self._lock:
            self.next_trigger = "drift"
            action = "follow_up" if self.running else "retrain"
            self.follow_up = self.follow_up or self.running
        ALERTS.labels(alert.kind, action).inc()
        log.info(
            "%s drift alert (%s=%.4g > %.4g): %s",
            alert.kind,
            alert.statistic,
            alert.value,
            alert.threshold,
            "retrain once the run in progress ends" if action == "follow_up" else "retrain now",
        )
        if action == "retrain":
            self._run_now()
        return True

    def _note_drift(self, start: float | None) -> bool:
        """Remember where a concept drift started (None: not one that boosts): an alert within
        `episode_s` of the remembered start is the same drift, which keeps the earliest start; a
        later one is a new drift. Either way the drift is still raising alarms: its run count
        restarts. True when the start changed to one that no run has been given yet."""
        if start is None:
            return False
        with self._lock:
            known = self.drift_from
            self.drift_from = start if known is None or start - known > self.episode_s else min(known, start)
            self.drift_runs = 0
            return self.drift_from != known and self.drift_from != self.run_drift_from

    def _boost_for_run(self) -> float | None:
        """The drift start a run starting now is given, ending the boost once it has done its job."""
        with self._lock:
            start, runs = self.drift_from, self.drift_runs
        if start is None:
            return None
        reason = None
        if runs >= MAX_BOOSTED_RUNS:
            reason = f"{runs} runs had it without a new concept alert"
        elif self.boost_served is not None:
            try:
                if self.boost_served(start):
                    reason = "the active version was trained with it"
            except Exception:  # the registry may be unreachable for a moment: keep boosting
                log.warning("could not tell whether the boosted version is active", exc_info=True)
        with self._lock:
            if self.drift_from != start:  # an alert moved it meanwhile: that one applies
                start = self.drift_from
            elif reason is not None:
                log.info("the drift start ts %.3f is given no more: %s", start, reason)
                self.drift_from, self.drift_runs, start = None, 0, None
            if start is not None:
                self.drift_runs += 1
        return start

    def _run_now(self) -> None:
        # Moving the one job's next run keeps "one run at a time" (max_instances=1).
        self.scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC) + timedelta(milliseconds=10))


def consume_alerts(settings: Settings, scheduler: RetrainScheduler, stop: threading.Event) -> None:
    """Feed `drift-alerts` to the scheduler until `stop` is set (group `recstream-scheduler`)."""
    from recstream.stream.consumers import kafka_consumer

    consumer = kafka_consumer(
        settings.drift_alerts_topic,
        settings=settings,
        group_id="recstream-scheduler",
        offset_reset="latest",  # a fresh scheduler acts on new alerts, not on history
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        max_poll_interval_ms=300_000,
    )
    try:
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    try:
                        alert = parse_drift_alert(record.value)
                    except InvalidMessage as exc:  # skipped and committed: never read again
                        ALERTS.labels("invalid", "ignored").inc()
                        log.warning(
                            "ignoring invalid drift alert at offset %d: %s", record.offset, exc.reason
                        )
                        continue
                    except Exception:  # a parser bug must not crash-loop on an uncommitted offset
                        ALERTS.labels("invalid", "ignored").inc()
                        log.error("ignoring drift alert at offset %d", record.offset, exc_info=True)
                        continue
                    try:  # nor may acting on one alert: logged, counted, committed with the rest
                        scheduler.on_alert(alert)
                    except Exception:
                        ALERTS.labels("invalid", "ignored").inc()
                        log.error("could not act on drift alert at offset %d", record.offset, exc_info=True)
                consumer.commit()
    finally:
        consumer.close()


def active_trained_with(settings: Settings, drift_from: float) -> bool:
    """Whether the active version was trained with the drift boost from `drift_from` (its
    metadata.json `window.recency.drift_from`)."""
    from recstream.stream.registry import ModelRegistry
    from recstream.stream.storage import make_client

    registry = ModelRegistry(make_client(settings), settings.models_bucket, settings.model_name)
    active = registry.state().active
    if active is None:
        return False
    recency = (registry.metadata(active).get("window") or {}).get("recency") or {}
    return recency.get("drift_from") == drift_from


def run(settings: Settings) -> None:
    """Run the loop in the foreground until SIGINT/SIGTERM."""
    import signal

    from recstream.retrain.job import retrain_once
    from recstream.stream.lake import wait_until_landed
    from recstream.stream.metrics import serve_metrics

    serve_metrics(settings.metrics_host, settings.scheduler_metrics_port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def progress(epoch: int, epochs: int, _: dict[str, float]) -> None:
        if stop.is_set():  # a stop must not wait for the rest of a training run
            raise Abandoned(f"stopping after epoch {epoch}/{epochs}")

    scheduler = RetrainScheduler(
        lambda: retrain_once(settings, progress, drift_from=scheduler.run_drift_from),
        settings.retrain_interval_s,
        settings.retrain_cooldown_s,
        settle=lambda: wait_until_landed(settings, max(30.0, 3 * settings.ingest_flush_s), stop=stop),
        episode_s=settings.retrain_recent_s or 3600.0,
        boost_served=lambda start: active_trained_with(settings, start),
    )
    scheduler.start()
    try:
        consume_alerts(settings, scheduler, stop)
    finally:
        scheduler.shutdown()
