"""The ingest worker's commit and failed flush: what keeps a batch's records from being skipped.

Acks are off for `transactions`, so a flush commits its own offset; a commit refused while the
partition is still ours is made again, and a flush that fails stops the worker before any later
batch of its partition could commit past it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import namedtuple
from types import SimpleNamespace

import pytest

from recstream.ingest import worker as ingest_worker
from recstream.ingest.worker import IngestWorker

TP = namedtuple("TP", "topic partition")("transactions", 1)


class FaustConsumer:
    """Faust's `_commit_offsets`: False while a rebalance refuses commits or once the partition
    is no longer assigned."""

    def __init__(self, refused: int, assigned: bool = True) -> None:
        self.refused, self.assigned = refused, assigned
        self.committed: dict = {}
        self.calls = 0

    async def _commit_offsets(self, offsets: dict) -> bool:
        self.calls += 1
        if self.refused or not self.assigned:
            self.refused = max(0, self.refused - 1)
            return False
        self.committed.update(offsets)
        return True

    def assignment(self) -> set:
        return {TP} if self.assigned else set()


def commit(consumer: FaustConsumer, next_offset: int) -> None:
    worker = SimpleNamespace(app=SimpleNamespace(consumer=consumer))
    asyncio.run(IngestWorker._commit(worker, TP, next_offset))  # type: ignore[arg-type]


def test_a_commit_refused_while_the_partition_is_ours_is_made_again() -> None:
    consumer = FaustConsumer(refused=2)
    commit(consumer, 2000)
    assert consumer.committed == {TP: 2000} and consumer.calls == 3


def test_a_partition_that_moved_is_left_to_its_new_owner() -> None:
    consumer = FaustConsumer(refused=0, assigned=False)
    commit(consumer, 2000)
    assert consumer.committed == {} and consumer.calls == 1


def test_a_commit_never_accepted_fails_the_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_worker, "COMMIT_ATTEMPTS", 3)
    with pytest.raises(RuntimeError, match="not committed"):
        commit(FaustConsumer(refused=10), 2000)


def test_a_failed_flush_stops_the_worker_and_a_good_one_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(ingest_worker.os, "_exit", exits.append)

    async def flush(fails: bool) -> None:
        if fails:
            raise RuntimeError("the DLQ refused a dead letter")

    async def run(fails: bool) -> None:
        task = asyncio.create_task(flush(fails))
        task.add_done_callback(ingest_worker._stop_on_failure)
        with contextlib.suppress(RuntimeError):
            await task
        await asyncio.sleep(0)  # done callbacks run on the next loop turn

    asyncio.run(run(fails=False))
    assert exits == []
    asyncio.run(run(fails=True))
    assert exits == [ingest_worker.FLUSH_FAILED_EXIT]
