"""Serving: Predict over gRPC against the same SavedModel called in-process, and p99 through a swap.

The model is real: `retrain/cf_model.py` trained for a few epochs on the first 30,000 rows of
the seed (quality does not matter here, shape and cost do), exported with
`retrain/savedmodel.py` as versions 1 and 2 (same weights) under a temporary model base path.
The model server is the project's own, started as the embedded stack starts it (same command,
same flags, a models.config naming version 1 and `stable`=1, 127.0.0.1 on free ports) and
stopped through its process group whatever happens.

Every request is `serving_default` with `user_id` [N] real seed customer ids (cycling over
fixed batches of a random sample of known customers) and k=10, through the label `stable`.

Throughput and latency, for batch 1 and batch 32, over gRPC and in-process, interleaved
(batch 1 gRPC, batch 1 in-process, batch 32 gRPC, batch 32 in-process) so that a busy moment
of the (shared) machine hits both sides alike:
- latency: one client thread in a closed loop (one request in flight, no queueing in the
  figure): p50 and p99 of the request time;
- throughput: four client threads in a closed loop (each with its own gRPC channel), requests
  and users per second completed within the window; p50/p99 are reported too but include
  queueing.
- the limit: the same version directory loaded here with `tf.saved_model.load`, its
  `serving_default` function called with the same batches (`tf.constant` inputs, every output
  `.numpy()`, as the server does), with the same thread counts. The ratio gRPC / in-process is
  what the server, the protocol and the client cost. Server and client share the machine's
  cores, so the gRPC side also pays for the client's own work (what a co-located scorer pays).

Swap: an open-loop load at a fixed rate (half the gRPC batch-1 throughput just measured, batch
1, four sender threads) on `stable`. Each request has a scheduled send time and its latency is
counted from that time, so a stall during the swap shows up in full instead of merely slowing a
closed-loop client down (coordinated omission). After a steady period the swap runs exactly as
the updater does it (updater.swap.Fleet over updater.serving's ConfigFile/Target/Entry): load
version 2 beside 1 and canary it, move `stable` to 2 and canary it, drop 1; the swap window
ends when version 1 has been unloaded. p99 of requests scheduled within the window against p99
of the steady period before it; every failed request (RPC error, malformed answer, a version
other than 1 or 2) is counted, and the versions that answered before/after are recorded.
Requests due just after the window can still wait behind it: `timeline_from_swap_start` (p99
per second of due time) shows how long the swap's wake lasts. The run takes about 2.5 minutes.

The headline figure is gRPC users/s at batch 32 (the scorer micro-batches), against the
in-process users/s at batch 32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import SEED, setup_logging, write_result
from recstream.stream.contracts.signatures import RECOMMEND, STABLE_LABEL

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("bench.serving")

MODEL = "recommender"
SEED_ROWS = 30_000
EPOCHS = 3
K = 10
BATCHES = (1, 32)
DISTINCT_BATCHES = 64  # batches cycled through, so the same few users are not asked over and over
THROUGHPUT_THREADS = 4
PHASE_S = 8.0
WARMUP_CALLS = 20  # per thread, before a phase's clock starts
SWAP_WORKERS = 4
SWAP_LOAD_SHARE = 0.5  # of the gRPC batch-1 throughput
SWAP_LEAD_IN_S = 1.0  # the first second of the open-loop load is not steady state
SWAP_STEADY_S = 20.0
SWAP_AFTER_S = 5.0
SWAP_TIMEOUT_S = 120.0

Call = Callable[[int], int]  # batch index -> model version that answered; raises on failure


# -- figures ------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (an observed value: the p99 of 100 samples is the largest but one)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def latency_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None}
    return {
        "p50_ms": round(percentile(latencies_s, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies_s, 99) * 1000, 3),
        "mean_ms": round(sum(latencies_s) / len(latencies_s) * 1000, 3),
    }


@dataclass
class Sample:
    """One request of the open-loop load: when it was due (s from the start), how long it took."""

    due: float
    latency: float
    version: int | None  # None: failed
    error: str = ""


@dataclass
class Windows:
    before: list[Sample] = field(default_factory=list)
    during: list[Sample] = field(default_factory=list)
    after: list[Sample] = field(default_factory=list)


def split_windows(
    samples: Sequence[Sample], steady_from: float, swap_start: float, swap_end: float
) -> Windows:
    """Samples by due time: steady [steady_from, swap_start), during [swap_start, swap_end], after."""
    windows = Windows()
    for sample in samples:
        if sample.due < steady_from:
            continue
        if sample.due < swap_start:
            windows.before.append(sample)
        elif sample.due <= swap_end:
            windows.during.append(sample)
        else:
            windows.after.append(sample)
    return windows


def timeline(samples: Sequence[Sample], origin: float, width: float = 1.0) -> list[dict[str, Any]]:
    """Per `width`-second bin of due time, counted from `origin` (the swap start): requests and p99."""
    bins: dict[int, list[Sample]] = {}
    for sample in samples:
        bins.setdefault(math.floor((sample.due - origin) / width), []).append(sample)
    return [
        {
            "from_s": round(b * width, 3),
            "requests": len(group),
            "failed": sum(s.version not in (1, 2) for s in group),
            "p99_ms": latency_ms([s.latency for s in group])["p99_ms"],
        }
        for b, group in sorted(bins.items())
    ]


def window_figures(samples: Sequence[Sample], seconds: float) -> dict[str, Any]:
    versions: dict[str, int] = {}
    for s in samples:
        if s.version is not None:
            versions[str(s.version)] = versions.get(str(s.version), 0) + 1
    return {
        "requests": len(samples),
        "seconds": round(seconds, 3),
        "failed": sum(s.version not in (1, 2) for s in samples),
        **latency_ms([s.latency for s in samples]),
        "answered_by_version": dict(sorted(versions.items())),
    }


# -- the model ----------------------------------------------------------------------------------
def export_versions(base: Path, workdir: Path) -> list[str]:
    """Train on a seed slice, export versions 1 and 2 under base/<MODEL>/; returns the known users."""
    from recstream.retrain import cf_model, savedmodel
    from recstream.retrain.dataset import build_interactions, read_seed

    lines = SEED.read_text().splitlines()
    seed_slice = workdir / "seed-slice.csv"
    seed_slice.write_text("\n".join(lines[: SEED_ROWS + 1]) + "\n")
    data = build_interactions(read_seed(seed_slice))
    params = dataclasses.replace(cf_model.Params(), epochs=EPOCHS)
    log.info(
        "training on %d seed rows: %d users, %d items, %d epochs",
        SEED_ROWS,
        data.n_users,
        data.n_items,
        EPOCHS,
    )
    started = time.monotonic()
    trained = cf_model.train(data, params)
    log.info("trained in %.1fs", time.monotonic() - started)
    for version in (1, 2):
        metadata = {
            "model": MODEL,
            "version": version,
            "parameters": params.as_dict(),
            "source": "bench.serving",
        }
        savedmodel.export(trained, base / MODEL / str(version), version, metadata, MODEL)
    return data.users.ids


def user_batches(users: Sequence[str], batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    picked = rng.choice(np.asarray(users, dtype=object), size=batch * DISTINCT_BATCHES, replace=False)
    return [
        np.asarray([u.encode() for u in picked[i * batch : (i + 1) * batch]], dtype=object)
        for i in range(DISTINCT_BATCHES)
    ]


# -- the model server ---------------------------------------------------------------------------
@contextlib.contextmanager
def model_server(home: Path, base: Path, config_file: Path) -> Iterator[str]:
    """The project's model server as the embedded stack starts it; yields its gRPC endpoint."""
    from recstream.deploy import modelserver
    from recstream.deploy.local.processes import free_port, start_daemon, stop_pid, wait_healthy
    from recstream.deploy.local.stack import MODELSERVER_ARGS

    grpc_port = free_port()
    while (rest_port := free_port()) == grpc_port:
        pass
    argv, env = modelserver.command(
        base / MODEL, MODEL, grpc_port, rest_port, model_config_file=config_file, extra_args=MODELSERVER_ARGS
    )
    log_path = home / "logs" / "modelserver.log"
    pid = start_daemon(argv, env, log_path, cwd=home)
    try:
        rest = f"127.0.0.1:{rest_port}"
        wait_healthy("modelserver", pid, lambda: modelserver.rest_healthy(rest, MODEL), 120, log_path)
        log.info("model server pid %d: gRPC 127.0.0.1:%d, REST %s (log %s)", pid, grpc_port, rest, log_path)
        yield f"127.0.0.1:{grpc_port}"
    finally:
        stop_pid(pid)
        log.info("model server pid %d stopped", pid)


