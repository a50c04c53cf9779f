"""`recstream updater`: consume `model-updates`, activate each published version, keep serving in line.

The topic is only a trigger; the registry decides. On start (and after any error) a full
reconcile loads the registry's active version again if the model servers lost it and
processes versions still `published`; then each `published` record is handled and its
offset committed. Between records a cheap check (one canary per target) catches a model
server that restarted without its config.
"""

from __future__ import annotations

import logging
import threading
import time

from kafka import KafkaConsumer
from kafka.errors import NoBrokersAvailable

from recstream.stream import retry
from recstream.stream.consumers import kafka_consumer
from recstream.stream.contracts.model_events import PUBLISHED, ROLLED_BACK, parse_model_event
from recstream.stream.contracts.records import InvalidMessage
from recstream.stream.producer import BrokerUnavailable
from recstream.stream.settings import Settings
from recstream.updater import metrics
from recstream.updater.core import Options, Updater

log = logging.getLogger(__name__)

GROUP_ID = "recstream-updater"


class UpdaterService:
    def __init__(
        self,
        settings: Settings,
        options: Options | None = None,
        *,
        group_id: str = GROUP_ID,
        updater: Updater | None = None,
    ) -> None:
        self.settings = settings
        self.updater = updater or Updater(settings, options)
        self.group_id = group_id
        self.model = settings.model_name
        self.handled = 0  # records handled and committed (for tests and logs)

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set. Errors are logged and retried with capped backoff (stream.retry.UPDATER),
        never fatal: a reconcile is scheduled again while records go on being read."""
        try:
            consumer = self._consumer()
        except BaseException:
            self.updater.close()
            raise
        interval = self.updater.options.reconcile_interval_s
        delays, next_check, full = retry.Delays(retry.UPDATER), 0.0, True
        log.info("updater for model %s on %s", self.model, ", ".join(self.updater.options.targets))
        try:
            while not stop.is_set():
                if time.monotonic() >= next_check:
                    try:
                        if full:
                            self.updater.reconcile()
                        else:
                            self.updater.check()
                    except Exception as exc:
                        delay = delays.next()
                        self._failed("reconcile", exc, delay)
                        next_check, full = time.monotonic() + delay, True
                        continue
                    delays.reset()
                    next_check, full = time.monotonic() + interval, False
                for partition, records in consumer.poll(timeout_ms=500).items():
                    record = records[0]
                    try:
                        self.handle(record.value)
                    except Exception as exc:
                        consumer.seek(partition, record.offset)  # not committed: handled again
                        delay = delays.next()
                        self._failed(f"record at offset {record.offset}", exc, delay)
                        stop.wait(delay)
                        next_check, full = 0.0, True
                        break
                    consumer.commit()
                    self.handled += 1
                    delays.reset()
        finally:
            consumer.close()
            self.updater.close()
            log.info("updater stopped")

    def _consumer(self) -> KafkaConsumer:
        try:
            return kafka_consumer(
                self.settings.model_updates_topic,
                settings=self.settings,
                group_id=self.group_id,
                client_id=self.group_id,
                offset_reset="earliest",  # replays are harmless: the registry says what is done
                fetch_max_wait_ms=self.settings.kafka_fetch_max_wait_ms,
                max_poll_records=1,
                max_poll_interval_ms=900_000,  # one activation may validate and load for minutes
            )
        except NoBrokersAvailable:
            raise BrokerUnavailable(f"no Kafka broker answers at {self.settings.kafka_bootstrap}") from None

    def handle(self, value: bytes | None) -> None:
        """Act on one record. A record that is not a valid event is logged, counted and skipped
        (its offset is committed): retrying the same bytes could never succeed."""
        try:
            event = parse_model_event(value)
        except InvalidMessage as exc:
            metrics.INVALID_RECORDS.labels(self.model).inc()
            log.warning("ignoring an invalid model-updates record: %s", exc.reason)
            return
        except Exception:  # a parser bug: still never a retry loop on the same record
            metrics.INVALID_RECORDS.labels(self.model).inc()
            log.error("ignoring a model-updates record that could not be parsed", exc_info=True)
            return
        if event.model != self.model:
            return
        if event.event == PUBLISHED:
            self.updater.process(event.version)
        elif event.event == ROLLED_BACK and event.to is not None:
            metrics.ACTIVE_VERSION.labels(self.model).set(event.to)
            self.updater.served_freshness(event.to)
            self.updater.known_active = event.to

    def _failed(self, what: str, exc: Exception, backoff: float) -> None:
        metrics.ERRORS.labels(self.model).inc()
        log.error("%s failed (retrying in %.0fs): %s", what, backoff, exc, exc_info=not _expected(exc))


def _expected(exc: Exception) -> bool:
    from recstream.stream.errors import RecstreamError

    return isinstance(exc, RecstreamError)


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    """The foreground service: /metrics on UPDATER_METRICS_PORT, stops on SIGINT/SIGTERM."""
    import signal

    from recstream.stream.metrics import serve_metrics

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    serve_metrics(settings.metrics_host, settings.updater_metrics_port)
    UpdaterService(settings).run(stop)
