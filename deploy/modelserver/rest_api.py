"""TF Serving's REST API (api_rest), on its own port, served from a thread.

Routes and error strings follow http_rest_api_handler.cc / http_rest_api_util.cc:
`GET /v1/models/<m>[/versions/<v>|/labels/<l>][/metadata]` and
`POST /v1/models/<m>[/versions/<v>|/labels/<l>]:predict`. Failures are
`{"error": "..."}` with the HTTP code TF Serving maps the status to, never quoting the body
or an internal exception (a 500 says "internal error"; the detail goes to the log).

Bounds (Limits): a body over max_rest_body_bytes is answered 413 before it is read (by its
Content-Length, or as chunks arrive); each request, headers and body together, must arrive
within rest_timeout_s (a kept-alive connection idle that long is closed too); connections
are served by rest_workers threads, with as many waiting, and any beyond get 503.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import socket
import socketserver
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from recstream.deploy.modelserver import rest_json
from recstream.deploy.modelserver.errors import ServingError, http_status, invalid
from recstream.deploy.modelserver.grpc_api import SIGNATURE_DEF, model_metadata, model_status
from recstream.deploy.modelserver.limits import Limits, shown
from recstream.deploy.modelserver.registry import Registry
from recstream.deploy.modelserver.servable import DEFAULT_SIGNATURE

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
_DIGITS = re.compile(r"[0-9]+")
_CHUNK_SIZE = re.compile(rb"\s*([0-9A-Fa-f]{1,15})\s*(?:;[^\r\n]*)?\r?\n")
_CHUNK_LINE = 4096  # longest chunk-size or trailer line read
_MAX_TRAILERS = 64
_LINGER_S = 1.0


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
            self.version = int(match[2]) if len(match[2]) <= 19 else _INT64_MAX + 1
            if self.version > _INT64_MAX:
                raise invalid(f"Failed to convert version: {shown(match[2])} to numeric.")
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
            raise invalid("Missing model name in request.")
        if match[4] == "metadata":
            return _metadata(registry, request)
        response = model_status(
            registry, get_model_status_pb2.GetModelStatusRequest(model_spec=request.spec())
        )
        return _to_json(response)
    raise invalid(f"Malformed request: {method} {shown(path)}")


def _predict(registry: Registry, request: _Request, body: bytes) -> str:
    doc = rest_json.parse_body(body)
    signature_name = rest_json.signature_name(doc)
    # One resolution for the whole request: inputs are read against the version that runs them.
    with registry.acquire(request.name, request.version, request.label) as servable:
        key = signature_name or DEFAULT_SIGNATURE
        if key not in servable.signature_defs:
            raise invalid(f'Serving signature name: "{shown(key)}" not found in signature def')
        infos = {alias: info.dtype for alias, info in servable.signature_defs[key].inputs.items()}
        if not infos:
            raise invalid(f"Failed to get input map for signature: {shown(signature_name) or 'DEFAULT'}")
        fmt, inputs = rest_json.parse_inputs(doc, infos, servable.limits.max_batch)
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


def _content_length(header: str) -> int | None:
    """A Content-Length's value (any beyond 18 digits as 10**18), or None when it is not one."""
    text = header.strip()
    if not _DIGITS.fullmatch(text):
        return None
    return int(text) if len(text) <= 18 else 10**18


class _TooLarge(Exception):
    """The body is over the limit (413); it was not read."""


class _BadFraming(Exception):
    """The body's framing is broken (400); the connection cannot be reused."""


