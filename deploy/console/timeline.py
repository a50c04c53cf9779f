"""The timeline of a `recstream up` run, kept for `recstream report` (a laptop has no Prometheus).

While `up` runs, a thread of it takes what `recstream status` shows (`observe.snapshot`, the
same scrape) every TIMELINE_INTERVAL_S and appends it to `$RECSTREAM_HOME/timeline.jsonl`,
one compact JSON object a line, each with its time `t` (epoch seconds) and `kind`:
- `run`: the run's start, the sampling interval and the drift thresholds;
- `sample`: counts, rates since the previous sample, latency p50/p99, online hit rate per
  version, each drift statistic, the active version;
- `model`: a registry event (published, activated, rejected, rolled_back) at its own time;
- `alert`: drift alerts of one statistic seen since the previous sample (the scorer's alert
  counter: the time is the sample's, at most one interval late);
- `summary`: what `up --demo` wrote to demo-summary.json.

A new run moves the previous run's file to `timeline.previous.jsonl`. Past TIMELINE_MAX_BYTES
the file keeps every other sample and all other records, so a long run keeps its whole story
at a coarser step and the file stays bounded (events crowding it out: the oldest go).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recstream.stream.contracts.model_events import EVENTS
from recstream.stream.errors import RecstreamError
from recstream.stream.settings import Settings

log = logging.getLogger(__name__)

FILE = "timeline.jsonl"
PREVIOUS = "timeline.previous.jsonl"


def timeline_path(home: Path) -> Path:
    return home / FILE


def drift_thresholds(settings: Settings) -> dict[str, float]:
    """Each drift statistic's alert threshold, from the scorer's own table."""
    from recstream.recommender.drift import DriftConfig, DriftMonitor

    monitor = DriftMonitor(DriftConfig.from_settings(settings))
    return {name: alarm.threshold for name, alarm in monitor.alarms.items()}


class Recorder:
    """Samples the running system into the timeline from a thread of `recstream up`."""

    def __init__(
        self, settings: Settings, *, interval_s: float | None = None, max_bytes: int | None = None
    ) -> None:
        self.settings = settings
        self.path = timeline_path(settings.home)
        self.interval_s = interval_s or settings.timeline_interval_s
        self.max_bytes = max_bytes or settings.timeline_max_bytes
        self.registry: Any = None
        self.before: Any = None  # the previous snapshot, for rates
        self.alerts_before: dict[str, float] = {}
        self.seen: set[tuple[float, int, str]] = set()  # registry events already recorded
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> Recorder:
        self.begin()
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling after one last sample (`up` calls this while the services still run).
        Never raises: the timeline must not keep `up` from stopping the services."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():
                log.warning("timeline: the sampler did not stop in 30 s")
                return
        self._sample_logged()

    def begin(self) -> None:
        """A fresh file for this run (the last run's is kept as timeline.previous.jsonl)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            os.replace(self.path, self.path.with_name(PREVIOUS))
        header: dict[str, Any] = {"kind": "run", "t": round(time.time(), 3), "interval_s": self.interval_s}
        header |= {"model": self.settings.model_name, "pid": os.getpid()}
        try:
            header["thresholds"] = drift_thresholds(self.settings)
        except Exception as exc:  # the report draws the statistics without their lines
            log.warning("timeline: no drift thresholds (%s)", exc)
        append(self.path, [header], self.max_bytes)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample_logged()
            self._stop.wait(self.interval_s)

    def _sample_logged(self) -> None:
        try:
            self.sample()
        except Exception:  # a sample lost is a gap in the timeline, never a stopped `up`
            # Said once while it lasts: `up` shows a live view, not a log every few seconds.
            log.log(
                logging.DEBUG if self._failing else logging.WARNING, "timeline: sample lost", exc_info=True
            )
            self._failing = True
        else:
            self._failing = False

    def sample(self) -> None:
        """One snapshot of the running system into the timeline."""
        from recstream.deploy.console import observe

        if self.registry is None:
            try:
                self.registry = observe.registry_of(self.settings)
            except Exception as exc:  # no store configured: the figures of the services still help
                log.debug("timeline: no registry: %s", exc)
        snap = observe.snapshot(self.settings, registry=self.registry)
        rates = observe.rates(self.before, snap) if self.before is not None else {}
        self.before = snap
        records = [sample_record(snap, rates), *self._alerts(snap), *self._model_events()]
        append(self.path, records, self.max_bytes)

    def _alerts(self, snap: Any) -> list[dict[str, Any]]:
        """Alerts published since the previous sample, by statistic (a restarted scorer counts
        from 0 again; a scorer that did not answer says nothing about alerts)."""
        if not snap.services.get("scorer", {}).get("metrics"):
            return []
        records = []
        for statistic, count in sorted(snap.drift_alerts_by.items()):
            before = self.alerts_before.get(statistic, 0.0)
            new = count - before if count >= before else count
            if new > 0:
                record = {"kind": "alert", "t": round(snap.at, 3), "statistic": statistic, "count": int(new)}
                if statistic in snap.drift:
                    record["value"] = _round(snap.drift[statistic])
                records.append(record)
        self.alerts_before = dict(snap.drift_alerts_by)
        return records

    def _model_events(self) -> list[dict[str, Any]]:
        if self.registry is None:
            return []
        try:
            events = self.registry.state().events
        except Exception as exc:  # the store may be down: the next sample reads them
            log.debug("timeline: registry unavailable: %s", exc)
            return []
        records = []
        for event in events:
            key = (event.ts, event.version, event.event)
            if key in self.seen:
                continue
            self.seen.add(key)
            record: dict[str, Any] = {"kind": "model", "t": round(event.ts, 3), "event": event.event}
            record["version"] = event.version
            if event.metrics:
                record["metrics"] = {
                    k: _round(v) for k, v in event.metrics.items() if isinstance(v, int | float)
                }
            if event.reason:
                record["reason"] = event.reason
            if event.to is not None:
                record["to"] = event.to
            records.append(record)
        return records


def sample_record(snap: Any, rates: dict[str, float]) -> dict[str, Any]:
    """A snapshot as one compact `sample` record (figures not known are left out)."""
    record: dict[str, Any] = {
        "kind": "sample",
        "t": round(snap.at, 3),
        "events_in": int(snap.events_in),
        "ingested": int(snap.events_ingested),
        "dead_letters": int(snap.dead_letters),
        "lag": None if snap.lag is None else int(snap.lag),
        "requests": int(snap.requests),
        "request_errors": int(snap.request_errors),
        "p50_ms": None if snap.latency_p50_s is None else _round(snap.latency_p50_s * 1000),
        "p99_ms": None if snap.latency_p99_s is None else _round(snap.latency_p99_s * 1000),
        "hit_rate": {v: _round(rate) for v, rate in snap.hit_rate.items()},
        "drift": {name: _round(value) for name, value in snap.drift.items()},
        "alerts": int(snap.drift_alerts),
        "retrain_runs": int(snap.retrain_runs),
        "active": snap.active_version,
        "services_up": sum(bool(s.get("pid") or s.get("metrics")) for s in snap.services.values()),
    }
    record |= {name: round(value, 2) for name, value in rates.items()}
    # A scrape can give NaN or inf (a gauge of nothing yet): left out, as an unknown figure is.
    record = {k: _finite(v) for k, v in record.items()}
    return {k: v for k, v in record.items() if v is not None and v != {}}


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if not isinstance(v, float) or math.isfinite(v)}
    return value


