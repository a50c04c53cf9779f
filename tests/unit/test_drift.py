"""Drift tracking logic: the hit join, the change detectors, binned PSI, hysteresis and cooldown."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from recstream.recommender.detectors import ADWIN, PageHinkley
from recstream.recommender.drift import Alarm, DriftConfig, DriftMonitor, Reference, popularity_bins, psi
from recstream.stream.settings import default_settings, load_settings

ITEMS = [f"i{n}" for n in range(300)]
SHARES = np.arange(300, 0, -1, dtype=float) / np.arange(300, 0, -1).sum()
REFERENCE = Reference(1, dict(zip(ITEMS, SHARES.tolist(), strict=True)))
CONFIG = dataclasses.replace(
    DriftConfig.from_settings(default_settings()),
    horizon_s=100,
    window_events=2000,
    min_events=500,
    min_outcomes=50,
    cooldown_s=0,
)


def test_a_purchase_resolves_open_recommendations_within_the_horizon() -> None:
    monitor = DriftMonitor(CONFIG)
    monitor.served("a", ["x", "y"], version=1, fallback=False, now=10)
    monitor.served("b", ["x"], version=1, fallback=False, now=10)
    monitor.served("c", ["x"], version=1, fallback=False, now=10)
    monitor.purchased("a", "y", now=20)  # hit
    monitor.purchased("b", "z", now=30)  # miss
    monitor.purchased("c", "x", now=200)  # too late: no signal
    monitor.purchased("a", "x", now=40)  # already resolved by the first purchase
    assert monitor.outcomes == {1: [1, 1]} and monitor.expired == 1
    assert monitor.hit_rate(1) == 0.5


def test_a_purchase_before_the_recommendation_does_not_resolve_it() -> None:
    monitor = DriftMonitor(CONFIG)
    monitor.served("a", ["x"], version=1, fallback=False, now=50)
    monitor.purchased("a", "x", now=40)  # arrived late, made before the answer
    assert monitor.outcomes == {}
    monitor.purchased("a", "x", now=60)
    assert monitor.outcomes == {1: [1, 0]}


def test_page_hinkley_is_quiet_on_a_stable_rate_and_fires_on_a_fall() -> None:
    rng = np.random.default_rng(7)
    detector: PageHinkley[int] = PageHinkley(delta=0.05, threshold=15, min_instances=50)
    stable = []
    for x in rng.random(5000) < 0.25:
        assert not detector.update(float(x))
        stable.append(detector.statistic)
    assert max(stable) < 15
    first = next(i for i, x in enumerate(rng.random(300) < 0.02) if detector.update(float(x)))
    assert first < 120  # about 75 outcomes after the fall at this rate
    assert detector.statistic > 15


def test_bins_have_about_equal_reference_mass_and_psi_is_zero_on_the_reference() -> None:
    bins = popularity_bins(REFERENCE.item_share)
    mass = np.zeros(10)
    for item, share in REFERENCE.item_share.items():
        mass[bins[item]] += share
    assert np.all(np.abs(mass - 0.1) < 0.02)
    assert bins["i0"] == 0 and bins["i299"] == 9
    assert psi(REFERENCE.expected, REFERENCE.expected) == 0.0
    assert psi([0.5, 0.5], [0.9, 0.1]) > 0.4


def _sample(rng: np.random.Generator, n: int) -> list[str]:
    return list(rng.choice(ITEMS, size=n, p=SHARES))


def test_a_stable_stream_raises_no_alert_and_new_products_raise_data_alerts_once() -> None:
    rng = np.random.default_rng(1)
    monitor = DriftMonitor(dataclasses.replace(CONFIG, cooldown_s=1000))
    monitor.set_reference(REFERENCE)
    now = 0.0
    for item in _sample(rng, 6000):  # sampled from the training distribution
        now += 0.01
        monitor.purchased(f"u{now}", item, now)
        monitor.served(f"v{now}", ["i0"], version=1, fallback=rng.random() < 0.3, now=now)
        if int(now * 100) % 500 == 0:
            assert monitor.check(now) == []
    assert monitor.last["psi_item_popularity"] < 0.05
    alerts = []
    for n in range(3000):  # a launch: everyone buys products the model never saw
        now += 0.01
        monitor.purchased(f"w{n}", f"new-{n % 20}", now)
        if n % 100 == 0:
            alerts += monitor.check(now)
    assert sorted(a.statistic for a in alerts) == ["psi_item_popularity", "unknown_item_share"]
    assert all(a.kind == "data" and a.model_version == 1 and a.value > a.threshold for a in alerts)
    assert alerts[0].window["events"] == 2000


def test_concept_alert_on_a_falling_hit_rate_then_no_storm() -> None:
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(dataclasses.replace(CONFIG, cooldown_s=50))
    now, alerts = 0.0, []
    for phase_hit_rate in (0.3, 0.0):
        for n in range(1500):
            now += 0.1
            user = f"u{n % 40}"
            monitor.served(user, ["a", "b"], version=4, fallback=False, now=now)
            monitor.purchased(user, "a" if rng.random() < phase_hit_rate else "z", now + 0.05)
            if n % 20 == 0:
                alerts += [(phase_hit_rate, a) for a in monitor.check(now)]
    assert [phase for phase, _ in alerts][:1] == [0.0]  # nothing while the rate was stable
    # After the first alert the detector restarts; the cooldown keeps it to one alert per 50 s.
    times = [a.ts for _, a in alerts]
    assert all(b - a >= 50 for a, b in itertools.pairwise(times))
    first = alerts[0][1]
    assert (first.kind, first.statistic, first.model_version) == ("concept", "page_hinkley_hit_rate", 4)
    assert first.window["outcomes"] > 1500 and first.window["hit_rate"] < 0.3


def test_each_version_has_its_own_detector_and_old_outcomes_do_not_reset_the_new_one() -> None:
    monitor = DriftMonitor(CONFIG)
    for n in range(100):
        monitor.served(f"u{n}", ["a"], version=1, fallback=False, now=280 + n / 100)
    # After the swap v2 answers; v1's open recommendations resolve in between v2's outcomes.
    for n in range(160):  # v2 hits 40 times, then misses: a fall
        monitor.served(f"v{n}", ["a"], version=2, fallback=False, now=300 + n / 10)
        monitor.purchased(f"v{n}", "a" if n < 40 else "z", 300.05 + n / 10)
        if n < 100:
            monitor.purchased(f"u{n}", "a", 300.05 + n / 10)
    assert monitor.outcomes == {1: [100, 0], 2: [40, 120]}
    assert monitor.detectors[2].n == 160 and monitor.detectors[1].n == 100
    alerts = monitor.check(400)
    assert [(a.statistic, a.model_version) for a in alerts] == [("page_hinkley_hit_rate", 2)]


def test_a_new_reference_rearms_the_data_alarms() -> None:
    monitor = DriftMonitor(dataclasses.replace(CONFIG, cooldown_s=0))
    monitor.set_reference(REFERENCE)
    for n in range(600):
        monitor.purchased(f"u{n}", f"new-{n % 5}", n)
    assert {a.statistic for a in monitor.check(600)} == {"psi_item_popularity", "unknown_item_share"}
    assert monitor.check(601) == []  # disarmed: still above the threshold
    monitor.set_reference(Reference(2, REFERENCE.item_share))  # a new version, still blind to them
    for n in range(600):
        monitor.purchased(f"w{n}", f"new-{n % 5}", 700 + n)
    assert {a.model_version for a in monitor.check(1300)} == {2}


def test_alarm_rearms_only_below_half_the_threshold() -> None:
    alarm = Alarm(threshold=1.0, cooldown_s=0)
    fired = [alarm.check(value, now) for now, value in enumerate([0.5, 1.2, 1.3, 0.8, 1.1, 0.4, 1.1])]
    assert fired == [False, True, False, False, False, False, True]


def test_a_raised_alarm_repeats_once_per_repeat_interval_and_never_within_the_cooldown() -> None:
    alarm = Alarm(threshold=1.0, cooldown_s=10, repeat_s=100)
    assert alarm.check(2.0, 0)
    assert not any(alarm.check(2.0, now) for now in range(1, 100))  # raised: quiet until the repeat
    assert alarm.check(2.0, 100)  # the drift was not cured: fire again
    assert not alarm.check(0.9, 101) and not alarm.check(0.4, 102)  # cleared below half
    assert not alarm.check(2.0, 105)  # a new crossing still waits for the cooldown
    assert alarm.check(2.0, 110)


# Page-Hinkley's change point is the rise since the cumulative sum's last low: the fall's first
# miss, or a chance run of misses just before it. ADWIN's is the start of the window it keeps: the
# longest recent one it cannot tell from the new level, which reaches back before the fall.
@pytest.mark.parametrize(("detector", "earliest"), [("page-hinkley", 10_180), ("adwin", 10_000)])
def test_a_concept_alert_starts_at_the_fall_in_event_time(detector: str, earliest: int) -> None:
    """Purchases replayed with old `ts` arrive now: the window says where the fall began in both times."""
    monitor = DriftMonitor(dataclasses.replace(CONFIG, ph_threshold=5.0, detector=detector))
    rng = np.random.default_rng(3)
    alerts = []
    for n in range(400):
        arrival, event_ts = 10_000.0 + n, 1.5e9 + 60.0 * n  # the event times of a 2019-ish replay
        monitor.served(f"u{n}", ["a", "b"], version=1, fallback=False, now=arrival - 0.5)
        hit = n < 200 and rng.random() < 0.5  # from the 200th outcome on, every one misses
        monitor.purchased(f"u{n}", "a" if hit else "z", arrival, event_ts=event_ts)
        alerts += monitor.check(arrival)
    first = alerts[0]
    assert first.kind == "concept" and first.statistic == f"{detector.replace('-', '_')}_hit_rate"
    assert first.value > first.threshold
    arrival, event_ts = first.window["from"], first.window["from_ts"]
    assert earliest <= arrival <= 10_200 and event_ts == 1.5e9 + 60.0 * (arrival - 10_000)
    assert first.ts > 10_200


def test_the_detector_and_its_parameters_are_settings() -> None:
    """DRIFT_DETECTOR picks river's test; DRIFT_PH_* / DRIFT_ADWIN_DELTA and DRIFT_MIN_OUTCOMES reach it."""
    given = {"DRIFT_MIN_OUTCOMES": "20", "DRIFT_ADWIN_DELTA": "0.01", "DRIFT_PH_DELTA": "0.1"}
    adwin = load_settings({**given, "DRIFT_DETECTOR": "adwin"}, environ={}, use_stack_env=False)
    detector = DriftConfig.from_settings(adwin).new_detector()
    assert isinstance(detector, ADWIN) and detector.threshold == 0.0
    assert (detector._test.delta, detector._test.grace_period) == (0.01, 20)
    ph = load_settings({**given, "DRIFT_PH_THRESHOLD": "7"}, environ={}, use_stack_env=False)
    detector = DriftConfig.from_settings(ph).new_detector()
    assert isinstance(detector, PageHinkley) and detector.threshold == 7.0
    river_ph = detector._test
    assert (river_ph.delta, river_ph.threshold, river_ph.min_instances) == (0.1, 7.0, 20)
    assert (river_ph.alpha, river_ph.mode) == (1.0, "down")  # no forgetting, falls only
    assert DriftConfig.from_settings(default_settings()).new_detector().name == "page_hinkley"


def test_a_data_alert_window_carries_its_first_purchases_event_time() -> None:
    monitor = DriftMonitor(dataclasses.replace(CONFIG, cooldown_s=0))
    monitor.set_reference(REFERENCE)
    for n in range(600):
        monitor.purchased(f"u{n}", f"new-{n % 5}", 5_000.0 + n, event_ts=1.5e9 + n)
    alert = next(a for a in monitor.check(5_600.0) if a.statistic == "unknown_item_share")
    first = 600 - CONFIG.window_events if CONFIG.window_events < 600 else 0
    assert alert.window["from"] == 5_000.0 + first and alert.window["from_ts"] == 1.5e9 + first
    monitor.purchased("v", "a", 5_700.0)  # no event time given: the arrival time stands for it
    assert monitor.window_event_ts[-1] == 5_700.0
