"""The collaborative-filtering model: what a user buys next, from who they are and what they bought.

The reference talk's model concatenated a user and a product embedding into dense layers and
scored pairs. Implicit feedback has no negatives, so this one is trained the way implicit
feedback needs: a softmax over the whole catalogue (a few hundred products: cheap), predicting
each purchase of an item new to the user from the user's embedding and a recency-weighted bag
of the items they bought before (most recent first). Items already bought are masked out of
the softmax, as they are out of the recommendations.

Order-aware as well as co-occurrence-aware (issue 17): the bag's position weights are learnt
(starting at decay**i), and two linear item x item terms are added to the network's logits: an
EASE-like co-occurrence term over the whole history (what goes with what) and a transition
term over the last 3 items, each with a learnt weight per position (what follows what). The
seed rewards the first as much as the second, an order-heavy log (bench/ordered_log.py) the
second; the sum beat EASE and the windowed transition baseline on both (README). The tables
are n_items^2 (dense: cheap for hundreds of items; tens of thousands would need them factored
or sparse) and L2-penalised (`Params.table_l2`): unpenalised, they overfit within 2 epochs.

Warm start: a child model keeps the parent's rows for every known user and item (vocabularies
only grow, so indices are stable), its dense layers and the known items' block of the item x
item terms, and starts new rows fresh (the terms' new rows and columns at 0); a parent from
before the order-aware terms (`LEGACY`) warm-starts a child with them, which start neutral.
A new item's output bias starts from its (recency-weighted) popularity, so a product launched
since the parent is not buried below every known one before training has seen it.

Recency (`retrain.dataset.Recency`): examples are weighted by age and drift regime, in training
and in early stopping's validation loss. The validation examples are each user's latest training
purchase (the latest ones when there are more than `Params.validation` of the examples): the
model is stopped on what comes next, the way the gate judges it, not on a random sample of the past.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from recstream.retrain.dataset import Interactions, Recency, Vocabulary

log = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, float]], None]
STATE_FILE = "assets.extra/recstream_model.npz"  # in the version directory; TF Serving ignores it


@dataclass(frozen=True)
class Params:
    history: int = 32  # items of history the model sees, most recent first
    decay: float = 0.7  # weight of the i-th most recent item: decay**i
    item_dim: int = 64
    user_dim: int = 0  # 0: a user is their purchase history (measured better on the seed than an ID row)
    hidden: int = 256
    dropout: float = 0.5  # 0.3 before the item x item terms; 0.5 measured better with them (README)
    epochs: int = 10
    batch: int = 1024  # at most; small data gets smaller batches (see `batch_size`)
    learning_rate: float = 3e-3
    validation: float = 0.1  # share of examples that decide when to stop (0: train every epoch)
    patience: int = 2  # epochs without a better validation loss before stopping
    seed: int = 0
    positions: bool = True  # learnt weight per history position (starts at decay**i) instead of fixed
    transition: int = 3  # linear item -> next item term over the last `transition` items (0: none)
    linear: bool = True  # EASE-like linear co-occurrence term over the whole history
    table_l2: float = 1e-4  # L2 penalty of the item x item terms: n_items^2 weights overfit fast

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Params:
        """Parameters as a version recorded them; fields it predates take their value then (LEGACY)."""
        return cls(**{**LEGACY, **values})

    def batch_size(self, examples: int) -> int:
        """About 100 steps per epoch whatever the data size: a few thousand examples in batches of
        1024 would be a handful of steps, too few to learn anything."""
        return int(min(self.batch, max(32, examples // 100)))


# How a model is trained, not its shape: a child may change them and still warm-start from its
# parent (and `retrain --tune` varies only these).
TRAINING_SETTINGS = ("epochs", "validation", "patience", "dropout", "learning_rate", "table_l2")

# The order-aware terms and their values in versions exported before them (absent from their
# params): those load as they were trained, and warm-start a child that has the terms, which
# start neutral (zero tables, position weights at decay**i).
LEGACY: dict[str, Any] = {"positions": False, "transition": 0, "linear": False}


@dataclass(frozen=True)
class Examples:
    """Training examples (user, history before, new item, when it was bought) and final histories.

    Histories hold item index + 1 (0 pads), distinct items, most recent first. Examples come
    grouped by user, in each user's purchase order; `ts` is 0 when the data has no times.
    """

    users: np.ndarray  # int32 [E]
    histories: np.ndarray  # int32 [E, history]
    targets: np.ndarray  # int32 [E]
    ts: np.ndarray  # float64 [E]
    final: np.ndarray  # int32 [n_users, history]


def _histories(train: Interactions, history: int) -> Examples:
    users, rows, targets, when = [], [], [], []
    final = np.zeros((train.n_users, history), dtype=np.int32)
    times = train.ts if train.ts is not None else np.zeros(len(train.items))
    for user in range(train.n_users):
        order: list[int] = []  # distinct items, most recent last
        start = int(train.indptr[user])
        for offset, item in enumerate(train.sequence(user).tolist()):
            if item in order:
                order.remove(item)
            else:
                if order:
                    recent = order[::-1][:history]
                    users.append(user)
                    rows.append([i + 1 for i in recent] + [0] * (history - len(recent)))
                    targets.append(item)
                    when.append(times[start + offset])
            order.append(item)
        recent = order[::-1][:history]
        final[user, : len(recent)] = [i + 1 for i in recent]
    return Examples(
        np.asarray(users, dtype=np.int32),
        np.asarray(rows, dtype=np.int32).reshape(-1, history),
        np.asarray(targets, dtype=np.int32),
        np.asarray(when, dtype=np.float64),
        final,
    )


def _split(users: np.ndarray, ts: np.ndarray, params: Params) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation example indices: validation is each user's latest example.

    At most `params.validation` of the examples: the most recent of those (latest `ts`; the
    latest users on ties). Too few examples for a meaningful validation set (under 1,000) or
    `validation` 0: no validation. `users` must be grouped (examples in each user's order).
    """
    examples = len(users)
    budget = int(examples * params.validation) if examples >= 1000 else 0
    if budget == 0:
        return np.arange(examples), np.zeros(0, dtype=np.int64)
    last = np.flatnonzero(np.append(users[1:] != users[:-1], True))  # each user's latest example
    if len(last) > budget:
        last = np.sort(last[np.argsort(ts[last], kind="stable")[-budget:]])
    held = np.zeros(examples, dtype=bool)
    held[last] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def _position_layer(keras: Any, width: int, decay: float, name: str):
    """A trainable weight per history position, starting at decay**i: order is learnt, not fixed."""

    class Positions(keras.layers.Layer):
        def build(self, input_shape: Any) -> None:
            self.w = self.add_weight(
                shape=(width,),
                initializer=keras.initializers.Constant((decay ** np.arange(width)).astype("float32")),
                name="w",
            )

        def call(self, mask: Any) -> Any:
            return mask * self.w

    return Positions(name=name)


