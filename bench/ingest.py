"""Ingest throughput: a pre-filled topic landed in the object store, by one worker and by two.

Each figure is events per second from the first record a worker took (its
`recstream_ingest_received_total` moving off 0, so start-up and group join are left out) to
the last: the rate the worker keeps up with. The worker adds to that counter every 0.25 s and
the bench reads it every 0.25 s, so each end is known to about half a second, on runs of about
15 s. The limit is a Faust agent that only counts, on
the same topic in the same run, timed the same way from its first record to its last
(bench/faust_floor.py): the rate Faust's per-record path allows here. Taking records is not
ahead of landing them by more than a batch: a partition's next flush waits for its previous
one. The rate until every offset is covered by a landed object is reported beside it; it adds
the tail, the last batch of each partition waiting out INGEST_IDLE_FLUSH_S and its flush. A bare aiokafka
consumer's read rate is reported beside it: what the broker can hand out at all. Each phase
also reports the CPU seconds of each part (broker, object store, each worker or the Faust
agent): on 2 cores they compete, so a worker's rate is bounded by what the others take.
The agent and one worker run in 5 rounds, each on a copy of the topic of its own; the figure
is the round of median ratio. The two-worker run lands another copy (`WORKER_NAME` ingest-1
and ingest-2 in one group, as `INGEST_WORKERS=2 recstream up` runs them), compared with the
agent of that round. The agent keeps Faust's defaults, its Monitor sensor included; the worker
runs without it (stream.faust_app), so the agent without it is reported beside, once, on the
last round's topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import SEED, recstream_child, setup_logging, temporary_stack, write_result
from recstream.deploy.console import observe
from recstream.deploy.local.processes import child_pids, cpu_seconds, free_port, stop_child
from recstream.deploy.local.stack import Stack
from recstream.stream.contracts import metrics as metric_names
from recstream.stream.contracts.lake import date_prefix, parse_object_name
from recstream.stream.produce import produce_file
from recstream.stream.producer import EventProducer
from recstream.stream.settings import Settings, load_settings
from recstream.stream.storage import ensure_buckets, make_client

log = logging.getLogger("bench.ingest")
EVENTS = 200_000  # of the seed's 211,478: about 20 s a run here, so noise and the tail weigh little
ROUNDS = 5  # pairs of (Faust agent, one worker), each on a fresh copy of the seed
PARTS = ("broker", "objectstore")  # the stack's parts ingest uses


async def bare_read_rate(bootstrap: str, topic: str, total: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        start, seen = time.monotonic(), 0
        while seen < total:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
                seen += len(records)
        return seen / (time.monotonic() - start)
    finally:
        await consumer.stop()


def children_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process's live children (a worker's encoder process, ingest.encoder)."""
    total = 0.0
    for child in child_pids(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            total += cpu_seconds(child)
    return total


def stack_pids(settings: Settings) -> dict[str, int]:
    """The broker's and the object store's pids, from the stack's own record."""
    stack = Stack(load_settings({"RECSTREAM_HOME": str(settings.home)}, environ={}, use_stack_env=False))
    return {part.name: part.pid for part in stack.status() if part.name in PARTS and part.pid}


def faust_floor(env: dict[str, str], parts: dict[str, int]) -> dict[str, Any]:
    """Events/s of a Faust agent that does nothing but count, on the same topic, and the CPU used."""
    before = {name: cpu_seconds(pid) for name, pid in parts.items()}
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        probe = subprocess.Popen(
            [sys.executable, "-m", "bench.faust_floor", "worker"],
            env={**env, "FLOOR_EVENTS": str(EVENTS)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timer = threading.Timer(600, probe.kill)
        timer.start()
        _, status, usage = os.wait4(probe.pid, 0)  # its CPU, which a finished process no longer shows
        timer.cancel()
        probe.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        text = out.read().decode(errors="replace")
    # Faust's worker routes stdout through its logger, so the line may come with its log lines.
    rates = re.findall(r"RATE ([0-9.]+)", text)
    if not rates:
        raise RuntimeError(f"Faust probe failed: {text[-2000:]}")
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in parts.items()}
    cpu["faust agent"] = usage.ru_utime + usage.ru_stime
    return {
        "events_per_s": float(rates[0]),
        "seconds": round(time.monotonic() - started, 2),
        "cpu_seconds": {name: round(value, 2) for name, value in cpu.items()},
    }


def consumed(port: int) -> float:
    """Records a worker has consumed, from its metrics (0 while it starts)."""
    try:
        return observe.total(observe.scrape(f"127.0.0.1:{port}", timeout_s=1.0), metric_names.INGEST_RECEIVED)
    except OSError:
        return 0.0


def ingest_run(settings: Settings, target: Settings, workers: int, parts: dict[str, int]) -> dict[str, Any]:
    """`workers` ingest workers in one group land `target`'s topic; timed from the first record."""
    base = {
        **os.environ,
        "RECSTREAM_HOME": str(settings.home),
        "TRANSACTIONS_TOPIC": target.transactions_topic,
        "DATA_BUCKET": target.data_bucket,
        "LOG_LEVEL": "WARNING",
    }
    ports = [free_port() for _ in range(workers)]
    before = {name: cpu_seconds(pid) for name, pid in parts.items()}
    with contextlib.ExitStack() as stack:
        procs = []
        for index, port in enumerate(ports, start=1):
            out = stack.enter_context(tempfile.TemporaryFile())
            env = {**base, "INGEST_METRICS_PORT": str(port)}
            if workers > 1:
                env["WORKER_NAME"] = f"ingest-{index}"
            procs.append((recstream_child("ingest", env, out), out))
        start = time.monotonic()
        try:
            first_record = last_record = None
            # Landed objects are listed only once every record is taken: listing them while the
            # worker runs loads the object store and this process, which the agent's run does not.
            while last_record is None or landed_offsets(target) < EVENTS:
                for proc, out in procs:
                    if proc.poll() is not None:
                        out.seek(0)
                        raise RuntimeError(
                            f"ingest worker died: {out.read()[-2000:].decode(errors='replace')}"
                        )
                if last_record is None:
                    taken = [consumed(port) for port in ports]
                    if first_record is None and any(taken):
                        first_record = time.monotonic()
                    if sum(taken) >= EVENTS:
                        last_record = time.monotonic()
                time.sleep(0.05 if first_record is None else 0.25)
            end = time.monotonic()
            cpu = {name: cpu_seconds(pid) - before[name] for name, pid in parts.items()}
            for i, (proc, _) in enumerate(procs, start=1):
                cpu[f"worker {i}"] = cpu_seconds(proc.pid)
                cpu[f"worker {i} encoder"] = children_cpu_seconds(proc.pid)
        finally:
            for proc, _ in procs:
                stop_child(proc, timeout=30)
    first_record = first_record or start
    last_record = last_record or end
    rate = EVENTS / (last_record - first_record)
    log.info("ingest, %d worker(s): %.0f events/s from the first record to the last", workers, rate)
    return {
        "workers": workers,
        "events_per_s": round(rate, 1),
        "seconds_first_to_last_record": round(last_record - first_record, 2),
        "events_per_s_to_landed": round(EVENTS / (end - first_record), 1),
        "seconds_first_record_to_landed": round(end - first_record, 2),
        "first_record_after_s": round(first_record - start, 2),
        "events_per_s_from_start": round(EVENTS / (end - start), 1),
        "cpu_seconds": {name: round(value, 2) for name, value in cpu.items()},
    }


def landed_offsets(settings: Settings) -> int:
    """Offsets covered by landed objects (the seed's events all fall on one date per batch)."""
    ends: dict[int, int] = {}
    for obj in make_client(settings).list_objects(settings.data_bucket, date_prefix(), recursive=True):
        _, partition, _, last = parse_object_name(obj.object_name)
        ends[partition] = max(ends.get(partition, -1), last)
    return sum(last + 1 for last in ends.values())


def copy_of_seed(settings: Settings, name: str) -> Settings:
    """A topic and bucket of their own, filled with the seed: a fresh group start for every reader."""
    target = dataclasses.replace(settings, transactions_topic=name, data_bucket=name)
    ensure_buckets(make_client(settings), [target.data_bucket])
    with EventProducer(target) as producer:
        produce_file(producer, SEED, limit=EVENTS)
    return target


def main() -> None:
    with temporary_stack() as settings:
        parts = stack_pids(settings)
        env = {**os.environ, "RECSTREAM_HOME": str(settings.home), "LOG_LEVEL": "WARNING"}
        rounds = []
        for index in range(ROUNDS):
            target = copy_of_seed(settings, f"bench-ingest-{index}")
            if index == 0:
                limit_aiokafka = asyncio.run(
                    bare_read_rate(settings.require("kafka_bootstrap"), target.transactions_topic, EVENTS)
                )
                log.info("bare aiokafka read: %.0f events/s", limit_aiokafka)
            floor = faust_floor({**env, "TRANSACTIONS_TOPIC": target.transactions_topic}, parts)
            log.info("round %d: bare Faust agent %.0f events/s", index + 1, floor["events_per_s"])
            one = ingest_run(settings, target, 1, parts)
            one["ratio_to_bare_faust_agent"] = round(one["events_per_s"] / floor["events_per_s"], 3)
            rounds.append({"bare_faust_agent": floor, "one_worker": one})
        plain = faust_floor(
            {**env, "TRANSACTIONS_TOPIC": target.transactions_topic, "FLOOR_WITHOUT_MONITOR": "1"}, parts
        )
        plain["last_round_worker_ratio"] = round(one["events_per_s"] / plain["events_per_s"], 3)
        log.info("bare Faust agent without its Monitor: %.0f events/s", plain["events_per_s"])
        two = ingest_run(settings, copy_of_seed(settings, "bench-ingest-two"), 2, parts)
    # The round of median ratio: this machine's speed drifts by 10-20 % between runs, so a worker
    # is only ever compared with the agent of its own round.
    median = sorted(rounds, key=lambda r: r["one_worker"]["ratio_to_bare_faust_agent"])[ROUNDS // 2]
    floor, one = median["bare_faust_agent"], median["one_worker"]
    one["ratio_to_bare_aiokafka"] = round(one["events_per_s"] / limit_aiokafka, 3)
    two["ratio_to_bare_faust_agent"] = round(two["events_per_s"] / floor["events_per_s"], 3)
    two["ratio_to_bare_aiokafka"] = round(two["events_per_s"] / limit_aiokafka, 3)
    path = write_result(
        "ingest",
        one["events_per_s"],
        "events/s",
        floor["events_per_s"],
        "a Faust agent that only counts, same topic, same round, both timed from their first record to "
        f"their last; the round of median ratio of {ROUNDS}",
        events=EVENTS,
        flush_events=settings.ingest_flush_events,
        idle_flush_s=settings.ingest_idle_flush_s,
        bare_aiokafka_events_per_s=round(limit_aiokafka, 1),
        bare_faust_agent=floor,
        bare_faust_agent_without_monitor=plain,
        one_worker=one,
        two_workers=two,
        rounds=rounds,
    )
    print(path.read_text())


if __name__ == "__main__":
    setup_logging()
    main()
