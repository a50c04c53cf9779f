"""The one rule every Predict input passes before it is built (deploy/modelserver/limits.py),
on the hostile TensorProtos the issue names, and how the limits reach the server process."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from recstream.deploy.modelserver import command, dtypes, tensors
from recstream.deploy.modelserver.errors import ServingError
from recstream.deploy.modelserver.limits import Limits
from recstream.deploy.modelserver.server import _LIMIT_FLAGS, _limit_defaults, parse_args
from recstream.stream.settings import FIELDS, load_settings

LIMITS = Limits(max_batch=16, max_string_bytes=100, max_grpc_message_bytes=1 << 16)
STRING, INT32, FLOAT = dtypes.DT_STRING, dtypes.DT_INT32, dtypes.DT_FLOAT


def info(dtype: int, *dims: int) -> meta_graph_pb2.TensorInfo:
    result = meta_graph_pb2.TensorInfo(dtype=dtype)
    for size in dims:
        result.tensor_shape.dim.add(size=size)
    return result


def any_shape(dtype: int) -> meta_graph_pb2.TensorInfo:
    result = meta_graph_pb2.TensorInfo(dtype=dtype)
    result.tensor_shape.unknown_rank = True
    return result


def proto(dtype: int, dims: list[int], **fields) -> tensor_pb2.TensorProto:
    result = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for size in dims:
        result.tensor_shape.dim.add(size=size)
    return result


def refused(message: str, raw: tensor_pb2.TensorProto, spec: meta_graph_pb2.TensorInfo) -> None:
    with pytest.raises(ServingError) as error:
        tensors.to_array(1, "user_id", raw, spec, LIMITS)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.message, error.value.message


def test_the_forty_byte_request_declaring_a_huge_shape_is_refused_from_its_shape() -> None:
    huge = proto(STRING, [1 << 28], string_val=[b"u"])
    assert len(huge.SerializeToString()) < 40
    refused("has batch size 268435456, more than the limit 16", huge, info(STRING, -1))
    wide = proto(STRING, [1, 1 << 28], string_val=[b"u"])  # within the batch, over the broadcast
    refused("declares 268435456 elements but carries 1 values", wide, info(STRING, -1, -1))
    refused("declares 268435456 elements but carries 1 values", wide, any_shape(STRING))
    refused("has a negative dimension", proto(STRING, [-1], string_val=[b"u"]), info(STRING, -1))
    refused("has rank 33, more than 32", proto(FLOAT, [1] * 33), any_shape(FLOAT))
    refused("incompatible with the signature's []", proto(INT32, [1 << 28], int_val=[3]), info(INT32))


def test_values_must_fill_the_declared_shape_but_one_may_fill_a_small_one() -> None:
    three = tensors.to_array(0, "x", proto(STRING, [3], string_val=[b"a"]), info(STRING, -1), LIMITS)
    assert three.tolist() == [b"a", b"a", b"a"]  # TensorFlow's broadcast of a single value
    zeros = tensors.to_array(0, "x", proto(FLOAT, [2, 2]), info(FLOAT, -1, 2), LIMITS)
    assert zeros.tolist() == [[0.0, 0.0], [0.0, 0.0]]
    refused("declares 3 elements but carries 2 values", proto(INT32, [3], int_val=[1, 2]), info(INT32, -1))
    refused("declares 2 elements but carries 3 values", proto(INT32, [2], int_val=[1, 2, 3]), info(INT32, -1))
    packed = proto(FLOAT, [2], tensor_content=np.array([1.5, 2.5], np.float32).tobytes())
    assert tensors.to_array(0, "x", packed, info(FLOAT, -1), LIMITS).tolist() == [1.5, 2.5]
    refused(
        "tensor_content does not hold 3 elements",
        proto(FLOAT, [3], tensor_content=b"\0" * 8),
        info(FLOAT, -1),
    )


def test_string_elements_and_the_decoded_size_are_bounded() -> None:
    refused(
        "a string of 101 bytes, more than the limit 100",
        proto(STRING, [1], string_val=[b"x" * 101]),
        info(STRING, -1),
    )
    # 1000 broadcast copies of 100 bytes would take more than a message may carry.
    wide = proto(STRING, [1, 1000], string_val=[b"x" * 100])
    refused("would take more than 65536 bytes", wide, info(STRING, -1, -1))


def test_the_dtype_is_checked_first_and_names_stay_short() -> None:
    refused(
        "Expects arg[1] (user_id) to be string but int32 is provided",
        proto(INT32, [1 << 40], int_val=[1]),
        info(STRING, -1),
    )
    with pytest.raises(ServingError) as error:
        tensors.to_array(0, "a" * 10_000, proto(INT32, [-1]), info(INT32, -1), LIMITS)
    assert len(error.value.message) < 200


# -- how the limits reach the process ------------------------------------------------------------
def test_limit_defaults_are_the_settings_defaults() -> None:
    settings = load_settings(environ={}, use_stack_env=False)
    from_settings = {attr: getattr(settings, "modelserver_" + attr) for _, attr, _, _ in _LIMIT_FLAGS}
    assert Limits(**from_settings) == Limits() == Limits(**_limit_defaults({}))
    assert {"modelserver_" + attr for _, attr, _, _ in _LIMIT_FLAGS} <= {f.attr for f in FIELDS}


def test_the_environment_reaches_the_server_through_the_launch_command(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSERVER_MAX_BATCH", "7")
    monkeypatch.setenv("MODELSERVER_REST_TIMEOUT_S", "2.5")
    argv, env = command(tmp_path / "m", "m", 1, 2)  # how the stack and the tests start it
    limits = parse_args(argv[3:], environ=env).limits
    assert (limits.max_batch, limits.rest_timeout_s, limits.rest_workers) == (7, 2.5, 16)
    assert parse_args(
        [*argv[3:], "--max-batch", "9", "--rest_api_num_threads", "3"], environ=env
    ).limits == Limits(max_batch=9, rest_timeout_s=2.5, rest_workers=3)


@pytest.mark.parametrize(
    ("environ", "argv", "message"),
    [
        ({"MODELSERVER_MAX_BATCH": "0"}, [], "MODELSERVER_MAX_BATCH='0': must be >= 1"),
        ({}, ["--max-grpc-message-bytes", str(2**31)], "max gRPC message bytes must be in 1..2147483647"),
        ({}, ["--rest-timeout-s", "-1"], "--rest-timeout-s"),
    ],
)
def test_a_bad_limit_stops_the_start_with_its_name(
    environ: dict, argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--model-base-path", "/m", *argv], environ=environ)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
