"""`recstream scheduler`: the unattended retrain loop (APScheduler) with the drift trigger.

One APScheduler job does every retrain, so "one run at a time" holds whatever started it:
the interval trigger fires every RETRAIN_INTERVAL_S (coalescing missed runs into one, with
a misfire grace), and a drift alert moves the job's next run to now, at most once per
RETRAIN_COOLDOWN_S. An alert that comes while a run is in progress asks for one more run
right after it: the run in progress read its data before the alert, maybe before the drift
had landed. A drift run first waits (bounded) until ingest has landed every purchase sent
before it starts, so the purchases that raised the alert are in its data. A failing run is
logged and counted; the loop goes on.

Every run after a drift alert is told where the drift started (`drift_from`: the alert window's
start, see `drift_start`), so it weighs the purchases since then more and is judged on them
(retrain.job.recency_plan). Alerts of one episode keep its earliest start.
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

from stream.alerts import DriftAlert, parse_drift_alert
from stream.errors import RecstreamError
from stream.schemas import InvalidMessage, finite_number
from stream.settings import Settings

log = logging.getLogger(__name__)

JOB_ID = "retrain"
RUNS = Counter(
    "recstream_scheduler_runs_total",
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


# A concept alert's window has no start time (it counts outcomes): the drift is taken to have
# started this long before the alert.
CONCEPT_LOOKBACK_S = 600.0


def drift_start(alert: DriftAlert) -> tuple[float, bool]:
    """When the drift behind `alert` started, and whether the alert says so (measured): its
    window's `from` (arrival time of the first purchase of a data alert's window), else a guess,
    CONCEPT_LOOKBACK_S before the alert."""
    try:  # the window is the alert's free-form part: an int beyond a float must not raise here
        start = finite_number(alert.window.get("from"), "window.from")
    except InvalidMessage:
        start = None
    if start is not None and start <= alert.ts:
        return start, True
    return alert.ts - CONCEPT_LOOKBACK_S, False


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
    ) -> None:
        self.retrain = retrain
        self.settle = settle  # called before a drift run: wait for the data behind the alert
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
        # Start of the latest drift (epoch seconds) for the runs after it; an alert within
        # `episode_s` of it belongs to the same drift and keeps the earlier start.
        self.drift_from: float | None = None
        self.drift_measured = False  # drift_from comes from an alert's window, not a guess
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
        log.info("retrain started (%s)", self.trigger)
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
        # Noted even within the cooldown: a data alert's measured start, often just after the
        # concept alert that started the run, must reach the runs after it.
        self._note_drift(*drift_start(alert))
        if self.last_drift_run is not None and now - self.last_drift_run < self.cooldown_s:
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

    def _note_drift(self, start: float, measured: bool) -> None:
        """Remember where the drift started: an alert within `episode_s` of the remembered start is
        the same drift, whose start is the earliest measured one (a measured start replaces a guess;
        a guess never replaces a measured start); a later one is a new drift."""
        with self._lock:
            known = self.drift_from
            if known is None or start - known > self.episode_s:
                self.drift_from, self.drift_measured = start, measured
            elif measured and not self.drift_measured:
                self.drift_from, self.drift_measured = start, True
            elif measured == self.drift_measured:
                self.drift_from = min(known, start)

    def _run_now(self) -> None:
        # Moving the one job's next run keeps "one run at a time" (max_instances=1).
        self.scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC) + timedelta(milliseconds=10))


def consume_alerts(settings: Settings, scheduler: RetrainScheduler, stop: threading.Event) -> None:
    """Feed `drift-alerts` to the scheduler until `stop` is set (group `recstream-scheduler`)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.drift_alerts_topic,
        bootstrap_servers=settings.require("kafka_bootstrap"),
        group_id="recstream-scheduler",
        enable_auto_commit=False,
        auto_offset_reset="latest",  # a fresh scheduler acts on new alerts, not on history
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        session_timeout_ms=int(settings.broker_session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.broker_heartbeat_s * 1000),
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


def run(settings: Settings) -> None:
    """Run the loop in the foreground until SIGINT/SIGTERM."""
    import signal

    from ingest.progress import wait_until_landed
    from retrain.job import retrain_once
    from stream.metrics import serve_metrics

    serve_metrics(settings.metrics_host, settings.scheduler_metrics_port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def progress(epoch: int, epochs: int, _: dict[str, float]) -> None:
        if stop.is_set():  # a stop must not wait for the rest of a training run
            raise Abandoned(f"stopping after epoch {epoch}/{epochs}")

    scheduler = RetrainScheduler(
        lambda: retrain_once(settings, progress, drift_from=scheduler.drift_from),
        settings.retrain_interval_s,
        settings.retrain_cooldown_s,
        settle=lambda: wait_until_landed(settings, max(30.0, 3 * settings.ingest_flush_s), stop=stop),
        episode_s=settings.retrain_recent_s or 3600.0,
    )
    scheduler.start()
    try:
        consume_alerts(settings, scheduler, stop)
    finally:
        scheduler.shutdown()
