"""Property-based tests of the model server's parsers of untrusted bytes: Predict TensorProtos
and REST JSON bodies. Whatever arrives either parses to a value within the limits or is refused
with a ServingError; nothing else ever escapes (no RecursionError, UnicodeError, MemoryError...)."""

from __future__ import annotations

import json
from typing import Any

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from recstream.deploy.modelserver import dtypes, rest_json, tensors
from recstream.deploy.modelserver.errors import ServingError
from recstream.deploy.modelserver.limits import MAX_RANK, Limits
from recstream.deploy.modelserver.servable import Servable

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = Limits(max_grpc_message_bytes=1 << 16, max_batch=64, max_string_bytes=256)

DTYPES = [
    dtypes.DT_FLOAT,
    dtypes.DT_DOUBLE,
    dtypes.DT_INT32,
    dtypes.DT_UINT8,
    dtypes.DT_INT8,
    dtypes.DT_INT64,
    dtypes.DT_STRING,
    dtypes.DT_BOOL,
    dtypes.DT_HALF,
    dtypes.DT_UINT64,
    dtypes.DT_COMPLEX64,
    dtypes.DT_BFLOAT16,
]
ODD_DTYPES = [dtypes.DT_INVALID, 20, 21, 99, -1]  # resource, variant, unknown numbers
FIELD_VALUES = {
    "float_val": st.floats(width=32, allow_nan=True),
    "double_val": st.floats(),
    "int_val": st.integers(-(2**31), 2**31 - 1),
    "int64_val": st.integers(-(2**63), 2**63 - 1),
    "uint64_val": st.integers(0, 2**64 - 1),
    "uint32_val": st.integers(0, 2**32 - 1),
    "bool_val": st.booleans(),
    "half_val": st.integers(0, 2**16 + 5),
    "scomplex_val": st.floats(width=32),
    "string_val": st.binary(max_size=300),
}
DIM = st.one_of(
    st.integers(-2, 8),
    st.sampled_from([63, 64, 65, 1023, 1024, 1025, 1 << 28, 1 << 40, 2**63 - 1, -(2**63)]),
)


def expect_refusal(call) -> Any:
    """The value `call` returns, or None after a ServingError; anything else fails the test."""
    try:
        return call()
    except ServingError as error:
        assert isinstance(error.code, grpc.StatusCode)
        assert error.message and len(error.message) < 1000
        return None


@st.composite
def tensor_protos(draw) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=draw(st.sampled_from(DTYPES + ODD_DTYPES)))
    if draw(st.integers(0, 9)) == 0:
        proto.tensor_shape.unknown_rank = True
    for size in draw(st.lists(DIM, max_size=4)):
        proto.tensor_shape.dim.add(size=size)
    for field in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=2)):
        getattr(proto, field).extend(draw(st.lists(FIELD_VALUES[field], max_size=70)))
    if draw(st.integers(0, 4)) == 0:
        proto.tensor_content = draw(st.binary(max_size=600))
    return proto


@st.composite
def tensor_infos(draw, dtype: int) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name="x:0", dtype=dtype)
    if draw(st.booleans()):
        info.tensor_shape.unknown_rank = True
    else:
        for size in draw(st.lists(st.sampled_from([-1, -1, 0, 1, 2, 3]), max_size=3)):
            info.tensor_shape.dim.add(size=size)
    return info


def bounded(array: np.ndarray, info: meta_graph_pb2.TensorInfo) -> None:
    assert array.ndim <= MAX_RANK
    assert array.ndim == 0 or array.shape[0] <= LIMITS.max_batch
    assert array.nbytes <= LIMITS.max_input_bytes
    spec = tensors.signature_dims(info)
    if spec is not None:
        assert len(spec) == array.ndim
        assert all(s < 0 or s == d for s, d in zip(spec, array.shape, strict=True))