# -- callers ------------------------------------------------------------------------------------
class GrpcClients:
    """Makes per-thread callers, each with its own channel; the requests are built beforehand."""

    def __init__(self, endpoint: str, batches: list[np.ndarray]) -> None:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        self.endpoint = endpoint
        self.requests = []
        for users in batches:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            request.model_spec.signature_name = RECOMMEND
            request.model_spec.version_label = STABLE_LABEL
            request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(users, dtype=tf.string))
            request.inputs["k"].CopyFrom(tf.make_tensor_proto(K, dtype=tf.int32))
            self.requests.append(request)
        self.channels: list[grpc.Channel] = []

    def __call__(self) -> Call:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        channel = grpc.insecure_channel(self.endpoint)
        self.channels.append(channel)
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        requests = self.requests

        def call(i: int) -> int:
            request = requests[i % len(requests)]
            response = predict(request, timeout=30)
            expected = len(request.inputs["user_id"].string_val) * K
            got = len(response.outputs["items"].string_val)
            if got != expected:
                raise ValueError(f"{got} items, expected {expected}")
            return int(response.outputs["model_version"].int64_val[0])

        return call

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.channels.clear()


def in_process_caller(function: Any, batches: list[np.ndarray]) -> Callable[[], Call]:
    import tensorflow as tf

    k = tf.constant(K, tf.int32)

    def make() -> Call:
        def call(i: int) -> int:
            users = batches[i % len(batches)]
            out = function(user_id=tf.constant(users, dtype=tf.string), k=k)
            arrays = {name: tensor.numpy() for name, tensor in out.items()}  # every output, as the server
            if arrays["items"].shape != (len(users), K):
                raise ValueError(f"items of shape {arrays['items'].shape}")
            return int(arrays["model_version"])

        return call

    return make


