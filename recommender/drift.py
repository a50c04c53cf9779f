"""Concept and data drift of the served model, from what the scorer sees (DESIGN flow 6).

Concept drift: a served recommendation is resolved by the user's next purchase of a product
new to them within DRIFT_HORIZON_S (a hit if that product was in the list, a miss otherwise;
no such purchase in time means no signal), as the offline holdout judges a model. The
outcomes of one model version form an online hit rate; a change detector on them (river's
Page-Hinkley or ADWIN, recommender/detectors.py, picked by DRIFT_DETECTOR) detects a fall.
Data drift: the products bought in a recent window against the served version's training
reference (metadata.json "reference"): the PSI of item popularity, binned by the reference's
popularity so that sampling noise stays small, and the shares of unknown products (not in the
reference) and of requests for unknown users (answered by the popularity fallback).

A detection is an edge: the detector starts afresh after it, and it raises one concept alert,
at the first check past the cooldown. Data alerts have hysteresis: a statistic fires when it
crosses its threshold and is cleared only when it falls below half of it; while it stays raised
and above the threshold it fires again once per repeat interval (as Alertmanager repeats a
firing alert), so a drift that the last retrain did not cure is retried, and one statistic
never fires more than once per cooldown.
Times are arrival times (record timestamps), so replayed events with old `ts` still join.
Where a drift started is also given in event time (`from_ts`, the purchases' own `ts`, which is
what the retrain's data carry): a concept alert's window starts at the detector's change point
(Page-Hinkley: the first outcome after the cumulative sum's last low; ADWIN: the first outcome
of the window it kept), a data alert's at its first purchase.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from recstream.recommender.detectors import ADWIN, Detector, PageHinkley
from recstream.stream.contracts.alerts import DriftAlert
from recstream.stream.contracts.metadata import DriftReference
from recstream.stream.settings import Settings

PSI_BINS = 10
PSI_EPSILON = 1e-4  # share given to an empty bin, so the logarithm stays finite
UNKNOWN = "__unknown__"


# Where an outcome happened: (arrival time, event time), the tags the detectors keep.
Moment = tuple[float, float]


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """The drift tracker's knobs: the DRIFT_* settings (stream/settings.py declares each)."""

    horizon_s: float
    window_events: int  # purchases in the data-drift window
    min_events: int  # fewest purchases before data drift is judged
    min_outcomes: int  # fewest resolved recommendations before concept drift is judged
    psi_threshold: float
    unknown_item_threshold: float
    unknown_user_threshold: float
    detector: str  # page-hinkley or adwin
    ph_delta: float
    ph_threshold: float
    adwin_delta: float
    cooldown_s: float
    repeat_s: float
    max_pending_users: int = 200_000  # open recommendations kept (oldest dropped first); not a setting

    @classmethod
    def from_settings(cls, settings: Settings) -> DriftConfig:
        return cls(
            horizon_s=settings.drift_horizon_s,
            window_events=settings.drift_window_events,
            min_events=settings.drift_min_events,
            min_outcomes=settings.drift_min_outcomes,
            psi_threshold=settings.drift_psi_threshold,
            unknown_item_threshold=settings.drift_unknown_item_threshold,
            unknown_user_threshold=settings.drift_unknown_user_threshold,
            detector=settings.drift_detector,
            ph_delta=settings.drift_ph_delta,
            ph_threshold=settings.drift_ph_threshold,
            adwin_delta=settings.drift_adwin_delta,
            cooldown_s=settings.drift_alert_cooldown_s,
            repeat_s=settings.drift_alert_repeat_s,
        )

    def new_detector(self) -> Detector[Moment]:
        """A fresh detector of a version's hit rate; it judges from `min_outcomes` outcomes on."""
        if self.detector == "adwin":
            return ADWIN(delta=self.adwin_delta, min_instances=self.min_outcomes)
        if self.detector == "page-hinkley":
            return PageHinkley(
                delta=self.ph_delta, threshold=self.ph_threshold, min_instances=self.min_outcomes
            )
        raise ValueError(f"unknown drift detector {self.detector!r}")


def popularity_bins(reference: Mapping[str, float], bins: int = PSI_BINS) -> dict[str, int]:
    """Item -> bin, the reference's items sorted by share and cut into bins of about equal mass."""
    total = sum(reference.values()) or 1.0
    assignment, mass = {}, 0.0
    for item, share in sorted(reference.items(), key=lambda kv: (-kv[1], kv[0])):
        assignment[item] = min(int(mass / total * bins), bins - 1)
        mass += share
    return assignment


