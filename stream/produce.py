"""`recstream produce`: replay a file of purchases onto the transactions topic."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from recstream.stream.producer import EventProducer
from recstream.stream.sources import Rejected, read_events

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes of the file consumed, events sent)


@dataclass
class ProduceReport:
    sent: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def produce_file(
    producer: EventProducer,
    path: Path,
    *,
    rate: float | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
) -> ProduceReport:
    """Send every valid event of `path` (at most `limit`, at most `rate` per second), confirmed.

    Returns only after the broker acknowledged every record; invalid rows are collected
    with their line numbers, never sent.
    """
    report = ProduceReport()
    consumed = 0
    start = time.monotonic()
    for consumed, item in read_events(path):
        if isinstance(item, Rejected):
            report.rejected.append(item)
            continue
        if limit is not None and report.sent >= limit:
            break
        if rate:
            ahead = start + report.sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        producer.send_transaction(item)
        report.sent += 1
        if progress and report.sent % 500 == 0:
            progress(consumed, report.sent)
    producer.flush()
    report.seconds = time.monotonic() - start
    if progress:
        progress(consumed, report.sent)
    log.info(
        "sent %d events in %.1fs (%.0f/s), %d rejected",
        report.sent,
        report.seconds,
        report.rate,
        len(report.rejected),
    )
    return report
