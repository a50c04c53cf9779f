"""Advisory file locks: one update, restore or rollback of a model at a time, across processes.

The updater service and `recstream rollback` (another process) both change what a model
serves; they share the model base path, so a lock file there serialises them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from recstream.stream import retry
from recstream.updater.errors import Busy


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Hold an exclusive flock on `path`, waiting up to `timeout_s`; raises Busy after that."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s

        def acquired() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Busy(f"{what} is held by another process for more than {timeout_s:g}s") from None
                return False

        retry.poll(retry.FILE_LOCK, acquired)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
