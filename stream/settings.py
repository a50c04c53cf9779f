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

from stream.errors import RecstreamError

# Local-only credentials for the embedded object store; refused in production mode.
LOCAL_ACCESS_KEY = "recstream"
LOCAL_SECRET_KEY = "recstream-local-only"


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
    value = _number(text, int)
    if value < 1:
        raise ValueError(f"must be >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise ValueError(f"must be >= 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not (value >= 0 and value < float("inf")):
        raise ValueError(f"must be a finite number >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _number(text, int)
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
    Field("OBJECTSTORE_PORT", "objectstore_port", _port, "0", "embedded S3 port (0: a free one)"),
    Field("MODELSERVER_GRPC_PORT", "modelserver_grpc_port", _port, "0", "embedded model server gRPC port"),
    Field("MODELSERVER_REST_PORT", "modelserver_rest_port", _port, "0", "embedded model server REST port"),
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
    Field(
        "SCORER_BATCH_WAIT_S", "scorer_batch_wait_s", positive_float, "0.02", "longest wait to fill a batch"
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
    stack_start_timeout_s: float
    broker_session_timeout_s: float
    broker_rebalance_timeout_s: float
    broker_heartbeat_s: float
    producer_linger_ms: int
    producer_timeout_s: float
    retrain_interval_s: float
    retrain_cooldown_s: float
    retrain_window_s: float
    retrain_min_users: int
    gate_tolerance: float
    updater_load_timeout_s: float
    updater_validate_timeout_s: float
    updater_reconcile_s: float
    ingest_flush_events: int
    ingest_flush_s: float
    metrics_host: str
    ingest_metrics_port: int
    scorer_metrics_port: int
    updater_metrics_port: int
    scheduler_metrics_port: int
    scorer_batch_size: int
    scorer_batch_wait_s: float
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
    values: dict[str, object] = {"home": home}
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
