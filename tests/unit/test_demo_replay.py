"""The demo's replay of the seed: baskets spread over time, each customer's purchases in order."""

from __future__ import annotations

import doctest
from collections import Counter
from pathlib import Path

import pytest

from recstream.deploy.console import demo
from recstream.deploy.console.demo import seed_baskets, spread_baskets
from recstream.stream.contracts.records import Transaction
from recstream.stream.sources import Rejected, read_events


@pytest.fixture(scope="module")
def baskets(seed_file: Path) -> list[list[Transaction]]:
    return list(seed_baskets(seed_file))


def test_the_docstring_examples_run() -> None:
    result = doctest.testmod(demo)
    assert result.attempted >= 1 and result.failed == 0


def _file_position(event: Transaction) -> tuple[int, int]:
    """(line, product index) from the seed's event ids, `transactions.csv:<line>:<index>`."""
    _, line, index = event.event_id.rsplit(":", 2)
    return int(line), int(index)


def test_a_row_is_a_basket(seed_file: Path, baskets: list[list[Transaction]]) -> None:
    assert len(baskets) == 62_483
    assert all(len({_file_position(e)[0] for e in basket}) == 1 for basket in baskets)
    events = sum(1 for _, e in read_events(seed_file) if not isinstance(e, Rejected))
    assert sum(map(len, baskets)) == events


def test_every_purchase_once_each_customer_in_file_order_spread_apart(
    baskets: list[list[Transaction]],
) -> None:
    spread = 800
    sent = list(spread_baskets(baskets, spread))
    assert Counter(e.event_id for e in sent) == Counter(e.event_id for b in baskets for e in b)
    last: dict[str, int] = {}
    positions: dict[str, list[tuple[int, int]]] = {}
    gaps = []
    for index, event in enumerate(sent):
        if event.user_id in last:
            gaps.append((index, index - last[event.user_id]))
        last[event.user_id] = index
        positions.setdefault(event.user_id, []).append(_file_position(event))
    assert all(p == sorted(p) for p in positions.values())
    # While `spread` baskets are open (all but the file's tail), a customer's purchases are that far apart.
    tail = len(sent) - 10 * spread
    assert min(gap for index, gap in gaps if index < tail) == spread


def test_a_spread_below_one_is_refused(baskets: list[list[Transaction]]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        next(spread_baskets(baskets, 0))
