"""`recstream retrain --tune`: a few configurations tried on the validation split, the best one kept.

Katib's trial loop for Kubeflow users, at the size of one retrain. Each trial trains on the
window's training events less each user's latest purchase and is judged by HR@10 (NDCG@10 on a
tie) on those latest purchases: the validation split, one level below the gate's holdout. The
search never sees the gate's holdout; judging trials on it would let the gate pass what it
chose. Trials vary training settings only (`cf_model.TRAINING_SETTINGS`), never shapes, so the
winner still warm-starts from the active version, and the parent a trial starts from is the
same one the final training will. The default configuration is always tried first; a budget
stops starting trials once another one, and the final training after them, would overrun it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import pandas as pd

from recstream.retrain import cf_model
from recstream.retrain.dataset import Recency, build_interactions, temporal_holdout
from recstream.retrain.evaluate import evaluate_scores, evaluation_set
from recstream.stream.errors import RecstreamError

log = logging.getLogger(__name__)

# What each trial changes from the base parameters (the first: nothing). Chosen around the values
# measured best on the seed (README, model quality): a slower and a faster learning rate, less
# dropout, a stronger penalty on the item x item tables.
TRIALS: tuple[dict[str, Any], ...] = (
    {},
    {"learning_rate": 1e-3},
    {"dropout": 0.3},
    {"table_l2": 3e-4},
)


class CannotTune(RecstreamError):
    """Too little data for a validation split; the run is refused rather than tuned on noise."""


@dataclass(frozen=True)
class Trial:
    changes: dict[str, Any]
    hr: float
    ndcg: float
    epochs: int  # trained, early stopping included
    seconds: float


@dataclass(frozen=True)
class Tuning:
    """The search's outcome; `as_dict` is metadata.json `tuning`."""

    chosen: cf_model.Params
    trials: list[Trial]
    validation_users: int
    budget_s: float | None
    skipped: int  # trials not started for the budget

    @property
    def best(self) -> Trial:
        return best_of(self.trials)

    def as_dict(self) -> dict[str, Any]:
        return {
            "judged_on": "validation: each evaluated user's latest training purchase",
            "metric": "hr@10, then ndcg@10",
            "validation_users": self.validation_users,
            "budget_s": self.budget_s,
            "skipped": self.skipped,
            "chosen": self.best.changes,
            "trials": [asdict(t) for t in self.trials],
        }


OnTrial = Callable[[int, int, Trial, bool], None]  # (trial, trials, its figures, best so far)


def best_of(trials: Sequence[Trial]) -> Trial:
    return max(trials, key=lambda t: (t.hr, t.ndcg))  # the first of equals: the defaults win ties


def search(
    events: pd.DataFrame,
    base: cf_model.Params,
    parent: cf_model.Trained | None = None,
    recency: Recency | None = None,
    budget_s: float | None = None,
    min_users: int = 1,
    trials: Sequence[dict[str, Any]] = TRIALS,
    on_trial: OnTrial | None = None,
) -> Tuning:
    """Try `trials` on `events` (the window's training events) and return the best parameters."""
    unknown = {name for changes in trials for name in changes} - set(cf_model.TRAINING_SETTINGS)
    if unknown:
        raise ValueError(f"trials may change training settings only, not {sorted(unknown)}")
    split = temporal_holdout(events)
    if len(split.test) < min_users:
        raise CannotTune(
            f"too little data to tune: {len(split.test):,} users to validate on, fewer than "
            f"RETRAIN_MIN_USERS ({min_users:,})"
        )
    data = build_interactions(
        split.train,
        users=parent.users if parent is not None else None,
        items=parent.items if parent is not None else None,
    )
    evalset = evaluation_set(data, split.test)
    started, skipped = time.monotonic(), 0
    done: list[Trial] = []
    for index, changes in enumerate(trials):
        if done and budget_s is not None:
            mean = sum(t.seconds for t in done) / len(done)
            # another trial and the final training (about one trial's work) must fit the budget
            if time.monotonic() - started + 2 * mean > budget_s:
                skipped = len(trials) - index
                log.info("tuning: budget %.0f s reached after %d trials", budget_s, len(done))
                break
        epochs = 0

        def count(epoch: int, total: int, figures: dict[str, float]) -> None:
            nonlocal epochs
            epochs += 1

        begun = time.monotonic()
        trained = cf_model.train(data, replace(base, **changes), parent, progress=count, recency=recency)
        metrics = evaluate_scores(trained.scores(evalset.users), evalset)
        trial = Trial(dict(changes), metrics.hr, metrics.ndcg, epochs, round(time.monotonic() - begun, 2))
        done.append(trial)
        log.info(
            "tuning: trial %d/%d %s: HR@10 %.4f NDCG@10 %.4f",
            index + 1,
            len(trials),
            changes,
            trial.hr,
            trial.ndcg,
        )
        if on_trial is not None:
            on_trial(index + 1, len(trials), trial, best_of(done) is trial)
    chosen = replace(base, **best_of(done).changes)
    return Tuning(chosen, done, len(evalset.users), budget_s, skipped)
