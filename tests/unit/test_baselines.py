"""The sequence-aware baselines and the order-heavy generated log, on tiny data (pure numpy)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.ordered_log import ordered_log
from recstream.retrain.baselines import (
    EASE,
    GRUNext,
    SessionKNN,
    Transition,
    evaluate_baselines,
    recent_items,
)
from recstream.retrain.dataset import build_interactions, temporal_holdout
from recstream.retrain.evaluate import evaluation_set


def frame(sequences: dict[str, list[str]]) -> pd.DataFrame:
    rows = [(user, item) for user, items in sequences.items() for item in items]
    out = pd.DataFrame(rows, columns=["user_id", "item_id"])
    return out.assign(ts=np.arange(len(out), dtype=float), offset=np.arange(len(out)))


def test_recent_items_are_distinct_most_recent_first_and_padded() -> None:
    train = build_interactions(frame({"u": ["a", "b", "a", "c", "c"], "v": ["b"]}))
    index = train.item_vocab.index
    recent = recent_items(train, np.array([0, 1]), 4)
    assert recent.tolist() == [[index("c"), index("a"), index("b"), -1], [index("b"), -1, -1, -1]]


def test_transition_weighs_the_last_items_by_recency() -> None:
    # x is followed by y, z by w; a user who bought z then x is scored y (last) above w (one step back).
    train = build_interactions(
        frame({"1": ["x", "y"], "2": ["x", "y"], "3": ["z", "w"], "4": ["z", "x"], "5": ["z", "x", "x"]})
    )
    model = Transition(window=3, decay=0.7).fit(train)
    index = train.item_vocab.index
    np.testing.assert_allclose(model.transitions[index("x"), index("y")], 2 / 2)  # x -> x is collapsed
    scores = model.scores(np.array([train.users.index("5")]))[0]
    assert scores[index("y")] == 1.0
    assert scores[index("w")] == 0.7 * (1 / 3)  # z: -> w once, -> x twice (of 3 transitions)


def test_session_knn_recommends_what_similar_histories_bought_but_not_from_oneself() -> None:
    train = build_interactions(
        frame({"me": ["a", "b"], "twin": ["a", "b", "c"], "other": ["d", "e"], "solo": ["f"]})
    )
    scores = SessionKNN(neighbours=1).fit(train).scores(np.array([train.users.index("me")]))[0]
    index = train.item_vocab.index
    assert scores.argmax() in {index("a"), index("b"), index("c")} and scores[index("c")] > 0
    assert scores[index("d")] == scores[index("f")] == 0.0


def test_gru_inputs_are_oldest_first_padded_in_front() -> None:
    rows = np.array([[3, 2, 1, 0], [5, 0, 0, 0]], dtype=np.int32)  # most recent first, 0 pads
    assert GRUNext._oldest_first(rows).tolist() == [[0, 1, 2, 3], [0, 0, 0, 5]]


def test_the_ordered_log_rewards_order_and_a_shuffled_one_does_not() -> None:
    log = ordered_log(users=1500, seed=3)
    assert set(log.columns) >= {"event_id", "user_id", "item_id", "ts", "offset"}
    shuffled = log.assign(  # each customer's purchases in a random order: co-occurrence kept
        item_id=log.groupby("user_id")["item_id"].transform(
            lambda s: s.sample(frac=1, random_state=0).to_numpy()
        )
    )
    hr = {}
    for name, events in (("ordered", log), ("shuffled", shuffled)):
        holdout = temporal_holdout(events)
        train = build_interactions(holdout.train)
        results = evaluate_baselines(train, evaluation_set(train, holdout.test), [Transition(), EASE(l2=50)])
        hr[name] = {key: measured.metrics.hr for key, measured in results.items()}
        assert all(measured.seconds >= 0 for measured in results.values())
    assert hr["ordered"]["transition"] > 1.3 * hr["ordered"]["ease"], hr
    assert hr["shuffled"]["transition"] < hr["ordered"]["transition"] - 0.15, hr
