"""Model server config validation and the REST JSON formats, checked against TF Serving's rules."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from recstream.deploy.modelserver import dtypes, rest_json
from recstream.deploy.modelserver.config import VersionPolicy, from_proto, list_versions, read_config_file
from recstream.deploy.modelserver.errors import ServingError

STRING, INT32, FLOAT = dtypes.DT_STRING, dtypes.DT_INT32, dtypes.DT_FLOAT


def config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def invalid(call, *args) -> str:
    with pytest.raises(ServingError) as error:
        call(*args)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return error.value.message


# -- config ------------------------------------------------------------------------------------
def test_config_policies_and_labels() -> None:
    models = from_proto(
        config(
            """model_config_list {
              config { name: "a" base_path: "/m/a" model_platform: "tensorflow" }
              config { name: "b" base_path: "/m/b" model_platform: "tensorflow"
                       model_version_policy { specific { versions: 3 versions: 4 } }
                       version_labels { key: "stable" value: 4 } version_labels { key: "previous" value: 3 } }
              config { name: "c" base_path: "/m/c" model_type: TENSORFLOW model_version_policy { all {} } }
              config { name: "d" base_path: "/m/d" model_platform: "tensorflow"
                       model_version_policy { latest { num_versions: 2 } } }
            }"""
        )
    )
    assert [(m.name, m.policy) for m in models] == [
        ("a", VersionPolicy()),
        ("b", VersionPolicy("specific", versions=frozenset({3, 4}))),
        ("c", VersionPolicy("all")),
        ("d", VersionPolicy("latest", num_versions=2)),
    ]
    assert models[1].labels == {"stable": 4, "previous": 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'config { name: "a" base_path: "/a" model_platform: "tensorflow" }'
            'config { name: "a" base_path: "/b" model_platform: "tensorflow" }',
            "Illegal to list model a multiple times in config list",
        ),
        (
            'config { name: "a" base_path: "rel/a" model_platform: "tensorflow" }',
            "Expected model a to have an absolute path or URI; got base_path()=rel/a",
        ),
        ('config { name: "a" base_path: "/a" }', "Illegal setting neither ModelServerConfig::model_type"),
        (
            'config { name: "a" base_path: "/a" model_platform: "onnx" }',
            "Model a requests unsupported platform onnx",
        ),
    ],
)
def test_config_rejections_match_tf_serving(text: str, message: str) -> None:
    assert message in invalid(from_proto, config(f"model_config_list {{ {text} }}"))


def test_only_model_config_list_is_accepted() -> None:
    assert "Only ModelConfigList" in invalid(from_proto, model_server_config_pb2.ModelServerConfig())


def test_config_file_and_version_directories(tmp_path: Path) -> None:
    for name in ("1", "20", "3x", "tmp", ".5"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert list_versions(str(tmp_path)) == {1: str(tmp_path / "1"), 20: str(tmp_path / "20")}
    file = tmp_path / "models.config"
    file.write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path}" model_platform: "tensorflow" }} }}'
    )
    assert [m.base_path for m in read_config_file(file)] == [str(tmp_path)]
    assert VersionPolicy("latest", num_versions=2).select({1: "a", 5: "b", 3: "c"}) == {3: "c", 5: "b"}
    assert VersionPolicy("specific", versions=frozenset({1, 9})).select({1: "a", 5: "b"}) == {1: "a"}


# -- REST requests -----------------------------------------------------------------------------
def test_columnar_and_row_inputs() -> None:
    fmt, arrays = rest_json.parse_inputs(
        {"inputs": {"user_id": ["a", {"b64": "Yg=="}], "k": 3}}, {"user_id": STRING, "k": INT32}
    )
    assert fmt is rest_json.Format.COLUMNAR
    assert arrays["user_id"].tolist() == [b"a", b"b"]
    assert arrays["k"].dtype == np.int32 and arrays["k"].shape == ()
    fmt, arrays = rest_json.parse_inputs(
        {"instances": [{"users": "a", "products": "x"}, {"users": "b", "products": "y"}]},
        {"users": STRING, "products": STRING},
    )
    assert fmt is rest_json.Format.ROW
    assert arrays["products"].tolist() == [b"x", b"y"]
    _, arrays = rest_json.parse_inputs({"instances": [[1.5, 2], [3, 4]]}, {"x": FLOAT})
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (2, 2)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"inputs": {"user_id": ["a"]}}, "Missing named input: k in 'inputs' object."),
        (
            {"inputs": {"user_id": ["a"], "k": "3"}},
            "JSON Value Type: String is not of expected type: int32",
        ),
        ({"inputs": {"user_id": [["a"], "b"], "k": 1}}, "found at incorrect level"),
        ({"instances": [], "signature_name": "x"}, "No values in 'instances' array"),
        ({"instances": ["a"]}, "instances is a plain list, but expecting list of objects"),
        ({"instances": [{"user_id": "a", "k": 1}, {"user_id": "b"}]}, "keys must be equal to: k,user_id"),
        ({"instances": [{"user_id": "a"}], "inputs": {}}, "expecting only one of 'inputs' or 'instances'"),
        ({"signature_name": "x"}, "Missing 'inputs' or 'instances' key"),
    ],
)
def test_malformed_inputs(doc: dict, message: str) -> None:
    assert message in invalid(rest_json.parse_inputs, doc, {"user_id": STRING, "k": INT32})


def test_lossy_float_and_bad_body() -> None:
    assert "without loss of precision" in invalid(
        rest_json.parse_inputs, {"inputs": [16777217]}, {"x": FLOAT}
    )
    assert invalid(rest_json.parse_body, b"") == "JSON Parse error: The document is empty"
    assert invalid(rest_json.parse_body, b"[1]").endswith("Is not object")
    assert invalid(rest_json.parse_body, b"{").startswith("JSON Parse error:")


# -- REST responses ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "dtype", "text"),
    [
        (0.1, FLOAT, "0.1"),
        (3.0, FLOAT, "3.0"),
        (1e6, FLOAT, "1e+06"),
        (float(np.float32(1 / 3)), FLOAT, "0.333333343"),
        (1 / 3, dtypes.DT_DOUBLE, "0.33333333333333331"),
        (float("nan"), FLOAT, "NaN"),
        (float("-inf"), FLOAT, "-Infinity"),
    ],
)
def test_floats_are_written_like_tf_serving(value: float, dtype: int, text: str) -> None:
    assert rest_json.format_float(float(np.float32(value)) if dtype == FLOAT else value, dtype) == text


def test_outputs_row_and_columnar() -> None:
    outputs = {
        "items": (np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object), STRING),
        "scores": (np.array([[1.0, 0.5], [2.0, 0.25]], dtype=np.float32), FLOAT),
        "raw_bytes": (np.array([b"\x00\xff", b"ok"], dtype=object), STRING),
    }
    row = json.loads(rest_json.outputs_json(outputs, rest_json.Format.ROW))
    assert row == {
        "predictions": [
            {"items": ["a", "b"], "scores": [1.0, 0.5], "raw_bytes": {"b64": "AP8="}},
            {"items": ["c", "d"], "scores": [2.0, 0.25], "raw_bytes": {"b64": "b2s="}},
        ]
    }
    single = {"scores": (np.array([1.5, 2.0], dtype=np.float32), FLOAT)}
    assert json.loads(rest_json.outputs_json(single, rest_json.Format.ROW)) == {"predictions": [1.5, 2.0]}
    assert json.loads(rest_json.outputs_json(single, rest_json.Format.COLUMNAR)) == {"outputs": [1.5, 2.0]}
    scalar = {**single, "model_version": (np.array(7, dtype=np.int64), dtypes.DT_INT64)}
    assert json.loads(rest_json.outputs_json(scalar, rest_json.Format.COLUMNAR)) == {
        "outputs": {"scores": [1.5, 2.0], "model_version": 7}
    }
    assert "model_version has no shape information" in invalid(
        rest_json.outputs_json, scalar, rest_json.Format.ROW
    )
    not_utf8 = {"items": (np.array([b"\xff"], dtype=object), STRING)}
    assert json.loads(rest_json.outputs_json(not_utf8, rest_json.Format.COLUMNAR)) == {
        "outputs": [{"b64": "/w=="}]
    }
