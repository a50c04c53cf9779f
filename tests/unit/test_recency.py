"""Drift-aware retraining's pure parts: example weights, temporal validation, recent holdout, gate."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from retrain import cf_model
from retrain.dataset import Recency, build_interactions, recent_test, temporal_holdout
from retrain.job import RECENT_MIN_USERS, gate, recency_plan
from retrain.scheduler import CONCEPT_LOOKBACK_S, RetrainScheduler, drift_start
from stream.alerts import DriftAlert
from stream.settings import load_settings


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


def metrics(candidate: float, active: float, popularity: float = 0.01, **whole: float) -> dict:
    figures = {"candidate": candidate, "active": active, "popularity": popularity, **whole}
    return {name: {"hr": value, "users": 300} for name, value in figures.items()}


def test_the_gate_follows_the_recent_holdout_not_the_whole_one() -> None:
    # Better on the new regime, worse on the whole window (mostly the old regime): published.
    assert gate(metrics(0.30, 0.05, candidate_whole=0.18, active_whole=0.25), tolerance=0.01) is None
    # Worse on the new regime though better on the whole window: refused, saying on what.
    reason = gate(metrics(0.05, 0.30, candidate_whole=0.25, active_whole=0.18), tolerance=0.01)
    assert reason is not None and "worse than the active model" in reason and "300 recent" in reason


def test_alerts_say_where_the_drift_started_and_one_episode_keeps_its_start() -> None:
    data = DriftAlert("data", "unknown_item_share", 0.6, 0.2, 1, {"from": 1_000.0, "to": 1_100.0}, ts=1_120.0)
    concept = DriftAlert("concept", "page_hinkley_hit_rate", 20.0, 15.0, 1, {"outcomes": 80}, ts=1_300.0)
    assert drift_start(data) == (1_000.0, True)
    assert drift_start(concept) == (1_300.0 - CONCEPT_LOOKBACK_S, False)  # no start in its window: a guess
    scheduler = RetrainScheduler(lambda: None, 3600, cooldown_s=0.001, episode_s=3600)
    try:
        scheduler.scheduler.start(paused=True)  # alerts move the paused job, nothing runs

        def alert(which: DriftAlert, **changes: object) -> float | None:
            scheduler.last_drift_run = None  # past the cooldown
            scheduler.on_alert(dataclasses.replace(which, **changes))
            return scheduler.drift_from

        assert alert(concept) == 1_300.0 - CONCEPT_LOOKBACK_S
        assert alert(data) == 1_000.0  # a measured start replaces the guess
        assert alert(concept, ts=1_400.0) == 1_000.0  # and a guess does not replace it
        assert alert(data, window={"from": 1_500.0}, ts=1_600.0) == 1_000.0  # the same drift
        assert alert(data, window={"from": 9_000.0}, ts=9_100.0) == 9_000.0  # a new one
        assert alert(data, window={"from": float("nan")}, ts=9_200.0) == 9_000.0  # no start: a guess
        # Within the cooldown no run starts, but a measured start still replaces a guess.
        assert alert(concept, ts=20_000.0) == 20_000.0 - CONCEPT_LOOKBACK_S
        scheduler.cooldown_s = 3600.0
        scheduler.on_alert(dataclasses.replace(data, window={"from": 19_700.0}, ts=20_050.0))
        assert scheduler.drift_from == 19_700.0
    finally:
        scheduler.scheduler.shutdown(wait=False)


def test_a_window_start_beyond_a_float_is_no_start_not_an_error() -> None:
    """A 400-digit `from` (valid JSON) once raised OverflowError out of the alert consumer."""
    alert = DriftAlert("data", "unknown_item_share", 0.6, 0.2, 1, {"from": 10**400}, ts=1_120.0)
    assert drift_start(alert) == (1_120.0 - CONCEPT_LOOKBACK_S, False)
    assert drift_start(dataclasses.replace(alert, window={"from": -(10**400)})) == (
        1_120.0 - CONCEPT_LOOKBACK_S,
        False,
    )
