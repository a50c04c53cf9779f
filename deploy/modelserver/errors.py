"""Status codes shared by gRPC, REST and the servable lifecycle.

TF Serving reports every failure as a TensorFlow status whose codes are the gRPC codes;
REST maps them to HTTP with its own table (http_server.cc), reproduced here.
"""

from __future__ import annotations

import grpc

OK = grpc.StatusCode.OK

_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}

# TF Serving's ToHTTPStatusCode.
_HTTP = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A request or lifecycle failure carrying the status code TF Serving would report."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def invalid(message: str) -> ServingError:
    """The request is wrong (INVALID_ARGUMENT, REST 400): the one constructor every module uses."""
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def code_number(code: grpc.StatusCode) -> int:
    """The integer code (tensorflow.error.Code and gRPC share the numbering)."""
    return code.value[0]


def code_from_number(number: int) -> grpc.StatusCode:
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP.get(code, 500)


def from_exception(exc: BaseException) -> ServingError:
    """Classify any failure: ours as is, TensorFlow's by its error code, the rest as UNKNOWN."""
    if isinstance(exc, ServingError):
        return exc
    error_code = getattr(exc, "error_code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(error_code, int):
        return ServingError(code_from_number(error_code), message)
    return ServingError(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {message}")
