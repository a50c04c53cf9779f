"""The request path commits a batch's offsets only once it and every batch fetched before it are
answered and delivered (batches are answered concurrently: a later one may finish first)."""

from __future__ import annotations

import asyncio

import pytest

from recstream.recommender.request_path import RequestPath
from recstream.stream.settings import load_settings


class Commits:
    """Records the offsets committed (the consumer's only part the committer uses)."""

    def __init__(self) -> None:
        self.made: list[dict[str, int]] = []

    async def commit(self, offsets: dict[str, int]) -> None:
        self.made.append(dict(offsets))


def answered(*deliveries: asyncio.Future[None]) -> asyncio.Future[list[asyncio.Future[None]]]:
    """A batch whose Predict is done: its answers' delivery futures."""
    future: asyncio.Future[list[asyncio.Future[None]]] = asyncio.get_running_loop().create_future()
    future.set_result(list(deliveries))
    return future


def delivered() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


@pytest.mark.parametrize("pending", ["predict", "delivery"])
def test_a_later_batch_done_first_is_not_committed_before_the_earlier_one(pending: str) -> None:
    async def scenario() -> list[dict[str, int]]:
        loop = asyncio.get_running_loop()
        path = RequestPath(load_settings({}, environ={}), owned=set, serve=None)  # type: ignore[arg-type]
        commits = Commits()
        queue: asyncio.Queue = asyncio.Queue()
        delivery = loop.create_future()
        # The first batch's Predict is still running, or its answers are not delivered yet.
        first = loop.create_future() if pending == "predict" else answered(delivery)
        committer = asyncio.ensure_future(path._commit_in_order(commits, queue))
        await queue.put((first, {"p0": 10}))
        await queue.put((answered(delivered()), {"p0": 20}))
        await asyncio.sleep(0.01)
        assert commits.made == []
        if pending == "predict":
            first.set_result([delivered()])
        else:
            delivery.set_result(None)
        await asyncio.wait_for(queue.join(), 1)
        committer.cancel()
        return commits.made

    made = asyncio.run(scenario())
    assert made[-1] == {"p0": 20}
    assert all(offsets["p0"] in (10, 20) for offsets in made)
    assert len(made) <= 2


@pytest.mark.parametrize("failing", ["predict", "delivery"])
def test_a_failed_batch_ends_the_committer_without_committing(failing: str) -> None:
    async def scenario() -> tuple[list[dict[str, int]], BaseException | None]:
        loop = asyncio.get_running_loop()
        path = RequestPath(load_settings({}, environ={}), owned=set, serve=None)  # type: ignore[arg-type]
        commits = Commits()
        queue: asyncio.Queue = asyncio.Queue()
        failed = loop.create_future()
        failed.set_exception(ConnectionError("request broker gone"))
        committer = asyncio.ensure_future(path._commit_in_order(commits, queue))
        await queue.put((failed if failing == "predict" else answered(failed), {"p0": 5}))
        await asyncio.wait([committer], timeout=1)
        return commits.made, committer.exception()

    made, error = asyncio.run(scenario())
    assert made == []
    assert isinstance(error, ConnectionError)


@pytest.mark.parametrize("waiting", [1, 3])
def test_batches_waiting_when_the_committer_wakes_go_in_one_commit(waiting: int) -> None:
    async def scenario() -> list[dict[str, int]]:
        path = RequestPath(load_settings({}, environ={}), owned=set, serve=None)  # type: ignore[arg-type]
        commits = Commits()
        queue: asyncio.Queue = asyncio.Queue()
        for i in range(waiting):
            queue.put_nowait((answered(delivered()), {"p0": i + 1, f"p{i + 1}": 1}))
        committer = asyncio.ensure_future(path._commit_in_order(commits, queue))
        await asyncio.wait_for(queue.join(), 1)
        committer.cancel()
        return commits.made

    made = asyncio.run(scenario())
    assert len(made) == 1
    assert made[0]["p0"] == waiting
    assert {f"p{i + 1}" for i in range(waiting)} <= made[0].keys()


class Record:
    def __init__(self, offset: int, user: str) -> None:
        self.offset, self.value, self.timestamp = offset, user.encode(), 0


class Consumer(Commits):
    """Hands out the given fetches, then nothing."""

    def __init__(self, fetches: list[dict[str, list[Record]]]) -> None:
        super().__init__()
        self.fetches = fetches

    def assign(self, partitions: object) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[str, list[Record]]:
        if self.fetches:
            return self.fetches.pop(0)
        await asyncio.sleep(timeout_ms / 1000)
        return {}


class Producer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sent.append(key)
        return delivered()


def test_a_slow_predict_does_not_hold_the_next_batch_and_offsets_wait_for_it() -> None:
    async def scenario() -> None:
        slow = asyncio.Event()

        async def serve(messages: list[tuple[bytes, float]]) -> list[tuple[str, dict[str, object]]]:
            users = [value.decode() for value, _ in messages]
            if "slow" in users:
                await slow.wait()
            return [(user, {"request_id": user}) for user in users]

        path = RequestPath(load_settings({}, environ={}), owned=lambda: {0}, serve=serve)  # type: ignore[arg-type]
        consumer = Consumer([{"p0": [Record(0, "slow")]}, {"p0": [Record(1, "fast")]}])
        producer = Producer()
        answering = asyncio.ensure_future(path._answer(consumer, producer))
        try:
            for _ in range(100):
                if producer.sent:
                    break
                await asyncio.sleep(0.01)
            assert producer.sent == [b"fast"]  # answered while the first batch's Predict runs
            assert consumer.made == []  # but not committed before it
            slow.set()
            for _ in range(100):
                if consumer.made:
                    break
                await asyncio.sleep(0.01)
            assert sorted(producer.sent) == [b"fast", b"slow"]
            assert consumer.made[-1] == {"p0": 2}
        finally:
            answering.cancel()
            await asyncio.gather(answering, return_exceptions=True)

    asyncio.run(scenario())
