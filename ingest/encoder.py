"""The encoder process: where a worker's batches are validated and turned into Parquet.

Profiled against a Faust agent that only counts, the ingest worker spent about as much CPU
in validation and Parquet building as in Faust's own per-record path, all under one GIL.
Done in a child process, that work runs on another core while the event loop keeps
consuming. The child does no I/O (landing stays in the worker, with its retries and
metrics), is spawned rather than forked (the worker has threads), and is killed with the
worker (Linux's parent-death signal), so a kill -9 leaves no orphan behind. If the child dies
instead, the batch is encoded again by a new one: encoding is pure, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from recstream.ingest import encoding
from recstream.ingest.batches import Record

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(parent: int) -> None:
    """In the child: be killed when the worker dies, however it dies."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the worker died before the signal was armed
        os._exit(1)


class Encoder:
    """One child process that runs ingest.encoding.encode for the worker's flushes."""

    def __init__(self, topic: str, max_future_s: float) -> None:
        self.topic, self.max_future_s = topic, max_future_s
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        """A pool of one child, started from the calling thread: the worker's main thread, which
        the parent-death signal follows (Faust runs its event loop there too)."""
        pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with,
            initargs=(os.getpid(),),
        )
        # Spawns the child here, not in a later caller's thread, and waits for its imports
        # (pyarrow): they must not stall a flush.
        pool.submit(encoding.encode, self.topic, 0, [(0, None, None, None)], self.max_future_s).result()
        log.info("encoder process started")
        return pool

    async def encode(self, partition: int, records: Sequence[Record]) -> encoding.Encoded:
        """The batch encoded; if the child dies meanwhile, once more by a new child (a batch that
        kills that one too fails its flush, which stops the worker: ingest.worker)."""
        try:
            return await self._run(partition, records)
        except BrokenProcessPool:
            log.error("the encoder process died encoding partition %d's batch; encoding it again", partition)
            self.pool.shutdown(wait=False)
            self.pool = self._start()
            return await self._run(partition, records)

    async def _run(self, partition: int, records: Sequence[Record]) -> encoding.Encoded:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.pool, encoding.encode, self.topic, partition, records, self.max_future_s
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
