"""The live item mix and the prior shift it applies to the model's lists (recommender.live_prior)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from recstream.recommender import live_prior
from recstream.recommender.answers import Ranked
from recstream.recommender.live_prior import LivePrior, shift


def test_docstring_examples() -> None:
    result = doctest.testmod(live_prior)
    assert result.attempted > 0 and result.failed == 0


def _ranked(items: list[list[str]], scores: list[list[float]]) -> Ranked:
    return Ranked(np.array(items, dtype=object), np.array(scores), 3, np.zeros(len(items), dtype=bool))


def test_only_the_latest_window_counts() -> None:
    prior = LivePrior(window=3)
    for item in ["a", "a", "a", "b", "b"]:
        prior.add(item)
    assert len(prior) == 3
    # The window holds a, b, b: observed 1 and 2 against an expected 3 x 0.5 each, plus one.
    ratios = prior.ratios(np.array(["a", b"b", "c"], dtype=object), {"a": 0.5, "b": 0.5})
    np.testing.assert_allclose(ratios, [2 / 2.5, 3 / 2.5, 1.0])


def test_a_window_holds_at_least_one_purchase() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LivePrior(window=0)


def test_a_launch_of_products_the_version_never_saw_leaves_the_known_ones_as_they_sell() -> None:
    prior = LivePrior(window=100)
    for item in ["a"] * 10 + ["b"] * 10 + [f"new-{i}" for i in range(80)]:
        prior.add(item)
    # a and b sell as in training among the purchases of products the version knows.
    ratios = prior.ratios(np.array(["a", "b"], dtype=object), {"a": 0.5, "b": 0.5})
    np.testing.assert_allclose(ratios, [1.0, 1.0])


def test_an_empty_window_changes_nothing() -> None:
    ranked = _ranked([["a", "b"]], [[0.7, 0.3]])
    assert shift(ranked, LivePrior(window=10), {"a": 0.9, "b": 0.1}) is ranked


def test_items_selling_as_in_training_keep_their_order_and_a_trending_one_climbs() -> None:
    share = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}
    prior = LivePrior(window=1000)
    for item, count in share.items():
        for _ in range(int(count * 1000)):
            prior.add(item)
    ranked = _ranked(
        [["a", "b", "c", "d"], ["d", "c", "b", "a"]], [[0.4, 0.3, 0.2, 0.1], [0.5, 0.3, 0.15, 0.05]]
    )
    same = shift(ranked, prior, share)
    assert same.items.tolist() == ranked.items.tolist()
    np.testing.assert_allclose(same.scores, ranked.scores / ranked.scores.sum(axis=1, keepdims=True))
    for _ in range(500):  # d now sells six times its share; the 400 a's have left the window
        prior.add("d")
    moved = shift(ranked, prior, share)
    assert moved.items[0][0] == "d" and moved.items[0][-1] == "a" and moved.items[1][0] == "d"
    np.testing.assert_allclose(moved.scores.sum(axis=1), 1.0)
    assert (np.diff(moved.scores, axis=1) <= 0).all() and moved.version == 3


def test_what_the_model_marked_as_bought_stays_last_in_its_order() -> None:
    prior = LivePrior(window=10)
    for _ in range(10):
        prior.add("x")  # x sells; y and z were bought by this user (the model's -1)
    ranked = _ranked([["w", "y", "z", "x"]], [[0.6, -1.0, -1.0, 0.4]])
    shifted = shift(ranked, prior, {"w": 0.5, "x": 0.5})
    assert shifted.items[0].tolist() == ["x", "w", "y", "z"]
    assert shifted.scores[0][2:].tolist() == [-1.0, -1.0]


def test_a_row_with_nothing_to_recommend_keeps_the_models_order() -> None:
    prior = LivePrior(window=10)
    prior.add("y")
    ranked = _ranked([["y", "z"], ["z", "y"]], [[-1.0, -1.0], [0.5, 0.5]])
    shifted = shift(ranked, prior, {"y": 0.5, "z": 0.5})
    assert shifted.items.tolist() == [["y", "z"], ["y", "z"]]
    assert shifted.scores[0].tolist() == [-1.0, -1.0] and shifted.fallback.tolist() == [False, False]
