"""The one settings module: 12-factor environment variables, stack.env, CLI flags on top.

Precedence, highest first: explicit overrides (CLI flags), the process environment,
`$RECSTREAM_HOME/stack.env` (written by `recstream up`), the defaults below. Every
environment name the project reads is declared in `FIELDS`, so deployments can be
checked against it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.errors import RecstreamError

# Local-only credentials for the embedded object store; refused in production mode.
LOCAL_ACCESS_KEY = "recstream"
LOCAL_SECRET_KEY = "recstream-local-only"
# Production mode also refuses empty and short keys (the secret's length is its strength).
MIN_ACCESS_KEY_LENGTH, MIN_SECRET_KEY_LENGTH = 8, 16


class SettingsError(RecstreamError, ValueError):
    """A setting is malformed or not allowed; the message is one line."""


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _number(text: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise ValueError(f"must be > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise ValueError(f"must be >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 0:
        raise ValueError(f"must be >= 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not (value >= 0 and value < float("inf")):
        raise ValueError(f"must be a finite number >= 0, got {text!r}")
    return value


def _share(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value < 1:
        raise ValueError(f"must be >= 0 and < 1, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(_number(text, int))
    if not 0 <= value <= 65535:
        raise ValueError(f"not a port: {text!r}")
    return value


def parse_log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _optional(text: str) -> str | None:
    return text.strip() or None


def _worker_name(text: str) -> str | None:
    """A directory name of its own (it names the worker's Faust data dir): no path, no `..`."""
    name = text.strip()
    if name and (not all(c.isalnum() or c in "._-" for c in name) or name in {".", ".."}):
        raise ValueError(f"letters, digits, '.', '_' and '-' only, got {text!r}")
    return name or None


def _table_store(text: str) -> str:
    url = text.strip()
    if url not in {"rocksdb://", "memory://"}:
        raise ValueError(f"expected rocksdb:// or memory://, got {text!r}")
    return url


@dataclass(frozen=True, slots=True)
class Field:
    env: str
    attr: str
    parse: Callable[[str], object]
    default: str
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("RECSTREAM_ENV", "env", str, "local", "local or production (production refuses local credentials)"),
    Field("LOG_LEVEL", "log_level", parse_log_level, "INFO", "logging level of services"),
    # Endpoints: empty means "the embedded stack provides it".
    Field(
        "KAFKA_BOOTSTRAP", "kafka_bootstrap", _optional, "", "Kafka bootstrap servers host:port[,host:port]"
    ),
    Field("MINIO_ENDPOINT", "minio_endpoint", _optional, "", "S3 endpoint host:port"),
    Field("MINIO_ACCESS_KEY", "minio_access_key", str, LOCAL_ACCESS_KEY, "S3 access key"),
    Field("MINIO_SECRET_KEY", "minio_secret_key", str, LOCAL_SECRET_KEY, "S3 secret key"),
    Field("MINIO_SECURE", "minio_secure", _bool, "false", "use TLS for S3"),
    Field("MINIO_REGION", "minio_region", str, "us-east-1", "S3 region"),
    Field("TF_SERVING_GRPC", "tf_serving_grpc", _optional, "", "TF Serving gRPC host:port"),
    Field("TF_SERVING_REST", "tf_serving_rest", _optional, "", "TF Serving REST host:port"),
    Field("MODEL_NAME", "model_name", str, "recommender", "name of the served model"),
    Field(
        "TF_SERVING_TARGETS",
        "tf_serving_targets",
        _optional,
        "",
        "comma-separated gRPC endpoints of every TF Serving replica the updater updates"
        " (default: TF_SERVING_GRPC)",
    ),
    Field(
        "MODEL_BASE_PATH",
        "model_base_path_setting",
        _optional,
        "",
        "folder shared by the updater and the model server: <MODEL_NAME>/<version>/ and models.config"
        " (default $RECSTREAM_HOME/serving)",
    ),
    # Buckets.
    Field("DATA_BUCKET", "data_bucket", str, "data", "bucket of ingested transactions"),
    Field("MODELS_BUCKET", "models_bucket", str, "models", "bucket of model versions and the registry"),
    Field("BROKER_BUCKET", "broker_bucket", str, "broker", "bucket of the embedded broker's log and offsets"),
    # Topics.
    Field("TRANSACTIONS_TOPIC", "transactions_topic", str, "transactions", "purchase events"),
    Field("DLQ_TOPIC", "dlq_topic", str, "transactions-dlq", "invalid events with their reason"),
    Field("REQUESTS_TOPIC", "requests_topic", str, "recommendation-requests", "recommendation requests"),
    Field("RECOMMENDATIONS_TOPIC", "recommendations_topic", str, "recommendations", "answers to requests"),
    Field("MODEL_UPDATES_TOPIC", "model_updates_topic", str, "model-updates", "model lifecycle events"),
    Field("DRIFT_ALERTS_TOPIC", "drift_alerts_topic", str, "drift-alerts", "drift alerts"),
    Field("TOPIC_PARTITIONS", "topic_partitions", positive_int, "4", "partitions of the data topics"),
    # Embedded stack.
    Field("BROKER_PORT", "broker_port", _port, "0", "embedded broker port (0: a free one)"),
    Field("REQUEST_BROKER_PORT", "request_broker_port", _port, "0", "embedded request broker port (0: free)"),
    Field("OBJECTSTORE_PORT", "objectstore_port", _port, "0", "embedded S3 port (0: a free one)"),
    Field("MODELSERVER_GRPC_PORT", "modelserver_grpc_port", _port, "0", "embedded model server gRPC port"),
    Field("MODELSERVER_REST_PORT", "modelserver_rest_port", _port, "0", "embedded model server REST port"),
    # Embedded model server request limits (deploy/modelserver/limits.py; TF Serving's values there).
    Field(
        "MODELSERVER_MAX_GRPC_MESSAGE_BYTES",
        "modelserver_max_grpc_message_bytes",
        positive_int,
        "67108864",
        "largest gRPC message the model server receives or sends (TF Serving: 2 GiB)",
    ),
    Field("MODELSERVER_MAX_BATCH", "modelserver_max_batch", positive_int, "1000", "largest input batch"),
    Field(
        "MODELSERVER_MAX_STRING_BYTES",
        "modelserver_max_string_bytes",
        positive_int,
        "1048576",
        "largest string element of a model server input",
    ),
    Field(
        "MODELSERVER_MAX_REST_BODY_BYTES",
        "modelserver_max_rest_body_bytes",
        positive_int,
        "8388608",
        "largest REST request body (413 beyond, before it is read)",
    ),
    Field(
        "MODELSERVER_REST_TIMEOUT_S",
        "modelserver_rest_timeout_s",
        positive_float,
        "30",
        "time a REST request (or an idle kept-alive connection) may take before it is closed",
    ),
    Field("MODELSERVER_REST_WORKERS", "modelserver_rest_workers", positive_int, "16", "REST worker threads"),
    Field("MODELSERVER_GRPC_WORKERS", "modelserver_grpc_workers", positive_int, "16", "gRPC worker threads"),
    Field("STACK_START_TIMEOUT_S", "stack_start_timeout_s", positive_float, "60", "health-check deadline"),
    # Kafka clients.
    Field(
        "BROKER_SESSION_TIMEOUT_S", "broker_session_timeout_s", positive_float, "6", "group session timeout"
    ),
    Field(
        "BROKER_REBALANCE_TIMEOUT_S", "broker_rebalance_timeout_s", positive_float, "4", "rebalance timeout"
    ),
    Field("BROKER_HEARTBEAT_S", "broker_heartbeat_s", positive_float, "1", "group heartbeat interval"),
    Field("PRODUCER_LINGER_MS", "producer_linger_ms", _non_negative_int, "5", "producer batching delay"),
    # Fetch waits, per role: the embedded broker (Tansu 0.6) holds every fetch until the wait runs out,
    # and each fetch of its S3 engine costs the object store, so only the paths where latency matters
    # wait briefly; Apache Kafka answers a fetch when records arrive (production keeps 500 for all).
    Field(
        "KAFKA_FETCH_MAX_WAIT_MS",
        "kafka_fetch_max_wait_ms",
        positive_int,
        "500",
        "longest fetch wait of bulk and control consumers (ingest, updater, scheduler)",
    ),
    Field(
        "SCORER_FETCH_MAX_WAIT_MS",
        "scorer_fetch_max_wait_ms",
        positive_int,
        "100",
        "longest fetch wait of the scorer's purchases (a purchase reaches the next answer in well under 1 s)",
    ),
    Field(
        "KAFKA_REQUEST_FETCH_MAX_WAIT_MS",
        "kafka_request_fetch_max_wait_ms",
        positive_int,
        "5",
        "longest fetch wait on the request path (the scorer's requests, a client's answers)",
    ),
    Field(
        "REQUESTS_KAFKA_BOOTSTRAP",
        "requests_kafka_bootstrap_setting",
        _optional,
        "",
        "bootstrap servers of the request and answer topics (default: KAFKA_BOOTSTRAP)",
    ),
    Field("PRODUCER_TIMEOUT_S", "producer_timeout_s", positive_float, "30", "delivery confirmation deadline"),
    # Operational knobs of the stages.
    Field(
        "RETRAIN_INTERVAL_S",
        "retrain_interval_s",
        _non_negative_float,
        "1800",
        "scheduled retrain period (0: only on drift alerts, e.g. when Kubeflow runs the schedule)",
    ),
    Field("RETRAIN_COOLDOWN_S", "retrain_cooldown_s", positive_float, "300", "minimum gap of drift retrains"),
    Field(
        "RETRAIN_WINDOW_S",
        "retrain_window_s",
        _non_negative_float,
        "0",
        "train on the events of the last this many seconds (0: all landed data)",
    ),
    Field(
        "RETRAIN_MIN_USERS",
        "retrain_min_users",
        positive_int,
        "50",
        "fewest held-out users a retrain needs to train and judge a model",
    ),
    Field(
        "RETRAIN_HALF_LIFE_S",
        "retrain_half_life_s",
        _non_negative_float,
        "1209600",
        "age at which a training example weighs half as much as the latest one (0: no decay)",
    ),
    Field(
        "RETRAIN_DRIFT_SHARE",
        "retrain_drift_share",
        _share,
        "0.5",
        "share of the training weight at least given to the purchases since the last drift alert's"
        " window start (0: no boost)",
    ),
    Field(
        "RETRAIN_RECENT_S",
        "retrain_recent_s",
        _non_negative_float,
        "86400",
        "the gate judges on the held-out purchases of the window's last this many seconds"
        " (0: the whole window)",
    ),
    Field(
        "GATE_TOLERANCE",
        "gate_tolerance",
        _non_negative_float,
        "0.01",
        "HR@10 a candidate may lose against the active model and still be published",
    ),
    Field(
        "UPDATER_LOAD_TIMEOUT_S",
        "updater_load_timeout_s",
        positive_float,
        "120",
        "how long a model server may take to report a version AVAILABLE",
    ),
    Field(
        "UPDATER_VALIDATE_TIMEOUT_S",
        "updater_validate_timeout_s",
        positive_float,
        "180",
        "how long validating a downloaded version may take",
    ),
    Field(
        "UPDATER_RECONCILE_S",
        "updater_reconcile_s",
        positive_float,
        "60",
        "how often the updater checks that the model servers serve the registry's versions",
    ),
    Field("INGEST_FLUSH_EVENTS", "ingest_flush_events", positive_int, "5000", "events per Parquet object"),
    Field("INGEST_FLUSH_S", "ingest_flush_s", positive_float, "10", "max age of a buffered batch"),
    Field(
        "EVENT_MAX_FUTURE_S",
        "event_max_future_s",
        _non_negative_float,
        "86400",
        "an event time more than this far after its record was produced is dead-lettered",
    ),
    Field("METRICS_HOST", "metrics_host", str, "127.0.0.1", "address the services' /metrics listen on"),
    Field(
        "INGEST_METRICS_PORT", "ingest_metrics_port", _port, "9401", "ingest worker /metrics port (0: free)"
    ),
    Field("SCORER_METRICS_PORT", "scorer_metrics_port", _port, "9402", "scorer /metrics port (0: free)"),
    Field("UPDATER_METRICS_PORT", "updater_metrics_port", _port, "9403", "updater /metrics port (0: free)"),
    Field(
        "SCHEDULER_METRICS_PORT", "scheduler_metrics_port", _port, "9404", "scheduler /metrics port (0: free)"
    ),
    Field("SCORER_BATCH_SIZE", "scorer_batch_size", positive_int, "64", "most requests in one Predict"),
    Field("SCORER_HTTP_HOST", "scorer_http_host", str, "127.0.0.1", "address of the scorer's HTTP view"),
    Field(
        "SCORER_LIVE_HISTORY",
        "scorer_live_history",
        _bool,
        "true",
        "send users' live purchases to the model (recommend_history); false: their history at training",
    ),
    Field("SCORER_HTTP_PORT", "scorer_http_port", _port, "9405", "scorer HTTP view port (0: free)"),
    Field(
        "SCORER_HTTP_ADVERTISED_HOST",
        "scorer_http_advertised_host",
        _optional,
        "",
        "address other scorer workers reach this one's HTTP view at (default: SCORER_HTTP_HOST)",
    ),
    Field(
        "SCORER_DEADLINE_S",
        "scorer_deadline_s",
        positive_float,
        "30",
        "a request not answered this long after it was produced gets an error answer",
    ),
    Field("SCORER_PREDICT_TIMEOUT_S", "scorer_predict_timeout_s", positive_float, "5", "one Predict call"),
    Field(
        "SCORER_HISTORY_ITEMS",
        "scorer_history_items",
        positive_int,
        "256",
        "latest purchases kept per user to exclude from answers",
    ),
    Field("DRIFT_HORIZON_S", "drift_horizon_s", positive_float, "3600", "hit window after a recommendation"),
    Field("DRIFT_CHECK_S", "drift_check_s", positive_float, "5", "how often drift is computed"),
    Field("DRIFT_WINDOW_EVENTS", "drift_window_events", positive_int, "2000", "purchases in the data window"),
    Field(
        "DRIFT_MIN_EVENTS", "drift_min_events", positive_int, "500", "fewest purchases to judge data drift"
    ),
    Field(
        "DRIFT_MIN_OUTCOMES",
        "drift_min_outcomes",
        positive_int,
        "50",
        "fewest resolved recommendations to judge concept drift",
    ),
    Field("DRIFT_PSI_THRESHOLD", "drift_psi_threshold", positive_float, "0.2", "item popularity PSI alert"),
    Field(
        "DRIFT_UNKNOWN_ITEM_THRESHOLD",
        "drift_unknown_item_threshold",
        positive_float,
        "0.2",
        "share of purchases of products the model never saw",
    ),
    Field(
        "DRIFT_UNKNOWN_USER_THRESHOLD",
        "drift_unknown_user_threshold",
        positive_float,
        "0.5",
        "share of requests answered by the popularity fallback",
    ),
    Field("DRIFT_PH_DELTA", "drift_ph_delta", positive_float, "0.05", "Page-Hinkley tolerated fall"),
    Field("DRIFT_PH_THRESHOLD", "drift_ph_threshold", positive_float, "15", "Page-Hinkley alarm level"),
    Field(
        "DRIFT_ALERT_COOLDOWN_S",
        "drift_alert_cooldown_s",
        _non_negative_float,
        "300",
        "least time between two alerts of one statistic",
    ),
    Field(
        "DRIFT_ALERT_REPEAT_S",
        "drift_alert_repeat_s",
        _non_negative_float,
        "1800",
        "an alert still raised fires again after this long (the last retrain did not cure it)",
    ),
    # Scale out (issue 15): workers of one consumer group per service, each its own Faust data dir.
    Field("INGEST_WORKERS", "ingest_workers", positive_int, "1", "ingest workers `recstream up` starts"),
    Field("SCORER_WORKERS", "scorer_workers", positive_int, "1", "scorer workers `recstream up` starts"),
    Field(
        "WORKER_NAME",
        "worker_name",
        _worker_name,
        "",
        "this worker among several of one service on one machine: its own Faust data dir",
    ),
    Field(
        "SCORER_TABLE_STORE",
        "scorer_table_store",
        _table_store,
        "rocksdb://",
        "Faust store of the scorer's table: rocksdb:// (local state under RECSTREAM_HOME) or memory://",
    ),
    # The timeline `recstream up` records for `recstream report` (deploy/timeline.py).
    Field("TIMELINE_INTERVAL_S", "timeline_interval_s", positive_float, "5", "seconds between two samples"),
    Field(
        "TIMELINE_MAX_BYTES",
        "timeline_max_bytes",
        positive_int,
        "2000000",
        "size past which the timeline keeps every other sample (events are kept)",
    ),
)