@FUZZ
@given(data=st.data())
def test_a_tensor_proto_is_an_array_within_bounds_or_refused(data: st.DataObject) -> None:
    proto = data.draw(tensor_protos())
    same = data.draw(st.integers(0, 4)) > 0
    info = data.draw(tensor_infos(proto.dtype if same else data.draw(st.sampled_from(DTYPES))))
    array = expect_refusal(lambda: tensors.to_array(0, "x", proto, info, LIMITS))
    if array is None:
        return
    assert isinstance(array, np.ndarray)
    assert array.shape == tuple(d.size for d in proto.tensor_shape.dim)
    bounded(array, info)
    # What the decoder lets through is what the servable feeds TensorFlow.
    assert Servable._input_tensor(0, "x", array, info, LIMITS) is not None


@FUZZ
@given(raw=st.binary(max_size=200))
def test_any_bytes_that_decode_as_a_tensor_proto_are_safe(raw: bytes) -> None:
    try:
        proto = tensor_pb2.TensorProto.FromString(raw)
    except Exception:  # gRPC refuses what does not deserialize, before the servicer runs
        return
    info = meta_graph_pb2.TensorInfo(dtype=proto.dtype)
    info.tensor_shape.unknown_rank = True
    array = expect_refusal(lambda: tensors.to_array(0, "x", proto, info, LIMITS))
    if array is not None:
        bounded(array, info)


# -- REST JSON -----------------------------------------------------------------------------------
SIGNATURES = [
    {"user_id": dtypes.DT_STRING, "k": dtypes.DT_INT32},
    {"x": dtypes.DT_FLOAT},
    {"x": dtypes.DT_INT8},
    {"b": dtypes.DT_BOOL, "d": dtypes.DT_DOUBLE},
    {"u": dtypes.DT_UINT64},
    {"h": dtypes.DT_HALF},
]
KEYS = st.sampled_from(["instances", "inputs", "signature_name", "b64", "user_id", "k", "x", "b", "d", "u"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["YWJj", "not base64!", "\ud800", "=="]),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(KEYS, st.text(max_size=5)), children, max_size=4),
    ),
    max_leaves=40,
)
DOCS = st.dictionaries(KEYS, JSON_VALUES, max_size=4)


def check_parse(body: bytes, infos: dict[str, int]) -> None:
    def parse() -> tuple[rest_json.Format, dict[str, np.ndarray]]:
        doc = rest_json.parse_body(body)
        rest_json.signature_name(doc)
        return rest_json.parse_inputs(doc, infos, LIMITS.max_batch)

    parsed = expect_refusal(parse)
    if parsed is None:
        return
    fmt, arrays = parsed
    assert isinstance(fmt, rest_json.Format)
    assert set(arrays) <= set(infos) and arrays
    for name, array in arrays.items():
        assert isinstance(array, np.ndarray)
        assert dtypes.of_array(array) == infos[name]
        assert array.ndim <= MAX_RANK
        if fmt is rest_json.Format.ROW:
            assert 1 <= array.shape[0] <= LIMITS.max_batch


@FUZZ
@given(doc=DOCS, infos=st.sampled_from(SIGNATURES))
def test_a_json_document_parses_to_typed_inputs_or_is_refused(doc: dict, infos: dict[str, int]) -> None:
    check_parse(json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass"), infos)


@FUZZ
@given(body=st.binary(max_size=300), infos=st.sampled_from(SIGNATURES))
def test_any_body_bytes_are_parsed_or_refused(body: bytes, infos: dict[str, int]) -> None:
    check_parse(body, infos)


@FUZZ
@given(
    depth=st.integers(1, 100_000),
    opener=st.sampled_from(["[", '{"inputs":', '{"instances":[', '{"inputs":{"x":']),
    infos=st.sampled_from(SIGNATURES),
)
def test_nesting_of_any_depth_is_parsed_or_refused(depth: int, opener: str, infos: dict[str, int]) -> None:
    body = opener + "[" * depth + "1" + "]" * depth + ("]" if opener.endswith("[") else "")
    check_parse((body + "}" * opener.count("{")).encode(), infos)
    check_parse((opener + "[" * depth).encode(), infos)  # cut short
