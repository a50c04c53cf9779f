"""Retrain quality and time on the seed: our model against popularity, implicit ALS, item-kNN and EASE.

Leave-last-out on ../shared/data/transactions.csv (retrain.dataset.temporal_holdout): each
customer with at least 3 distinct products has their last product held out when it is new to
them; every recommender ranks the full catalogue without the items already bought. The figure
is the model's HR@10; the limit is the best baseline's HR@10 measured in the same run.
"""

from __future__ import annotations

import logging
import time

from bench.common import SEED, setup_logging, write_result
from retrain import cf_model
from retrain.baselines import evaluate_baselines
from retrain.dataset import build_interactions, read_seed, temporal_holdout
from retrain.evaluate import evaluate_scores, evaluation_set

log = logging.getLogger("bench.retrain")


def main() -> None:
    holdout = temporal_holdout(read_seed(SEED))
    train = build_interactions(holdout.train)
    evalset = evaluation_set(train, holdout.test)
    params = cf_model.Params()
    started = time.monotonic()
    model = cf_model.train(train, params)
    train_s = time.monotonic() - started
    ours = evaluate_scores(model.scores(evalset.users), evalset)
    log.info("model: HR@10 %.4f NDCG@10 %.4f in %.1fs", ours.hr, ours.ndcg, train_s)
    baselines = evaluate_baselines(train, evalset)
    best = max(baselines, key=lambda name: baselines[name].hr)
    path = write_result(
        "retrain",
        ours.hr,
        "HR@10",
        baselines[best].hr,
        f"best baseline ({best}) on the same holdout, same run",
        training_seconds=round(train_s, 1),
        holdout_users=ours.users,
        model={"hr@10": ours.hr, "ndcg@10": ours.ndcg, "coverage@10": ours.coverage},
        baselines={
            name: {"hr@10": m.hr, "ndcg@10": m.ndcg, "coverage@10": m.coverage}
            for name, m in baselines.items()
        },
        parameters=params.as_dict(),
    )
    print(path.read_text())


if __name__ == "__main__":
    setup_logging()
    main()
