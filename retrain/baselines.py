"""Baseline recommenders for the gate and the benchmark: popularity, implicit ALS, item-kNN, EASE.

Pure numpy on the dense user x item purchase matrix (the catalogue is a few hundred items, so
item x item matrices are tiny). Each baseline has `fit(train) -> self` and
`scores(users) -> float [len(users), n_items]` over the training catalogue; already bought
items are excluded by the evaluation, not here.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from retrain.dataset import Interactions
from retrain.evaluate import DEFAULT_K, EvalSet, Metrics, evaluate_scores

log = logging.getLogger(__name__)


class Recommender(Protocol):
    def fit(self, train: Interactions) -> Recommender: ...

    def scores(self, users: np.ndarray) -> np.ndarray: ...


def purchase_matrix(train: Interactions) -> np.ndarray:
    """Float32 [n_users, n_items]: 1 where the user bought the item (implicit feedback, binary)."""
    return train.bought().astype(np.float32)


class Popularity:
    """Items by number of distinct buyers: the fallback for unknown users and the floor to beat."""

    name = "popularity"

    def fit(self, train: Interactions) -> Popularity:
        self.popularity = train.popularity()
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(users), len(self.popularity)))


class EASE:
    """EASE (Steck 2019): closed-form item-item regression with a zero diagonal."""

    name = "ease"

    def __init__(self, l2: float = 500.0) -> None:
        self.l2 = l2

    def fit(self, train: Interactions) -> EASE:
        self.matrix = purchase_matrix(train)
        gram = (self.matrix.T @ self.matrix).astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.l2
        inverse = np.linalg.inv(gram)
        self.weights = -inverse / np.diag(inverse)
        np.fill_diagonal(self.weights, 0.0)
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self.matrix[users] @ self.weights


class ItemKNN:
    """Item-based collaborative filtering: sum of cosine similarities to the items bought."""

    name = "item_knn"

    def fit(self, train: Interactions) -> ItemKNN:
        self.matrix = purchase_matrix(train)
        gram = (self.matrix.T @ self.matrix).astype(np.float64)
        norms = np.sqrt(np.diag(gram))
        norms[norms == 0] = 1.0
        self.similarity = gram / np.outer(norms, norms)
        np.fill_diagonal(self.similarity, 0.0)
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self.matrix[users] @ self.similarity


class ImplicitALS:
    """Implicit-feedback ALS (Hu, Koren, Volinsky 2008) with confidence 1 + alpha * count.

    Exact solves per user and per item; the confidence term is summed over the bought
    (user, item) pairs only, so one sweep costs pairs x factors^2, not users x items x factors^2.
    """

    name = "als"

    def __init__(
        self, factors: int = 32, l2: float = 50.0, alpha: float = 2.0, iterations: int = 10, seed: int = 0
    ) -> None:
        self.factors, self.l2, self.alpha, self.iterations, self.seed = factors, l2, alpha, iterations, seed

    def fit(self, train: Interactions) -> ImplicitALS:
        owners = np.repeat(np.arange(train.n_users), np.diff(train.indptr))
        pairs, counts = np.unique(
            np.stack([owners, train.items.astype(np.int64)]), axis=1, return_counts=True
        )
        confidence = (self.alpha * counts).astype(np.float32)  # c - 1 on the bought pairs
        by_item = np.lexsort((pairs[0], pairs[1]))
        rng = np.random.default_rng(self.seed)
        self.user_factors = rng.normal(0, 0.01, (train.n_users, self.factors)).astype(np.float32)
        self.item_factors = rng.normal(0, 0.01, (train.n_items, self.factors)).astype(np.float32)
        for _ in range(self.iterations):
            self.user_factors = self._solve(self.item_factors, pairs[0], pairs[1], confidence, train.n_users)
            self.item_factors = self._solve(
                self.user_factors, pairs[1][by_item], pairs[0][by_item], confidence[by_item], train.n_items
            )
        return self

    def _solve(
        self, fixed: np.ndarray, rows: np.ndarray, cols: np.ndarray, confidence: np.ndarray, n_rows: int
    ) -> np.ndarray:
        """Rows x minimising sum_j (1 + c_ij) (p_ij - x . y_j)^2 + l2 |x|^2; `rows` sorted.

        Rows with the same number of pairs are solved together as one batched matmul + solve.
        """
        f = self.factors
        base = fixed.T @ fixed + self.l2 * np.eye(f, dtype=np.float32)
        bounds = np.searchsorted(rows, np.arange(n_rows + 1))
        lengths = np.diff(bounds)
        out = np.zeros((n_rows, f), dtype=np.float32)
        for length in np.unique(lengths[lengths > 0]):
            group = np.flatnonzero(lengths == length)
            for part in np.array_split(group, max(1, len(group) * length // 65536)):
                index = bounds[part][:, None] + np.arange(length)
                y = fixed[cols[index]]  # [rows, length, f]
                c = confidence[index]
                lhs = base + np.matmul((c[..., None] * y).transpose(0, 2, 1), y)
                rhs = np.einsum("bl,blf->bf", 1.0 + c, y)
                out[part] = np.linalg.solve(lhs, rhs[..., None])[..., 0]
        return out

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T


def default_baselines() -> list[Recommender]:
    """The baselines of the gate/benchmark with parameters tuned on the seed holdout."""
    return [Popularity(), ImplicitALS(), ItemKNN(), EASE()]


def evaluate_baselines(
    train: Interactions, evalset: EvalSet, baselines: list[Recommender] | None = None, k: int = DEFAULT_K
) -> dict[str, Metrics]:
    """Fit each baseline on `train` and evaluate it on `evalset`; keyed by baseline name."""
    results: dict[str, Metrics] = {}
    for baseline in baselines if baselines is not None else default_baselines():
        baseline.fit(train)
        metrics = evaluate_scores(baseline.scores(evalset.users), evalset, k)
        name = getattr(baseline, "name", type(baseline).__name__)
        log.info("baseline %s: HR@%d %.4f NDCG@%d %.4f", name, k, metrics.hr, k, metrics.ndcg)
        results[name] = metrics
    return results
