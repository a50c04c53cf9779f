"""Export a trained model as a TF Serving version directory with DESIGN's signatures.

- `serving_default`: user_id string [N], k int32 [] -> items string [N, k], scores float [N, k],
  model_version int64 [], and fallback bool [N] (beyond DESIGN's outputs: the scorer's
  `fallback` flag). IDs are looked up inside the graph; known users get the model's ranking
  without the items they bought, unknown users the popularity ranking (scores are then the
  items' share of buyers). k is clipped to the catalogue.
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


def _warmup_requests(trained: Any, model_name: str) -> list[bytes]:
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    users = [*trained.users.ids[:2], "warmup-unknown-user"]
    records = []
    for signature, inputs in (
        (
            "serving_default",
            {"user_id": tf.make_tensor_proto(users), "k": tf.make_tensor_proto(10, tf.int32)},
        ),
        (
            "score",
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
        signatures={"serving_default": module.recommend, "score": module.score},
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
