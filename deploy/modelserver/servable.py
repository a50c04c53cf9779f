"""One loaded SavedModel version: its signatures, Predict on it, and who is still using it.

Requests are checked the way TF Serving's predict_util.cc checks them (signature, input
names, output filter) and then against the signature's dtypes and shapes, so a bad
request is INVALID_ARGUMENT before TensorFlow sees it; errors TensorFlow raises while
running keep their own code.
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

from deploy.modelserver import dtypes
from deploy.modelserver.errors import ServingError, code_from_number

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


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


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
    def __init__(self, name: str, version: int, path: str) -> None:
        self.name, self.version, self.path = name, version, path
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
        decode: Callable[[str, Any], np.ndarray] = lambda alias, value: value,
    ) -> tuple[str, dict[str, Output]]:
        """Run a signature; `decode` turns each raw input (a TensorProto, say) into an array."""
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
            raise _invalid(
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). "
                f"Sent extra: {{{','.join(sorted(set(sent) - set(expected)))}}}. "
                f"Missing but required: {{{','.join(sorted(set(expected) - set(sent)))}}}."
            )
        arrays: dict[str, np.ndarray] = {}
        for alias, raw in inputs.items():
            if alias not in signature.inputs:
                raise _invalid(
                    f"input tensor alias not found in signature: {alias}. "
                    f"Inputs expected to be in the set {{{','.join(expected)}}}."
                )
            arrays[alias] = decode(alias, raw)
        wanted = self._outputs(signature, output_filter)
        tensors = {
            alias: self._input_tensor(index, alias, arrays[alias], signature.inputs[alias])
            for index, alias in enumerate(sorted(arrays))
        }
        function = self._functions.get(key)
        if function is None:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.'
            )
        try:
            results = function(**tensors)
        except tf.errors.OpError as exc:
            raise ServingError(code_from_number(exc.error_code), exc.message) from exc
        except (TypeError, ValueError) as exc:
            raise _invalid(str(exc)) from exc
        return key, {
            alias: (results[alias].numpy(), results[alias].dtype.as_datatype_enum) for alias in wanted
        }

    @staticmethod
    def _outputs(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]) -> list[str]:
        names = sorted(signature.outputs)
        seen: list[str] = []
        for alias in output_filter:
            if alias not in signature.outputs:
                raise _invalid(
                    f"output tensor alias not found in signature: {alias} "
                    f"Outputs expected to be in the set {{{','.join(names)}}}."
                )
            if alias in seen:
                raise _invalid(f"duplicate output tensor alias: {alias}")
            seen.append(alias)
        return seen or names

    @staticmethod
    def _input_tensor(
        index: int, alias: str, array: np.ndarray, info: meta_graph_pb2.TensorInfo
    ) -> tf.Tensor:
        wanted = tf.dtypes.as_dtype(info.dtype)
        given = dtypes.of_array(array)
        if given != info.dtype:
            raise _invalid(
                f"Expects arg[{index}] ({alias}) to be {dtypes.name(info.dtype)} "
                f"but {dtypes.name(given)} is provided"
            )
        if not info.tensor_shape.unknown_rank:
            dims = [d.size for d in info.tensor_shape.dim]
            compatible = len(dims) == array.ndim and all(
                d < 0 or d == s for d, s in zip(dims, array.shape, strict=True)
            )
            if not compatible:
                shown = ",".join("?" if d < 0 else str(d) for d in dims)
                raise _invalid(
                    f"input tensor {alias} has shape {list(array.shape)}, "
                    f"incompatible with the signature's [{shown}]"
                )
        return tf.constant(array, dtype=wanted)
