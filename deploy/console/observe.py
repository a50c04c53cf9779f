"""The figures `recstream status` and the demo's live view show: read from what is running.

Sources: the services' /metrics endpoints (recorded by the supervisor in services.json), and
the model registry in the object store. Nothing here needs the services' code.
Rates need two looks: `rates(before, after)`.
"""

from __future__ import annotations

import http.client
import logging
import math
import time
import urllib.request
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from recstream.stream.contracts import metrics as metric_names
from recstream.stream.settings import Settings

log = logging.getLogger(__name__)

Samples = dict[str, list[tuple[dict[str, str], float]]]


@dataclass
class Snapshot:
    at: float
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    events_in: float = 0.0  # transactions taken by ingest, before validation
    events_ingested: float = 0.0  # rows landed in the object store
    dead_letters: float = 0.0
    lag: float | None = None
    requests: float = 0.0  # answers sent by the scorer (model, fallback, errors)
    request_errors: float = 0.0
    latency_p99_s: float | None = None
    latency_p50_s: float | None = None
    hit_rate: dict[str, float] = field(default_factory=dict)  # model version -> online hit rate
    drift: dict[str, float] = field(default_factory=dict)  # drift statistic -> last value
    drift_alerts: float = 0.0
    drift_alerts_by: dict[str, float] = field(default_factory=dict)  # drift statistic -> alerts
    retrain_runs: float = 0.0
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # registry: version -> status, HR@10
    active_version: int | None = None
    versions_activated: int = 0  # distinct versions ever activated
    # Each worker (several per service with INGEST_WORKERS / SCORER_WORKERS): its service, pid, and
    # the partitions of `transactions` it owns -> its lag there (None until known).
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Freshness: the served version's staleness (now - newest event it learnt from), and per
    # activation [activated at, newest event the version learnt from] (registry events).
    staleness_s: float | None = None
    activations: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scrape(endpoint: str, timeout_s: float = 2.0) -> Samples:
    """Every sample of a /metrics page by name ({} when the endpoint does not answer)."""
    try:
        with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=timeout_s) as response:
            return parse_metrics(response.read().decode())
    except (OSError, http.client.HTTPException):
        return {}


def parse_metrics(text: str) -> Samples:
    """A metrics page's samples by name ({} when it is not one)."""
    samples: Samples = defaultdict(list)
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name].append((sample.labels, sample.value))
    except ValueError:  # not a metrics page
        return {}
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for lbl, v in samples.get(name, []) if all(lbl.get(k) == x for k, x in labels.items()))


def histogram_quantile(samples: Samples, name: str, q: float) -> float | None:
    """The q-quantile of a histogram's cumulative buckets (upper bound of the bucket reaching it)."""
    buckets = sorted((float(lbl["le"]), v) for lbl, v in samples.get(f"{name}_bucket", []) if "le" in lbl)
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    bound = next(le for le, count in buckets if count >= rank)
    return None if math.isinf(bound) else bound


