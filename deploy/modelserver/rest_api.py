"""TF Serving's REST API (api_rest), on its own port, served from a thread.

Routes and error strings follow http_rest_api_handler.cc / http_rest_api_util.cc:
`GET /v1/models/<m>[/versions/<v>|/labels/<l>][/metadata]` and
`POST /v1/models/<m>[/versions/<v>|/labels/<l>]:predict`. Failures are
`{"error": "..."}` with the HTTP code TF Serving maps the status to.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from deploy.modelserver import rest_json
from deploy.modelserver.errors import ServingError, http_status
from deploy.modelserver.grpc_api import SIGNATURE_DEF, model_metadata, model_status
from deploy.modelserver.registry import Registry
from deploy.modelserver.servable import DEFAULT_SIGNATURE

log = logging.getLogger(__name__)

_API = re.compile(r"/v1/.*", re.IGNORECASE)
_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_INT64_MAX = 2**63 - 1


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _to_json(message, preserve_names: bool = False) -> str:
    return json_format.MessageToJson(
        message,
        preserving_proto_field_name=preserve_names,
        always_print_fields_with_no_presence=True,
        ensure_ascii=False,
    )


class _Request:
    """The model, version or label, and method a path names."""

    def __init__(self, match: re.Match[str]) -> None:
        self.name = unquote(match[1]) if match[1] else ""
        self.version: int | None = None
        if match[2]:
            self.version = int(match[2])
            if self.version > _INT64_MAX:
                raise _invalid(f"Failed to convert version: {match[2]} to numeric.")
        self.label = unquote(match[3]) if match[3] else None

    def spec(self) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.name)
        if self.version is not None:
            spec.version.value = self.version
        if self.label is not None:
            spec.version_label = self.label
        return spec


def handle(registry: Registry, method: str, path: str, body: bytes) -> str:
    """The JSON answer for one request; raises ServingError for the error answer."""
    if method == "POST" and (match := _PREDICT.fullmatch(path)):
        request = _Request(match)
        if match[4] == "predict":
            return _predict(registry, request, body)
        if match[4] in ("classify", "regress"):
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{match[4]} is not supported by this server")
    elif method == "GET" and (match := _STATUS.fullmatch(path)):
        request = _Request(match)
        if not request.name:
            raise _invalid("Missing model name in request.")
        if match[4] == "metadata":
            return _metadata(registry, request)
        response = model_status(
            registry, get_model_status_pb2.GetModelStatusRequest(model_spec=request.spec())
        )
        return _to_json(response)
    raise _invalid(f"Malformed request: {method} {path}")


def _predict(registry: Registry, request: _Request, body: bytes) -> str:
    doc = rest_json.parse_body(body)
    signature_name = rest_json.signature_name(doc)
    # One resolution for the whole request: inputs are read against the version that runs them.
    with registry.acquire(request.name, request.version, request.label) as servable:
        key = signature_name or DEFAULT_SIGNATURE
        if key not in servable.signature_defs:
            raise _invalid(f'Serving signature name: "{key}" not found in signature def')
        infos = {alias: info.dtype for alias, info in servable.signature_defs[key].inputs.items()}
        if not infos:
            raise _invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
        fmt, inputs = rest_json.parse_inputs(doc, infos)
        _, outputs = servable.predict(signature_name, inputs)
    return rest_json.outputs_json(outputs, fmt)


def _metadata(registry: Registry, request: _Request) -> str:
    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=request.spec(), metadata_field=[SIGNATURE_DEF]
    )
    response = model_metadata(registry, metadata_request)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF].Unpack(signatures)
    return (
        '{\n"model_spec":'
        + _to_json(response.model_spec, preserve_names=True)
        + ',\n"metadata": {"signature_def": '
        + _to_json(signatures, preserve_names=True)
        + "}\n}\n"
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "recstream-modelserver"
    server: _Server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path = urlsplit(self.path).path
        status, text = 200, ""
        if not _API.fullmatch(path):
            status, text = 404, rest_json.error_json(f"Not found: {path}")
        else:
            try:
                text = handle(self.server.registry, method, path, body)
            except ServingError as error:
                status, text = http_status(error.code), rest_json.error_json(error.message)
            except Exception as exc:
                log.exception("REST %s %s failed", method, path)
                status, text = 500, rest_json.error_json(f"{type(exc).__name__}: {exc}")
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], registry: Registry) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.registry = registry
        super().__init__(address, _Handler)


class RestServer:
    """The REST API on host:port; bound at construction, served by a background thread."""

    def __init__(self, registry: Registry, host: str, port: int) -> None:
        self._server = _Server((host, port), registry)
        self._thread = threading.Thread(target=self._server.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
