"""The worker's commit against Faust's: a commit that lost to a concurrent one is made again."""

from __future__ import annotations

import asyncio
from collections import namedtuple
from types import SimpleNamespace

from recstream.ingest.worker import IngestWorker

TP = namedtuple("TP", "topic partition")("transactions", 1)


class FaustConsumer:
    """Faust's commit rules: while another commit runs, `commit()` waits for it and returns False
    without committing; with nothing new acked it returns False too."""

    def __init__(self, busy: int) -> None:
        self.busy = busy  # calls that meet a concurrent commit (started before our acks)
        self.acked = 0
        self._committed_offset: dict = {}
        self.calls = 0

    async def commit(self, topics: set) -> bool:
        self.calls += 1
        if self.busy:
            self.busy -= 1
            return False
        if self.acked > (self._committed_offset.get(TP) or 0):
            self._committed_offset[TP] = self.acked
            return True
        return False


def commit(consumer: FaustConsumer, next_offset: int) -> None:
    worker = SimpleNamespace(app=SimpleNamespace(consumer=consumer))
    asyncio.run(IngestWorker._commit(worker, TP, next_offset))


def test_a_commit_that_met_a_concurrent_one_is_made_again() -> None:
    consumer = FaustConsumer(busy=2)
    consumer.acked = 2000
    commit(consumer, 2000)
    assert consumer._committed_offset[TP] == 2000 and consumer.calls == 3


def test_offsets_already_committed_by_the_concurrent_commit_end_the_retries() -> None:
    consumer = FaustConsumer(busy=0)
    consumer.acked = 2000
    consumer._committed_offset[TP] = 2000  # the periodic commit took our acks along
    commit(consumer, 2000)
    assert consumer.calls == 1