def metrics_endpoints(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each service's metrics endpoint as its supervisor recorded it ("" when none is recorded),
    from `supervisor.services_status`.

    Never the default ports: on a machine with two stacks those may be the other stack's.
    """
    return {name: service.get("metrics") or "" for name, service in services.items()}


def merge(pages: list[Samples]) -> Samples:
    """The metrics of several workers of one service as one: equal label sets summed (counters,
    histograms; gauges of disjoint partitions), except per-worker statistics, whose largest is kept."""
    merged: dict[str, dict[tuple, tuple[dict[str, str], float]]] = defaultdict(dict)
    for page in pages:
        for name, samples in page.items():
            for labels, value in samples:
                key = tuple(sorted(labels.items()))
                if key in merged[name]:
                    before = merged[name][key][1]
                    value = max(before, value) if name in LARGEST_OF_WORKERS else before + value
                merged[name][key] = (labels, value)
    return {name: list(by_labels.values()) for name, by_labels in merged.items()}


LARGEST_OF_WORKERS = {
    metric_names.DRIFT_STATISTIC,
    metric_names.DRIFT_HIT_RATE,
    metric_names.SCORER_MODEL_VERSION,
}


def partitions(samples: Samples) -> dict[int, float | None]:
    """A worker's owned partitions of `transactions` -> its lag there (None: not known yet)."""
    return {
        int(lbl["partition"]): None if math.isnan(v) else v
        for lbl, v in samples.get(metric_names.WORKER_PARTITION_LAG, [])
        if "partition" in lbl
    }


def snapshot(settings: Settings, *, registry: Any = None) -> Snapshot:
    from recstream.deploy.local.supervisor import SERVICES, services_status

    services = services_status(settings.home, SERVICES)
    workers = services_status(settings.home)  # every worker the supervisor recorded
    snap = Snapshot(at=time.time())
    by_worker = {
        name: scrape(endpoint) if endpoint else {} for name, endpoint in metrics_endpoints(workers).items()
    }
    scraped: dict[str, Samples] = {}
    for name in SERVICES:
        mine = [w for w, info in workers.items() if info["service"] == name]
        scraped[name] = merge([by_worker[w] for w in mine])
        alive = [workers[w] for w in mine if workers[w]["pid"]]
        first = (alive or [workers[w] for w in mine] or [services[name]])[0]
        snap.services[name] = {  # as `status` shows it, "metrics": whether any worker answered
            **first,
            "restarts": sum(workers[w]["restarts"] for w in mine),
            "workers": len(mine),
            "metrics": any(by_worker[w] for w in mine),
        }
    for name, info in workers.items():
        owned = partitions(by_worker[name])
        snap.workers[name] = {
            "service": info["service"],
            "pid": info["pid"],
            "metrics": bool(by_worker[name]),
            "partitions": owned,
        }
    ingest, scorer = scraped["ingest"], scraped["scorer"]
    snap.events_in = total(ingest, metric_names.INGEST_RECEIVED)
    snap.events_ingested = total(ingest, metric_names.INGEST_ROWS_WRITTEN)
    snap.dead_letters = total(ingest, metric_names.INGEST_DLQ)
    if ingest.get(metric_names.INGEST_CONSUMER_LAG):
        snap.lag = total(ingest, metric_names.INGEST_CONSUMER_LAG)
    snap.requests = total(scorer, metric_names.SCORER_REQUESTS)
    snap.request_errors = sum(
        total(scorer, metric_names.SCORER_REQUESTS, result=r) for r in ("invalid", "expired", "error")
    )
    snap.latency_p99_s = histogram_quantile(scorer, metric_names.SCORER_LATENCY, 0.99)
    snap.hit_rate = {lbl["version"]: v for lbl, v in scorer.get(metric_names.DRIFT_HIT_RATE, [])}
    snap.drift_alerts = total(scorer, metric_names.DRIFT_ALERTS)
    # For the timeline (deploy/console/timeline.py): the median, each statistic, which one alerted.
    snap.latency_p50_s = histogram_quantile(scorer, metric_names.SCORER_LATENCY, 0.5)
    snap.drift = {lbl.get("statistic", "?"): v for lbl, v in scorer.get(metric_names.DRIFT_STATISTIC, [])}
    for lbl, v in scorer.get(metric_names.DRIFT_ALERTS, []):
        statistic = lbl.get("statistic", "?")
        snap.drift_alerts_by[statistic] = snap.drift_alerts_by.get(statistic, 0.0) + v
    snap.retrain_runs = total(scraped["scheduler"], metric_names.SCHEDULER_RUNS)
    if stale := scraped["updater"].get(metric_names.UPDATER_SERVED_STALENESS):
        snap.staleness_s = max(v for _, v in stale)
    _registry(settings, snap, registry)
    return snap


def registry_of(settings: Settings) -> Any:
    """A registry reader that fails fast: a snapshot must not hang on a store that is down."""
    from recstream.stream.registry import ModelRegistry
    from recstream.stream.storage import make_client

    return ModelRegistry(
        make_client(settings, retries=0, timeout_s=3), settings.models_bucket, settings.model_name
    )


def _registry(settings: Settings, snap: Snapshot, registry: Any) -> None:
    try:
        state = (registry or registry_of(settings)).state()
    except Exception as exc:  # the store may be down: the rest of the snapshot still helps
        log.debug("registry unavailable: %s", exc)
        return
    snap.active_version = state.active
    snap.versions_activated = len({e.version for e in state.events if e.event == "activated"})
    for version, status in sorted(state.status.items()):
        metrics = state.metrics.get(version, {})
        snap.versions[str(version)] = {"status": status, "hr@10": metrics.get("hr@10", metrics.get("hr"))}
    newest = {e.version: e.metrics.get("newest_event_ts") for e in state.events if e.event == "activated"}
    snap.activations = [
        [e.ts, float(newest[e.version])]
        for e in state.events
        if e.event == "activated" and isinstance(newest.get(e.version), int | float)
    ]
    if snap.staleness_s is None and isinstance(newest.get(state.active), int | float):
        snap.staleness_s = max(snap.at - float(newest[state.active]), 0.0)  # the updater is not scraped


def rates(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Per-second rates between two snapshots (a service restart resets its counters: never < 0)."""
    seconds = max(after.at - before.at, 1e-6)
    return {
        "events_per_s": max(after.events_in - before.events_in, 0) / seconds,
        "ingested_per_s": max(after.events_ingested - before.events_ingested, 0) / seconds,
        "requests_per_s": max(after.requests - before.requests, 0) / seconds,
    }


def versions_by_status(snap: Snapshot) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = defaultdict(list)
    for version, info in snap.versions.items():
        grouped[info["status"]].append(int(version))
    return dict(grouped)


def figures(snap: Snapshot, rates: dict[str, float] | None = None) -> dict[str, str]:
    rates = rates or {}
    by_status = versions_by_status(snap)
    services = ", ".join(
        f"{name} {'up' if info['pid'] or info['metrics'] else 'DOWN'}"
        + (f" x{info['workers']}" if info.get("workers", 1) > 1 else "")
        + (f" ({info['restarts']} restarts)" if info["restarts"] else "")
        for name, info in snap.services.items()
    )
    p99 = f"{snap.latency_p99_s * 1000:,.0f} ms" if snap.latency_p99_s is not None else "-"
    hit = ", ".join(f"v{v} {rate:.3f}" for v, rate in sorted(snap.hit_rate.items())) or "-"
    models = "; ".join(
        f"{status} {', '.join(map(str, sorted(versions)))}" for status, versions in sorted(by_status.items())
    )
    active = snap.versions.get(str(snap.active_version), {})
    workers = "; ".join(
        f"{name} "
        + (
            ", ".join(
                f"p{p} lag {'?' if lag is None else f'{lag:,.0f}'}"
                for p, lag in sorted(info["partitions"].items())
            )
            or ("no partitions" if info["metrics"] else "-")
        )
        for name, info in snap.workers.items()
        if info["service"] in ("ingest", "scorer")
    )
    return {
        "services": services,
        "workers": workers or "-",
        "events": f"{rates.get('events_per_s', 0):,.0f}/s in, {snap.events_in:,.0f} consumed, "
        f"{snap.dead_letters:,.0f} dead letters",
        "ingested": f"{snap.events_ingested:,.0f} rows, lag {snap.lag if snap.lag is not None else '-'}",
        "models": f"active v{snap.active_version} (HR@10 {active.get('hr@10') or 0:.3f}); {models}"
        if snap.active_version
        else (models or "none yet"),
        "retrain runs": f"{snap.retrain_runs:,.0f}",
        "requests": f"{rates.get('requests_per_s', 0):,.1f}/s, {snap.requests:,.0f} answered "
        f"({snap.request_errors:,.0f} errors), p99 {p99}",
        "online hit rate": hit,
        "drift alerts": f"{snap.drift_alerts:,.0f}",
        "freshness": (
            f"served model {snap.staleness_s:,.0f}s behind the newest purchase it learnt from"
            if snap.staleness_s is not None
            else "-"
        )
        + (
            f"; last activation {snap.activations[-1][0] - snap.activations[-1][1]:,.0f}s after "
            "its newest purchase"
            if snap.activations
            else ""
        ),
    }


def median_purchase_to_served(activations: list[list[float]], purchases: list[float]) -> float | None:
    """Median seconds from a purchase (its event time) to the activation of the first version that
    learnt from it, over the purchases some activated version learnt from (None: none did).

    `activations`: [activated at, newest event time the version learnt from] (Snapshot.activations).
    """
    import numpy as np

    if not activations or not purchases:
        return None
    ordered = np.asarray(sorted(activations), dtype=np.float64)
    covered = np.maximum.accumulate(ordered[:, 1])  # newest purchase served by each activation on
    ts = np.asarray(purchases, dtype=np.float64)
    first = np.searchsorted(covered, ts, side="left")  # first activation that learnt from it
    served = first < len(ordered)
    if not served.any():
        return None
    return round(float(np.median(ordered[first[served], 0] - ts[served])), 3)


def purchase_times(settings: Settings) -> list[float]:
    """Event times of every landed purchase (for `median_purchase_to_served`; [] when unreadable)."""
    from recstream.stream.lake import read_transactions
    from recstream.stream.storage import make_client

    try:
        frame = read_transactions(make_client(settings), settings.data_bucket, columns=["ts"])
    except Exception as exc:  # the summary still has everything else
        log.warning("purchase times unreadable: %s", exc)
        return []
    return frame["ts"].tolist()
