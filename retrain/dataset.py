"""Implicit-feedback datasets for the retrain stage: event frames -> per-user purchase sequences.

Pure numpy/pandas (no TensorFlow), so the scheduler, the gate and the tools can import it cheaply.

Input is the frame the dataset reader returns (`stream.lake.read_transactions`): one row per
purchase event with columns event_id, user_id, item_id, quantity, ts, partition, offset. A
user's events are ordered by (ts, offset); `quantity` is ignored (a purchase is a purchase:
implicit feedback), repeated purchases of an item stay in the sequence.

The holdout (`temporal_holdout`) is the evaluation protocol of the retrain gate: each user's
latest purchase of an item they had not bought before is hidden, the model is trained on the
rest and must rank that item in its top k among the items the user has not bought yet.
`recent_test` narrows it to the regime a version will serve: the held-out purchases of a recent
window. `Recency` weighs training examples by age (and a drift's new regime above the old).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

MIN_DISTINCT_ITEMS = 3


def read_seed(path: Path) -> pd.DataFrame:
    """The seed file (`customerId,products` with `a|b|c`) as the event frame the reader returns.

    Events enter in file order (rows in order, products within a row in order), as `recstream
    produce` sends them; `ts` and `offset` are a running counter in that order, so experiments
    and benchmarks see the same event order the stream gives. event_id follows stream.sources
    (`<file name>:<line>:<index>`).
    """
    seed = pd.read_csv(path, dtype=str, keep_default_na=False)
    products = seed["products"].str.split("|")
    frame = pd.DataFrame(
        {
            "user_id": seed["customerId"].str.strip().repeat(products.str.len()).to_numpy(),
            "item_id": [p.strip() for row in products for p in row],
            "line": np.repeat(np.arange(2, len(seed) + 2), products.str.len()),
        }
    )
    frame = frame[frame["item_id"] != ""].reset_index(drop=True)
    index = frame.groupby("line").cumcount()
    counter = np.arange(len(frame))
    return pd.DataFrame(
        {
            "event_id": path.name + ":" + frame["line"].astype(str) + ":" + index.astype(str),
            "user_id": frame["user_id"],
            "item_id": frame["item_id"],
            "quantity": np.ones(len(frame), dtype=np.int32),
            "ts": counter.astype(np.float64),
            "partition": np.zeros(len(frame), dtype=np.int32),
            "offset": counter.astype(np.int64),
        }
    )


def order_events(frame: pd.DataFrame) -> pd.DataFrame:
    """Events with string IDs, in each user's event order (ts, then offset; stable), index reset."""
    ordered = frame.assign(user_id=frame["user_id"].astype(str), item_id=frame["item_id"].astype(str))
    keys = ["ts", "offset"] if "offset" in ordered.columns else ["ts"]
    return ordered.sort_values(keys, kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class Holdout:
    """A leave-last-out split: `train` events, and one held-out item per evaluated user.

    `test` has columns user_id, item_id and ts (the held-out purchase's time; one row per
    evaluated user, in order of first appearance in the data); `train` holds every event except
    the held-out ones, so users who are not evaluated keep all their events for training.
    """

    train: pd.DataFrame
    test: pd.DataFrame


def temporal_holdout(frame: pd.DataFrame, min_distinct_items: int = MIN_DISTINCT_ITEMS) -> Holdout:
    """Hide each eligible user's last purchased item when it is new to them.

    For a user's sequence (ts, offset order), the held-out events are the trailing run of the
    last item (`... a b b` holds out both b's: buying an item twice in a row at the end is one
    new item). The user is evaluated when the item does not occur before that run (a repeat
    purchase is not a discovery, and the ranking excludes bought items, so it could never be
    hit) and the user bought at least `min_distinct_items` distinct items in total (holdout
    included), so there are at least two distinct items of history to learn from.
    """
    events = order_events(frame)
    if events.empty:
        empty = pd.DataFrame({"user_id": pd.Series([], dtype=str), "item_id": pd.Series([], dtype=str)})
        return Holdout(train=events, test=empty.assign(ts=pd.Series([], dtype=np.float64)))
    user_codes, user_names = pd.factorize(events["user_id"])
    item_codes = pd.factorize(events["item_id"])[0]
    # Group each user's events together, keeping event order within a user.
    order = np.argsort(user_codes, kind="stable")
    users, items = user_codes[order], item_codes[order]
    n_users = len(user_names)
    counts = np.bincount(users, minlength=n_users)
    ends = np.cumsum(counts)  # one past each user's last event
    last_item = items[ends - 1]
    is_last = items == last_item[users]
    position = np.arange(len(items))
    # Last position of another item; the trailing run of the last item starts after it.
    other_at = np.full(n_users, -1)
    np.maximum.at(other_at, users[~is_last], position[~is_last])
    in_run = is_last & (position > other_at[users])
    # A repeat: the last item also occurs before its trailing run.
    repeat = np.zeros(n_users, dtype=bool)
    repeat[users[is_last & ~in_run]] = True
    pairs = np.unique(np.stack([users, items]), axis=1)
    distinct = np.bincount(pairs[0], minlength=n_users)
    eligible = ~repeat & (distinct >= min_distinct_items)
    held = np.zeros(len(events), dtype=bool)
    held[order] = in_run & eligible[users]
    evaluated = np.flatnonzero(eligible)  # user codes are in order of first appearance
    test = pd.DataFrame(
        {
            "user_id": np.asarray(user_names)[evaluated].astype(str),
            "item_id": events["item_id"].to_numpy()[order[ends[evaluated] - 1]],
            "ts": events["ts"].to_numpy(dtype=np.float64)[order[ends[evaluated] - 1]],
        }
    )
    train = events.loc[~held].reset_index(drop=True)
    log.info("holdout: %d of %d users evaluated, %d training events", len(test), n_users, len(train))
    return Holdout(train=train, test=test)


def recent_test(test: pd.DataFrame, start: float | None, min_users: int) -> pd.DataFrame:
    """The held-out purchases made at or after `start` (None: all of them), the gate's holdout.

    At least the latest `min_users` held-out purchases (or all there are), so a quiet recent
    window still gives a judgeable holdout. A test frame without ts (an older run's) is whole.
    """
    if start is None or "ts" not in test.columns or test.empty:
        return test
    recent = test[test["ts"].to_numpy(dtype=np.float64) >= start]
    if len(recent) < min(min_users, len(test)):
        latest = np.argsort(test["ts"].to_numpy(dtype=np.float64), kind="stable")[-min_users:]
        recent = test.iloc[np.sort(latest)]
    return recent.reset_index(drop=True)


@dataclass(frozen=True)
class Recency:
    """Training example weights that follow the regime a version will serve.

    A weight halves every `half_life_s` of age (0: no decay), and the examples at or after
    `drift_from` (the start of a drift alert's window) are raised together to at least
    `drift_share` of the total weight, each at most `max_boost` times its decayed weight: a new
    regime of a few thousand purchases among a hundred thousand older ones then moves the model.
    Weights are scaled to mean 1, so the loss (and the learning rate's effect) keeps its scale.
    """

    half_life_s: float = 0.0
    drift_from: float | None = None
    drift_share: float = 0.0
    max_boost: float = 100.0

    @property
    def active(self) -> bool:
        return self.half_life_s > 0 or (self.drift_from is not None and self.drift_share > 0)

    def weights(self, ts: np.ndarray) -> np.ndarray:
        """Float64 weights of examples made at `ts` (ages count from the latest of them)."""
        ts = np.asarray(ts, dtype=np.float64)
        weights = np.ones(len(ts))
        if len(ts) == 0 or not self.active:
            return weights
        if self.half_life_s > 0:
            weights = np.exp2(-(ts.max() - ts) / self.half_life_s)
        if self.drift_from is not None and self.drift_share > 0:
            new = ts >= self.drift_from
            new_total, old_total = weights[new].sum(), weights[~new].sum()
            if new_total > 0 and old_total > 0 and new_total / (new_total + old_total) < self.drift_share:
                boost = self.drift_share / (1 - self.drift_share) * old_total / new_total
                weights = np.where(new, weights * min(boost, self.max_boost), weights)
        return weights / weights.mean()


class Vocabulary:
    """String IDs <-> dense indices; growing keeps old indices and appends new IDs at the end.

    Warm start depends on this: a row of an embedding table belongs to the same ID in the
    parent and in the child model.
    """

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self.extend(ids)

    def extend(self, ids: Iterable[str]) -> int:
        """Append the IDs not yet known, in the order given; return how many were new."""
        before = len(self._ids)
        for value in ids:
            value = str(value)
            if value not in self._index:
                self._index[value] = len(self._ids)
                self._ids.append(value)
        return len(self._ids) - before

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, value: object) -> bool:
        return value in self._index

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def index(self, value: str) -> int:
        return self._index[value]

    def lookup(self, values: Iterable[str], missing: int = -1) -> np.ndarray:
        """Indices of `values` as int64, `missing` for unknown IDs."""
        get = self._index.get
        return np.fromiter((get(str(v), missing) for v in values), dtype=np.int64)


