"""`retrain --tune`'s search on small synthetic data: judged on the validation split, within a budget."""

from __future__ import annotations

import dataclasses

import pytest
from test_cf_model import SMALL, chain_events

from recstream.retrain import cf_model
from recstream.retrain.dataset import build_interactions, temporal_holdout
from recstream.retrain.tune import CannotTune, search

BASE = dataclasses.replace(SMALL, user_dim=0)
STALLED = {"learning_rate": 1e-9}  # learns nothing: the popularity prior it starts from


@pytest.mark.parametrize("trials", [({}, STALLED), (STALLED, {})])
def test_the_configuration_that_validates_best_is_chosen(trials: tuple[dict, dict]) -> None:
    events = chain_events(300)
    tuning = search(events, BASE, trials=trials)
    stalled, good = sorted(tuning.trials, key=lambda t: t.changes != STALLED)
    assert good.hr > stalled.hr + 0.3  # the chain is learnt by one and not the other
    assert tuning.best is good and tuning.chosen == BASE and tuning.skipped == 0
    # Judged on each user's latest purchase of the events it was given (a holdout one level down).
    assert tuning.validation_users == len(temporal_holdout(events).test)
    record = tuning.as_dict()
    assert record["chosen"] == {} and [t["changes"] for t in record["trials"]] == list(trials)


def test_a_budget_stops_starting_trials() -> None:
    tuning = search(chain_events(300), BASE, budget_s=0.0, trials=({}, STALLED, {"dropout": 0.3}))
    assert len(tuning.trials) == 1 and tuning.skipped == 2  # the first trial always runs
    assert tuning.as_dict()["budget_s"] == 0.0


def test_trials_that_change_a_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="hidden"):
        search(chain_events(50), BASE, trials=({}, {"hidden": 8}))


def test_too_few_users_to_validate_on_is_refused() -> None:
    with pytest.raises(CannotTune, match="too little data to tune"):
        search(chain_events(50), BASE, min_users=1000)


def test_trials_warm_start_from_the_parent() -> None:
    """A trial starts from the active version as the final training does: with no epoch it is
    the parent, so its validation figures are the parent's."""
    events = chain_events(300)
    parent = cf_model.train(build_interactions(events), BASE)
    cold = search(events, dataclasses.replace(BASE, epochs=0), trials=({},))
    warm = search(events, dataclasses.replace(BASE, epochs=0), parent=parent, trials=({},))
    assert warm.trials[0].hr > cold.trials[0].hr + 0.3
