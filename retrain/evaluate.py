"""Top-k ranking metrics on the leave-last-out holdout: HR@k, NDCG@k and catalogue coverage@k.

Pure numpy, so the gate can compare a candidate, the active model and the baselines on the
same holdout without importing TensorFlow. Every recommender is evaluated the same way: a full
ranking over the training catalogue, with the items the user bought in training excluded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from recstream.retrain.dataset import Interactions

DEFAULT_K = 10


@dataclass(frozen=True)
class Metrics:
    """Means over evaluated users; coverage = share of the catalogue in at least one top-k list."""

    hr: float
    ndcg: float
    coverage: float
    users: int
    k: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class EvalSet:
    """The held-out users and items, as indices into a training `Interactions`.

    `targets` is -1 when the held-out item never occurs in training: no model can rank it,
    and it counts as a miss rather than being dropped, so all recommenders share one denominator.
    """

    users: np.ndarray  # int64 [U], rows of the training interactions
    targets: np.ndarray  # int64 [U], item index or -1
    exclude: np.ndarray  # bool [U, n_items], items bought in training


def evaluation_set(train: Interactions, test: pd.DataFrame) -> EvalSet:
    """Map a holdout's test frame (user_id, item_id) onto the training interactions.

    Users unknown to training cannot occur with `temporal_holdout` (they keep >= 2 distinct
    items); they are dropped here defensively.
    """
    users = train.users.lookup(test["user_id"])
    targets = train.item_vocab.lookup(test["item_id"])
    known = users >= 0
    users, targets = users[known], targets[known]
    return EvalSet(users=users, targets=targets, exclude=train.bought(users))


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Int64 [U, k]: item indices by decreasing score (ties: lower index first), excluded ones left out.

    Slots beyond the number of allowed items are -1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if exclude is not None:
        scores = np.where(exclude, -np.inf, scores)
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    allowed = np.take_along_axis(scores, order, axis=1) > -np.inf
    return np.where(allowed, order, -1)


def ranking_metrics(top: np.ndarray, targets: np.ndarray, n_items: int) -> Metrics:
    """HR@k, NDCG@k (one relevant item, so IDCG = 1) and coverage@k from top-k lists.

    `top` is [U, k] item indices (-1 = empty slot), `targets` the held-out item per user.
    """
    top = np.asarray(top)
    targets = np.asarray(targets)
    users, k = top.shape
    if users == 0:
        return Metrics(hr=0.0, ndcg=0.0, coverage=0.0, users=0, k=k)
    hits = (top == targets[:, None]) & (targets[:, None] >= 0)
    rank = np.argmax(hits, axis=1)
    hit = hits.any(axis=1)
    gains = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
    shown = np.unique(top[top >= 0])
    return Metrics(
        hr=float(hit.mean()),
        ndcg=float(gains.mean()),
        coverage=float(len(shown) / n_items) if n_items else 0.0,
        users=int(users),
        k=int(k),
    )


def evaluate_scores(scores: np.ndarray, evalset: EvalSet, k: int = DEFAULT_K) -> Metrics:
    """Metrics of a score matrix [U, n_items] whose rows follow `evalset.users`."""
    top = top_k(scores, k, evalset.exclude)
    return ranking_metrics(top, evalset.targets, evalset.exclude.shape[1])
