"""A Faust agent that only counts records: the rate Faust's per-record path allows on this machine.

bench/ingest runs it on the same topic as the ingest worker, so its report separates the
cost of Faust itself from the cost of landing. Prints `RATE <events/s>` once it has seen
N records (env), timed from the first record, and exits.
"""

from __future__ import annotations

import os
import time

import faust

from recstream.stream.faust_app import create_app, run_worker
from recstream.stream.settings import load_settings

settings = load_settings()
# The limit keeps Faust's defaults, its Monitor sensor included; FLOOR_WITHOUT_MONITOR=1 runs it
# without, as the ingest worker runs, in a group of its own, so it can read a topic another floor
# run has read already.
with_monitor = os.environ.get("FLOOR_WITHOUT_MONITOR") != "1"
name = "bench-faust-floor" if with_monitor else "bench-faust-floor-without-monitor"
app = create_app(name, settings, stream_wait_empty=False, faust_monitor=with_monitor)
topic = app.topic(settings.transactions_topic, key_serializer="raw", value_serializer="raw")
wanted = int(os.environ["FLOOR_EVENTS"])


@app.agent(topic)
async def count(stream: faust.StreamT[bytes]) -> None:
    seen, start = 0, 0.0
    async for _event in stream.events():
        if seen == 0:
            start = time.monotonic()
        seen += 1
        if seen >= wanted:
            print(f"RATE {(seen - 1) / (time.monotonic() - start):.1f}", flush=True)
            os._exit(0)  # a probe: no graceful Faust shutdown needed


if __name__ == "__main__":
    run_worker(app, settings)  # the services' own loop (EVENT_LOOP) and log level
