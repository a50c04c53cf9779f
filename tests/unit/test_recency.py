"""Drift-aware retraining's pure parts: example weights, temporal validation, recent holdout, gate."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from recstream.retrain import cf_model, job
from recstream.retrain.dataset import Interactions, Recency, build_interactions, recent_test, temporal_holdout
from recstream.retrain.job import RECENT_MIN_USERS, gate, recency_plan
from recstream.retrain.scheduler import RetrainScheduler, drift_start
from recstream.stream.contracts.alerts import DriftAlert
from recstream.stream.settings import load_settings


def frame_of(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])
    return frame.assign(offset=np.arange(len(frame)), event_id=[f"e{i}" for i in range(len(frame))])


def test_weights_halve_every_half_life_and_keep_mean_one() -> None:
    ts = np.array([0.0, 100.0, 200.0, 300.0])
    weights = Recency(half_life_s=100).weights(ts)
    np.testing.assert_allclose(weights[:-1] / weights[1:], 0.5)
    assert weights.mean() == pytest.approx(1.0)
    np.testing.assert_array_equal(Recency().weights(ts), np.ones(4))  # off: every example alike


def test_a_drift_regime_gets_its_share_of_the_weight_bounded_by_max_boost() -> None:
    ts = np.arange(1000, dtype=float)
    weights = Recency(drift_from=980, drift_share=0.5).weights(ts)  # 20 new among 980 old
    new = ts >= 980
    assert weights[new].sum() / weights.sum() == pytest.approx(0.5)
    np.testing.assert_allclose(weights[new], weights[new][0])  # the regime's examples stay alike
    capped = Recency(drift_from=998, drift_share=0.9, max_boost=10).weights(ts)
    assert capped[-1] / capped[0] == pytest.approx(10)
    # A regime that already weighs more than the share is left as it is.
    np.testing.assert_array_equal(Recency(drift_from=100, drift_share=0.5).weights(ts), np.ones(1000))


def test_recency_weighted_popularity_puts_a_launch_ahead_of_old_best_sellers() -> None:
    old = [(f"u{n}", "classic", float(n)) for n in range(30)]
    launch = [(f"u{n}", "launched", 1000.0 + n) for n in range(10)]
    data = build_interactions(frame_of(old + launch))
    classic, launched = data.item_vocab.index("classic"), data.item_vocab.index("launched")
    plain = data.popularity()
    assert plain[classic] == 30 and plain[launched] == 10
    recent = data.popularity(Recency(half_life_s=100))
    assert recent[launched] > recent[classic]
    assert recent.sum() == pytest.approx(40)  # as many buyer-item pairs as before


def test_validation_is_each_users_latest_example_and_the_latest_ones_when_capped() -> None:
    users = np.repeat(np.arange(400), 5).astype(np.int32)  # 2,000 examples grouped by user
    ts = np.arange(2000, dtype=float)
    fit, held = cf_model._split(users, ts, cf_model.Params(validation=0.5))
    np.testing.assert_array_equal(held, np.arange(4, 2000, 5))  # every user's fifth example
    assert not set(fit) & set(held) and len(fit) + len(held) == 2000
    fit, held = cf_model._split(users, ts, cf_model.Params(validation=0.1))
    assert len(held) == 200 and set(users[held]) == set(range(200, 400))  # the latest users'
    fit, held = cf_model._split(users[:999], ts[:999], cf_model.Params())
    assert len(held) == 0 and len(fit) == 999


def test_the_recent_holdout_keeps_the_latest_held_out_purchases() -> None:
    rows = [(f"u{n}", item, float(n * 10 + k)) for n in range(100) for k, item in enumerate("abcd")]
    test = temporal_holdout(frame_of(rows)).test
    assert list(test["item_id"].unique()) == ["d"] and test["ts"].tolist() == [
        n * 10 + 3.0 for n in range(100)
    ]
    recent = recent_test(test, start=900, min_users=5)
    assert recent["user_id"].tolist() == [f"u{n}" for n in range(90, 100)]
    assert recent_test(test, start=990, min_users=5)["user_id"].tolist() == [f"u{n}" for n in range(95, 100)]
    assert len(recent_test(test, None, 5)) == 100
    assert len(recent_test(test.drop(columns="ts"), 900, 5)) == 100  # an older run's split: whole


def test_a_drift_narrows_the_gate_holdout_to_the_new_regime() -> None:
    settings = load_settings({"RETRAIN_RECENT_S": "600", "RETRAIN_MIN_USERS": "20"}, environ={})
    plan = recency_plan(settings, {"last_ts": 10_000.0}, drift_from=None)
    assert plan["recent_from"] == 9_400 and plan["recent_min_users"] == RECENT_MIN_USERS
    plan = recency_plan(settings, {"last_ts": 10_000.0}, drift_from=9_800.0)
    assert plan["recent_from"] == 9_800 and plan["recent_min_users"] == 20 and plan["drift_from"] == 9_800
    plan = recency_plan(settings, {"last_ts": 10_000.0}, drift_from=100.0)  # an old drift: no narrowing
    assert plan["recent_from"] == 9_400 and plan["recent_min_users"] == RECENT_MIN_USERS
    whole = recency_plan(dataclasses.replace(settings, retrain_recent_s=0.0), {"last_ts": 1.0}, None)
    assert whole["recent_from"] is None


class Favourite:
    """A stand-in trained model that ranks `favourite` first, then the filler products: the gate test
    needs models whose hits it chooses, not training."""

    def __init__(self, data: Interactions, favourite: str) -> None:
        self.users, self.items = data.users, data.item_vocab
        self.popularity = np.zeros(data.n_items)
        self.row = np.array([1.0 if item.startswith("f") else 0.0 for item in data.item_vocab.ids])
        self.row[data.item_vocab.index(favourite)] = 2.0

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.tile(self.row, (len(users), 1))

    def fit(self, data: Interactions) -> Favourite:  # as the popularity baseline
        return self


@pytest.mark.parametrize("candidate_likes", ["y", "x"])
def test_the_gate_follows_the_recent_holdout_not_the_whole_one(
    candidate_likes: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 customers of the old regime will buy x next, 20 of the new one (since ts 2,000) y. A model
    that ranks y first is right on the recent holdout and wrong on most of the whole one: published
    against an active model that ranks x first, and, the other way round, refused, although on the
    whole holdout the decisions would be the opposite."""
    rows = [(f"o{n}", item, n * 10.0 + k) for n in range(60) for k, item in enumerate("aby" + "x")]
    rows += [(f"n{n}", item, 2_000 + n * 10.0 + k) for n in range(20) for k, item in enumerate("acx" + "y")]
    rows += [("z", f"f{k}", 1_000.0 + k) for k in range(12)]  # filler products no customer will buy
    holdout = temporal_holdout(frame_of(rows))
    settings = load_settings({"RETRAIN_MIN_USERS": "5"}, environ={})
    window = {"last_ts": 2_203.0, "recency": recency_plan(settings, {"last_ts": 2_203.0}, drift_from=2_000.0)}
    data = build_interactions(holdout.train)
    active_likes = "x" if candidate_likes == "y" else "y"
    monkeypatch.setattr(cf_model, "train", lambda train, *_, **__: Favourite(train, candidate_likes))
    monkeypatch.setattr(job, "Popularity", lambda: Favourite(data, "f0"))  # fillers only: no hit
    prepared = job.Prepared(holdout, window, {})
    candidate = job.train_candidate(prepared, (1, Favourite(data, active_likes)))

    recent, whole = candidate.summary["holdouts"]["recent"], candidate.summary["holdouts"]["whole"]
    assert recent["candidate"]["users"] == 20 and whole["candidate"]["users"] == 81
    assert candidate.metrics == {name: recent[name] for name in ("candidate", "popularity", "active")}
    by_whole = gate({name: whole[name] for name in ("candidate", "popularity", "active")}, 0.01)
    reason = gate(candidate.metrics, tolerance=0.01)
    if candidate_likes == "y":  # right on the new regime: 1.0 recent, 20/81 whole, against 0.0 and 60/81
        assert reason is None and by_whole is not None
    else:
        assert by_whole is None and reason is not None and "on the 20 recent held-out users" in reason


