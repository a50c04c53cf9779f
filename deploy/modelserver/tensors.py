"""TensorProto <-> numpy, writing outputs the way TF Serving does (typed value fields).

Requests are bounded before they are built (check_proto): make_ndarray pads a one-value
proto out to whatever shape it declares, so the shape is checked first.
TF Serving serializes Predict outputs with Tensor::AsProtoField (float_val, string_val,
...), not tensor_content; clients that read `outputs[...].float_val` depend on that.
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from recstream.deploy.modelserver import dtypes, limits
from recstream.deploy.modelserver.errors import ServingError, invalid
from recstream.deploy.modelserver.limits import MAX_BROADCAST_ELEMENTS, Limits

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


# dtype -> (the TensorProto field make_ndarray reads, proto values per element, bytes per element)
_VALUES: dict[int, tuple[str, int, int]] = {
    dtypes.DT_FLOAT: ("float_val", 1, 4),
    dtypes.DT_DOUBLE: ("double_val", 1, 8),
    dtypes.DT_INT32: ("int_val", 1, 4),
    dtypes.DT_UINT8: ("int_val", 1, 1),
    dtypes.DT_INT16: ("int_val", 1, 2),
    dtypes.DT_INT8: ("int_val", 1, 1),
    dtypes.DT_UINT16: ("int_val", 1, 2),
    dtypes.DT_INT64: ("int64_val", 1, 8),
    dtypes.DT_UINT32: ("uint32_val", 1, 4),
    dtypes.DT_UINT64: ("uint64_val", 1, 8),
    dtypes.DT_BOOL: ("bool_val", 1, 1),
    dtypes.DT_HALF: ("half_val", 1, 2),
    dtypes.DT_BFLOAT16: ("half_val", 1, 2),
    dtypes.DT_COMPLEX64: ("scomplex_val", 2, 8),
    dtypes.DT_COMPLEX128: ("dcomplex_val", 2, 16),
    dtypes.DT_STRING: ("string_val", 1, 8),
}


def signature_dims(info: meta_graph_pb2.TensorInfo) -> list[int] | None:
    """The signature's shape of an input (-1: any size), or None when it leaves the rank open."""
    shape = info.tensor_shape
    return None if shape.unknown_rank else [d.size for d in shape.dim]


def dtype_error(index: int, alias: str, wanted: int, given: int) -> ServingError:
    return invalid(
        f"Expects arg[{index}] ({limits.shown(alias)}) to be {dtypes.name(wanted)} "
        f"but {dtypes.name(given)} is provided"
    )


def check_proto(
    index: int, alias: str, proto: tensor_pb2.TensorProto, info: meta_graph_pb2.TensorInfo, bounds: Limits
) -> None:
    """Everything make_ndarray would trust, checked from the proto alone: dtype and declared shape
    against the signature and the limits, and that the values present fill exactly that shape
    (one value may fill a small tensor, as TensorFlow broadcasts it; never a large one)."""
    if proto.dtype != info.dtype:
        raise dtype_error(index, alias, info.dtype, proto.dtype)
    name = limits.shown(alias)
    if proto.dtype not in _VALUES:
        raise invalid(f"input tensor {name} has an unsupported type {dtypes.name(proto.dtype)}")
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input tensor {name} has no shape")
    count = limits.check_dims(alias, [d.size for d in proto.tensor_shape.dim], signature_dims(info), bounds)
    field, per_element, element_bytes = _VALUES[proto.dtype]
    if proto.tensor_content:
        if proto.dtype == dtypes.DT_STRING or len(proto.tensor_content) != count * element_bytes:
            raise invalid(f"input tensor {name}: tensor_content does not hold {count} elements")
        return
    values = getattr(proto, field)
    if len(values) % per_element:
        raise invalid(f"input tensor {name} has an incomplete complex value")
    present = len(values) // per_element
    broadcast = present <= 1 and count <= MAX_BROADCAST_ELEMENTS
    if present != count and not broadcast:
        raise invalid(f"input tensor {name} declares {count} elements but carries {present} values")
    if proto.dtype == dtypes.DT_STRING:
        limits.check_strings(alias, [len(v) for v in values], count, bounds)
    else:
        limits.check_size(alias, count, element_bytes, bounds)


def to_array(
    index: int,
    alias: str,
    proto: tensor_pb2.TensorProto,
    info: meta_graph_pb2.TensorInfo,
    bounds: Limits,
) -> np.ndarray:
    """A request tensor as an array, built only once check_proto has bounded it; INVALID_ARGUMENT
    when the proto does not describe one."""
    check_proto(index, alias, proto, info, bounds)
    import tensorflow as tf

    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError, OverflowError) as exc:
        raise invalid(f"tensor parsing error: {limits.shown(alias)}") from exc


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
