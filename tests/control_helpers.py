"""The control topics in integration tests: `model-updates` read back as it arrives, and a retrain
scheduler consuming `drift-alerts` on a consumer thread (its retrain only records the call)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from recstream.retrain.scheduler import RetrainScheduler, consume_alerts
from recstream.stream.contracts.model_events import ModelEvent, parse_model_event
from recstream.stream.contracts.records import InvalidMessage
from recstream.stream.settings import Settings

WAIT_S = 90.0


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Polls `predicate` until it returns something true (returned), or fails the test naming `what`."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return result


class ModelUpdates:
    """Every record of the test's model-updates topic (one partition), read as it arrives.

    A record that is not a model event fails the read, unless `skip_invalid` (a poison test puts
    such records there on purpose)."""

    def __init__(self, settings: Settings, *, skip_invalid: bool = False) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
        partition = TopicPartition(settings.model_updates_topic, 0)
        self.consumer.assign([partition])
        self.consumer.seek_to_beginning(partition)
        self.skip_invalid = skip_invalid
        self.seen: list[ModelEvent] = []

    def read(self) -> None:
        for records in self.consumer.poll(timeout_ms=200).values():
            for record in records:
                with contextlib.suppress(*((InvalidMessage,) if self.skip_invalid else ())):
                    self.seen.append(parse_model_event(record.value))

    def find(self, event: str, version: int) -> ModelEvent | None:
        self.read()
        return next((e for e in self.seen if (e.event, e.version) == (event, version)), None)

    def wait(self, event: str, version: int) -> ModelEvent:
        return wait_until(lambda: self.find(event, version), f"{event} {version} on model-updates")

    def settle(self) -> list[tuple[str, int]]:
        """Everything on the topic once nothing new arrived for a while."""
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 3:
            before = len(self.seen)
            self.read()
            if len(self.seen) != before:
                quiet_since = time.monotonic()
        return [(e.event, e.version) for e in self.seen]

    def close(self) -> None:
        self.consumer.close()


@dataclass
class AlertedScheduler:
    scheduler: RetrainScheduler
    calls: list[float]  # when each retrain ran
    consumer: threading.Thread  # consume_alerts


@contextlib.contextmanager
def scheduler_on_alerts(settings: Settings, *, cooldown_s: float) -> Iterator[AlertedScheduler]:
    """A started scheduler (hourly interval) fed by `consume_alerts` on `settings.drift_alerts_topic`;
    stopped on exit, its consumer thread joined."""
    calls: list[float] = []
    scheduler = RetrainScheduler(lambda: calls.append(time.time()), interval_s=3600, cooldown_s=cooldown_s)
    scheduler.start()
    stop = threading.Event()
    consumer = threading.Thread(target=consume_alerts, args=(settings, scheduler, stop), daemon=True)
    consumer.start()
    try:
        yield AlertedScheduler(scheduler, calls, consumer)
    finally:
        stop.set()
        consumer.join(timeout=10)
        scheduler.shutdown()
    assert not consumer.is_alive()
