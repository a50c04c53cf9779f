"""The CF model and its SavedModel on small synthetic data: learning, warm start, signatures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from recstream.retrain import cf_model
from recstream.retrain.baselines import Popularity
from recstream.retrain.dataset import Recency, build_interactions, temporal_holdout
from recstream.retrain.evaluate import evaluate_scores, evaluation_set

SMALL = cf_model.Params(history=4, item_dim=8, user_dim=4, hidden=16, epochs=15, batch=64)


def chain_events(users: int, prefix: str = "u") -> pd.DataFrame:
    """Every user buys a walk along a chain of 20 items (a -> a+1 -> a+2 -> a+3): the next item is
    obvious from the last one, while popularity is flat."""
    rows, ts = [], 0.0
    rng = np.random.default_rng(0)
    for u in range(users):
        start = int(rng.integers(0, 16))
        for step in range(4):
            ts += 1
            rows.append((f"{prefix}{u}", f"i{start + step}", ts))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])
    return frame.assign(offset=np.arange(len(frame)), event_id=[f"e{i}" for i in range(len(frame))])


def test_learns_a_sequential_pattern_popularity_cannot_see() -> None:
    holdout = temporal_holdout(chain_events(400))
    train = build_interactions(holdout.train)
    evalset = evaluation_set(train, holdout.test)
    model = cf_model.train(train, SMALL)
    ours = evaluate_scores(model.scores(evalset.users), evalset, k=1)
    popular = evaluate_scores(Popularity().fit(train).scores(evalset.users), evalset, k=1)
    assert ours.hr > 0.8 > popular.hr + 0.5


def test_warm_start_keeps_known_rows_and_appends_new_ids() -> None:
    first = build_interactions(chain_events(50))
    parent = cf_model.train(first, SMALL)
    grown = pd.concat([chain_events(50), chain_events(30, prefix="new")]).assign(
        item_id=lambda f: f["item_id"].where(f["user_id"] != "new0", "brand-new-item")
    )
    second = build_interactions(grown, users=parent.users, items=parent.items)
    assert second.users.ids[: len(parent.users)] == parent.users.ids
    assert second.item_vocab.ids[-1] == "brand-new-item" and second.n_users == len(parent.users) + 30
    child = cf_model.train(second, dataclasses.replace(SMALL, epochs=0), parent=parent)
    for layer, rows in (("user_embedding", len(parent.users)), ("item_embedding", len(parent.items) + 1)):
        before = parent.keras_model.get_layer(layer).get_weights()[0]
        after = child.keras_model.get_layer(layer).get_weights()[0]
        np.testing.assert_array_equal(after[:rows], before)
        assert after.shape[0] > before.shape[0]
    np.testing.assert_array_equal(
        child.keras_model.get_layer("dense_1").get_weights()[0],
        parent.keras_model.get_layer("dense_1").get_weights()[0],
    )
    # The item x item terms keep the parent's block; the new item's row and column start at 0.
    known = len(parent.items)
    for layer, rows in (("cooccurrence", known), ("transition", known + 1)):
        before = parent.keras_model.get_layer(layer).get_weights()[0]
        after = child.keras_model.get_layer(layer).get_weights()[0]
        assert np.abs(before).max() > 0 and after.shape == (rows + 1, known + 1)
        np.testing.assert_array_equal(after[:rows, :known], before)
        assert not after[rows:].any() and not after[:, known:].any()
    for layer in ("positions", "transition_positions"):
        np.testing.assert_array_equal(
            child.keras_model.get_layer(layer).get_weights()[0],
            parent.keras_model.get_layer(layer).get_weights()[0],
        )


def test_a_version_from_before_the_order_aware_terms_loads_and_warm_starts_them(tmp_path: Path) -> None:
    legacy = dataclasses.replace(SMALL, **cf_model.LEGACY, epochs=2, dropout=0.3)  # as they were
    data = build_interactions(chain_events(60))
    parent = cf_model.train(data, legacy)
    parent.save_state(tmp_path)
    path = tmp_path / cf_model.STATE_FILE
    with np.load(path) as state:  # its params as written then: without the new fields
        arrays = dict(state)
    old = {
        k: v for k, v in json.loads(str(arrays["params"])).items() if k not in {*cf_model.LEGACY, "table_l2"}
    }
    np.savez_compressed(path, **{**arrays, "params": np.asarray(json.dumps(old))})
    loaded = cf_model.load(tmp_path)
    assert loaded.params == legacy
    users = np.arange(20)
    np.testing.assert_allclose(loaded.scores(users), parent.scores(users), atol=1e-5)
    # The child has the new terms, starting neutral: before training it ranks as its parent did.
    child = cf_model.train(data, dataclasses.replace(SMALL, epochs=0), parent=loaded)
    assert child.keras_model.get_layer("transition") is not None
    np.testing.assert_allclose(child.scores(users), parent.scores(users), atol=1e-4)


def test_exported_signatures(tmp_path: Path) -> None:
    from recstream.retrain import savedmodel

    train = build_interactions(chain_events(200))
    model = cf_model.train(train, SMALL)
    directory = savedmodel.export(model, tmp_path / "7", 7, {"version": 7}, "recommender")
    assert (directory / savedmodel.WARMUP_FILE).stat().st_size > 0
    loaded = tf.saved_model.load(str(directory))
    known = train.users.ids[0]
    bought = {train.item_vocab.ids[i] for i in train.sequence(0)}
    out = loaded.signatures["serving_default"](
        user_id=tf.constant([known, "stranger", "other-stranger"]), k=tf.constant(5, tf.int32)
    )
    items = [[x.decode() for x in row] for row in out["items"].numpy()]
    assert int(out["model_version"].numpy()) == 7
    assert out["fallback"].numpy().tolist() == [False, True, True]
    assert not bought & set(items[0]), "bought items must not be recommended"
    popular = [train.item_vocab.ids[i] for i in np.argsort(-train.popularity(), kind="stable")[:5]]
    assert items[1] == items[2] and set(items[1]) == set(popular)
    assert np.isfinite(out["scores"].numpy()).all()
    everything = loaded.signatures["serving_default"](user_id=tf.constant(["stranger"]), k=tf.constant(500))
    assert everything["items"].shape == (1, train.n_items)  # k is clipped to the catalogue
    scores = loaded.signatures["score"](
        users=tf.constant([known, "stranger", known]), products=tf.constant(["i3", "i3", "no-such-item"])
    )["scores"].numpy()
    assert scores.shape == (3,) and scores[2] == 0.0 and 0 < scores[1] < 1
    # The exported state warm-starts the next run with the same rows.
    again = cf_model.load(directory)
    np.testing.assert_allclose(again.scores(np.arange(3)), model.scores(np.arange(3)), atol=1e-5)


def test_training_stops_once_the_validation_loss_stops_improving() -> None:
    rng = np.random.default_rng(1)  # purchases at random: nothing to learn beyond popularity
    users = np.repeat([f"u{n}" for n in range(600)], 6)
    items = [f"i{n}" for n in rng.integers(0, 40, len(users))]
    frame = pd.DataFrame({"user_id": users, "item_id": items, "ts": np.arange(len(users), dtype=float)})
    train = build_interactions(frame.assign(offset=np.arange(len(frame))))
    epochs: list[dict[str, float]] = []
    params = dataclasses.replace(SMALL, epochs=40, learning_rate=0.03)
    cf_model.train(train, params, progress=lambda epoch, total, logs: epochs.append(logs))
    *stopped, final = epochs  # then one epoch over every example, validation ones included
    assert all("val_loss" in logs for logs in stopped) and "val_loss" not in final
    assert len(stopped) < 40  # overfitting noise raises the validation loss: it stopped
    best = int(np.argmin([logs["val_loss"] for logs in stopped]))
    assert len(stopped) == best + 1 + params.patience


def test_a_drift_boost_moves_the_model_to_the_new_regime() -> None:
    old = chain_events(200)
    buyers = [f"u{n}" for n in range(0, 200, 3)]  # a third of the customers buy the launched product
    launch = pd.DataFrame({"user_id": buyers, "item_id": "launched", "ts": 5000.0 + np.arange(len(buyers))})
    frame = pd.concat([old, launch], ignore_index=True).assign(offset=lambda f: np.arange(len(f)))
    train = build_interactions(frame)
    others = np.flatnonzero(~np.isin(train.users.ids, buyers))
    launched = train.item_vocab.index("launched")
    share = {}
    for name, recency in (("plain", None), ("boosted", Recency(drift_from=5000.0, drift_share=0.5))):
        model = cf_model.train(train, dataclasses.replace(SMALL, epochs=6), recency=recency)
        probabilities = tf.nn.softmax(model.scores(others)).numpy()
        share[name] = float(probabilities[:, launched].mean())
        if recency is not None:
            assert model.popularity[launched] > model.popularity.max() * 0.99  # the fallback's top
    assert share["boosted"] > 2 * share["plain"], share


def test_a_new_items_output_bias_starts_from_its_popularity() -> None:
    parent = cf_model.train(build_interactions(chain_events(50)), dataclasses.replace(SMALL, epochs=2))
    grown = pd.concat(
        [
            chain_events(50),
            pd.DataFrame({"user_id": [f"u{n}" for n in range(40)], "item_id": "hit", "ts": 500.0}),
            pd.DataFrame({"user_id": ["u0"], "item_id": "flop", "ts": 501.0}),
        ],
        ignore_index=True,
    ).assign(offset=lambda f: np.arange(len(f)))
    data = build_interactions(grown, users=parent.users, items=parent.items)
    child = cf_model.train(data, dataclasses.replace(SMALL, epochs=0), parent=parent)
    bias = child.keras_model.get_layer("output").get_weights()[1]
    known = bias[: len(parent.items)]
    np.testing.assert_array_equal(known, parent.keras_model.get_layer("output").get_weights()[1])
    hit, flop = data.item_vocab.index("hit"), data.item_vocab.index("flop")
    # 40 buyers against the chain items' ~10 and the flop's 1, on a log scale.
    assert bias[hit] > np.median(known) > bias[flop]
    assert bias[hit] - bias[flop] == pytest.approx(np.log1p(40) - np.log1p(1), rel=1e-4)