def build_keras(n_users: int, n_items: int, params: Params):
    import keras

    user = keras.Input((), dtype="int32", name="user")
    history = keras.Input((params.history,), dtype="int32", name="history")
    present = keras.ops.cast(keras.ops.not_equal(history, 0), "float32")
    items = keras.layers.Embedding(n_items + 1, params.item_dim, name="item_embedding")(history)
    if params.positions:
        weights = _position_layer(keras, params.history, params.decay, "positions")(present)
    else:
        weights = present * keras.ops.convert_to_tensor(
            (params.decay ** np.arange(params.history)).astype("float32")
        )
    bag = keras.ops.sum(items * weights[..., None], axis=1)
    if params.user_dim:
        users = keras.layers.Embedding(n_users, params.user_dim, name="user_embedding")(user)
        x = keras.layers.Concatenate()([users, bag])
    else:  # the user is known by their purchases alone
        x = bag + 0.0 * keras.ops.cast(user[:, None], "float32")
    x = keras.layers.Dense(params.hidden, activation="relu", name="dense_1")(x)
    x = keras.layers.Dropout(params.dropout)(x)
    x = keras.layers.Dense(params.hidden, activation="relu", name="dense_2")(x)
    x = keras.layers.Dropout(params.dropout)(x)
    logits = keras.layers.Dense(n_items, name="output")(x)
    seen = keras.ops.max(keras.ops.one_hot(history, n_items + 1)[..., 1:], axis=1)
    if params.linear:  # what goes with what, linearly (EASE-like; n_items^2 weights)
        logits = logits + keras.layers.Dense(
            n_items,
            use_bias=False,
            kernel_initializer="zeros",
            kernel_regularizer=keras.regularizers.L2(params.table_l2) if params.table_l2 else None,
            name="cooccurrence",
        )(seen)
    if params.transition:  # what follows what: each of the last items' row, by learnt position weight
        window = min(params.transition, params.history)
        rows = keras.layers.Embedding(
            n_items + 1,
            n_items,
            embeddings_initializer="zeros",
            embeddings_regularizer=keras.regularizers.L2(params.table_l2) if params.table_l2 else None,
            name="transition",
        )(history[:, :window])
        steps = _position_layer(keras, window, params.decay, "transition_positions")(present[:, :window])
        logits = logits + keras.ops.sum(rows * steps[..., None], axis=1)
    # Items in the history cannot be the next new item: mask them out of the softmax.
    return keras.Model([user, history], logits - 1e9 * seen, name="recommender")


