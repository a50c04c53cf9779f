"""Export a trained model as a TF Serving version directory with DESIGN's signatures.

- `serving_default`: user_id string [N], k int32 [] -> items string [N, k], scores float [N, k],
  model_version int64 [], and fallback bool [N] (beyond DESIGN's outputs: the scorer's
  `fallback` flag). IDs are looked up inside the graph; known users get the model's ranking
  without the items they bought, unknown users the popularity ranking (scores are then the
  items' share of buyers). k is clipped to the catalogue.
- `recommend_history`: user_id string [N], history string [N, H] (latest purchases, most recent
  first, "" pads), k int32 [] -> the outputs of `serving_default`. The model reads the live
  history (known items, in order) merged with the history it was trained with for a known user,
  and leaves out everything in either; unknown items are ignored; no known item at all: the
  popularity ranking, marked fallback.
- `score` (the seed's pairwise form): users string [N], products string [N] -> scores float [N]:
  the model's probability of the product for a known user; the product's popularity share for
  an unknown user; 0 for an unknown product.
- `assets.extra/tf_serving_warmup_requests`: PredictionLogs replayed by TF Serving before it
  reports the version AVAILABLE; `metadata.json` from the caller; and the model state for warm
  start (retrain.cf_model.STATE_FILE).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from recstream.stream.contracts.signatures import RECOMMEND, RECOMMEND_HISTORY, SCORE

log = logging.getLogger(__name__)

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"


def _module(trained: Any, version: int):
    import tensorflow as tf

    n_items = len(trained.items)
    user_ids = tf.constant(trained.users.ids or [""], dtype=tf.string)
    item_ids = tf.constant(trained.items.ids, dtype=tf.string)
    popularity = trained.popularity / max(trained.popularity.sum(), 1.0)

    class Recommender(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = trained.keras_model
            self.user_table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    user_ids, tf.range(tf.size(user_ids, out_type=tf.int64), dtype=tf.int64)
                ),
                default_value=-1,
            )
            self.item_table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(item_ids, tf.range(n_items, dtype=tf.int64)),
                default_value=-1,
            )
            self.item_ids = tf.Variable(item_ids, trainable=False)
            self.histories = tf.Variable(trained.histories.astype(np.int32), trainable=False)
            self.bought = tf.Variable(trained.bought, trainable=False)
            self.popularity = tf.Variable(popularity.astype(np.float32), trainable=False)
            self.version = tf.Variable(tf.constant(version, tf.int64), trainable=False)
            self.n_known = len(trained.users)
            self.width = int(trained.histories.shape[1])  # the model's history length

        def _probabilities(self, users: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            """Softmax over the catalogue per user, and whether the user is known."""
            index = self.user_table.lookup(users)
            known = index >= 0
            safe = tf.where(known, index, tf.zeros_like(index))
            if self.n_known == 0:
                known = tf.zeros_like(known)
                return tf.tile(self.popularity[None, :], [tf.shape(users)[0], 1]), known
            logits = self.model([tf.cast(safe, tf.int32), tf.gather(self.histories, safe)], training=False)
            model_p = tf.nn.softmax(logits, axis=-1)
            fallback = tf.tile(self.popularity[None, :], [tf.shape(users)[0], 1])
            return tf.where(known[:, None], model_p, fallback), known

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="user_id"),
                tf.TensorSpec([], tf.int32, name="k"),
            ]
        )
        def recommend(self, user_id: tf.Tensor, k: tf.Tensor) -> dict[str, tf.Tensor]:
            probabilities, known = self._probabilities(user_id)
            index = tf.maximum(self.user_table.lookup(user_id), 0)
            bought = (
                tf.logical_and(known[:, None], tf.gather(self.bought, index))
                if self.n_known
                else tf.zeros_like(probabilities, tf.bool)
            )
            ranked = tf.where(bought, tf.fill(tf.shape(probabilities), -1.0), probabilities)
            k = tf.clip_by_value(k, 1, n_items)
            top = tf.math.top_k(ranked, k=k)
            return {
                "items": tf.gather(self.item_ids, top.indices),
                "scores": top.values,
                "model_version": tf.identity(self.version),
                "fallback": tf.logical_not(known),
            }

        def _merged_history(self, users: tf.Tensor, history: tf.Tensor) -> tf.Tensor:
            """int32 [N, width]: the live history's known items, then the trained history of a known
            user, distinct, most recent first (item index + 1, 0 pads)."""
            live = _front(self.item_table.lookup(history) + 1)
            live = tf.pad(live, [[0, 0], [0, self.width]])[:, : self.width]
            if self.n_known:
                index = self.user_table.lookup(users)
                trained_rows = tf.gather(self.histories, tf.maximum(index, 0))
                trained_rows = tf.where((index >= 0)[:, None], trained_rows, tf.zeros_like(trained_rows))
            else:
                trained_rows = tf.zeros([tf.shape(users)[0], self.width], tf.int32)
            merged = tf.concat([live, trained_rows], axis=1)
            length = 2 * self.width
            earlier = tf.range(length)[None, :] < tf.range(length)[:, None]  # [i, j]: j before i
            repeated = tf.reduce_any(
                tf.logical_and(tf.equal(merged[:, :, None], merged[:, None, :]), earlier[None]), axis=2
            )
            return _front(tf.where(repeated, tf.zeros_like(merged), merged))[:, : self.width]

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="user_id"),
                tf.TensorSpec([None, None], tf.string, name="history"),
                tf.TensorSpec([], tf.int32, name="k"),
            ]
        )
        def recommend_history(
            self, user_id: tf.Tensor, history: tf.Tensor, k: tf.Tensor
        ) -> dict[str, tf.Tensor]:
            n = tf.shape(user_id)[0]
            merged = self._merged_history(user_id, history)
            has_history = tf.reduce_any(merged > 0, axis=1)
            index = self.user_table.lookup(user_id)
            logits = self.model([tf.cast(tf.maximum(index, 0), tf.int32), merged], training=False)
            popularity = tf.tile(self.popularity[None, :], [n, 1])
            probabilities = tf.where(has_history[:, None], tf.nn.softmax(logits, axis=-1), popularity)
            # Leave out what the user bought: the trained record of a known user, and the live history.
            live = self.item_table.lookup(history)
            rows = tf.broadcast_to(tf.range(n, dtype=tf.int64)[:, None], tf.shape(live, out_type=tf.int64))
            valid = live >= 0
            pairs = tf.stack([tf.boolean_mask(rows, valid), tf.boolean_mask(live, valid)], axis=1)
            bought = (
                tf.scatter_nd(pairs, tf.ones(tf.shape(pairs)[:1], tf.int32), tf.cast([n, n_items], tf.int64))
                > 0
            )
            if self.n_known:
                bought = tf.logical_or(
                    bought,
                    tf.logical_and((index >= 0)[:, None], tf.gather(self.bought, tf.maximum(index, 0))),
                )
            ranked = tf.where(bought, tf.fill(tf.shape(probabilities), -1.0), probabilities)
            top = tf.math.top_k(ranked, k=tf.clip_by_value(k, 1, n_items))
            return {
                "items": tf.gather(self.item_ids, top.indices),
                "scores": top.values,
                "model_version": tf.identity(self.version),
                "fallback": tf.logical_not(has_history),
            }

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="users"),
                tf.TensorSpec([None], tf.string, name="products"),
            ]
        )
        def score(self, users: tf.Tensor, products: tf.Tensor) -> dict[str, tf.Tensor]:
            probabilities, _ = self._probabilities(users)
            item = self.item_table.lookup(products)
            picked = tf.gather(probabilities, tf.maximum(item, 0), batch_dims=1)
            return {"scores": tf.where(item >= 0, picked, tf.zeros_like(picked))}

    return Recommender()


def _front(values):
    """Each row's positive entries moved to the front in their order, the rest set to 0 (int32)."""
    import tensorflow as tf

    width = tf.shape(values)[1]
    position = tf.range(width)[None, :]
    kept = values > 0
    order = tf.argsort(tf.where(kept, position, position + width), axis=1, stable=True)
    return tf.cast(tf.gather(tf.where(kept, values, tf.zeros_like(values)), order, batch_dims=1), tf.int32)


