"""Retrain quality and time: our model against order-blind and sequence-aware baselines.

Two shapes of data, each with the same protocol: the seed (../shared/data/transactions.csv,
co-occurrence matters as much as order) and a generated order-heavy log (bench/ordered_log.py:
the next item depends strongly on the previous ones). Leave-last-out
(retrain.dataset.temporal_holdout): each customer with at least 3 distinct products has their
last product held out when it is new to them; every recommender ranks the full catalogue
without the items already bought. Baselines: popularity, implicit ALS, item-kNN, EASE (order-
blind), windowed item-transition, session-kNN, a GRU next-item model (sequence-aware), each
with HR@10, NDCG@10 and its fit time; and `retrain --tune`'s choice (`tuned`: its trials on the
training events' own validation split, then the chosen configuration on the same holdout, the
time being trials and final training together). The figure is the model's HR@10 on the seed; the limit is
the best baseline's HR@10 in the same run. `python -m bench.retrain seed` (or `ordered`) runs
one data set; both by default (a few minutes on 2 cores).

`python -m bench.retrain drift` measures drift-aware retraining (issue 18, README "Drift-aware
retraining"): the seed leave-last-out with a half-life when nothing drifts (the purchases spread
over a span, each customer's order kept), and a synthetic abrupt launch (a parent on a seed
prefix, then 20 new products bought by 2,000 customers) judged on the post-launch purchases,
plain against the drift boost. About 5 whole-seed trainings: minutes.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import numpy as np
import pandas as pd

from bench.common import SEED, setup_logging, write_result
from bench.ordered_log import ordered_log
from recstream.retrain import cf_model
from recstream.retrain.baselines import Popularity, default_baselines, evaluate_baselines, sequence_baselines
from recstream.retrain.dataset import (
    Interactions,
    Recency,
    build_interactions,
    read_seed,
    recent_test,
    temporal_holdout,
)
from recstream.retrain.evaluate import Metrics, evaluate_scores, evaluation_set
from recstream.retrain.tune import search

log = logging.getLogger("bench.retrain")


DATASETS = ("seed", "ordered")


def _frame(dataset: str) -> pd.DataFrame:
    if dataset == "seed":
        return read_seed(SEED)
    if dataset == "ordered":
        return ordered_log()
    raise ValueError(f"unknown data set {dataset!r}: one of {', '.join(DATASETS)}")


def _figures(metrics: Metrics, seconds: float) -> dict[str, float]:
    return {
        "hr@10": round(metrics.hr, 4),
        "ndcg@10": round(metrics.ndcg, 4),
        "coverage@10": round(metrics.coverage, 4),
        "train_seconds": round(seconds, 1),
    }


def compare(dataset: str, params: cf_model.Params) -> dict[str, Any]:
    """The model and every baseline (order-blind and sequence-aware) on one data set's holdout."""
    holdout = temporal_holdout(_frame(dataset))
    train = build_interactions(holdout.train)
    evalset = evaluation_set(train, holdout.test)
    started, cpu = time.monotonic(), time.process_time()
    model = cf_model.train(train, params)
    train_s, cpu_s = time.monotonic() - started, time.process_time() - cpu
    ours = evaluate_scores(model.scores(evalset.users), evalset)
    log.info("%s model: HR@10 %.4f NDCG@10 %.4f in %.1fs", dataset, ours.hr, ours.ndcg, train_s)
    # `retrain --tune`: the trials judged on the training events' own validation split, then the
    # chosen configuration trained and judged on the same holdout as everything else.
    started = time.monotonic()
    tuning = search(holdout.train, params)
    tuned = cf_model.train(train, tuning.chosen) if tuning.best.changes else model
    tuned_s = time.monotonic() - started
    tuned_metrics = evaluate_scores(tuned.scores(evalset.users), evalset)
    log.info("%s tuned (%s): HR@10 %.4f in %.1fs", dataset, tuning.best.changes, tuned_metrics.hr, tuned_s)
    blind = evaluate_baselines(train, evalset, default_baselines())
    ordered = evaluate_baselines(train, evalset, sequence_baselines())
    everything = {**blind, **ordered}
    best_hr = max(everything, key=lambda name: everything[name].metrics.hr)
    best_ndcg = max(everything, key=lambda name: everything[name].metrics.ndcg)
    best_sequence = max(ordered, key=lambda name: ordered[name].metrics.hr)
    return {
        "events": len(train.items),
        "holdout_users": ours.users,
        "model": _figures(ours, train_s),
        # CPU seconds of the whole process (all threads): on a shared machine, the wall time
        # above is inflated by others' load; this / 2 is the wall time on 2 idle cores at best.
        "model_cpu_seconds": round(cpu_s, 1),
        "tuned": {**_figures(tuned_metrics, tuned_s), **tuning.as_dict()},
        "baselines": {name: _figures(m.metrics, m.seconds) for name, m in blind.items()},
        "sequence_baselines": {name: _figures(m.metrics, m.seconds) for name, m in ordered.items()},
        "best_hr": best_hr,
        "best_ndcg": best_ndcg,
        "best_sequence": best_sequence,
        "ratio_hr": round(ours.hr / everything[best_hr].metrics.hr, 3),
        "ratio_ndcg": round(ours.ndcg / everything[best_ndcg].metrics.ndcg, 3),
        "ratio_sequence_hr": round(ours.hr / ordered[best_sequence].metrics.hr, 3),
    }


