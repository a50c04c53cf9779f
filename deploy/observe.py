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

from stream.settings import Settings

log = logging.getLogger(__name__)

Samples = dict[str, list[tuple[dict[str, str], float]]]


@dataclass
class Snapshot:
    at: float
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    events_in: float = 0.0  # transactions consumed by ingest (valid and invalid)
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


def snapshot(settings: Settings, *, registry: Any = None) -> Snapshot:
    from deploy.supervisor import SERVICES, services_status

    services = services_status(settings.home, SERVICES)
    snap = Snapshot(at=time.time())
    scraped = {
        name: scrape(endpoint) if endpoint else {} for name, endpoint in metrics_endpoints(services).items()
    }
    for name, samples in scraped.items():  # as `status` shows it, "metrics": whether it answered
        snap.services[name] = {**services[name], "metrics": bool(samples)}
    ingest, scorer = scraped["ingest"], scraped["scorer"]
    snap.events_in = total(ingest, "recstream_ingest_events_total")
    snap.events_ingested = total(ingest, "recstream_ingest_rows_written_total")
    snap.dead_letters = total(ingest, "recstream_ingest_dlq_total")
    if ingest.get("recstream_ingest_consumer_lag"):
        snap.lag = total(ingest, "recstream_ingest_consumer_lag")
    snap.requests = total(scorer, "recstream_scorer_requests_total")
    snap.request_errors = sum(
        total(scorer, "recstream_scorer_requests_total", result=r) for r in ("invalid", "expired", "error")
    )
    snap.latency_p99_s = histogram_quantile(scorer, "recstream_scorer_latency_seconds", 0.99)
    snap.hit_rate = {lbl["version"]: v for lbl, v in scorer.get("recstream_drift_online_hit_rate", [])}
    snap.drift_alerts = total(scorer, "recstream_drift_alerts_total")
    # For the timeline (deploy/timeline.py): the median, each statistic, which one alerted.
    snap.latency_p50_s = histogram_quantile(scorer, "recstream_scorer_latency_seconds", 0.5)
    snap.drift = {lbl.get("statistic", "?"): v for lbl, v in scorer.get("recstream_drift_statistic", [])}
    for lbl, v in scorer.get("recstream_drift_alerts_total", []):
        statistic = lbl.get("statistic", "?")
        snap.drift_alerts_by[statistic] = snap.drift_alerts_by.get(statistic, 0.0) + v
    snap.retrain_runs = total(scraped["scheduler"], "recstream_scheduler_runs_total")
    _registry(settings, snap, registry)
    return snap


def registry_of(settings: Settings) -> Any:
    """A registry reader that fails fast: a snapshot must not hang on a store that is down."""
    from retrain.registry import ModelRegistry
    from stream.storage import make_client

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
        + (f" ({info['restarts']} restarts)" if info["restarts"] else "")
        for name, info in snap.services.items()
    )
    p99 = f"{snap.latency_p99_s * 1000:,.0f} ms" if snap.latency_p99_s is not None else "-"
    hit = ", ".join(f"v{v} {rate:.3f}" for v, rate in sorted(snap.hit_rate.items())) or "-"
    models = "; ".join(
        f"{status} {', '.join(map(str, sorted(versions)))}" for status, versions in sorted(by_status.items())
    )
    active = snap.versions.get(str(snap.active_version), {})
    return {
        "services": services,
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
    }
