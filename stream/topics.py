"""Topic administration: create the contract's topics idempotently, check the broker answers."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from recstream.stream.consumers import kafka_consumer
from recstream.stream.net import split_hostport, tcp_reachable
from recstream.stream.settings import Settings

log = logging.getLogger(__name__)


def broker_metadata_ok(bootstrap: str, timeout_s: float = 3.0) -> bool:
    """True when the broker answers a metadata request (a TCP accept alone is not enough)."""
    if not all(tcp_reachable(*split_hostport(server)) for server in bootstrap.split(",")):
        return False  # checked first: kafka-python logs every refused connection as an error
    try:
        consumer = kafka_consumer(
            bootstrap=bootstrap,
            request_timeout_ms=int(timeout_s * 1000) + 1000,
            api_version_auto_timeout_ms=int(timeout_s * 1000),
            connections_max_idle_ms=int(timeout_s * 1000) + 2000,
        )
    except KafkaError:
        return False
    try:
        consumer.topics()
        return True
    except KafkaError:
        return False
    finally:
        consumer.close()


def existing_topics(bootstrap: str) -> set[str]:
    # KafkaAdminClient.list_topics() cannot parse Tansu's ACL bits; the consumer's view is enough.
    consumer = kafka_consumer(bootstrap=bootstrap)
    try:
        return set(consumer.topics())
    finally:
        consumer.close()


def ensure_topics(settings: Settings) -> list[str]:
    """Create the missing topics with the configured partition counts; returns the ones created.

    The request and answer topics go to REQUESTS_KAFKA_BOOTSTRAP when that is another broker."""
    main = settings.require("kafka_bootstrap")
    wanted = settings.topics()
    placed: dict[str, dict[str, int]] = {main: dict(wanted)}
    requests = settings.requests_kafka_bootstrap
    if requests != main:
        ephemeral = (settings.requests_topic, settings.recommendations_topic)
        placed[requests] = {name: placed[main].pop(name) for name in ephemeral}
    created = []
    for bootstrap, topics in placed.items():
        created += _create_missing(bootstrap, topics)
    return created


def _create_missing(bootstrap: str, wanted: dict[str, int]) -> list[str]:
    missing = [name for name in wanted if name not in existing_topics(bootstrap)]
    if not missing:
        return []
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="recstream-admin")
    created = []
    try:
        for name in missing:
            try:
                admin.create_topics([NewTopic(name, num_partitions=wanted[name], replication_factor=1)])
            except TopicAlreadyExistsError:
                continue
            created.append(name)
            log.info("created topic %s (%d partitions) on %s", name, wanted[name], bootstrap)
    finally:
        admin.close()
    return created
