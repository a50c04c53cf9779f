"""Prometheus /metrics endpoint for a service process."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from recstream.stream.errors import RecstreamError

log = logging.getLogger(__name__)


class MetricsPortError(RecstreamError):
    """The /metrics port cannot be bound (taken, not allowed); the message is one line."""


def serve_metrics(host: str, port: int) -> int:
    """Start the /metrics HTTP server in a daemon thread; returns the bound port (0 picks a free one).

    A port that cannot be bound is a one-line error naming it, which the supervisor shows in
    `recstream status` as the service's last error.
    """
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise MetricsPortError(f"cannot serve /metrics on {host}:{port}: {reason}") from None
    bound = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound
