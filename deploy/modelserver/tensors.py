"""TensorProto <-> numpy, writing outputs the way TF Serving does (typed value fields).

TF Serving serializes Predict outputs with Tensor::AsProtoField (float_val, string_val,
...), not tensor_content; clients that read `outputs[...].float_val` depend on that.
"""

from __future__ import annotations

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2

from deploy.modelserver import dtypes
from deploy.modelserver.errors import ServingError

_FIELD = {
    dtypes.DT_FLOAT: "float_val",
    dtypes.DT_DOUBLE: "double_val",
    dtypes.DT_INT32: "int_val",
    dtypes.DT_INT16: "int_val",
    dtypes.DT_INT8: "int_val",
    dtypes.DT_UINT8: "int_val",
    dtypes.DT_UINT16: "int_val",
    dtypes.DT_INT64: "int64_val",
    dtypes.DT_BOOL: "bool_val",
    dtypes.DT_UINT32: "uint32_val",
    dtypes.DT_UINT64: "uint64_val",
}


def to_array(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A request tensor as an array; INVALID_ARGUMENT when the proto does not describe one."""
    import tensorflow as tf

    try:
        return tf.make_ndarray(proto)
    except Exception as exc:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}") from exc


def to_proto(array: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.ravel()
    if dtype == dtypes.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif dtype == dtypes.DT_HALF:
        proto.half_val.extend(flat.astype(np.float16).view(np.uint16).tolist())
    elif dtype in _FIELD:
        getattr(proto, _FIELD[dtype]).extend(flat.tolist())
    else:
        import tensorflow as tf

        return tf.make_tensor_proto(array)
    return proto
