"""Prometheus metrics of the updater (served by `run()` on UPDATER_METRICS_PORT)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

from recstream.stream.contracts import metrics as metric_names

ACTIVATIONS = Counter("recstream_updater_activations_total", "Versions activated", ["model"])
REJECTIONS = Counter(
    "recstream_updater_rejections_total",
    "Versions rejected, by the step that refused them",
    ["model", "reason"],
)
ROLLBACKS = Counter("recstream_updater_rollbacks_total", "Rollbacks done by this process", ["model"])
RESTORES = Counter(
    "recstream_updater_restores_total",
    "Times the active version had to be loaded again (model server restarted or lost its config)",
    ["model"],
)
ERRORS = Counter(
    "recstream_updater_errors_total", "Events or checks that failed and will be retried", ["model"]
)
INVALID_RECORDS = Counter(
    "recstream_updater_invalid_records_total",
    "model-updates records skipped because they are not a valid event (logged, committed, never retried)",
    ["model"],
)
ACTIVE_VERSION = Gauge("recstream_updater_active_version", "Version served through `stable`", ["model"])
LAST_ACTIVATION_SECONDS = Gauge(
    "recstream_updater_last_activation_seconds",
    "Duration of the last activation (download, validation, load, canary)",
    ["model"],
)
LAST_ACTIVATION_TIMESTAMP = Gauge(
    "recstream_updater_last_activation_timestamp_seconds", "When the last activation finished", ["model"]
)
# Freshness: how old is what the model server serves (DESIGN flow 7; retrain/lineage.py records
# the newest event time each version learnt from).
SERVED_NEWEST_EVENT = Gauge(
    "recstream_updater_served_newest_event_timestamp_seconds",
    "Event time of the newest purchase the served (stable) version learnt from",
    ["model"],
)
STALENESS = Gauge(
    metric_names.UPDATER_SERVED_STALENESS,
    "Now minus the newest event time the served version learnt from (rises until a newer version serves)",
    ["model"],
)
EVENT_TO_ACTIVATION = Histogram(
    "recstream_updater_event_to_activation_seconds",
    "Per activation: seconds from the newest event the version learnt from to its activation",
    ["model"],
    buckets=(5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 900, 1800, 3600, 7200, 21600, 86400),
)
LAST_EVENT_TO_ACTIVATION = Gauge(
    "recstream_updater_last_event_to_activation_seconds",
    "The last activation's seconds from the newest event the version learnt from to its activation",
    ["model"],
)


def served(model: str, newest_event_ts: float | None) -> None:
    """The served version learnt up to `newest_event_ts`: staleness counts from there, live."""
    if newest_event_ts is None:
        return
    SERVED_NEWEST_EVENT.labels(model).set(newest_event_ts)
    STALENESS.labels(model).set_function(lambda: max(time.time() - newest_event_ts, 0.0))


def activated(model: str, newest_event_ts: float | None, at: float) -> float | None:
    """Record an activation at `at`; returns its event-to-activation seconds (None if unknown)."""
    served(model, newest_event_ts)
    if newest_event_ts is None:
        return None
    seconds = max(at - newest_event_ts, 0.0)
    EVENT_TO_ACTIVATION.labels(model).observe(seconds)
    LAST_EVENT_TO_ACTIVATION.labels(model).set(seconds)
    return seconds
