"""The scorer's Predict calls to TF Serving (or the embedded model server) over gRPC asyncio.

A call names either a version (the one the last `activated` event named) or the `stable`
label the updater maintains; a version the server no longer has (a restarted server not
yet reconciled) falls back to the label. Codes that mean "try again later" are
`Retryable`; anything else is `PredictFailed` and answered as an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np

from recstream.recommender.answers import Ranked
from recstream.stream.contracts.signatures import RECOMMEND, RECOMMEND_HISTORY
from recstream.stream.contracts.signatures import STABLE_LABEL as STABLE

log = logging.getLogger(__name__)
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.NOT_FOUND,  # no version loaded yet, or the label not yet set
    }
)


class PredictFailed(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"model server: {code.name}: {details}")
        self.code = code


class Retryable(PredictFailed):
    pass


class Predictor:
    def __init__(self, endpoint: str, model: str, timeout_s: float) -> None:
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.endpoint, self.model, self.timeout_s = endpoint, model, timeout_s
        self.version: int | None = None  # None: the `stable` label
        self.without_history: set[int | None] = set()  # versions (None: the label) lacking the signature
        self._channel = grpc.aio.insecure_channel(endpoint)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def recommend(
        self,
        users: Sequence[str],
        k: int,
        histories: Sequence[Sequence[str]] | None = None,
        *,
        fallback_k: int | None = None,
    ) -> Ranked:
        """Top k per user, from their live `histories` (most recent first) when the served version has
        `recommend_history`; otherwise `serving_default` with `fallback_k` (default k)."""
        version = self.version
        if histories is not None and version not in self.without_history:
            try:
                return await self._predict(self._request(users, k, version, histories), len(users), version)
            except PredictFailed as exc:
                if exc.code != grpc.StatusCode.FAILED_PRECONDITION:  # TF Serving's "no such signature"
                    raise
                log.info(
                    "version %s has no %s: answering with %s", version or STABLE, RECOMMEND_HISTORY, RECOMMEND
                )
                self.without_history.add(version)
        return await self._predict(self._request(users, fallback_k or k, version), len(users), version)

    async def _predict(self, request: Any, n: int, version: int | None) -> Ranked:
        try:
            response = await self._stub.Predict(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND and version is not None and self.version == version:
                self.version = None  # that version is gone: follow the label until the next event
            kind = Retryable if code in RETRYABLE else PredictFailed
            raise kind(code, exc.details() or "") from None
        return _ranked(response, n)

    def _request(
        self,
        users: Sequence[str],
        k: int,
        version: int | None,
        histories: Sequence[Sequence[str]] | None = None,
    ) -> Any:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = RECOMMEND if histories is None else RECOMMEND_HISTORY
        if version is None:
            request.model_spec.version_label = STABLE
        else:
            request.model_spec.version.value = version
        request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(list(users), dtype=tf.string))
        request.inputs["k"].CopyFrom(tf.make_tensor_proto(k, dtype=tf.int32))
        if histories is not None:
            width = max(1, max(len(history) for history in histories))
            padded = [list(history) + [""] * (width - len(history)) for history in histories]
            request.inputs["history"].CopyFrom(tf.make_tensor_proto(padded, dtype=tf.string))
        return request


def _ranked(response: Any, n: int) -> Ranked:
    import tensorflow as tf

    outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    try:
        items, scores = outputs["items"], outputs["scores"]
        version = int(np.asarray(outputs["model_version"]).ravel()[0])
    except (KeyError, IndexError) as exc:
        raise PredictFailed(grpc.StatusCode.INTERNAL, f"answer without {exc}") from None
    if items.ndim != 2 or items.shape[0] != n or scores.shape != items.shape:
        raise PredictFailed(grpc.StatusCode.INTERNAL, f"answer of shape {items.shape} for {n} users")
    # Models exported before the `fallback` output: no user is marked as a fallback.
    fallback = outputs.get("fallback", np.zeros(n, dtype=bool)).astype(bool).reshape(n)
    return Ranked(items=items, scores=scores, version=version, fallback=fallback)
