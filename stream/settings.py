"""The one settings module: 12-factor environment variables, stack.env, CLI flags on top.

Precedence, highest first: explicit overrides (CLI flags), the process environment,
`$RECSTREAM_HOME/stack.env` (written by `recstream up`), the defaults below. Each setting is
declared once, as a field of `Settings` made by `setting(ENV_NAME, parser, default, help)` (as
Faust declares its settings); `FIELDS` lists them all, so deployments can be checked against
every environment name the project reads. Per-stage config objects derive from `Settings`.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recstream.stream.errors import RecstreamError

# Local-only credentials for the embedded object store; refused in production mode.
LOCAL_ACCESS_KEY = "recstream"
LOCAL_SECRET_KEY = "recstream-local-only"
# Production mode also refuses empty and short keys (the secret's length is its strength).
MIN_ACCESS_KEY_LENGTH, MIN_SECRET_KEY_LENGTH = 8, 16
# Concept drift's change detectors by DRIFT_DETECTOR name (recommender/detectors.py implements them).
DRIFT_DETECTORS = ("page-hinkley", "adwin")
# The asyncio event loops a Faust service may run on (mode.loop's backends by EVENT_LOOP name).
EVENT_LOOPS = ("uvloop", "aio")
SETTING = "recstream.setting"  # the key of a Settings field's (env, parse, default, doc) metadata


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


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    """A parser of one name among `choices` (case-insensitive)."""

    def parse(text: str) -> str:
        name = text.strip().lower()
        if name not in choices:
            raise ValueError(f"expected {' or '.join(choices)}, got {text!r}")
        return name

    return parse


def _probability(text: str) -> float:
    value = _number(text, float)
    if not 0 < value < 1:
        raise ValueError(f"must be > 0 and < 1, got {text!r}")
    return value


@dataclass(frozen=True, slots=True)
class Field:
    """A setting as deployments and tools see it: env name, attribute, parser, default text, help."""

    env: str
    attr: str
    parse: Callable[[str], object]
    default: str
    doc: str


def setting(env: str, parse: Callable[[str], Any], default: str, doc: str) -> Any:
    """One setting, declared once: a Settings field whose default is `default` parsed by `parse`,
    carrying its environment name, parser, textual default and help (which FIELDS lists)."""
    return dataclasses.field(default=parse(default), metadata={SETTING: (env, parse, default, doc)})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the project, each declared once: its field's type, environment name,
    parser, default and help; `load_settings` fills them (the defaults alone: `default_settings`)."""

    home: Path
    env: str = setting(
        "RECSTREAM_ENV", str, "local", "local or production (production refuses local credentials)"
    )
    log_level: str = setting("LOG_LEVEL", parse_log_level, "INFO", "logging level of services")
    event_loop: str = setting(
        "EVENT_LOOP",
        _one_of(EVENT_LOOPS),
        "uvloop",
        "asyncio event loop of the Faust services: uvloop, or aio (the standard library's)",
    )
    # Endpoints: empty means "the embedded stack provides it".
    kafka_bootstrap: str | None = setting(
        "KAFKA_BOOTSTRAP", _optional, "", "Kafka bootstrap servers host:port[,host:port]"
    )
    minio_endpoint: str | None = setting("MINIO_ENDPOINT", _optional, "", "S3 endpoint host:port")
    minio_access_key: str = setting("MINIO_ACCESS_KEY", str, LOCAL_ACCESS_KEY, "S3 access key")
    minio_secret_key: str = setting("MINIO_SECRET_KEY", str, LOCAL_SECRET_KEY, "S3 secret key")
    minio_secure: bool = setting("MINIO_SECURE", _bool, "false", "use TLS for S3")
    minio_region: str = setting("MINIO_REGION", str, "us-east-1", "S3 region")
    tf_serving_grpc: str | None = setting("TF_SERVING_GRPC", _optional, "", "TF Serving gRPC host:port")
    tf_serving_rest: str | None = setting("TF_SERVING_REST", _optional, "", "TF Serving REST host:port")
    model_name: str = setting("MODEL_NAME", str, "recommender", "name of the served model")
    tf_serving_targets: str | None = setting(
        "TF_SERVING_TARGETS",
        _optional,
        "",
        "comma-separated gRPC endpoints of every TF Serving replica the updater updates"
        " (default: TF_SERVING_GRPC)",
    )
    model_base_path_setting: str | None = setting(
        "MODEL_BASE_PATH",
        _optional,
        "",
        "folder shared by the updater and the model server: <MODEL_NAME>/<version>/ and models.config"
        " (default $RECSTREAM_HOME/serving)",
    )
    # Buckets.
    data_bucket: str = setting("DATA_BUCKET", str, "data", "bucket of ingested transactions")
    models_bucket: str = setting("MODELS_BUCKET", str, "models", "bucket of model versions and the registry")
    broker_bucket: str = setting(
        "BROKER_BUCKET", str, "broker", "bucket of the embedded broker's log and offsets"
    )
    # Topics.
    transactions_topic: str = setting("TRANSACTIONS_TOPIC", str, "transactions", "purchase events")
    dlq_topic: str = setting("DLQ_TOPIC", str, "transactions-dlq", "invalid events with their reason")
    requests_topic: str = setting("REQUESTS_TOPIC", str, "recommendation-requests", "recommendation requests")
    recommendations_topic: str = setting(
        "RECOMMENDATIONS_TOPIC", str, "recommendations", "answers to requests"
    )
    model_updates_topic: str = setting("MODEL_UPDATES_TOPIC", str, "model-updates", "model lifecycle events")
    drift_alerts_topic: str = setting("DRIFT_ALERTS_TOPIC", str, "drift-alerts", "drift alerts")
    topic_partitions: int = setting("TOPIC_PARTITIONS", positive_int, "4", "partitions of the data topics")
    # Embedded stack.
    broker_port: int = setting("BROKER_PORT", _port, "0", "embedded broker port (0: a free one)")
    request_broker_port: int = setting(
        "REQUEST_BROKER_PORT", _port, "0", "embedded request broker port (0: free)"
    )
    objectstore_port: int = setting("OBJECTSTORE_PORT", _port, "0", "embedded S3 port (0: a free one)")
    modelserver_grpc_port: int = setting(
        "MODELSERVER_GRPC_PORT", _port, "0", "embedded model server gRPC port"
    )
    modelserver_rest_port: int = setting(
        "MODELSERVER_REST_PORT", _port, "0", "embedded model server REST port"
    )
    # Embedded model server request limits (deploy/modelserver/limits.py; TF Serving's values there).
    modelserver_max_grpc_message_bytes: int = setting(
        "MODELSERVER_MAX_GRPC_MESSAGE_BYTES",
        positive_int,
        "67108864",
        "largest gRPC message the model server receives or sends (TF Serving: 2 GiB)",
    )
    modelserver_max_batch: int = setting("MODELSERVER_MAX_BATCH", positive_int, "1000", "largest input batch")
    modelserver_max_string_bytes: int = setting(
        "MODELSERVER_MAX_STRING_BYTES",
        positive_int,
        "1048576",
        "largest string element of a model server input",
    )
    modelserver_max_rest_body_bytes: int = setting(
        "MODELSERVER_MAX_REST_BODY_BYTES",
        positive_int,
        "8388608",
        "largest REST request body (413 beyond, before it is read)",
    )
    modelserver_rest_timeout_s: float = setting(
        "MODELSERVER_REST_TIMEOUT_S",
        positive_float,
        "30",
        "time a REST request (or an idle kept-alive connection) may take before it is closed",
    )
    modelserver_rest_workers: int = setting(
        "MODELSERVER_REST_WORKERS", positive_int, "16", "REST worker threads"
    )
    modelserver_grpc_workers: int = setting(
        "MODELSERVER_GRPC_WORKERS", positive_int, "16", "gRPC worker threads"
    )
    stack_start_timeout_s: float = setting(
        "STACK_START_TIMEOUT_S", positive_float, "60", "health-check deadline"
    )
    # Kafka clients.
    broker_session_timeout_s: float = setting(
        "BROKER_SESSION_TIMEOUT_S", positive_float, "6", "group session timeout"
    )
    broker_rebalance_timeout_s: float = setting(
        "BROKER_REBALANCE_TIMEOUT_S", positive_float, "4", "rebalance timeout"
    )
    broker_heartbeat_s: float = setting("BROKER_HEARTBEAT_S", positive_float, "1", "group heartbeat interval")
    producer_linger_ms: int = setting("PRODUCER_LINGER_MS", _non_negative_int, "5", "producer batching delay")
    # Fetch waits, per role: the embedded broker (Tansu 0.6) holds every fetch until the wait runs out,
    # and each fetch of its S3 engine costs the object store, so only the request path, on a broker of
    # its own, waits briefly (the scorer's purchases fell behind at 100 ms: README, fetch waits);
    # Apache Kafka answers a fetch when records arrive (production keeps 500 for all).
    kafka_fetch_max_wait_ms: int = setting(
        "KAFKA_FETCH_MAX_WAIT_MS",
        positive_int,
        "500",
        "longest fetch wait of bulk and control consumers (ingest, updater, scheduler)",
    )
    scorer_fetch_max_wait_ms: int = setting(
        "SCORER_FETCH_MAX_WAIT_MS",
        positive_int,
        "500",
        "longest fetch wait of the scorer's purchases (shorter: fresher answers, but on the embedded"
        " stack the scorer falls behind the purchases while a retrain runs; README, fetch waits)",
    )
    kafka_request_fetch_max_wait_ms: int = setting(
        "KAFKA_REQUEST_FETCH_MAX_WAIT_MS",
        positive_int,
        "5",
        "longest fetch wait on the request path (the scorer's requests, a client's answers)",
    )
    requests_kafka_bootstrap_setting: str | None = setting(
        "REQUESTS_KAFKA_BOOTSTRAP",
        _optional,
        "",
        "bootstrap servers of the request and answer topics (default: KAFKA_BOOTSTRAP)",
    )
    producer_timeout_s: float = setting(
        "PRODUCER_TIMEOUT_S", positive_float, "30", "delivery confirmation deadline"
    )
    # Operational knobs of the stages.
    retrain_interval_s: float = setting(
        "RETRAIN_INTERVAL_S",
        _non_negative_float,
        "1800",
        "scheduled retrain period (0: only on drift alerts, e.g. when Kubeflow runs the schedule)",
    )
    retrain_cooldown_s: float = setting(
        "RETRAIN_COOLDOWN_S", positive_float, "300", "minimum gap of drift retrains"
    )
    retrain_window_s: float = setting(
        "RETRAIN_WINDOW_S",
        _non_negative_float,
        "0",
        "train on the events of the last this many seconds (0: all landed data)",
    )
    retrain_min_users: int = setting(
        "RETRAIN_MIN_USERS",
        positive_int,
        "50",
        "fewest held-out users a retrain needs to train and judge a model",
    )
    retrain_half_life_s: float = setting(
        "RETRAIN_HALF_LIFE_S",
        _non_negative_float,
        "1209600",
        "age at which a training example weighs half as much as the latest one (0: no decay)",
    )
    retrain_drift_share: float = setting(
        "RETRAIN_DRIFT_SHARE",
        _share,
        "0.5",
        "share of the training weight at least given to the purchases since the last drift alert's"
        " window start (0: no boost)",
    )
    retrain_recent_s: float = setting(
        "RETRAIN_RECENT_S",
        _non_negative_float,
        "86400",
        "the gate judges on the held-out purchases of the window's last this many seconds"
        " (0: the whole window)",
    )
    gate_tolerance: float = setting(
        "GATE_TOLERANCE",
        _non_negative_float,
        "0.01",
        "HR@10 a candidate may lose against the active model and still be published",
    )
    updater_load_timeout_s: float = setting(
        "UPDATER_LOAD_TIMEOUT_S",
        positive_float,
        "120",
        "how long a model server may take to report a version AVAILABLE",
    )
    updater_validate_timeout_s: float = setting(
        "UPDATER_VALIDATE_TIMEOUT_S",
        positive_float,
        "180",
        "how long validating a downloaded version may take",
    )
    updater_reconcile_s: float = setting(
        "UPDATER_RECONCILE_S",
        positive_float,
        "60",
        "how often the updater checks that the model servers serve the registry's versions",
    )
    ingest_flush_events: int = setting(
        "INGEST_FLUSH_EVENTS", positive_int, "5000", "events per Parquet object"
    )
    ingest_flush_s: float = setting("INGEST_FLUSH_S", positive_float, "10", "max age of a buffered batch")
    ingest_idle_flush_s: float = setting(
        "INGEST_IDLE_FLUSH_S",
        positive_float,
        "1",
        "flush a partition's batch once no record has arrived on it for this long (the end of a burst)",
    )
    event_max_future_s: float = setting(
        "EVENT_MAX_FUTURE_S",
        _non_negative_float,
        "86400",
        "an event time more than this far after its record was produced is dead-lettered",
    )
    metrics_host: str = setting("METRICS_HOST", str, "127.0.0.1", "address the services' /metrics listen on")
    ingest_metrics_port: int = setting(
        "INGEST_METRICS_PORT", _port, "9401", "ingest worker /metrics port (0: free)"
    )
    scorer_metrics_port: int = setting("SCORER_METRICS_PORT", _port, "9402", "scorer /metrics port (0: free)")
    updater_metrics_port: int = setting(
        "UPDATER_METRICS_PORT", _port, "9403", "updater /metrics port (0: free)"
    )
    scheduler_metrics_port: int = setting(
        "SCHEDULER_METRICS_PORT", _port, "9404", "scheduler /metrics port (0: free)"
    )
    scorer_batch_size: int = setting("SCORER_BATCH_SIZE", positive_int, "64", "most requests in one Predict")
    scorer_http_host: str = setting("SCORER_HTTP_HOST", str, "127.0.0.1", "address of the scorer's HTTP view")
    scorer_live_history: bool = setting(
        "SCORER_LIVE_HISTORY",
        _bool,
        "true",
        "send users' live purchases to the model (recommend_history); false: their history at training",
    )
    scorer_http_port: int = setting("SCORER_HTTP_PORT", _port, "9405", "scorer HTTP view port (0: free)")
    scorer_http_advertised_host: str | None = setting(
        "SCORER_HTTP_ADVERTISED_HOST",
        _optional,
        "",
        "address other scorer workers reach this one's HTTP view at (default: SCORER_HTTP_HOST)",
    )
    scorer_deadline_s: float = setting(
        "SCORER_DEADLINE_S",
        positive_float,
        "30",
        "a request not answered this long after it was produced gets an error answer",
    )
    scorer_predict_timeout_s: float = setting(
        "SCORER_PREDICT_TIMEOUT_S", positive_float, "5", "one Predict call"
    )
    scorer_history_items: int = setting(
        "SCORER_HISTORY_ITEMS", positive_int, "256", "latest purchases kept per user to exclude from answers"
    )
    scorer_prior_window: int = setting(
        "SCORER_PRIOR_WINDOW",
        _non_negative_int,
        "2000",
        "latest purchases whose item mix re-ranks the model's answers against its training mix"
        " (recommender.live_prior; 0: the model's ranking as it is)",
    )
    scorer_prior_candidates: int = setting(
        "SCORER_PRIOR_CANDIDATES",
        positive_int,
        "300",
        "items per user asked of the model and re-ranked by the live item mix (the model caps it at"
        " its catalogue)",
    )
    drift_horizon_s: float = setting(
        "DRIFT_HORIZON_S", positive_float, "3600", "hit window after a recommendation"
    )
    drift_check_s: float = setting("DRIFT_CHECK_S", positive_float, "5", "how often drift is computed")
    drift_window_events: int = setting(
        "DRIFT_WINDOW_EVENTS", positive_int, "2000", "purchases in the data window"
    )
    drift_min_events: int = setting(
        "DRIFT_MIN_EVENTS", positive_int, "500", "fewest purchases to judge data drift"
    )
    drift_min_outcomes: int = setting(
        "DRIFT_MIN_OUTCOMES", positive_int, "50", "fewest resolved recommendations to judge concept drift"
    )
    drift_psi_threshold: float = setting(
        "DRIFT_PSI_THRESHOLD", positive_float, "0.2", "item popularity PSI alert"
    )
    drift_unknown_item_threshold: float = setting(
        "DRIFT_UNKNOWN_ITEM_THRESHOLD",
        positive_float,
        "0.2",
        "share of purchases of products the model never saw",
    )
    drift_unknown_user_threshold: float = setting(
        "DRIFT_UNKNOWN_USER_THRESHOLD",
        positive_float,
        "0.5",
        "share of requests answered by the popularity fallback",
    )
    drift_ph_delta: float = setting("DRIFT_PH_DELTA", positive_float, "0.05", "Page-Hinkley tolerated fall")
    drift_ph_threshold: float = setting(
        "DRIFT_PH_THRESHOLD", positive_float, "15", "Page-Hinkley alarm level"
    )
    # Concept drift's change detector (recommender/detectors.py, river's tests).
    drift_detector: str = setting(
        "DRIFT_DETECTOR",
        _one_of(DRIFT_DETECTORS),
        "page-hinkley",
        "change detector of the online hit rate: page-hinkley (DRIFT_PH_*) or adwin (DRIFT_ADWIN_DELTA)",
    )
    drift_adwin_delta: float = setting(
        "DRIFT_ADWIN_DELTA",
        _probability,
        "0.002",
        "ADWIN's significance: a smaller one cuts its window less often",
    )
    drift_alert_cooldown_s: float = setting(
        "DRIFT_ALERT_COOLDOWN_S", _non_negative_float, "300", "least time between two alerts of one statistic"
    )
    drift_alert_repeat_s: float = setting(
        "DRIFT_ALERT_REPEAT_S",
        _non_negative_float,
        "1800",
        "an alert still raised fires again after this long (the last retrain did not cure it)",
    )
    # Scale out (issue 15): workers of one consumer group per service, each its own Faust data dir.
    ingest_workers: int = setting("INGEST_WORKERS", positive_int, "1", "ingest workers `recstream up` starts")
    scorer_workers: int = setting("SCORER_WORKERS", positive_int, "1", "scorer workers `recstream up` starts")
    worker_name: str | None = setting(
        "WORKER_NAME",
        _worker_name,
        "",
        "this worker among several of one service on one machine: its own Faust data dir",
    )
    scorer_table_store: str = setting(
        "SCORER_TABLE_STORE",
        _table_store,
        "rocksdb://",
        "Faust store of the scorer's table: rocksdb:// (local state under RECSTREAM_HOME) or memory://",
    )
    # The timeline `recstream up` records for `recstream report` (deploy/console/timeline.py).
    timeline_interval_s: float = setting(
        "TIMELINE_INTERVAL_S", positive_float, "5", "seconds between two samples"
    )
    timeline_max_bytes: int = setting(
        "TIMELINE_MAX_BYTES",
        positive_int,
        "2000000",
        "size past which the timeline keeps every other sample (events are kept)",
    )

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


FIELDS: tuple[Field, ...] = tuple(
    Field(f.metadata[SETTING][0], f.name, *f.metadata[SETTING][1:])
    for f in dataclasses.fields(Settings)
    if SETTING in f.metadata
)

ENV_NAMES: frozenset[str] = frozenset(f.env for f in FIELDS) | {"RECSTREAM_HOME"}


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


def default_settings(home: Path | None = None) -> Settings:
    """The declared defaults alone (no environment, no stack.env): for tests and tools that need a
    per-stage config without a deployment (e.g. `DriftConfig.from_settings(default_settings())`)."""
    return load_settings({"RECSTREAM_HOME": str(home)} if home else None, environ={}, use_stack_env=False)


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
