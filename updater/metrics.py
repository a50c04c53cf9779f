"""Prometheus metrics of the updater (served by `run()` on UPDATER_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