# -- closed loop --------------------------------------------------------------------------------
def closed_loop(make: Callable[[], Call], threads: int, seconds: float, batch: int) -> dict[str, Any]:
    """`threads` clients each sending the next request as soon as the last one answers."""
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()
    results: list[list[tuple[float, float]]] = [[] for _ in range(threads)]
    failures = [0] * threads
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            call = make()
            for i in range(WARMUP_CALLS):
                call(n + i * threads)
            barrier.wait()
            i = n
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    call(i)
                except Exception as exc:
                    failures[n] += 1
                    if failures[n] == 1:
                        log.warning("request failed: %s", exc)
                else:
                    done = time.perf_counter()
                    results[n].append((done, done - started))
                i += threads
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    try:
        barrier.wait(timeout=300)
    except threading.BrokenBarrierError:
        stop.set()
        raise RuntimeError(f"a client failed before the phase started: {errors[:1]}") from None
    start = time.perf_counter()
    deadline = start + seconds
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    done = [(t, lat) for per_thread in results for t, lat in per_thread if t <= deadline]
    requests = len(done)
    return {
        "threads": threads,
        "batch": batch,
        "seconds": seconds,
        "requests": requests,
        "failed": sum(failures),
        "requests_per_s": round(requests / seconds, 2),
        "users_per_s": round(requests * batch / seconds, 2),
        **latency_ms([lat for _, lat in done]),
    }


