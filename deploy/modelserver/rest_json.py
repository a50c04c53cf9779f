"""The REST predict JSON formats, following TF Serving's json_tensor.cc.

Requests: "instances" (row format: a list, one element per batch item, objects when
the signature has several inputs) or "inputs" (columnar: one value per input), with
strings as JSON strings or {"b64": ...}. Responses: "predictions" for row requests,
"outputs" for columnar ones; floats printed with the shortest %g form that round-trips,
strings from tensors whose name ends in "_bytes" as {"b64": ...}.

The body is untrusted: anything that is not a valid request is INVALID_ARGUMENT naming the
problem, never quoting the document (TF Serving quotes it; a 8 MiB body would come back),
and nothing here recurses deeper than MAX_RANK whatever the nesting.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np

from recstream.deploy.modelserver import dtypes
from recstream.deploy.modelserver.errors import ServingError, invalid
from recstream.deploy.modelserver.limits import MAX_RANK, shown

Output = tuple[np.ndarray, int]

_INT_RANGES = {
    dtypes.DT_INT32: (-(2**31), 2**31 - 1),
    dtypes.DT_INT16: (-(2**31), 2**31 - 1),  # rapidjson IsInt(): any int32, narrowed later
    dtypes.DT_INT8: (-(2**31), 2**31 - 1),
    dtypes.DT_UINT8: (-(2**31), 2**31 - 1),
    dtypes.DT_INT64: (-(2**63), 2**63 - 1),
    dtypes.DT_UINT32: (0, 2**32 - 1),
    dtypes.DT_UINT64: (0, 2**64 - 1),
}
_FLOAT_MAX = {
    dtypes.DT_FLOAT: float(np.finfo(np.float32).max),
    dtypes.DT_DOUBLE: float(np.finfo(np.float64).max),
}
_FLOAT_MAX_INT = {dtypes.DT_FLOAT: 2**24 - 1, dtypes.DT_DOUBLE: 2**53 - 1}


class Format(enum.Enum):
    ROW = "instances"
    COLUMNAR = "inputs"


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


# -- requests ----------------------------------------------------------------------------------
def parse_body(body: bytes) -> dict[str, Any]:
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise invalid(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from exc
    except RecursionError as exc:
        raise invalid("JSON Parse error: The document nests too deeply") from exc
    except ValueError as exc:  # an integer of more than 4300 digits
        raise invalid("JSON Parse error: A number is too long") from exc
    if not isinstance(doc, dict):
        raise invalid("JSON Value: the document Is not object")
    return doc


def signature_name(doc: Mapping[str, Any]) -> str:
    value = doc.get("signature_name", "")
    if not isinstance(value, str):
        raise invalid("JSON Value not formatted correctly. 'signature_name' key must be a string value.")
    return value


def parse_inputs(
    doc: Mapping[str, Any], infos: Mapping[str, int], max_batch: int | None = None
) -> tuple[Format, dict[str, np.ndarray]]:
    """The request's tensors for a signature whose inputs have the dtypes in `infos`;
    more than `max_batch` instances are refused before any is converted."""
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid(
            "JSON Value not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"
        )
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid("JSON Value: Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid("JSON Value: No values in 'instances' array")
        if max_batch is not None and len(instances) > max_batch:
            raise invalid(f"'instances' has {len(instances)} items, more than the limit {max_batch}")
        return Format.ROW, _from_instances(instances, infos)
    if has_inputs:
        return Format.COLUMNAR, _from_inputs(doc["inputs"], infos)
    raise invalid("Missing 'inputs' or 'instances' key")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_element_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _from_instances(instances: list[Any], infos: Mapping[str, int]) -> dict[str, np.ndarray]:
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    objects = _is_element_object(instances[0])
    rows: dict[str, list[np.ndarray]] = {}
    for index, element in enumerate(instances):
        if objects:
            if not _is_element_object(element):
                raise invalid(f"Expecting object but got list at item {index} of input list")
            for name, value in element.items():
                try:
                    _add_row(rows, name, value, infos)
                except ServingError as exc:
                    raise invalid(
                        f"Failed to process element: {index} key: {shown(name)} of 'instances' list. "
                        f"Error: {exc.code.name}: {exc.message}"
                    ) from exc
            if set(element) != set(infos):
                raise invalid(
                    f"Failed to process element: {index} of 'instances' list. JSON object "
                    f"keys must be equal to: {','.join(sorted(infos))}"
                )
        else:
            if _is_element_object(element):
                raise invalid(f"Expecting value/list but got object at item {index} of input list")
            try:
                _add_row(rows, sorted(infos)[0], element, infos)
            except ServingError as exc:
                raise invalid(
                    f"Failed to process element: {index} of 'instances' list. "
                    f"Error: {exc.code.name}: {exc.message}"
                ) from exc
    return {name: np.stack(items) for name, items in rows.items()}


def _add_row(rows: dict[str, list[np.ndarray]], name: str, value: Any, infos: Mapping[str, int]) -> None:
    if name not in infos:
        raise invalid(f"JSON object: does not have named input: {shown(name)}")
    array = to_array(value, infos[name])
    if array.ndim >= MAX_RANK:  # stacking the instances adds a dimension
        raise invalid(f"JSON Value nests lists deeper than {MAX_RANK - 1} levels in an instance")
    if rows.get(name):
        first = rows[name][0]
        if first.size != array.size:
            raise invalid(f"Expecting tensor size: {first.size} but got: {array.size}")
        if first.shape != array.shape:
            raise invalid(f"Expecting shape {_shape(first.shape)} but got: {_shape(array.shape)}")
    rows.setdefault(name, []).append(array)


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _from_inputs(value: Any, infos: Mapping[str, int]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        name = next(iter(infos))
        return {name: to_array(value, infos[name])}
    result = {}
    for name, dtype in infos.items():  # keys the signature does not know are ignored, as in TF Serving
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        result[name] = to_array(value[name], dtype)
    return result


def to_array(value: Any, dtype: int) -> np.ndarray:
    """A dense tensor from nested JSON lists; every leaf at the depth the first path sets."""
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if len(shape) > MAX_RANK:
            raise invalid(f"JSON Value nests lists deeper than {MAX_RANK} levels")
        if not probe:
            break
        probe = probe[0]
    flat: list[Any] = []
    _fill(value, 0, shape, dtype, flat)
    if dtype == dtypes.DT_STRING:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    try:
        return np.array(flat, dtype=dtypes.numpy_type(dtype)).reshape(shape)
    except (OverflowError, ValueError, TypeError) as exc:
        raise invalid(f"Cannot convert JSON values to {dtypes.name(dtype)}: out of its range") from exc


def _fill(value: Any, level: int, shape: list[int], dtype: int, out: list[Any]) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid(
                f"JSON Value of type {_json_type(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        if isinstance(value, dict):
            if dtype != dtypes.DT_STRING:
                raise _type_error(value, dtype)
            out.append(_decode_b64(value))
        else:
            out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _type_error(value: Any, dtype: int) -> ServingError:
    return invalid(f"JSON Value Type: {_json_type(value)} is not of expected type: {dtypes.name(dtype)}")


def _decode_b64(value: Any) -> bytes:
    if not _is_b64(value):
        raise invalid("JSON Value: an object not formatted correctly for base64 data")
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid("Unable to base64 decode") from exc


def _scalar(value: Any, dtype: int) -> Any:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if dtype in _FLOAT_MAX:
        if not (is_int or isinstance(value, float)):
            raise _type_error(value, dtype)
        lossless = (
            abs(value) <= _FLOAT_MAX_INT[dtype]
            if is_int
            else not math.isfinite(value) or abs(value) <= _FLOAT_MAX[dtype]
        )
        if not lossless:
            target = "float" if dtype == dtypes.DT_FLOAT else "double"
            raise invalid(f"Cannot convert a JSON value to {target} without loss of precision.")
        return float(value)
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if not is_int or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    if dtype == dtypes.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype == dtypes.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate escape (\ud800)
            raise invalid("JSON string is not valid Unicode") from exc
    raise ServingError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"Conversion of JSON Value Type: {_json_type(value)} to type: {dtypes.name(dtype)}",
    )


# -- responses ---------------------------------------------------------------------------------
def format_float(value: float, dtype: int) -> str:
    """TF Serving's WriteDecimal: %g unless it loses the value, then full precision; '.0' on integers."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    single = dtype != dtypes.DT_DOUBLE
    same = np.float32(text) == np.float32(value) if single else float(text) == value
    if not same:
        text = f"{value:.9g}" if single else f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _scalar_json(value: Any, dtype: int, as_bytes: bool) -> str:
    if dtype in (dtypes.DT_FLOAT, dtypes.DT_DOUBLE, dtypes.DT_HALF):
        return format_float(float(value), dtype)
    if dtype == dtypes.DT_BOOL:
        return "true" if value else "false"
    if dtype in _INT_RANGES or dtype == dtypes.DT_UINT16:
        return str(int(value))
    if dtype == dtypes.DT_STRING:
        data = value if isinstance(value, bytes) else str(value).encode()
        if not as_bytes:
            try:
                return json.dumps(data.decode("utf-8"), ensure_ascii=False)
            except UnicodeDecodeError:
                pass  # not representable as a JSON string: base64 instead of invalid UTF-8
        return '{"b64": ' + json.dumps(base64.b64encode(data).decode("ascii")) + "}"
    raise invalid(f"Failed to write JSON value for tensor type: {dtypes.name(dtype)}")


