"""Ports in tests: another program holding one."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def held_port(port: int = 0, host: str = "127.0.0.1") -> Iterator[int]:
    """Another program listening on `port` (0: a free one) for the block; yields the port."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port just left in TIME_WAIT too
        sock.bind((host, port))
        sock.listen()
        yield sock.getsockname()[1]
