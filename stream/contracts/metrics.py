"""Names of the Prometheus metrics other programs read (`recstream status`, the demo timeline,
the benchmarks, Grafana's dashboard): each service declares its metric with the name here, and
every reader takes the name from here, so a rename cannot silently blank a reader.
"""

from __future__ import annotations

# ingest
INGEST_RECEIVED = "recstream_ingest_received_total"
INGEST_EVENTS = "recstream_ingest_events_total"  # label result
INGEST_ROWS_WRITTEN = "recstream_ingest_rows_written_total"
INGEST_DLQ = "recstream_ingest_dlq_total"  # label reason
INGEST_CONSUMER_LAG = "recstream_ingest_consumer_lag"  # label partition
# every Faust worker
WORKER_PARTITION_LAG = "recstream_worker_partition_lag"  # label partition
# scorer
SCORER_REQUESTS = "recstream_scorer_requests_total"  # label result
SCORER_LATENCY = "recstream_scorer_latency_seconds"  # histogram
SCORER_BATCH_SIZE = "recstream_scorer_batch_size"  # histogram
SCORER_PREDICT_SECONDS = "recstream_scorer_predict_seconds"  # histogram
SCORER_PREDICT_RETRIES = "recstream_scorer_predict_retries_total"
SCORER_PURCHASES = "recstream_scorer_purchases_total"
SCORER_MODEL_VERSION = "recstream_scorer_model_version"
DRIFT_HIT_RATE = "recstream_drift_online_hit_rate"  # label version
DRIFT_STATISTIC = "recstream_drift_statistic"  # label statistic
DRIFT_ALERTS = "recstream_drift_alerts_total"  # label statistic
# scheduler and updater
SCHEDULER_RUNS = "recstream_scheduler_runs_total"  # label reason, result
UPDATER_SERVED_STALENESS = "recstream_updater_served_staleness_seconds"