@dataclass
class Trained:
    """A trained model with what serving needs: vocabularies, histories, purchases, popularity."""

    users: Vocabulary
    items: Vocabulary
    params: Params
    keras_model: Any
    histories: np.ndarray  # int32 [n_users, history], item index + 1, 0 pads
    bought: np.ndarray  # bool [n_users, n_items]
    popularity: np.ndarray  # float64 [n_items], distinct buyers (recency-weighted when trained so)

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Float [len(users), n_items] logits of known users (rows of `self.users`)."""
        users = np.asarray(users, dtype=np.int32)
        if len(users) == 0:
            return np.zeros((0, len(self.items)), dtype=np.float32)
        return self.keras_model.predict([users, self.histories[users]], batch_size=4096, verbose=0)

    def save_state(self, directory: Path) -> None:
        """What a later run needs to warm-start from this version (beside the SavedModel)."""
        path = directory / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"w{i}": w for i, w in enumerate(self.keras_model.get_weights())}
        np.savez_compressed(
            path,
            # IDs as JSON text, not object arrays: loading a version must never unpickle.
            users=np.asarray(json.dumps(self.users.ids)),
            items=np.asarray(json.dumps(self.items.ids)),
            params=np.asarray(json.dumps(self.params.as_dict())),
            histories=self.histories,
            bought=self.bought,
            popularity=self.popularity,
            **arrays,
        )


def load(directory: Path) -> Trained:
    """The model of an exported version directory, for warm start and comparison."""
    with np.load(directory / STATE_FILE, allow_pickle=False) as state:
        params = Params.from_dict(json.loads(str(state["params"])))
        users = Vocabulary(json.loads(str(state["users"])))
        items = Vocabulary(json.loads(str(state["items"])))
        weights = [state[f"w{i}"] for i in range(sum(1 for k in state.files if k.startswith("w")))]
        keras_model = build_keras(len(users), len(items), params)
        keras_model.set_weights(weights)
        return Trained(
            users, items, params, keras_model, state["histories"], state["bought"], state["popularity"]
        )


def _prior_bias(model: Any, popularity: np.ndarray, known: int = 0) -> None:
    """Output biases of items from index `known` on: their log popularity, on the scale of the known
    items' biases (same median as theirs for the same median popularity), or centred when none is
    known. A launched product then starts where its buyers put it, not at 0 below the catalogue."""
    layer = model.get_layer("output")
    kernel, bias = layer.get_weights()
    prior = np.log1p(np.asarray(popularity, dtype=np.float64))
    if known >= len(bias):
        return
    offset = float(np.median(bias[:known]) - np.median(prior[:known])) if known else -float(prior.mean())
    bias[known:] = (prior[known:] + offset).astype(bias.dtype)
    layer.set_weights([kernel, bias])


def _warm_start(model: Any, parent: Trained) -> None:
    """Copy the parent's rows for known IDs and its dense layers; new rows keep their fresh init."""
    old_users, old_items = len(parent.users), len(parent.items)
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            source = parent.keras_model.get_layer(layer.name).get_weights()
        except ValueError:  # a term the parent lacks (LEGACY): it keeps its neutral start
            continue
        target = layer.get_weights()
        if layer.name == "user_embedding":
            target[0][:old_users] = source[0]
        elif layer.name == "item_embedding":
            target[0][: old_items + 1] = source[0]  # row 0 pads, item i is row i + 1
        elif layer.name == "output":
            target[0][:, :old_items] = source[0]
            target[1][:old_items] = source[1]
        elif layer.name == "cooccurrence":  # item x item
            target[0][:old_items, :old_items] = source[0]
        elif layer.name == "transition":  # (item + 1) x item
            target[0][: old_items + 1, :old_items] = source[0]
        else:
            target = source
        layer.set_weights(target)