def psi(expected: Iterable[float], actual: Iterable[float], epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of two distributions over the same bins."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, epsilon), max(a, epsilon)
        total += (a - e) * math.log(a / e)
    return total


@dataclass
class Reference:
    """A model version's training reference, binned for PSI."""

    version: int
    item_share: dict[str, float]
    bins: dict[str, int] = field(init=False)
    expected: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.bins = popularity_bins(self.item_share)
        n_bins = max(self.bins.values(), default=-1) + 1
        total = sum(self.item_share.values()) or 1.0
        self.expected = [0.0] * (n_bins + 1)  # the last bin holds unknown items
        for item, share in self.item_share.items():
            self.expected[self.bins[item]] += share / total

    @classmethod
    def from_metadata(cls, version: int, metadata: Mapping[str, Any]) -> Reference | None:
        shares = DriftReference.item_shares(metadata)
        return None if shares is None else cls(version, shares)

    def actual(self, items: Iterable[str]) -> tuple[list[float], float]:
        """The window's distribution over the bins, and its share of unknown items."""
        counts = [0] * len(self.expected)
        for item in items:
            counts[self.bins.get(item, len(self.expected) - 1)] += 1
        n = sum(counts) or 1
        return [c / n for c in counts], counts[-1] / n


class Alarm:
    """Hysteresis, cooldown and repeat for one statistic."""

    def __init__(self, threshold: float, cooldown_s: float, repeat_s: float = math.inf) -> None:
        self.threshold, self.cooldown_s, self.repeat_s = threshold, cooldown_s, repeat_s
        self.armed = True  # False while raised: cleared below half the threshold
        self.last_fired = -math.inf

    def check(self, value: float, now: float) -> bool:
        if not self.armed and value < self.threshold / 2:
            self.armed = True
        if value <= self.threshold:
            return False
        since = now - self.last_fired
        if since >= self.cooldown_s and (self.armed or since >= self.repeat_s):
            self.armed, self.last_fired = False, now
            return True
        return False

    def edge(self, now: float) -> bool:
        """An event that is a crossing in itself (a detector's detection): fires past the cooldown."""
        if now - self.last_fired < self.cooldown_s:
            return False
        self.last_fired = now
        return True


@dataclass
class _Pending:
    served_at: float
    items: frozenset[str]
    version: int


@dataclass(frozen=True, slots=True)
class _Change:
    """A detection not alerted yet (within the cooldown): the statistic then and where the fall began."""

    value: float
    at: Moment | None


class DriftMonitor:
    """Fed by the scorer (served answers, purchases); `check` returns the alerts to publish."""

    def __init__(self, config: DriftConfig) -> None:
        self.config = config
        self.pending: OrderedDict[str, list[_Pending]] = OrderedDict()
        # One detector per version: after a swap, the old version's open recommendations keep
        # resolving for up to the horizon, and must not reset the new version's test.
        self.detectors: dict[int, Detector[Moment]] = {}
        self.changes: dict[int, _Change] = {}  # version -> its first detection not alerted yet
        probe = config.new_detector()
        self.concept_statistic = f"{probe.name}_hit_rate"  # e.g. page_hinkley_hit_rate
        self.outcomes: dict[int, list[int]] = {}  # version -> [hits, misses]
        self.served_version: int | None = None  # the version of the latest answer: the one judged
        self.purchases: deque[str] = deque(maxlen=config.window_events)
        self.requests: deque[bool] = deque(maxlen=config.window_events)  # True: answered by fallback
        self.window_start: deque[float] = deque(maxlen=config.window_events)
        self.window_event_ts: deque[float] = deque(maxlen=config.window_events)
        self.reference: Reference | None = None
        self.expired = 0
        thresholds = {
            self.concept_statistic: probe.threshold,
            "psi_item_popularity": config.psi_threshold,
            "unknown_item_share": config.unknown_item_threshold,
            "unknown_user_share": config.unknown_user_threshold,
        }
        self.alarms = {
            name: Alarm(limit, config.cooldown_s, config.repeat_s) for name, limit in thresholds.items()
        }
        self.last: dict[str, float] = {}

    def set_reference(self, reference: Reference) -> None:
        """A new served version: its reference and a fresh data window (outcomes restart by version)."""
        if self.reference is not None and self.reference.version == reference.version:
            return
        self.reference = reference
        for name in ("psi_item_popularity", "unknown_item_share", "unknown_user_share"):
            self.alarms[name].armed = True  # hysteresis is per version: judge the new one afresh
        self.purchases.clear()
        self.requests.clear()
        self.window_start.clear()
        self.window_event_ts.clear()

    def served(self, user_id: str, items: Iterable[str], version: int, fallback: bool, now: float) -> None:
        self.requests.append(fallback)
        self.served_version = version
        entry = _Pending(now, frozenset(items), version)
        queue = self.pending.setdefault(user_id, [])
        queue.append(entry)
        self.pending.move_to_end(user_id)
        while len(self.pending) > self.config.max_pending_users:
            self.pending.popitem(last=False)

    def purchased(
        self, user_id: str, item_id: str, now: float, *, repeat: bool = False, event_ts: float | None = None
    ) -> None:
        """A purchase of a product new to the user resolves their open recommendations, as the offline
        protocol judges a model (a repeat purchase is no signal: answers leave out what was bought);
        every purchase enters the data window. `now` is its arrival time, `event_ts` its own `ts`
        (default: `now`), which alerts report as where a drift started."""
        event_ts = now if event_ts is None else event_ts
        self.purchases.append(item_id)
        self.window_start.append(now)
        self.window_event_ts.append(event_ts)
        if repeat:
            return
        queue = self.pending.pop(user_id, None) or []
        later = [entry for entry in queue if entry.served_at > now]  # served after this purchase
        if later:
            self.pending[user_id] = later
        for entry in queue:
            if entry.served_at > now:
                continue
            if now - entry.served_at > self.config.horizon_s:
                self.expired += 1
                continue
            self._outcome(entry.version, item_id in entry.items, (now, event_ts))

    def _outcome(self, version: int, hit: bool, at: Moment | None = None) -> None:
        counts = self.outcomes.setdefault(version, [0, 0])
        counts[0 if hit else 1] += 1
        detector = self.detectors.get(version)
        if detector is None:
            detector = self.detectors[version] = self.config.new_detector()
        if detector.update(1.0 if hit else 0.0, at) and version not in self.changes:
            self.changes[version] = _Change(detector.statistic, detector.change_at)

    def hit_rate(self, version: int) -> float | None:
        hits, misses = self.outcomes.get(version, (0, 0))
        return hits / (hits + misses) if hits + misses else None

    def expire(self, now: float) -> None:
        """Drop recommendations whose horizon passed without a purchase (no signal)."""
        horizon = self.config.horizon_s
        for user in [u for u, q in self.pending.items() if now - q[-1].served_at > horizon]:
            self.expired += len(self.pending.pop(user))

    def check(self, now: float) -> list[DriftAlert]:
        self.expire(now)
        alerts = []
        concept = self._concept(now)
        if concept is not None:
            alerts.append(concept)
        reference = self.reference
        if reference is not None and len(self.purchases) >= self.config.min_events:
            actual, unknown_items = reference.actual(self.purchases)
            stats = {
                "psi_item_popularity": psi(reference.expected, actual),
                "unknown_item_share": unknown_items,
            }
            if len(self.requests) >= self.config.min_events:
                stats["unknown_user_share"] = sum(self.requests) / len(self.requests)
            window = {
                "events": len(self.purchases),
                "requests": len(self.requests),
                "from": self.window_start[0],
                "to": self.window_start[-1],
                "from_ts": self.window_event_ts[0],
            }
            for name, value in stats.items():
                self.last[name] = value
                if self.alarms[name].check(value, now):
                    alerts.append(self._alert("data", name, value, reference.version, window, now))
        return alerts

    def _concept(self, now: float) -> DriftAlert | None:
        """The served version's detection as an alert, once past the cooldown (it waits until then)."""
        version = self.served_version
        detector = self.detectors.get(version) if version is not None else None
        if version is None or detector is None or detector.n < self.config.min_outcomes:
            return None
        statistic = self.concept_statistic
        change = self.changes.get(version)
        self.last[statistic] = detector.statistic if change is None else change.value
        if change is None or not self.alarms[statistic].edge(now):
            return None
        del self.changes[version]
        hits, misses = self.outcomes[version]
        window: dict[str, Any] = {"outcomes": hits + misses, "hit_rate": round(hits / (hits + misses), 4)}
        if change.at is not None:  # the fall's first outcome (arrival, event time)
            window["from"], window["from_ts"] = change.at
        return self._alert("concept", statistic, change.value, version, window, now)

    def _alert(
        self, kind: str, statistic: str, value: float, version: int, window: dict[str, Any], now: float
    ) -> DriftAlert:
        threshold = self.alarms[statistic].threshold
        return DriftAlert(kind, statistic, round(value, 6), threshold, version, dict(window), now)