def measure(name: str, make: Callable[[], Call], batch: int) -> dict[str, Any]:
    latency = closed_loop(make, 1, PHASE_S, batch)
    log.info(
        "%s batch %d, 1 thread: p50 %.2f ms, p99 %.2f ms (%d requests)",
        name, batch, latency["p50_ms"], latency["p99_ms"], latency["requests"],
    )  # fmt: skip
    throughput = closed_loop(make, THROUGHPUT_THREADS, PHASE_S, batch)
    log.info(
        "%s batch %d, %d threads: %.1f requests/s, %.1f users/s (p50 %.2f ms, p99 %.2f ms)",
        name, batch, THROUGHPUT_THREADS, throughput["requests_per_s"], throughput["users_per_s"],
        throughput["p50_ms"], throughput["p99_ms"],
    )  # fmt: skip
    return {"latency": latency, "throughput": throughput}


# -- swap under load ----------------------------------------------------------------------------
class OpenLoop:
    """Requests due at a fixed rate, sent by a pool of threads; latency counted from the due time."""

    def __init__(self, make: Callable[[], Call], rate: float, workers: int) -> None:
        self.rate, self.make = rate, make
        self.samples: list[Sample] = []
        self._slots = itertools.count()
        self._lock = threading.Lock()
        self._stop_at = math.inf
        self._threads = [threading.Thread(target=self._send, daemon=True) for _ in range(workers)]
        self.start = 0.0

    def __enter__(self) -> OpenLoop:
        self.start = time.perf_counter() + 0.2
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def now(self) -> float:
        return time.perf_counter() - self.start

    def stop(self) -> None:
        self._stop_at = self.now()
        for thread in self._threads:
            thread.join()

    def _send(self) -> None:
        call = self.make()
        while True:
            with self._lock:
                slot = next(self._slots)
            due = slot / self.rate
            if due > self._stop_at:
                return
            wait = self.start + due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            try:
                version, error = call(slot), ""
            except Exception as exc:
                version, error = None, f"{type(exc).__name__}: {exc}"
            self.samples.append(Sample(due, time.perf_counter() - self.start - due, version, error))


