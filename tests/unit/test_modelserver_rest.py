"""The REST server's own bounds, on a real socket in-process: body size (413 before reading),
body framing, the bounded worker pool (503 beyond it) and 500s that do not leak their cause.
The registry is a stand-in: these are about HTTP, not models (tests/integration covers those)."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Iterator

import pytest

from recstream.deploy.modelserver.limits import Limits
from recstream.deploy.modelserver.rest_api import RestServer

LIMITS = Limits(max_rest_body_bytes=1000, rest_timeout_s=3.0, rest_workers=1)
SECRET = "/srv/secret/path of the failure"


class StandInRegistry:
    def status(self, name: str, version: int | None) -> list:
        return []  # GET /v1/models/<name>: 200 with no versions

    def acquire(self, name: str, version: int | None, label: str | None):
        raise RuntimeError(SECRET)


@contextlib.contextmanager
def serving() -> Iterator[RestServer]:
    server = RestServer(StandInRegistry(), "127.0.0.1", 0, LIMITS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rest() -> Iterator[RestServer]:
    with serving() as server:
        yield server


def connect(server: RestServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def exchange(sock: socket.socket, data: bytes) -> tuple[int, dict, bytes]:
    """Send `data`; the status, headers and body of one response."""
    sock.sendall(data)
    reader = sock.makefile("rb")
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline().strip()) != b"":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, reader.read(int(headers["content-length"]))


def closed(sock: socket.socket) -> bool:
    with contextlib.suppress(ConnectionResetError):
        return sock.recv(1) == b""
    return True


def test_a_chunked_body_within_the_limit_is_read_and_the_connection_kept(rest: RestServer) -> None:
    with connect(rest) as sock:
        chunked = b"GET /v1/models/m HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        status, _, body = exchange(sock, chunked)
        assert (status, json.loads(body)) == (200, {"model_version_status": []})
        status, _, _ = exchange(sock, b"GET /v1/models/m HTTP/1.1\r\n\r\n")  # same connection
        assert status == 200


@pytest.mark.parametrize(
    "request_head",
    [
        b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: 1001\r\n\r\n",
        b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: 99999999999999999\r\n\r\n",
        b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
        b"POST /v1/models/m:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n",
        b"POST /v1/models/m:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"1f4\r\n"
        + b"x" * 500
        + b"\r\n1f5\r\n",
    ],
)
def test_a_body_over_the_limit_is_refused_413_before_it_is_read(
    rest: RestServer, request_head: bytes
) -> None:
    with connect(rest) as sock:
        status, headers, body = exchange(sock, request_head)  # the body itself is never sent
        assert status == 413 and headers["connection"] == "close"
        assert json.loads(body) == {"error": "Request body is larger than the limit of 1000 bytes"}
        assert closed(sock)
    with connect(rest) as sock:
        assert exchange(sock, b"GET /v1/models/m HTTP/1.1\r\n\r\n")[0] == 200


@pytest.mark.parametrize(
    "request_head",
    [
        b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
        b"POST /v1/models/m:predict HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /v1/models/m:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_broken_body_framing_is_400_and_the_connection_closed(rest: RestServer, request_head: bytes) -> None:
    with connect(rest) as sock:
        status, headers, _ = exchange(sock, request_head)
        assert status == 400 and headers["connection"] == "close"
        assert closed(sock)


def test_an_internal_failure_is_500_internal_error_and_logged(
    rest: RestServer, caplog: pytest.LogCaptureFixture
) -> None:
    body = b'{"inputs": [1]}'
    with connect(rest) as sock, caplog.at_level(logging.ERROR, "recstream.deploy.modelserver.rest_api"):
        head = f"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        status, _, answer = exchange(sock, head + body)
    assert (status, json.loads(answer)) == (500, {"error": "internal error"})
    assert SECRET in caplog.text


def test_connections_beyond_the_worker_pool_and_its_queue_get_503() -> None:
    # One worker, one waiting slot: an idle connection holds the worker, the next one waits,
    # the third is refused at once; the waiting one is served when the first goes.
    with serving() as rest, connect(rest) as holder, connect(rest) as waiting:
        holder.sendall(b"GET /v1/models/m HTTP/1.1\r\n")  # an unfinished request keeps the worker
        with connect(rest) as refused:
            status, headers, body = exchange(refused, b"GET /v1/models/m HTTP/1.1\r\n\r\n")
            assert (status, headers["connection"]) == (503, "close")
            assert json.loads(body) == {"error": "Server is busy"}
        holder.close()
        assert exchange(waiting, b"GET /v1/models/m HTTP/1.1\r\n\r\n")[0] == 200


def test_stopping_closes_the_connections_still_waiting_for_a_worker() -> None:
    # Their queued work is cancelled: without closing them here, they would hang until the client
    # gives up, and their slots would never be freed.
    server = RestServer(StandInRegistry(), "127.0.0.1", 0, LIMITS)
    server.start()
    inner = server._server
    with connect(server) as holder, connect(server) as waiting:
        try:
            holder.sendall(b"GET /v1/models/m HTTP/1.1\r\n")  # an unfinished request keeps the worker
            deadline = time.monotonic() + 10
            while not (inner._open and inner._queued) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(inner._open) == 1 and len(inner._queued) == 1
        finally:
            server.stop()
        assert closed(waiting) and closed(holder)
    assert not inner._queued
    # Both slots (one worker, one waiting) are free again, the worker's once it ends on its cut connection.
    freed, deadline = 0, time.monotonic() + 10
    while freed < 2 and time.monotonic() < deadline:
        freed += inner._slots.acquire(timeout=0.05)
    assert freed == 2
