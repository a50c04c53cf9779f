"""The `recommend_history` signature: the live history drives the answer, without a retrain."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from test_cf_model import SMALL, chain_events

from recstream.retrain import cf_model, savedmodel
from recstream.retrain.dataset import build_interactions
from recstream.stream.contracts.signatures import RECOMMEND, RECOMMEND_HISTORY


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    train = build_interactions(chain_events(300))
    model = cf_model.train(train, SMALL)
    directory = savedmodel.export(model, tmp_path_factory.mktemp("m") / "3", 3, {"version": 3}, "rec")
    return train, tf.saved_model.load(str(directory))


def ask(loaded, users: list[str], history: list[list[str]], k: int = 5) -> tuple[list[list[str]], list[bool]]:
    out = loaded.signatures[RECOMMEND_HISTORY](
        user_id=tf.constant(users), history=tf.constant(history), k=tf.constant(k, tf.int32)
    )
    assert int(out["model_version"].numpy()) == 3
    assert np.isfinite(out["scores"].numpy()).all()
    items = [[x.decode() for x in row] for row in out["items"].numpy()]
    return items, out["fallback"].numpy().tolist()


def test_an_unknown_user_is_personalised_by_their_live_history(exported) -> None:
    _, loaded = exported
    items, fallback = ask(loaded, ["stranger", "stranger-2"], [["i5", "i4"], ["i9", "i8"]])
    assert fallback == [False, False]
    assert items[0][0] == "i6" and items[1][0] == "i10"  # the chain's next step
    assert not {"i4", "i5"} & set(items[0]) and not {"i8", "i9"} & set(items[1])


def test_the_most_recent_item_comes_first_and_unknown_items_are_ignored(exported) -> None:
    _, loaded = exported
    items, fallback = ask(
        loaded, ["a", "a", "a"], [["nope", "i12", "", ""], ["i12", "nope", "i11", ""], ["i2"] * 4]
    )
    assert fallback == [False, False, False]
    assert items[0][0] == "i13" and items[1][0] == "i13" and items[2][0] == "i3"


def test_no_known_item_is_the_popularity_fallback(exported) -> None:
    train, loaded = exported
    items, fallback = ask(loaded, ["x", "y"], [["nope", ""], ["", ""]], k=5)
    assert fallback == [True, True]
    popular = [train.item_vocab.ids[i] for i in np.argsort(-train.popularity(), kind="stable")[:5]]
    assert items[0] == items[1] and set(items[0]) == set(popular)


def test_a_known_user_gets_a_changed_answer_after_a_purchase(exported) -> None:
    train, loaded = exported
    user = train.users.ids[0]
    bought = [train.item_vocab.ids[i] for i in train.sequence(0)]
    before = loaded.signatures[RECOMMEND](user_id=tf.constant([user]), k=tf.constant(5, tf.int32))
    before_items = [x.decode() for x in before["items"].numpy()[0]]
    same, _ = ask(loaded, [user], [[""]])  # no live purchase: the trained history alone
    assert same[0] == before_items
    new = "i18" if "i18" not in bought else "i1"
    after, fallback = ask(loaded, [user], [[new]])
    assert fallback == [False] and after[0] != before_items
    assert new not in after[0] and not set(bought) & set(after[0])
