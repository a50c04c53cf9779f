"""Faust app factory with the group timeouts that make a consumer group join in seconds on Tansu.

With Faust's defaults a group join on Tansu takes ~30 s; short rebalance/session
timeouts bring it to a few seconds, which matters for restarts and tests.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import Gauge

from recstream.stream.contracts import metrics as metric_names
from recstream.stream.settings import Settings

if TYPE_CHECKING:
    import faust

log = logging.getLogger(__name__)


def group_id(name: str) -> str:
    """The consumer group (and Faust app id) of the app `name`: read by the landing barrier too."""
    return f"recstream-{name}"


def create_app(
    name: str,
    settings: Settings,
    *,
    fetch_max_wait_ms: int | None = None,
    faust_monitor: bool = True,
    **overrides: Any,
) -> faust.App:
    """A Faust app `recstream-<name>` on the configured broker; keyword overrides win.

    The broker URLs use the `recstream://` transport (stream.faust_transport): Faust's aiokafka
    driver with a fetch wait (default KAFKA_FETCH_MAX_WAIT_MS) instead of its hard-coded 1500 ms.

    `faust_monitor=False` runs without Faust's Monitor sensor, which times and counts every record
    in Python for Faust's own web view (off here: the services' figures are Prometheus'; its cost,
    README, ingest throughput). Faust's stall warnings read the Monitor's times for topics with
    acks on, so only an app whose topics have acks off (ingest) runs without it."""
    import faust  # imported here: Faust pulls in a lot, and most commands never need it

    from recstream.stream.faust_transport import SCHEME

    bootstrap = settings.require("kafka_bootstrap")
    datadir = settings.home / "faust" / name
    if settings.worker_name:  # several workers of one app on one machine: a data dir each
        datadir = datadir / settings.worker_name
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    options: dict[str, Any] = {
        "broker": [f"{SCHEME}://{server}" for server in bootstrap.split(",")],
        "store": "memory://",
        "datadir": str(datadir),
        "broker_session_timeout": settings.broker_session_timeout_s,
        "broker_rebalance_timeout": settings.broker_rebalance_timeout_s,
        "broker_heartbeat_interval": settings.broker_heartbeat_s,
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": 1,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        # Faust's web server would bind 0.0.0.0:6066; services expose metrics on their own port.
        "web_enabled": False,
    }
    options.update(overrides)
    app = faust.App(group_id(name), **options)
    # Read by stream.faust_transport when the worker's consumer is built.
    cast(Any, app).fetch_max_wait_ms = fetch_max_wait_ms or settings.kafka_fetch_max_wait_ms
    export_partitions(app, settings.transactions_topic)
    if not faust_monitor:
        _drop_monitor(app)
    return app


def _drop_monitor(app: faust.App) -> None:
    """Remove Faust's Monitor from the app's sensors. Faust adds it as the app starts, before the
    app's tasks run, so a task removes it."""

    async def remove() -> None:
        app.sensors.remove(app.monitor)
        log.info("Faust's Monitor sensor is off")

    app.task(remove)


PARTITION_EXPORT_S = 2.0
PARTITION_LAG = Gauge(
    metric_names.WORKER_PARTITION_LAG,
    "Records of an owned partition past this worker's committed offset",
    ["topic", "partition"],
)


def export_partitions(app: faust.App, topic: str) -> None:
    """Export which partitions of `topic` this worker owns and its lag on each, for `recstream
    status` to show every worker of a group (`recstream_worker_partition_lag`, NaN until known)."""
    exported: set[tuple[str, str]] = set()

    async def export() -> None:
        consumer = app.consumer
        owned = {tp for tp in consumer.assignment() if tp.topic == topic}
        for tp in owned:
            highwater = consumer.highwater(tp)
            committed = cast(Any, consumer)._committed_offset.get(tp)  # Faust's record; no public accessor
            lag = float("nan") if highwater is None else max(highwater - (committed or 0), 0)
            PARTITION_LAG.labels(tp.topic, str(tp.partition)).set(lag)
        labels = {(tp.topic, str(tp.partition)) for tp in owned}
        for gone in exported - labels:  # removed, not cleared first: a scrape never sees none
            PARTITION_LAG.remove(*gone)
        exported.clear()
        exported.update(labels)

    app.timer(interval=PARTITION_EXPORT_S)(export)


def run_worker(app: faust.App, settings: Settings) -> None:
    """Run a service's Faust app in the foreground until SIGINT/SIGTERM, at LOG_LEVEL, on EVENT_LOOP.

    uvloop by default (mode's backend, as `faust worker --loop uvloop` picks it): Faust's per-record
    path is mostly event-loop work, and on this machine a Faust agent counted 14,598 records/s on
    uvloop against 9,320 on asyncio's loop, the ingest worker 7,106 against 5,064 (README)."""
    import faust
    import mode.loop

    mode.loop.use(settings.event_loop)
    level = settings.log_level.lower()
    level = {"warning": "warn", "critical": "crit"}.get(level, level)  # Faust's own level names
    faust.Worker(app, loglevel=level, quiet=True).execute_from_commandline()