ENV_NAMES: frozenset[str] = frozenset(f.env for f in FIELDS) | {"RECSTREAM_HOME"}


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    env: str
    log_level: str
    kafka_bootstrap: str | None
    minio_endpoint: str | None
    minio_access_key: str
    minio_secret_key: str
    minio_secure: bool
    minio_region: str
    tf_serving_grpc: str | None
    tf_serving_rest: str | None
    model_name: str
    tf_serving_targets: str | None
    model_base_path_setting: str | None
    data_bucket: str
    models_bucket: str
    broker_bucket: str
    transactions_topic: str
    dlq_topic: str
    requests_topic: str
    recommendations_topic: str
    model_updates_topic: str
    drift_alerts_topic: str
    topic_partitions: int
    broker_port: int
    objectstore_port: int
    modelserver_grpc_port: int
    modelserver_rest_port: int
    modelserver_max_grpc_message_bytes: int
    modelserver_max_batch: int
    modelserver_max_string_bytes: int
    modelserver_max_rest_body_bytes: int
    modelserver_rest_timeout_s: float
    modelserver_rest_workers: int
    modelserver_grpc_workers: int
    stack_start_timeout_s: float
    broker_session_timeout_s: float
    kafka_fetch_max_wait_ms: int
    scorer_fetch_max_wait_ms: int
    request_broker_port: int
    kafka_request_fetch_max_wait_ms: int
    requests_kafka_bootstrap_setting: str | None
    scorer_http_host: str
    scorer_live_history: bool
    scorer_http_port: int
    scorer_http_advertised_host: str | None
    broker_rebalance_timeout_s: float
    broker_heartbeat_s: float
    producer_linger_ms: int
    producer_timeout_s: float
    retrain_interval_s: float
    retrain_cooldown_s: float
    retrain_window_s: float
    retrain_min_users: int
    retrain_half_life_s: float
    retrain_drift_share: float
    retrain_recent_s: float
    gate_tolerance: float
    updater_load_timeout_s: float
    updater_validate_timeout_s: float
    updater_reconcile_s: float
    ingest_flush_events: int
    ingest_flush_s: float
    event_max_future_s: float
    metrics_host: str
    ingest_metrics_port: int
    scorer_metrics_port: int
    updater_metrics_port: int
    scheduler_metrics_port: int
    scorer_batch_size: int
    scorer_deadline_s: float
    scorer_predict_timeout_s: float
    scorer_history_items: int
    drift_horizon_s: float
    drift_check_s: float
    drift_window_events: int
    drift_min_events: int
    drift_min_outcomes: int
    drift_psi_threshold: float
    drift_unknown_item_threshold: float
    drift_unknown_user_threshold: float
    drift_ph_delta: float
    drift_ph_threshold: float
    drift_alert_cooldown_s: float
    drift_alert_repeat_s: float
    timeline_interval_s: float
    timeline_max_bytes: int
    ingest_workers: int
    scorer_workers: int
    worker_name: str | None
    scorer_table_store: str

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def stack_env_path(self) -> Path:
        return self.home / "stack.env"

    @property
    def model_base_path(self) -> Path:
        """The serving root: TF Serving's base path of a model is `<this>/<model name>`."""
        return Path(self.model_base_path_setting) if self.model_base_path_setting else self.home / "serving"

    @property
    def requests_kafka_bootstrap(self) -> str:
        """Where requests and answers live: ephemeral by nature, they may have a faster broker."""
        return self.requests_kafka_bootstrap_setting or self.require("kafka_bootstrap")

    @property
    def model_config_file(self) -> Path:
        return self.model_base_path / "models.config"

    def require(self, attr: str) -> str:
        """The value of an endpoint setting, or a one-line hint to start the stack."""
        value = getattr(self, attr)
        if not value:
            env = next(f.env for f in FIELDS if f.attr == attr)
            raise SettingsError(f"{env} is not set and no stack is running: run `recstream up --infra` first")
        return value

    def topics(self) -> dict[str, int]:
        """Every topic with its partition count; control topics keep one partition for ordering."""
        data = self.topic_partitions
        return {
            self.transactions_topic: data,
            self.dlq_topic: data,
            self.requests_topic: data,
            self.recommendations_topic: data,
            self.model_updates_topic: 1,
            self.drift_alerts_topic: 1,
        }

    def buckets(self) -> list[str]:
        return [self.data_bucket, self.models_bucket]