@dataclass(frozen=True)
class Interactions:
    """Per-user purchase sequences as index arrays (CSR-like), with the vocabularies they index.

    Sequence of user u: `items[indptr[u]:indptr[u + 1]]` in event order, repeats included, made
    at `ts[indptr[u]:indptr[u + 1]]` (None when the times are unknown: every event is as recent).
    Users of the vocabulary without events have empty sequences.
    """

    users: Vocabulary
    item_vocab: Vocabulary
    indptr: np.ndarray  # int64 [n_users + 1]
    items: np.ndarray  # int32 [n_events]
    ts: np.ndarray | None = None  # float64 [n_events]

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.item_vocab)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def bought(self, users: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Bool [len(users), n_items]: which items each user bought (all users when None)."""
        rows = np.arange(self.n_users) if users is None else np.asarray(users, dtype=np.int64)
        mask = np.zeros((len(rows), self.n_items), dtype=bool)
        lengths = self.indptr[rows + 1] - self.indptr[rows]
        owner = np.repeat(np.arange(len(rows)), lengths)
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mask[owner, self.items[np.repeat(self.indptr[rows], lengths) + within]] = True
        return mask

    def popularity(self, recency: Recency | None = None) -> np.ndarray:
        """Float64 [n_items]: number of distinct users who bought each item.

        Distinct buyers rather than events, so a few bulk re-buyers do not make an item popular.
        With `recency`, each buyer counts with the weight of their latest purchase of the item
        (scaled so the total stays the number of buyer-item pairs): a product bought by many in
        a new regime leads the fallback ranking from the first retrain that sees it. Sparse: one
        key per event (buyer * n_items + item), never a users x items array.
        """
        if not len(self.items):
            return np.zeros(self.n_items)
        owners = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.indptr))
        pairs = owners * self.n_items + self.items
        if recency is None or not recency.active or self.ts is None:
            distinct = np.unique(pairs)
            return np.bincount(distinct % self.n_items, minlength=self.n_items).astype(np.float64)
        order = np.lexsort((self.ts, pairs))  # by pair, each pair's latest purchase last
        pairs, ts = pairs[order], self.ts[order]
        latest = np.append(pairs[1:] != pairs[:-1], True)
        weights = recency.weights(ts[latest])
        return np.bincount(pairs[latest] % self.n_items, weights=weights, minlength=self.n_items)


def build_interactions(
    frame: pd.DataFrame, users: Vocabulary | None = None, items: Vocabulary | None = None
) -> Interactions:
    """Sequences from an event frame; the vocabularies are copied and grown, never reordered.

    Pass the parent model's vocabularies for warm start: their IDs keep their indices and IDs
    new in `frame` are appended in order of first appearance (event order).
    """
    events = order_events(frame)
    user_vocab = Vocabulary(users.ids if users is not None else ())
    item_vocab = Vocabulary(items.ids if items is not None else ())
    user_vocab.extend(pd.unique(events["user_id"]))
    item_vocab.extend(pd.unique(events["item_id"]))
    user_index = user_vocab.lookup(events["user_id"])
    item_index = item_vocab.lookup(events["item_id"]).astype(np.int32)
    order = np.argsort(user_index, kind="stable")  # grouped by user, event order kept within
    counts = np.bincount(user_index, minlength=len(user_vocab))
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ts = events["ts"].to_numpy(dtype=np.float64)[order] if "ts" in events.columns else None
    return Interactions(
        users=user_vocab, item_vocab=item_vocab, indptr=indptr, items=item_index[order], ts=ts
    )
