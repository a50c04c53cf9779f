"""Baseline recommenders for the gate and the benchmark, of two kinds.

Order-blind (what a user bought): popularity, implicit ALS, item-kNN, EASE. Sequence-aware (in
what order): a windowed item-transition model, session-kNN and a small GRU next-item model, the
peers the model must beat on logs where the next item depends on the previous ones.

Pure numpy on the dense user x item purchase matrix (the catalogue is a few hundred items, so
item x item matrices are tiny), except the GRU (TensorFlow, imported only when it is fitted).
Each baseline has `fit(train) -> self` and `scores(users) -> float [len(users), n_items]` over
the training catalogue; already bought items are excluded by the evaluation, not here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from recstream.retrain.dataset import Interactions
from recstream.retrain.evaluate import DEFAULT_K, EvalSet, Metrics, evaluate_scores

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


def recent_items(train: Interactions, users: np.ndarray, n: int) -> np.ndarray:
    """Int64 [len(users), n]: each user's last `n` distinct items, most recent first (-1 pads)."""
    out = np.full((len(users), n), -1, dtype=np.int64)
    for row, user in enumerate(np.asarray(users, dtype=np.int64)):
        seen: list[int] = []
        for item in train.sequence(int(user))[::-1].tolist():
            if item not in seen:
                seen.append(item)
                if len(seen) == n:
                    break
        out[row, : len(seen)] = seen
    return out


class Transition:
    """Windowed item transitions: P(next | an item bought 1..window steps before), recency weighted.

    Fit: every pair (item `d` steps back, item) in each user's sequence (immediate repeats
    collapsed) counts `decay**(d-1)`; rows are normalised to conditional distributions. Score:
    the rows of the user's last `window` distinct items, the i-th most recent weighted `decay**i`.
    """

    name = "transition"

    def __init__(self, window: int = 3, decay: float = 0.7) -> None:
        self.window, self.decay = window, decay

    def fit(self, train: Interactions) -> Transition:
        self.train = train
        n = train.n_items
        owners = np.repeat(np.arange(train.n_users), np.diff(train.indptr))
        items = train.items.astype(np.int64)
        keep = np.ones(len(items), dtype=bool)
        keep[1:] = (owners[1:] != owners[:-1]) | (items[1:] != items[:-1])
        owners, items = owners[keep], items[keep]
        counts = np.zeros(n * n)
        for d in range(1, self.window + 1):
            same = (owners[d:] == owners[:-d]) & (items[d:] != items[:-d])
            np.add.at(counts, items[:-d][same] * n + items[d:][same], self.decay ** (d - 1))
        square = counts.reshape(n, n)
        self.transitions = square / np.maximum(square.sum(axis=1, keepdims=True), 1e-9)
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        recent = recent_items(self.train, users, self.window)
        out = np.zeros((len(recent), self.train.n_items))
        for step in range(self.window):
            present = recent[:, step] >= 0
            out[present] += self.decay**step * self.transitions[recent[present, step]]
        return out


