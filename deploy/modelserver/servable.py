"""One loaded SavedModel version: its signatures, Predict on it, and who is still using it.

Requests are checked the way TF Serving's predict_util.cc checks them (signature, input
names, output filter) and then against the signature's dtypes and shapes and the server's
limits (deploy/modelserver/limits.py), each input before it is built, so a bad request is
INVALID_ARGUMENT before TensorFlow sees it. Errors TensorFlow raises while running keep
their own code; their text is passed on for client errors only, internal ones are logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from recstream.deploy.modelserver import dtypes, limits
from recstream.deploy.modelserver.errors import ServingError, code_from_number, invalid
from recstream.deploy.modelserver.limits import Limits
from recstream.deploy.modelserver.tensors import dtype_error, signature_dims

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"
_PREDICT_METHODS = {
    "tensorflow/serving/predict",
    "tensorflow/serving/classify",
    "tensorflow/serving/regress",
}

# An output: its values and its tensorflow.DataType.
Output = tuple[np.ndarray, int]
# (position among the sorted inputs, alias, raw input, the signature's TensorInfo, limits) -> array
Decode = Callable[[int, str, Any, meta_graph_pb2.TensorInfo, Limits], np.ndarray]
# TensorFlow's codes whose message is about the request, so the client may read it.
_CLIENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}


def _as_is(index: int, alias: str, raw: Any, info: meta_graph_pb2.TensorInfo, bounds: Limits) -> Any:
    return raw


def read_meta_graph(path: str) -> meta_graph_pb2.MetaGraphDef:
    """The `serve` meta graph of the SavedModel at `path` (its SignatureDefs are the metadata)."""
    directory = Path(path)
    saved_model = saved_model_pb2.SavedModel()
    if (directory / "saved_model.pb").is_file():
        try:
            saved_model.ParseFromString((directory / "saved_model.pb").read_bytes())
        except DecodeError as exc:
            raise ServingError(
                grpc.StatusCode.DATA_LOSS, f"Can't parse {directory / 'saved_model.pb'} as binary proto"
            ) from exc
    elif (directory / "saved_model.pbtxt").is_file():
        text_format.Parse((directory / "saved_model.pbtxt").read_text(), saved_model)
    else:
        raise ServingError(
            grpc.StatusCode.NOT_FOUND,
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}",
        )
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ServingError(
        grpc.StatusCode.NOT_FOUND,
        f"Could not find meta graph def matching supplied tags: {{ {SERVE_TAG} }} in {path}",
    )


class Servable:
    def __init__(self, name: str, version: int, path: str, bounds: Limits | None = None) -> None:
        self.name, self.version, self.path = name, version, path
        self.limits = bounds or Limits()
        self.signature_defs = dict(read_meta_graph(path).signature_def)
        self._model = tf.saved_model.load(path, tags=[SERVE_TAG])
        self._functions = dict(self._model.signatures)
        self._users = 0
        self._idle = threading.Condition()

    # -- references held by requests ------------------------------------------------------------
    def acquire(self) -> None:
        with self._idle:
            self._users += 1

    def release(self) -> None:
        with self._idle:
            self._users -= 1
            if not self._users:
                self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no request holds this version; False if some still do after `timeout`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._users == 0, timeout)

    # -- predict --------------------------------------------------------------------------------
    def signature(self, name: str) -> tuple[str, meta_graph_pb2.SignatureDef]:
        """The SignatureDef for a request's signature name (empty means serving_default)."""
        key = name or DEFAULT_SIGNATURE
        if key not in self.signature_defs:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.'
            )
        return key, self.signature_defs[key]

    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, Any],
        output_filter: Sequence[str] = (),
        decode: Decode = _as_is,
    ) -> tuple[str, dict[str, Output]]:
        """Run a signature; `decode` turns each raw input (a TensorProto, say) into an array,
        bounding it first; every array is checked again before it becomes a tensor."""
        key, signature = self.signature(signature_name)
        if signature.method_name not in _PREDICT_METHODS:
            raise ServingError(
                grpc.StatusCode.INTERNAL,
                "Expected prediction signature method_name to be one of {"
                + ", ".join(sorted(_PREDICT_METHODS))
                + f"}}. Was: {signature.method_name}",
            )
        expected = sorted(signature.inputs)
        if len(inputs) != len(expected):
            sent = sorted(inputs)
            raise invalid(
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{_names(sent)}}}) != len({{{','.join(expected)}}}). "
                f"Sent extra: {{{_names(sorted(set(sent) - set(expected)))}}}. "
                f"Missing but required: {{{','.join(sorted(set(expected) - set(sent)))}}}."
            )
        for alias in inputs:
            if alias not in signature.inputs:
                raise invalid(
                    f"input tensor alias not found in signature: {limits.shown(alias)}. "
                    f"Inputs expected to be in the set {{{','.join(expected)}}}."
                )
        wanted = self._outputs(signature, output_filter)
        tensors = {}
        for index, alias in enumerate(expected):
            info = signature.inputs[alias]
            array = decode(index, alias, inputs[alias], info, self.limits)
            tensors[alias] = self._input_tensor(index, alias, array, info, self.limits)
        function = self._functions.get(key)
        if function is None:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.'
            )
        try:
            results = function(**tensors)
        except tf.errors.OpError as exc:
            code = code_from_number(exc.error_code)
            if code in _CLIENT_CODES:
                raise ServingError(code, exc.message) from exc
            log.error("%s version %d, signature %s failed: %s", self.name, self.version, key, exc.message)
            raise ServingError(code, "internal error") from exc
        except (TypeError, ValueError) as exc:  # their text quotes the input tensors
            log.info("%s version %d, signature %s refused its inputs: %s", self.name, self.version, key, exc)
            raise invalid("the input tensors do not fit the signature") from exc
        return key, {
            alias: (results[alias].numpy(), results[alias].dtype.as_datatype_enum) for alias in wanted
        }

    @staticmethod
    def _outputs(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]) -> list[str]:
        names = sorted(signature.outputs)
        seen: list[str] = []
        for alias in output_filter:
            if alias not in signature.outputs:
                raise invalid(
                    f"output tensor alias not found in signature: {limits.shown(alias)} "
                    f"Outputs expected to be in the set {{{','.join(names)}}}."
                )
            if alias in seen:
                raise invalid(f"duplicate output tensor alias: {limits.shown(alias)}")
            seen.append(alias)
        return seen or names

    @staticmethod
    def _input_tensor(
        index: int, alias: str, array: np.ndarray, info: meta_graph_pb2.TensorInfo, bounds: Limits
    ) -> tf.Tensor:
        """The tensor fed for an input, once its array passes the rule every input passes."""
        given = dtypes.of_array(array)
        if given != info.dtype:
            raise dtype_error(index, alias, info.dtype, given)
        count = limits.check_dims(alias, array.shape, signature_dims(info), bounds)
        if given == dtypes.DT_STRING:
            lengths = [len(v) if isinstance(v, bytes | str) else 0 for v in array.flat]
            limits.check_strings(alias, lengths, count, bounds)
        else:
            limits.check_size(alias, count, array.itemsize, bounds)
        return tf.constant(array, dtype=tf.dtypes.as_dtype(info.dtype))


def _names(names: Sequence[str], most: int = 8) -> str:
    """Client-chosen names for an error message: a few, each cut short."""
    listed = ",".join(limits.shown(n) for n in names[:most])
    return listed + (f",... ({len(names)} in all)" if len(names) > most else "")
