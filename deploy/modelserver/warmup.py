"""Replay a version's warmup requests before it is reported AVAILABLE (saved_model_warmup).

`assets.extra/tf_serving_warmup_requests` is a TFRecord file of PredictionLog protos;
each PredictLog's request runs through the normal Predict path, so a request the model
rejects fails the load, as in TF Serving. At most 1000 records.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import prediction_log_pb2

from recstream.deploy.modelserver import tensors
from recstream.deploy.modelserver.errors import ServingError
from recstream.deploy.modelserver.servable import Servable

log = logging.getLogger(__name__)

REQUESTS_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_RECORDS = 1000


def run_warmup(servable: Servable, num_request_iterations: int = 1) -> int:
    """Run every warmup record; returns how many were read (0 when there is no file)."""
    path = Path(servable.path) / REQUESTS_FILE
    if not path.is_file():
        log.info("No warmup data file found at %s", path)
        return 0
    started = time.monotonic()
    count = 0
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            try:
                entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            except DecodeError as exc:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"Failed to parse warmup record from {path}"
                ) from exc
            for _ in range(max(num_request_iterations, 1)):
                _run(servable, entry)
            count += 1
            if count > MAX_RECORDS:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}",
                )
    except tf.errors.DataLossError as exc:
        raise ServingError(
            grpc.StatusCode.DATA_LOSS, f"{exc.message}. Please verify your warmup data is in TFRecord format."
        ) from exc
    log.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d. "
        "Elapsed time (microseconds): %d.",
        path,
        count,
        (time.monotonic() - started) * 1e6,
    )
    return count


def _run(servable: Servable, entry: prediction_log_pb2.PredictionLog) -> None:
    kind = entry.WhichOneof("log_type")
    if kind is None:
        return
    if kind != "predict_log":
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}")
    request = entry.predict_log.request
    servable.predict(
        request.model_spec.signature_name, request.inputs, request.output_filter, decode=tensors.to_array
    )