def test_retrain_takes_a_drift_start_one_shot_and_in_the_data_step_only() -> None:
    from recstream.deploy.cli import build_parser

    args = build_parser().parse_args(["retrain", "--step", "data", "--run-id", "r1", "--drift-from", "1.5e9"])
    assert args.drift_from == 1.5e9
    args = build_parser().parse_args(["retrain", "--step", "train", "--run-id", "r1", "--drift-from", "5"])
    with pytest.raises(SystemExit) as refused:
        args.func(args)  # the train step follows the data step's: refused before any connection
    assert refused.value.code == 2


def test_only_a_concept_alert_says_where_a_drift_started_and_in_event_time() -> None:
    concept = DriftAlert("concept", "page_hinkley_hit_rate", 20.0, 15.0, 1, {"from_ts": 1.5e9, "from": 1.7e9})
    assert drift_start(concept) == 1.5e9  # event time, not the arrival time `from`
    data = DriftAlert("data", "psi_item_popularity", 0.6, 0.2, 1, {"from": 1.7e9, "from_ts": 1.5e9})
    assert drift_start(data) is None  # the traffic moved, the model did not get worse: no boost
    assert drift_start(dataclasses.replace(concept, window={"outcomes": 80})) is None  # an older scorer's
    for huge in (10**400, -(10**400), float("nan"), "soon"):  # valid JSON must not raise here
        assert drift_start(dataclasses.replace(concept, window={"from_ts": huge})) is None


def test_one_episode_keeps_its_earliest_start_and_a_new_start_retrains_within_the_cooldown() -> None:
    concept = DriftAlert("concept", "page_hinkley_hit_rate", 20.0, 15.0, 1, {"from_ts": 1_000.0}, ts=5_000.0)
    data = DriftAlert("data", "unknown_item_share", 0.6, 0.2, 1, {"from_ts": 10.0}, ts=5_000.0)
    scheduler = RetrainScheduler(lambda: None, 3600, cooldown_s=3600, episode_s=3600)
    try:
        scheduler.scheduler.start(paused=True)  # alerts move the paused job, nothing runs

        def alert(which: DriftAlert, start: float | None = None) -> bool:
            window = which.window if start is None else {"from_ts": start}
            return scheduler.on_alert(dataclasses.replace(which, window=window))

        assert alert(data) and scheduler.drift_from is None  # retrains, boosts nothing
        assert alert(concept)  # within the cooldown, but a start no run has had: retrain
        assert scheduler.drift_from == 1_000.0
        assert not alert(concept, 1_500.0) and scheduler.drift_from == 1_000.0  # same drift: cooldown
        assert alert(concept, 900.0) and scheduler.drift_from == 900.0  # it started earlier
        scheduler.run_drift_from = 900.0  # a run was given it
        assert not alert(concept, 950.0) and scheduler.drift_from == 900.0
        assert alert(concept, 9_000.0) and scheduler.drift_from == 9_000.0  # a new drift
        assert not alert(data) and scheduler.drift_from == 9_000.0
    finally:
        scheduler.scheduler.shutdown(wait=False)
