"""The project's Kafka consumers, built in one place: one factory per client.

kafka-python (`kafka_consumer`) serves the blocking programs (updater, scheduler, the lake's
landing barrier, topic checks, the recommendation client); aiokafka (`aio_consumer`) the
asyncio ones (scorer, request path, ingest's DLQ scan, Faust's high-watermark fetch). Both apply
the settings every consumer of the project shares:
- offsets are never auto-committed: each program commits what it has processed (or nothing);
- the bootstrap servers are KAFKA_BOOTSTRAP unless the caller names others (the request
  broker, or an address given to a check);
- a consumer that joins a group (a group id and subscribed topics) gets the broker's session
  timeout and heartbeat (BROKER_SESSION_TIMEOUT_S, BROKER_HEARTBEAT_S);
- the fetch wait, client id, group, and where to start without a committed offset are passed
  only where the caller sets them (the client's defaults otherwise), because each role waits
  differently (KAFKA_FETCH_MAX_WAIT_MS, KAFKA_REQUEST_FETCH_MAX_WAIT_MS, ...).
Anything else a site needs (poll limits, timeouts) passes through as the client's own option.
The clients are imported when a consumer is built, so importing this module costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from recstream.stream.settings import Settings, SettingsError

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer
    from kafka import KafkaConsumer

OffsetReset = Literal["earliest", "latest"]


def options(
    topics: tuple[str, ...],
    settings: Settings | None,
    bootstrap: str | list[str] | None,
    group_id: str | None,
    client_id: str | None,
    offset_reset: OffsetReset | None,
    fetch_max_wait_ms: int | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The keyword arguments both clients take, common settings applied (pure: tested alone)."""
    if bootstrap is None:
        if settings is None:
            raise SettingsError("a Kafka consumer needs bootstrap servers or settings")
        bootstrap = settings.require("kafka_bootstrap")
    out: dict[str, Any] = {"bootstrap_servers": bootstrap, "enable_auto_commit": False}
    if group_id is not None:
        out["group_id"] = group_id
        if topics and settings is not None:  # joins the group: the broker's liveness settings
            out["session_timeout_ms"] = int(settings.broker_session_timeout_s * 1000)
            out["heartbeat_interval_ms"] = int(settings.broker_heartbeat_s * 1000)
    if client_id is not None:
        out["client_id"] = client_id
    if offset_reset is not None:
        out["auto_offset_reset"] = offset_reset
    if fetch_max_wait_ms is not None:
        out["fetch_max_wait_ms"] = fetch_max_wait_ms
    return out | extra


def kafka_consumer(
    *topics: str,
    settings: Settings | None = None,
    bootstrap: str | None = None,
    group_id: str | None = None,
    client_id: str | None = None,
    offset_reset: OffsetReset | None = None,
    fetch_max_wait_ms: int | None = None,
    **extra: Any,
) -> KafkaConsumer:
    """A kafka-python consumer (subscribed to `topics` if any), common settings applied."""
    from kafka import KafkaConsumer

    kwargs = options(topics, settings, bootstrap, group_id, client_id, offset_reset, fetch_max_wait_ms, extra)
    return KafkaConsumer(*topics, **kwargs)


def aio_consumer(
    *topics: str,
    settings: Settings | None = None,
    bootstrap: str | list[str] | None = None,
    group_id: str | None = None,
    client_id: str | None = None,
    offset_reset: OffsetReset | None = None,
    fetch_max_wait_ms: int | None = None,
    **extra: Any,
) -> AIOKafkaConsumer:
    """An aiokafka consumer (subscribed to `topics` if any; not started), common settings applied."""
    from aiokafka import AIOKafkaConsumer

    kwargs = options(topics, settings, bootstrap, group_id, client_id, offset_reset, fetch_max_wait_ms, extra)
    return AIOKafkaConsumer(*topics, **kwargs)
