"""The request path commits a batch's offsets only once it and every batch fetched before it are delivered."""

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


def test_a_later_batch_delivered_first_is_not_committed_before_the_earlier_one() -> None:
    async def scenario() -> list[dict[str, int]]:
        loop = asyncio.get_running_loop()
        path = RequestPath(load_settings({}, environ={}), owned=set, serve=None)  # type: ignore[arg-type]
        commits = Commits()
        queue: asyncio.Queue = asyncio.Queue()
        first, second = loop.create_future(), loop.create_future()
        committer = asyncio.ensure_future(path._commit_in_order(commits, queue))
        await queue.put(([first], {"p0": 10}))
        await queue.put(([second], {"p0": 20}))
        second.set_result(None)
        await asyncio.sleep(0.01)
        assert commits.made == []  # the first batch is not delivered yet
        first.set_result(None)
        await asyncio.wait_for(queue.join(), 1)
        committer.cancel()
        return commits.made

    made = asyncio.run(scenario())
    assert made[-1] == {"p0": 20}
    assert all(offsets["p0"] in (10, 20) for offsets in made)
    assert len(made) <= 2


def test_a_failed_delivery_ends_the_committer_without_committing() -> None:
    async def scenario() -> tuple[list[dict[str, int]], BaseException | None]:
        loop = asyncio.get_running_loop()
        path = RequestPath(load_settings({}, environ={}), owned=set, serve=None)  # type: ignore[arg-type]
        commits = Commits()
        queue: asyncio.Queue = asyncio.Queue()
        failed = loop.create_future()
        failed.set_exception(ConnectionError("request broker gone"))
        committer = asyncio.ensure_future(path._commit_in_order(commits, queue))
        await queue.put(([failed], {"p0": 5}))
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
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            queue.put_nowait(([done], {"p0": i + 1, f"p{i + 1}": 1}))
        committer = asyncio.ensure_future(path._commit_in_order(commits, queue))
        await asyncio.wait_for(queue.join(), 1)
        committer.cancel()
        return commits.made

    made = asyncio.run(scenario())
    assert len(made) == 1
    assert made[0]["p0"] == waiting
    assert {f"p{i + 1}" for i in range(waiting)} <= made[0].keys()