class SessionKNN:
    """Session-kNN (V-SKNN, Ludewig and Jannach 2018): each user's history is one session.

    The query is the user's last `recent` distinct items, weighted linearly down from the most
    recent; the `neighbours` most cosine-similar other users vote for their items by similarity.
    """

    name = "session_knn"

    def __init__(self, neighbours: int = 100, recent: int = 10, chunk: int = 512) -> None:
        self.neighbours, self.recent, self.chunk = neighbours, recent, chunk

    def fit(self, train: Interactions) -> SessionKNN:
        self.train = train
        self.matrix = purchase_matrix(train)
        self.norms = np.sqrt(np.maximum(self.matrix.sum(axis=1), 1.0)).astype(np.float32)
        return self

    def scores(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        recent = recent_items(self.train, users, self.recent)
        weights = np.where(recent >= 0, 1.0 - np.arange(self.recent) / self.recent, 0.0).astype(np.float32)
        out = np.zeros((len(users), self.train.n_items), dtype=np.float32)
        k = min(self.neighbours, max(self.train.n_users - 1, 1))
        for start in range(0, len(users), self.chunk):
            rows = slice(start, start + self.chunk)
            query = np.zeros((len(users[rows]), self.train.n_items), dtype=np.float32)
            present = recent[rows] >= 0
            query[np.nonzero(present)[0], recent[rows][present]] = weights[rows][present]
            similarity = (query @ self.matrix.T) / self.norms
            similarity[np.arange(len(users[rows])), users[rows]] = -np.inf  # not oneself
            if self.train.n_users <= 1:
                continue
            nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
            weight = np.maximum(np.take_along_axis(similarity, nearest, axis=1), 0.0)
            out[rows] = np.einsum("bk,bki->bi", weight, self.matrix[nearest])
        return out


class GRUNext:
    """A small GRU next-item model (GRU4Rec-like): the last `history` distinct items, oldest first,
    predict the next new item with a softmax over the catalogue. Kept cheap (one layer, few
    epochs): a peer that learns order, not a tuned contender."""

    name = "gru"

    def __init__(
        self,
        history: int = 16,
        dim: int = 64,
        units: int = 96,
        epochs: int = 4,
        batch: int = 256,
        seed: int = 0,
    ) -> None:
        self.history, self.dim, self.units, self.epochs, self.batch, self.seed = (
            history,
            dim,
            units,
            epochs,
            batch,
            seed,
        )

    def fit(self, train: Interactions) -> GRUNext:
        import keras

        from recstream.retrain.cf_model import _histories

        self.train = train
        examples = _histories(train, self.history)
        keras.utils.set_random_seed(self.seed)
        inputs = keras.Input((self.history,), dtype="int32")
        x = keras.layers.Embedding(train.n_items + 1, self.dim, mask_zero=True)(inputs)
        x = keras.layers.GRU(self.units)(x)
        logits = keras.layers.Dense(train.n_items)(x)
        self.model = keras.Model(inputs, logits)
        self.model.compile(
            keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        if len(examples.targets):
            self.model.fit(
                self._oldest_first(examples.histories),
                examples.targets,
                batch_size=self.batch,
                epochs=self.epochs,
                shuffle=True,
                verbose=0,
            )
        return self

    @staticmethod
    def _oldest_first(histories: np.ndarray) -> np.ndarray:
        """Most-recent-first rows (0 pads at the end) as oldest-first rows (0 pads at the front)."""
        return np.ascontiguousarray(histories[:, ::-1]).astype(np.int32)

    def scores(self, users: np.ndarray) -> np.ndarray:
        recent = recent_items(self.train, users, self.history) + 1  # item index + 1, 0 pads
        return self.model.predict(self._oldest_first(recent.astype(np.int32)), batch_size=4096, verbose=0)


def default_baselines() -> list[Recommender]:
    """The order-blind baselines of the gate/benchmark with parameters tuned on the seed holdout."""
    return [Popularity(), ImplicitALS(), ItemKNN(), EASE()]


def sequence_baselines() -> list[Recommender]:
    """The sequence-aware baselines of the benchmark."""
    return [Transition(), SessionKNN(), GRUNext()]


@dataclass(frozen=True)
class Measured:
    """A baseline's metrics on the holdout and the seconds its fit took."""

    metrics: Metrics
    seconds: float


def evaluate_baselines(
    train: Interactions, evalset: EvalSet, baselines: list[Recommender] | None = None, k: int = DEFAULT_K
) -> dict[str, Measured]:
    """Fit each baseline on `train` and evaluate it on `evalset`; keyed by baseline name."""
    results: dict[str, Measured] = {}
    for baseline in baselines if baselines is not None else default_baselines():
        started = time.monotonic()
        baseline.fit(train)
        seconds = time.monotonic() - started
        metrics = evaluate_scores(baseline.scores(evalset.users), evalset, k)
        name = getattr(baseline, "name", type(baseline).__name__)
        log.info(
            "baseline %s: HR@%d %.4f NDCG@%d %.4f fit %.1fs", name, k, metrics.hr, k, metrics.ndcg, seconds
        )
        results[name] = Measured(metrics, seconds)
    return results