def _round(value: float) -> float:
    return float(f"{value:.4g}")


# -- the file --------------------------------------------------------------------------------------
def append(path: Path, records: list[dict[str, Any]], max_bytes: int) -> None:
    """Append records; past `max_bytes`, thin the file out (see the module's docstring)."""
    with open(path, "a", encoding="utf-8") as out:
        out.writelines(_line(record) for record in records)
    if path.stat().st_size > max_bytes:
        compact(path, max_bytes)


def compact(path: Path, max_bytes: int) -> None:
    """Keep every other sample (the first and last too) and the other records; if these are
    still over 3/4 of the budget, drop the oldest of them (the run headers stay)."""
    records = read_records(path)
    samples = [i for i, r in enumerate(records) if r.get("kind") == "sample"]
    dropped = set(samples[1:-1:2])
    lines = deque(_line(r) for i, r in enumerate(records) if i not in dropped)
    size = sum(len(line.encode()) for line in lines)
    headers = [line for line in lines if line.startswith('{"kind":"run"')]
    budget = max_bytes * 3 // 4  # halving the samples alone ends near half the budget
    if size > budget:  # not samples but other records fill it: the oldest go
        rest = deque(line for line in lines if not line.startswith('{"kind":"run"'))
        size = sum(len(line.encode()) for line in (*headers, *rest))
        while rest and size > budget:
            size -= len(rest.popleft().encode())
        lines = deque([*headers, *rest])
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    log.info("timeline: thinned to %d records (%d bytes)", len(lines), size)


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a timeline file; a torn or foreign line is skipped, not fatal."""
    records, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("t"), int | float):
                records.append(record)
            elif line.strip():
                bad += 1
    if bad:
        log.warning("%s: %d unreadable lines skipped", path, bad)
    return records


def append_summary(home: Path, body: dict[str, Any]) -> None:
    """The demo's summary, so the report shows it (and `recstream report` later too)."""
    path = timeline_path(home)
    if path.exists():
        with open(path, "a", encoding="utf-8") as out:
            out.write(_line({"kind": "summary", "t": round(time.time(), 3), **body}))


@dataclass
class Run:
    """The last run of a timeline file, records by kind (sorted by time)."""

    header: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)  # may predate the run
    alerts: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None

    @property
    def start(self) -> float:
        return self.header.get("t") or (self.samples[0]["t"] if self.samples else 0.0)

    @property
    def end(self) -> float:
        return self.samples[-1]["t"] if self.samples else self.start


def load_run(path: Path) -> Run:
    """The last run recorded in `path`; RecstreamError when there is none."""
    if not path.is_file():
        raise RecstreamError(f"no timeline at {path}: `recstream up` records one while it runs")
    records = read_records(path)
    starts = [i for i, r in enumerate(records) if r.get("kind") == "run"]
    run = Run(records[starts[-1]] if starts else {})
    for record in records[starts[-1] + 1 if starts else 0 :]:
        kind = record.get("kind")
        if kind == "sample":
            run.samples.append(record)
        elif kind == "model" and record.get("event") in EVENTS and isinstance(record.get("version"), int):
            run.models.append(record)
        elif kind == "alert" and isinstance(record.get("statistic"), str):
            run.alerts.append(record)
        elif kind == "summary":
            run.summary = record
    if not run.samples:
        raise RecstreamError(f"{path}: no sample recorded yet (one every {_interval(run)} s while `up` runs)")
    for records_of_kind in (run.samples, run.models, run.alerts):
        records_of_kind.sort(key=lambda r: r["t"])
    return run


def _interval(run: Run) -> Any:
    return run.header.get("interval_s", "few")
