"""Prometheus /metrics endpoint for a service process."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def serve_metrics(host: str, port: int) -> int:
    """Start the /metrics HTTP server in a daemon thread; returns the bound port (0 picks a free one)."""
    server, _thread = start_http_server(port, addr=host)
    bound = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound
