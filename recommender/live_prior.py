"""What sells now: the item mix of the latest purchases, to re-rank a version's answers by it.

A version learns P(item | user, history) under the item mix of its training data. Where that mix
moves (launches, seasons, the seed's drift along the file), a version a minute old ranks
yesterday's best sellers: on the demo's replay a popularity count frozen at event 48,000 hits
half as often on the next 12,000 purchases as one kept up to each purchase, and a version
trained on events 0-48,000 trails both (README, "What sells now"). The classic correction for
such a prior shift (Saerens et al. 2002, "Adjusting the outputs of a classifier to new a priori
probabilities") keeps what the model learnt about the user and swaps the item mix: each
item's probability is multiplied by p_now(item) / p_train(item), then the list is sorted again.

p_now is the item's count among the latest `window` purchases the worker has seen; p_train the
version's training share (its metadata's `reference.item_share`, which the drift tracker reads
too) times the window's purchases of products the version knows: the ratio is observed count
against expected count, each plus one, so an item rare in both keeps its rank and an empty
window changes nothing.

>>> prior = LivePrior(window=4)
>>> for item in ["b", "b", "b", "a"]:
...     prior.add(item)
>>> ranked = Ranked(np.array([[b"a", b"b"]]), np.array([[0.6, 0.4]]), 1, np.array([False]))
>>> shifted = shift(ranked, prior, {"a": 0.75, "b": 0.25})  # b sells three times its share
>>> [item.decode() for item in shifted.items[0]], shifted.scores[0].round(3).tolist()
(['b', 'a'], [0.727, 0.273])
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Mapping

import numpy as np

from recstream.recommender.answers import Ranked, item_id


class LivePrior:
    """Counts of the items among the latest `window` purchases.

    Written by the purchases agent, read by the request thread, which copies the counts under a
    lock: a few hundred entries per batch, against a backlog of purchases adding meanwhile.
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self._latest: deque[str] = deque(maxlen=window)
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, item: str) -> None:
        with self._lock:
            if len(self._latest) == self._latest.maxlen:
                oldest = self._latest[0]
                self._counts[oldest] -= 1
                if not self._counts[oldest]:
                    del self._counts[oldest]
            self._latest.append(item)
            self._counts[item] += 1

    def __len__(self) -> int:
        return len(self._latest)

    def counts(self) -> dict[str, int]:
        """A copy of the window's counts per item."""
        with self._lock:
            return dict(self._counts)

    def ratios(self, items: np.ndarray, share: Mapping[str, float]) -> np.ndarray:
        """Observed over expected count in the window, each plus one, per item (str or bytes).

        Expected counts are out of the window's purchases of items in `share`: a launch of products
        the version never saw must not make every known product look as if it stopped selling.
        """
        counts = self.counts()
        known = sum(count for item, count in counts.items() if item in share)
        names = [item_id(item) for item in items]
        observed = np.fromiter((counts.get(name, 0) for name in names), float, len(names))
        expected = np.fromiter((share.get(name, 0.0) for name in names), float, len(names)) * known
        return (observed + 1.0) / (expected + 1.0)


def shift(ranked: Ranked, prior: LivePrior, share: Mapping[str, float]) -> Ranked:
    """The model's lists re-weighted by `prior` against the version's training `share`, re-sorted.

    Scores are the re-weighted probabilities renormalised over each row's candidates. Entries
    the model marked as not recommendable (negative scores: already bought) stay last, as they are.
    """
    if not len(prior) or ranked.items.size == 0:
        return ranked
    unique, inverse = np.unique(ranked.items, return_inverse=True)
    ratio = prior.ratios(unique, share)[inverse.reshape(ranked.items.shape)]
    valid = ranked.scores >= 0
    weighted = np.where(valid, ranked.scores * ratio, 0.0)
    totals = weighted.sum(axis=1, keepdims=True)
    scores = np.where(valid, weighted / np.where(totals > 0, totals, 1.0), ranked.scores)
    order = _order(scores, valid)
    rows = np.arange(len(order))[:, None]
    return Ranked(
        items=ranked.items[rows, order],
        scores=scores[rows, order],
        version=ranked.version,
        fallback=ranked.fallback,
    )


def _order(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row: valid entries by descending score, then the rest in the model's order (stable)."""
    key = np.where(valid, -scores, np.inf)
    return np.argsort(key, axis=1, kind="stable")