def swap_under_load(
    endpoint: str, base: Path, config_file: Path, make: Callable[[], Call], rate: float
) -> dict[str, Any]:
    from recstream.updater.serving import STABLE, ConfigFile, Entry, Target
    from recstream.updater.swap import Fleet

    target = Target(endpoint)
    fleet = Fleet(MODEL, base / MODEL, ConfigFile(config_file), [target], load_timeout_s=SWAP_TIMEOUT_S)
    try:
        log.info("swap: open-loop load of %.1f requests/s (batch 1) on label %s", rate, STABLE)
        with OpenLoop(make, rate, SWAP_WORKERS) as load:
            time.sleep(SWAP_LEAD_IN_S + SWAP_STEADY_S)
            swap_start = load.now()
            log.info("swap: loading version 2 beside 1, moving %s to 2, dropping 1", STABLE)
            report = fleet.converge(Entry(frozenset({2}), {STABLE: 2}), stable=2)
            deadline = time.monotonic() + SWAP_TIMEOUT_S
            while (state := target.state(MODEL, 1)[0]) not in (None, "END"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"version 1 still {state} {SWAP_TIMEOUT_S:g}s after the swap")
                time.sleep(0.02)
            swap_end = load.now()
            log.info("swap: done in %.2fs (Fleet.converge %.2fs)", swap_end - swap_start, report.seconds)
            time.sleep(SWAP_AFTER_S)
        serving = target.stable_version(MODEL)
    finally:
        target.close()
    windows = split_windows(load.samples, SWAP_LEAD_IN_S, swap_start, swap_end)
    end = max((s.due for s in load.samples), default=swap_end)
    steady = window_figures(windows.before, swap_start - SWAP_LEAD_IN_S)
    during = window_figures(windows.during, swap_end - swap_start)
    after = window_figures(windows.after, end - swap_end)
    failed = [s for s in load.samples if s.version not in (1, 2)]
    log.info(
        "swap: p99 %.2f ms during (%d requests) against %.2f ms steady (%d requests); %d failed",
        during["p99_ms"] or math.nan, during["requests"], steady["p99_ms"] or math.nan, steady["requests"],
        len(failed),
    )  # fmt: skip
    return {
        "load": {
            "kind": "open loop, latency from the due time",
            "requests_per_s": round(rate, 2),
            "batch": 1,
            "sender_threads": SWAP_WORKERS,
            "label": STABLE,
        },
        "swap": "load 2 beside 1 (+canary), stable 1 -> 2 (+canary), drop 1; until 1 is unloaded",
        "swap_seconds": round(swap_end - swap_start, 3),
        "converge_seconds": report.seconds,
        "steady": steady,
        "during_swap": during,
        "after_swap": after,
        "p99_ratio_during_to_steady": (
            round(during["p99_ms"] / steady["p99_ms"], 3) if during["p99_ms"] and steady["p99_ms"] else None
        ),
        "failed_requests": len(failed),
        "failure_examples": sorted({s.error for s in failed if s.error})[:5],
        "late_version_1_answers": sum(s.version == 1 for s in windows.after),
        "stable_version_at_end": serving,
        "timeline_from_swap_start": timeline(
            [s for s in load.samples if s.due >= SWAP_LEAD_IN_S], swap_start
        ),
    }


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="recstream-bench-serving-") as tmp:
        home = Path(tmp)
        base = home / "serving"
        config_file = base / "models.config"
        users = export_versions(base, home)

        import tensorflow as tf

        from recstream.updater.serving import STABLE, ConfigFile, Entry

        ConfigFile(config_file).set_entry(MODEL, base / MODEL, Entry(frozenset({1}), {STABLE: 1}))
        limit_model = tf.saved_model.load(str(base / MODEL / "1"))
        function = limit_model.signatures[RECOMMEND]
        figures: dict[str, dict[str, Any]] = {}
        with model_server(home, base, config_file) as endpoint:
            for batch in BATCHES:
                batches = user_batches(users, batch)
                clients = GrpcClients(endpoint, batches)
                try:
                    grpc_figures = measure("gRPC", clients, batch)
                finally:
                    clients.close()
                limit_figures = measure("in-process", in_process_caller(function, batches), batch)
                figures[str(batch)] = {
                    "grpc": grpc_figures,
                    "in_process": limit_figures,
                    "throughput_ratio": round(
                        grpc_figures["throughput"]["users_per_s"]
                        / limit_figures["throughput"]["users_per_s"],
                        3,
                    ),
                    "p50_latency_ratio": round(
                        grpc_figures["latency"]["p50_ms"] / limit_figures["latency"]["p50_ms"], 3
                    ),
                }
            rate = SWAP_LOAD_SHARE * figures["1"]["grpc"]["throughput"]["requests_per_s"]
            clients = GrpcClients(endpoint, user_batches(users, 1))
            try:
                swap = swap_under_load(endpoint, base, config_file, clients, rate)
            finally:
                clients.close()
    headline = figures[str(BATCHES[-1])]
    path = write_result(
        "serving",
        headline["grpc"]["throughput"]["users_per_s"],
        f"users/s over gRPC, batch {BATCHES[-1]}, {THROUGHPUT_THREADS} client threads",
        headline["in_process"]["throughput"]["users_per_s"],
        f"the same SavedModel called in-process (tf.saved_model.load, {RECOMMEND}), "
        "same batches and threads, same run",
        model={"seed_rows": SEED_ROWS, "epochs": EPOCHS, "users": len(users), "k": K},
        phase_seconds=PHASE_S,
        by_batch=figures,
        swap=swap,
        failed_requests_during_swap=swap["during_swap"]["failed"],
        failed_requests_swap_run=swap["failed_requests"],
        total_seconds=round(time.monotonic() - started, 1),
    )
    print(path.read_text())


if __name__ == "__main__":
    setup_logging()
    main()
