"""A generated order-heavy purchase log: the next item depends strongly on the previous ones.

The seed rewards co-occurrence (what goes with what) about as much as order; this log is the
other shape of data the model must also win on, generated so the protocol and the benchmark run
on something whose structure is known. Each customer's purchases are a walk:

- each item has 4 successors (random items, Zipf-weighted 1, 1/2, 1/3, 1/4);
- the next item is, with probability `order` (0.7), a successor of the previous item (4 times in
  5) or of the one before it (1 time in 5): second-order structure a bag of items cannot see;
- otherwise it comes from the customer's taste (one of 12 clusters of 40 items, Zipf within
  the cluster; probability 0.2 of the total) or from the whole catalogue by Zipf popularity
  (0.1): the co-occurrence and popularity signal order-blind models use;
- an item the customer already bought is redrawn (up to 5 times): purchases are mostly new
  items, as in the holdout; the first item comes from the taste or popularity part.

Customers buy 3 + Geometric(1/6) items (mean about 8, like the seed); their walks are interleaved
in time (each starts at a random time, purchases a random gap apart), and the frame has the
columns of `retrain.dataset.read_seed` (event_id, user_id, item_id, quantity, ts, partition,
offset), so `temporal_holdout` and every recommender run on it unchanged.

`python -m bench.ordered_log PATH` writes it in the seed's CSV format (customerId,products with
`a|b|c`, one row per customer, in purchase order) for `recstream produce` or a demo.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd


def _zipf(n: int, exponent: float = 1.0) -> np.ndarray:
    weights = 1.0 / (np.arange(n) + 1.0) ** exponent
    return weights / weights.sum()


def ordered_log(
    users: int = 20_000,
    items: int = 300,
    order: float = 0.7,
    taste: float = 0.2,
    clusters: int = 12,
    seed: int = 0,
) -> pd.DataFrame:
    """The event frame of `users` customers' walks over `items` items (see the module docstring)."""
    rng = np.random.default_rng(seed)
    successors = np.stack([rng.choice(items, 4, replace=False) for _ in range(items)])
    successor_p = _zipf(4)
    popularity = _zipf(items, 0.8)[rng.permutation(items)]
    cluster_items = [rng.choice(items, 40, replace=False) for _ in range(clusters)]
    cluster_p = _zipf(40, 0.7)
    rows: list[tuple[str, str, float]] = []
    for user in range(users):
        cluster = cluster_items[int(rng.integers(clusters))]
        length = 3 + int(rng.geometric(1 / 6)) - 1
        start = float(rng.uniform(0, 1_000_000))
        bought: list[int] = []
        for _ in range(length):
            for _attempt in range(5):
                # No previous item: the draw falls in the taste or popularity part.
                draw = rng.random() if bought else order + rng.random() * (1 - order)
                if draw < order:
                    back = bought[-2] if len(bought) >= 2 and rng.random() < 0.2 else bought[-1]
                    item = int(successors[back, rng.choice(4, p=successor_p)])
                elif draw < order + taste:
                    item = int(cluster[rng.choice(40, p=cluster_p)])
                else:
                    item = int(rng.choice(items, p=popularity))
                if item not in bought:
                    break
            bought.append(item)
            start += float(rng.exponential(1_000))
            rows.append((f"c{user}", f"p{item}", start))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"]).sort_values("ts", kind="stable")
    frame = frame.reset_index(drop=True)
    counter = np.arange(len(frame))
    return pd.DataFrame(
        {
            "event_id": "ordered:" + pd.Series(counter).astype(str),
            "user_id": frame["user_id"],
            "item_id": frame["item_id"],
            "quantity": np.ones(len(frame), dtype=np.int32),
            "ts": frame["ts"].to_numpy(dtype=np.float64),
            "partition": np.zeros(len(frame), dtype=np.int32),
            "offset": counter.astype(np.int64),
        }
    )


def write_seed_format(frame: pd.DataFrame, path: Path) -> None:
    """The log as the seed's CSV: one row per customer, products in purchase order."""
    ordered = frame.sort_values(["ts", "offset"], kind="stable")
    rows = ordered.groupby("user_id", sort=False)["item_id"].agg("|".join)
    pd.DataFrame({"customerId": rows.index, "products": rows.to_numpy()}).to_csv(path, index=False)


if __name__ == "__main__":
    write_seed_format(ordered_log(), Path(sys.argv[1] if sys.argv[1:] else "ordered_log.csv"))