def default_home(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("RECSTREAM_HOME") or ".recstream").expanduser().resolve()


def read_env_file(path: Path) -> dict[str, str]:
    """Parse `KEY=value` lines (comments and blank lines ignored); a missing file is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from exc
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise SettingsError(f"{path}:{number}: expected KEY=value")
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise SettingsError(f"{path}:{number}: {exc}") from None
        values[name.strip()] = " ".join(words)
    return values


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Write atomically so a reader never sees half a file; owner-only since it holds credentials."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    body = "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("# written by `recstream up`; `set -a; . ./stack.env; set +a` exports it to programs\n")
        handle.write(body)
    os.replace(tmp, path)


def load_settings(
    overrides: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    use_stack_env: bool = True,
) -> Settings:
    """Build Settings from overrides > environment > stack.env > defaults.

    `use_stack_env=False` gives only what the user configured, which is how `recstream up`
    tells an external endpoint from one of its own embedded parts.
    """
    environ = os.environ if environ is None else environ
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    home = default_home({"RECSTREAM_HOME": given["RECSTREAM_HOME"]} if "RECSTREAM_HOME" in given else environ)
    stack = read_env_file(home / "stack.env") if use_stack_env else {}
    values: dict[str, Any] = {"home": home}  # each value of the type its field's parser returns
    for f in FIELDS:
        raw = given.get(f.env, environ.get(f.env, stack.get(f.env, f.default)))
        try:
            values[f.attr] = f.parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{f.env}={raw!r}: {exc}") from None
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if settings.env not in {"local", "production"}:
        raise SettingsError(f"RECSTREAM_ENV must be local or production, got {settings.env!r}")
    if settings.production and (
        settings.minio_access_key == LOCAL_ACCESS_KEY or settings.minio_secret_key == LOCAL_SECRET_KEY
    ):
        raise SettingsError("production mode refuses the local default MINIO_ACCESS_KEY/MINIO_SECRET_KEY")
    if settings.production and len(settings.minio_access_key.strip()) < MIN_ACCESS_KEY_LENGTH:
        raise SettingsError(
            f"production mode needs a MINIO_ACCESS_KEY of at least {MIN_ACCESS_KEY_LENGTH} characters"
        )
    if settings.production and len(settings.minio_secret_key.strip()) < MIN_SECRET_KEY_LENGTH:
        raise SettingsError(
            f"production mode needs a MINIO_SECRET_KEY of at least {MIN_SECRET_KEY_LENGTH} characters"
        )
