"""tensorflow.DataType values, names and numpy types, without importing TensorFlow.

The enum numbers are fixed by tensorflow/core/framework/types.proto; the names are the
ones TensorFlow's DataTypeString prints, which TF Serving's error messages use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DT_INVALID = 0
DT_FLOAT = 1
DT_DOUBLE = 2
DT_INT32 = 3
DT_UINT8 = 4
DT_INT16 = 5
DT_INT8 = 6
DT_STRING = 7
DT_COMPLEX64 = 8
DT_INT64 = 9
DT_BOOL = 10
DT_BFLOAT16 = 14
DT_UINT16 = 17
DT_COMPLEX128 = 18
DT_HALF = 19
DT_UINT32 = 22
DT_UINT64 = 23

_NAMES = {
    DT_INVALID: "invalid",
    DT_FLOAT: "float",
    DT_DOUBLE: "double",
    DT_INT32: "int32",
    DT_UINT8: "uint8",
    DT_INT16: "int16",
    DT_INT8: "int8",
    DT_STRING: "string",
    DT_COMPLEX64: "complex64",
    DT_INT64: "int64",
    DT_BOOL: "bool",
    DT_BFLOAT16: "bfloat16",
    DT_UINT16: "uint16",
    DT_COMPLEX128: "complex128",
    DT_HALF: "half",
    DT_UINT32: "uint32",
    DT_UINT64: "uint64",
}

_NUMPY: dict[int, np.dtype[Any]] = {
    DT_FLOAT: np.dtype(np.float32),
    DT_DOUBLE: np.dtype(np.float64),
    DT_INT32: np.dtype(np.int32),
    DT_UINT8: np.dtype(np.uint8),
    DT_INT16: np.dtype(np.int16),
    DT_INT8: np.dtype(np.int8),
    DT_STRING: np.dtype(object),
    DT_COMPLEX64: np.dtype(np.complex64),
    DT_INT64: np.dtype(np.int64),
    DT_BOOL: np.dtype(np.bool_),
    DT_UINT16: np.dtype(np.uint16),
    DT_COMPLEX128: np.dtype(np.complex128),
    DT_HALF: np.dtype(np.float16),
    DT_UINT32: np.dtype(np.uint32),
    DT_UINT64: np.dtype(np.uint64),
}
_BY_NUMPY = {value: key for key, value in _NUMPY.items()}


def name(dtype: int) -> str:
    return _NAMES.get(dtype, f"DataType({dtype})")


def numpy_type(dtype: int) -> np.dtype[Any]:
    if dtype not in _NUMPY:
        raise TypeError(f"no numpy type for {name(dtype)}")
    return _NUMPY[dtype]


def of_array(array: np.ndarray) -> int:
    """The DataType an array would be fed as (bytes/str/object arrays are strings)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return DT_STRING
    if array.dtype.name == "bfloat16":  # ml_dtypes' type, as make_ndarray builds it
        return DT_BFLOAT16
    return _BY_NUMPY.get(array.dtype, DT_INVALID)