def train(
    data: Interactions,
    params: Params,
    parent: Trained | None = None,
    progress: Progress | None = None,
    recency: Recency | None = None,
) -> Trained:
    """Fit on `data` (whose vocabularies extend the parent's, if any); `progress` gets every epoch.

    `recency` weighs the examples by when they were bought (needs `data.ts`), in training, in the
    validation loss, and in the popularity the model keeps for serving's fallback.
    """
    import keras

    keras.utils.set_random_seed(params.seed)
    if parent is not None:
        same_shape = replace(
            params,
            **{name: getattr(parent.params, name) for name in TRAINING_SETTINGS},
            **{  # a term the parent lacks starts neutral in the child: the parent's function is kept
                name: getattr(parent.params, name)
                for name, off in LEGACY.items()
                if getattr(parent.params, name) == off
            },
        )
        if parent.params.as_dict() != same_shape.as_dict():
            log.info("parent has other parameters (%s): no warm start", parent.params)
            parent = None
        elif data.users.ids[: len(parent.users)] != parent.users.ids:
            raise ValueError("the data's vocabulary does not extend the parent's: warm start impossible")
    examples = _histories(data, params.history)
    users, histories, targets = examples.users, examples.histories, examples.targets
    recency = recency if recency is not None and data.ts is not None else Recency()
    weights = recency.weights(examples.ts).astype(np.float32)
    popularity = data.popularity(recency)
    model = build_keras(data.n_users, data.n_items, params)
    if parent is None:
        _prior_bias(model, popularity)
    else:  # the parent's biases are kept: only the items new since it get the prior
        _warm_start(model, parent)
        _prior_bias(model, popularity, known=len(parent.items))
        log.info(
            "warm start: %d/%d users and %d/%d items from the parent",
            len(parent.users),
            data.n_users,
            len(parent.items),
            data.n_items,
        )
    model.compile(
        keras.optimizers.Adam(params.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

    class Report(keras.callbacks.Callback):
        def __init__(self, total: int, after: int = 0) -> None:
            super().__init__()
            self.total, self.after = total, after

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            figures = {k: float(v) for k, v in (logs or {}).items()}
            log.info("epoch %d/%d %s", self.after + epoch + 1, self.total, figures)
            if progress is not None:
                progress(self.after + epoch + 1, self.total, figures)

    if params.epochs and len(targets):
        fit, held = _split(users, examples.ts, params)
        if params.epochs < 2:  # no epoch to stop early from: train on every example
            fit, held = np.arange(len(targets)), held[:0]
        stopped = 0
        if len(held):
            # A warm start begins near a good model: more epochs than it needs overfit it.
            stopping = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=params.patience, restore_best_weights=True, verbose=0
            )
            history = model.fit(
                [users[fit], histories[fit]],
                targets[fit],
                sample_weight=weights[fit] if recency.active else None,
                batch_size=params.batch_size(len(fit)),
                epochs=params.epochs - 1,
                shuffle=True,
                verbose=0,
                callbacks=[Report(params.epochs), stopping],
                validation_data=(
                    [users[held], histories[held]],
                    targets[held],
                    weights[held] if recency.active else None,
                ),
            )
            stopped = len(history.epoch)
        # Without validation: every epoch on every example. With it: the last epoch, from the best
        # weights, over every example. The validation examples are the latest purchases, the ones
        # closest to what comes next (after a drift: most of the new regime); leaving them out
        # cost 0.009 HR@10 on the seed (README).
        model.fit(
            [users, histories],
            targets,
            sample_weight=weights if recency.active else None,
            batch_size=params.batch_size(len(targets)),
            epochs=params.epochs - stopped if not len(held) else 1,
            shuffle=True,
            verbose=0,
            callbacks=[Report(params.epochs, after=stopped)],
        )
    return Trained(data.users, data.item_vocab, params, model, examples.final, data.bought(), popularity)
