"""How far ingest has landed the `transactions` topic: its group's committed offsets.

Ingest commits a record's offset only once its object is written (ingest.worker), so a
committed offset at the topic's end means every purchase sent so far can be read from the
store. A drift retrain waits for that before it reads its window: the purchases that raised
the alert must be in the data it learns from.
"""

from __future__ import annotations

import logging
import threading
import time

from stream.settings import Settings

log = logging.getLogger(__name__)

INGEST_GROUP = "recstream-ingest"  # the Faust app id of `recstream ingest` (stream.faust_app)


def wait_until_landed(
    settings: Settings, timeout_s: float, poll_s: float = 0.5, stop: threading.Event | None = None
) -> dict[int, int] | None:
    """Wait until ingest has committed every `transactions` record sent before this call.

    Returns the end offset reached per partition (as the broker's ListOffsets gave it at the
    call: Tansu's can lag behind the log, and then the wait ends early). None (logged) when
    `timeout_s` passed first, e.g. with ingest down, or when `stop` is set: the caller goes on
    with what has landed.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.require("kafka_bootstrap"),
        group_id=INGEST_GROUP,  # only reads the group's offsets: never subscribes nor joins
        enable_auto_commit=False,
    )
    try:
        topic = settings.transactions_topic
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        target = consumer.end_offsets(partitions) if partitions else {}
        deadline = time.monotonic() + timeout_s
        while True:
            committed = {tp: consumer.committed(tp) or 0 for tp in target}
            behind = {tp.partition: end - committed[tp] for tp, end in target.items() if committed[tp] < end}
            if not behind:
                return {tp.partition: end for tp, end in target.items()}
            if stop is not None and stop.is_set():
                return None
            if time.monotonic() >= deadline:
                log.warning("ingest is still behind after %gs (records by partition: %s)", timeout_s, behind)
                return None
            time.sleep(poll_s)
    finally:
        consumer.close()