def _values_json(array: Any, dtype: int, as_bytes: bool) -> str:
    if not isinstance(array, np.ndarray):  # an element of a 1-D batch
        return _scalar_json(array, dtype, as_bytes)
    if array.ndim == 0:
        return _scalar_json(array.item(), dtype, as_bytes)
    if array.ndim == 1:
        items = array if dtype == dtypes.DT_STRING else array.tolist()
        return "[" + ", ".join(_scalar_json(v, dtype, as_bytes) for v in items) + "]"
    return "[" + ", ".join(_values_json(sub, dtype, as_bytes) for sub in array) + "]"


def _as_bytes(name: str, dtype: int) -> bool:
    return dtype == dtypes.DT_STRING and name.endswith("_bytes")


def _named(name: str, output: Output, keyed: bool) -> str:
    array, dtype = output
    text = _values_json(array, dtype, _as_bytes(name, dtype))
    return f"{json.dumps(name)}: {text}" if keyed else text


def outputs_json(outputs: Mapping[str, Output], fmt: Format) -> str:
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    several = len(names) > 1
    if fmt is Format.COLUMNAR:
        parts = [_named(name, outputs[name], several) for name in names]
        body = "{" + ", ".join(parts) + "}" if several else parts[0]
        return '{"outputs": ' + body + "}"
    batch = -1
    for name in names:
        array = outputs[name][0]
        if array.ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise invalid(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}"
            )
        batch = array.shape[0]
    rows = []
    for item in range(batch):
        parts = [_named(name, (outputs[name][0][item], outputs[name][1]), several) for name in names]
        rows.append("{" + ", ".join(parts) + "}" if several else parts[0])
    return '{"predictions": [' + ", ".join(rows) + "]}"


def error_json(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)