def main(datasets: tuple[str, ...] = DATASETS) -> None:
    """The model against every baseline on each data set; the figure is the first data set's."""
    params = cf_model.Params()
    results = {dataset: compare(dataset, params) for dataset in datasets}
    first = results[datasets[0]]
    path = write_result(
        "retrain",
        first["model"]["hr@10"],
        "HR@10",
        max(
            [b["hr@10"] for b in first["baselines"].values()]
            + [b["hr@10"] for b in first["sequence_baselines"].values()]
        ),
        f"best baseline ({first['best_hr']}) on the same {datasets[0]} holdout, same run",
        training_seconds=first["model"]["train_seconds"],
        datasets=results,
        parameters=params.as_dict(),
    )
    print(path.read_text())


def _judge(model: cf_model.Trained, train: Interactions, test: pd.DataFrame) -> dict[str, Any]:
    evalset = evaluation_set(train, test)
    ours = evaluate_scores(model.scores(evalset.users), evalset)
    prior = np.broadcast_to(model.popularity, (len(evalset.users), train.n_items))
    return {
        "hr@10": round(ours.hr, 4),
        "ndcg@10": round(ours.ndcg, 4),
        "users": ours.users,
        "popularity_hr@10": round(
            evaluate_scores(Popularity().fit(train).scores(evalset.users), evalset).hr, 4
        ),
        "prior_hr@10": round(evaluate_scores(prior, evalset).hr, 4),
    }


def spread(frame: pd.DataFrame, span: float, seed: int = 0) -> pd.DataFrame:
    """The purchases at random times over [0, span), each customer's order kept: nothing drifts."""
    times = np.random.default_rng(seed).uniform(0, span, len(frame))
    spread_ts = frame.assign(ts=times).groupby("user_id")["ts"].transform(lambda t: np.sort(t.to_numpy()))
    out = frame.assign(ts=spread_ts.to_numpy()).sort_values("ts", kind="stable")
    return out.assign(offset=np.arange(len(out)))


def seed_half_life(fraction: float) -> dict[str, Any]:
    """Seed leave-last-out with a half-life of `fraction` of the data's span (0: no recency)."""
    frame = read_seed(SEED)
    span = float(len(frame))
    if fraction:
        frame = spread(frame, span)
    holdout = temporal_holdout(frame)
    train = build_interactions(holdout.train)
    started = time.monotonic()
    recency = Recency(half_life_s=fraction * span) if fraction else None
    model = cf_model.train(train, cf_model.Params(), recency=recency)
    return {"seconds": round(time.monotonic() - started, 1), **_judge(model, train, holdout.test)}


def launch(
    prefix: int = 100_000, products: int = 20, buyers: int = 2_000, seed: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """A seed prefix, and the same followed by an abrupt launch; returns both and the launch's start.

    Each new product is tied to 10 of the 100 best sellers; a buyer picks 1-2 new products with
    Zipf popularity times (1 + 2 x the old products of theirs it is tied to).
    """
    frame = read_seed(SEED).iloc[:prefix].copy()
    rng = np.random.default_rng(seed)
    best = frame["item_id"].value_counts().index[:100].tolist()
    ties = [set(rng.choice(best, 10, replace=False)) for _ in range(products)]
    zipf = 1.0 / (np.arange(products) + 1) ** 0.8
    baskets = frame.groupby("user_id")["item_id"].agg(set)
    rows = []
    for user in rng.permutation([u for u, basket in baskets.items() if len(basket) >= 3])[:buyers]:
        affinity = zipf * (1 + 2 * np.array([len(baskets[user] & tied) for tied in ties]))
        picks = rng.choice(products, size=int(rng.integers(1, 3)), replace=False, p=affinity / affinity.sum())
        rows += [(user, f"launch-{j}") for j in picks]
    order = rng.permutation(len(rows))
    start = float(len(frame))
    after = pd.DataFrame(
        {
            "event_id": [f"launch:{i}" for i in range(len(rows))],
            "user_id": [rows[i][0] for i in order],
            "item_id": [rows[i][1] for i in order],
            "quantity": 1,
            "ts": start + np.arange(len(rows), dtype=float),
            "partition": 0,
            "offset": start + np.arange(len(rows)),
        }
    )
    return frame, pd.concat([frame, after], ignore_index=True), start


def abrupt_launch(share: float = 0.5) -> dict[str, Any]:
    """Parent on the prefix; children warm-started on prefix + launch, plain and boosted."""
    before, after, start = launch()
    params = cf_model.Params()
    parent = cf_model.train(build_interactions(temporal_holdout(before).train), params)
    holdout = temporal_holdout(after)
    train = build_interactions(holdout.train, users=parent.users, items=parent.items)
    post = recent_test(holdout.test, start, 50)
    result: dict[str, Any] = {"launch_purchases": len(after) - len(before)}
    for name, recency in (("plain", None), ("boost", Recency(drift_from=start, drift_share=share))):
        model = cf_model.train(train, params, parent=parent, recency=recency)
        result[name] = {
            "post_launch": _judge(model, train, post),
            "whole": _judge(model, train, holdout.test),
        }
        log.info("%s: %s", name, result[name])
    return result


def drift() -> None:
    none, half, quarter = (seed_half_life(f) for f in (0.0, 1.0, 0.25))
    launched = abrupt_launch()
    path = write_result(
        "retrain-drift",
        launched["boost"]["post_launch"]["hr@10"],
        "HR@10 after an abrupt launch",
        none["hr@10"],
        "seed leave-last-out HR@10 without recency, same run",
        seed={"no_recency": none, "half_life_span": half, "half_life_quarter_span": quarter},
        launch=launched,
    )
    print(path.read_text())


if __name__ == "__main__":
    setup_logging()
    drift() if sys.argv[1:] == ["drift"] else main(tuple(sys.argv[1:]) or DATASETS)
