"""Tiny SavedModels with the project's two signatures, for the model server and updater tests.

Each version answers with its own number (items "<user>-v<version>-<j>", scores
version + 0.1*j, model_version), so every answer says which version produced it.
`flaw` builds versions that break the contract in one way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

FLAWS = ("no-score", "wrong-input-name", "float-k", "nan-scores", "wrong-version")


def recommend_request(users: list[str], k: Any, model: str = "rec") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(users, dtype=tf.string))
    request.inputs["k"].CopyFrom(tf.make_tensor_proto(k))
    return request


def build_model(
    path: Path,
    version: int,
    warmup: predict_pb2.PredictRequest | None = None,
    *,
    flaw: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export version `version` to `path` (with a warmup record if given, and metadata.json if given)."""
    assert flaw is None or flaw in FLAWS, flaw
    user_name = "user" if flaw == "wrong-input-name" else "user_id"
    k_dtype = tf.float32 if flaw == "float-k" else tf.int32
    stamp = version + 1 if flaw == "wrong-version" else version

    class Recommender(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name=user_name),
                tf.TensorSpec([], k_dtype, name="k"),
            ]
        )
        def recommend(self, user_id: tf.Tensor, k: tf.Tensor) -> dict[str, tf.Tensor]:
            k = tf.cast(k, tf.int32)
            n = tf.shape(user_id)[0]
            rank = tf.range(k)
            items = tf.strings.join(
                [
                    tf.tile(user_id[:, None], [1, k]),
                    f"-v{version}-",
                    tf.tile(tf.strings.as_string(rank)[None, :], [n, 1]),
                ]
            )
            scores = tf.tile((version + 0.1 * tf.cast(rank, tf.float32))[None, :], [n, 1])
            if flaw == "nan-scores":
                scores = scores * float("nan")
            return {"items": items, "scores": scores, "model_version": tf.constant(stamp, tf.int64)}

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="users"),
                tf.TensorSpec([None], tf.string, name="products"),
            ]
        )
        def score(self, users: tf.Tensor, products: tf.Tensor) -> dict[str, tf.Tensor]:
            lengths = tf.strings.length(users) + tf.strings.length(products)
            return {"scores": tf.cast(lengths, tf.float32) * version}

    module = Recommender()
    signatures = {"serving_default": module.recommend}
    if flaw != "no-score":
        signatures["score"] = module.score
    tf.saved_model.save(module, str(path), signatures=signatures)
    if warmup is not None:
        (path / "assets.extra").mkdir()
        record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=warmup))
        with tf.io.TFRecordWriter(str(path / "assets.extra" / "tf_serving_warmup_requests")) as writer:
            writer.write(record.SerializeToString())
    if metadata is not None:
        (path / "metadata.json").write_text(json.dumps(metadata))
    return path


def build_version(path: Path, version: int, *, flaw: str | None = None, model: str = "rec") -> Path:
    """A version as the retrain job exports it: warmup record and metadata.json with metrics."""
    return build_model(
        path,
        version,
        recommend_request(["warm"], np.int32(2), model),
        flaw=flaw,
        metadata={
            "model": model,
            "version": version,
            "metrics": {"hr@10": 0.1 * version, "ndcg@10": 0.05 * version},
            "parent_version": version - 1 or None,
        },
    )


def corrupt(path: Path) -> Path:
    """Garbage in place of the graph: the directory still looks like a SavedModel."""
    (path / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    return path