class _DeadlineReader(io.RawIOBase):
    """Socket reads that all share one deadline: a client that trickles a request byte by byte
    (slow loris) is cut off when the request's time is up, not only when one read stalls."""

    def __init__(self, sock: socket.socket, handler: _Handler) -> None:
        self._sock, self._handler = sock, handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # a writable buffer (memoryview, bytearray)
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "recstream-modelserver"
    server: _Server
    deadline = 0.0

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self), 65536)

    def handle_one_request(self) -> None:
        # Every request (and the wait for the next one on a kept-alive connection) gets the
        # timeout as a whole, like TF Serving's --rest_api_timeout_in_ms.
        self.deadline = time.monotonic() + self.server.limits.rest_timeout_s
        super().handle_one_request()

    def handle_expect_100(self) -> bool:
        """Refuse an announced body over the limit instead of inviting it (curl's Expect: 100-continue)."""
        length = _content_length(self.headers.get("Content-Length") or "")
        limit = self.server.limits.max_rest_body_bytes
        if length is not None and length > limit:
            self._refuse_body(413, f"Request body is larger than the limit of {limit} bytes")
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        try:
            body = self._body(self.server.limits.max_rest_body_bytes)
        except _TooLarge:
            limit = self.server.limits.max_rest_body_bytes
            self._refuse_body(413, f"Request body is larger than the limit of {limit} bytes")
            return
        except _BadFraming as exc:
            self._refuse_body(400, str(exc))
            return
        if body is None:  # the client went away mid-body
            self.close_connection = True
            return
        path = urlsplit(self.path).path
        status, text = 200, ""
        if not _API.fullmatch(path):
            status, text = 404, rest_json.error_json(f"Not found: {shown(path)}")
        else:
            try:
                text = handle(self.server.registry, method, path, body)
            except ServingError as error:
                status, text = http_status(error.code), rest_json.error_json(error.message)
            except Exception:
                log.exception("REST %s %s failed", method, shown(path))
                status, text = 500, rest_json.error_json("internal error")
        self._reply(status, text)

    def _body(self, limit: int) -> bytes | None:
        """The request body (Content-Length or chunked), refused unread when over `limit`."""
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                raise _BadFraming("Unsupported Transfer-Encoding")
            return self._chunked(limit)
        header = self.headers.get("Content-Length")
        if header is None:
            return b""
        length = _content_length(header)
        if length is None:
            raise _BadFraming("Malformed Content-Length")
        if length > limit:
            raise _TooLarge
        body = self.rfile.read(length) if length else b""
        return body if len(body) == length else None

    def _chunked(self, limit: int) -> bytes | None:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(_CHUNK_LINE)
            if not line:
                return None
            size = _CHUNK_SIZE.match(line)
            if size is None or not line.endswith(b"\n"):
                raise _BadFraming("Malformed chunked body")
            length = int(size[1], 16)
            if length == 0:
                break
            total += length
            if total > limit:
                raise _TooLarge
            data = self.rfile.read(length)
            if len(data) < length:
                return None
            parts.append(data)
            if self.rfile.readline(_CHUNK_LINE).strip():
                raise _BadFraming("Malformed chunked body")
        for _ in range(_MAX_TRAILERS):  # trailers, up to the blank line
            line = self.rfile.readline(_CHUNK_LINE)
            if not line:
                return None
            if not line.strip():
                return b"".join(parts)
        raise _BadFraming("Too many trailers in chunked body")

    def _reply(self, status: int, text: str) -> None:
        data = text.encode("utf-8")
        self.connection.settimeout(self.server.limits.rest_timeout_s)  # a client that does not read
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _refuse_body(self, status: int, message: str) -> None:
        """Answer an error about a body left unread (413, or 400 for broken framing), then close."""
        self.close_connection = True
        self._reply(status, rest_json.error_json(message))
        self._linger()

    def _linger(self) -> None:
        """Close after an error that left the body unread, reading (and dropping) what the client
        still sends for a moment, so that it sees the answer rather than a reset connection."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            end = time.monotonic() + _LINGER_S
            while (left := end - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(65536):
                    break
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(socketserver.TCPServer):
    """One listening socket; connections are served by a fixed pool of worker threads, with at
    most as many more waiting; a connection beyond that is answered 503 and closed."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], registry: Registry, bounds: Limits) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.registry, self.limits = registry, bounds
        self._pool = ThreadPoolExecutor(max_workers=bounds.rest_workers, thread_name_prefix="rest")
        self._slots = threading.BoundedSemaphore(bounds.rest_workers * 2)
        # A connection is queued from its submission until a worker takes it, then open until done;
        # whoever takes it out of `_queued` (a worker, or server_close) closes it and frees its slot.
        self._queued: set[socket.socket] = set()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:  # a TCP socket, (host, port)
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        with self._lock:
            self._queued.add(request)
        try:
            self._pool.submit(self._work, request, client_address)
        except RuntimeError:  # shutting down
            with self._lock:
                self._queued.discard(request)
            self._slots.release()
            self.shutdown_request(request)

    def _work(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        with self._lock:
            if request not in self._queued:  # server_close closed it while it waited
                return
            self._queued.discard(request)
            self._open.add(request)
        try:
            self.finish_request(request, client_address)
        except OSError as exc:  # the client reset or vanished: routine
            log.debug("REST connection from %s ended: %s", client_address, exc)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._lock:
                self._open.discard(request)
            self.shutdown_request(request)
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        log.warning("REST: every worker is busy; refusing a connection")
        data = rest_json.error_json("Server is busy").encode()
        head = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        try:
            request.settimeout(1.0)
            request.sendall(head.encode() + data)
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("REST connection from %s failed", client_address)

    def server_close(self) -> None:
        """Stop listening and cut the connections still open, so no worker outlives the server;
        those still waiting for a worker (their work is cancelled) are closed here, slots freed."""
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            waiting, self._queued = self._queued, set()
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for sock in waiting:
            self.shutdown_request(sock)
            self._slots.release()


class RestServer:
    """The REST API on host:port; bound at construction, served by a background thread."""

    def __init__(self, registry: Registry, host: str, port: int, bounds: Limits | None = None) -> None:
        self._server = _Server((host, port), registry, bounds or Limits())
        self._thread = threading.Thread(target=self._server.serve_forever, name="rest", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the free one picked for port 0)."""
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