def _warmup_requests(trained: Any, model_name: str) -> list[bytes]:
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    users = [*trained.users.ids[:2], "warmup-unknown-user"]
    records = []
    history = [[*trained.items.ids[:2], "warmup-unknown-item"]] * len(users)
    for signature, inputs in (
        (
            RECOMMEND,
            {"user_id": tf.make_tensor_proto(users), "k": tf.make_tensor_proto(10, tf.int32)},
        ),
        (
            RECOMMEND_HISTORY,
            {
                "user_id": tf.make_tensor_proto(users),
                "history": tf.make_tensor_proto(history),
                "k": tf.make_tensor_proto(10, tf.int32),
            },
        ),
        (
            SCORE,
            {
                "users": tf.make_tensor_proto(users),
                "products": tf.make_tensor_proto((trained.items.ids[:1] or ["x"]) * len(users)),
            },
        ),
    ):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
        )
        for key, proto in inputs.items():
            request.inputs[key].CopyFrom(proto)
        log_entry = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        records.append(log_entry.SerializeToString())
    return records


def export(trained: Any, directory: Path, version: int, metadata: dict[str, Any], model_name: str) -> Path:
    """Write the version directory (which must not exist yet); returns it."""
    import tensorflow as tf

    module = _module(trained, version)
    tf.saved_model.save(
        module,
        str(directory),
        signatures={
            RECOMMEND: module.recommend,
            RECOMMEND_HISTORY: module.recommend_history,
            SCORE: module.score,
        },
    )
    warmup = directory / WARMUP_FILE
    warmup.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(warmup)) as writer:
        for record in _warmup_requests(trained, model_name):
            writer.write(record)
    trained.save_state(directory)
    (directory / "metadata.json").write_text(json.dumps(metadata, indent=1, sort_keys=True))
    log.info("exported version %d to %s", version, directory)
    return directory
