"""The retrain loop's rules with a stand-in retrain: interval, drift trigger, cooldown, one run at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from recstream.retrain.scheduler import MAX_BOOSTED_RUNS, RetrainScheduler
from recstream.stream.contracts.alerts import DriftAlert

ALERT = DriftAlert("concept", "page_hinkley", 3.0, 1.0, model_version=1)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_scheduler():
    made: list[RetrainScheduler] = []

    def make(retrain: Callable[[], object], interval_s: float = 3600, **kwargs) -> RetrainScheduler:
        scheduler = RetrainScheduler(retrain, interval_s, cooldown_s=60, **kwargs)
        scheduler.start()
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.shutdown()


def test_runs_on_its_interval(make_scheduler) -> None:
    calls: list[float] = []
    scheduler = make_scheduler(lambda: calls.append(time.monotonic()), interval_s=0.3)
    assert wait_for(lambda: len(calls) >= 3)
    assert scheduler.runs >= 3


def test_drift_alert_retrains_now_and_the_cooldown_holds_the_next(make_scheduler) -> None:
    clock = Clock()
    calls: list[float] = []
    scheduler = make_scheduler(lambda: calls.append(1), clock=clock)
    assert scheduler.on_alert(ALERT)
    assert wait_for(lambda: len(calls) == 1)
    clock.now += 30  # within the 60 s cooldown
    assert not scheduler.on_alert(ALERT)
    time.sleep(0.3)
    assert len(calls) == 1
    clock.now += 31  # past it
    assert scheduler.on_alert(ALERT)
    assert wait_for(lambda: len(calls) == 2)


def test_a_failing_run_is_logged_and_the_loop_goes_on(make_scheduler, caplog) -> None:
    attempts: list[int] = []

    def failing() -> None:
        attempts.append(1)
        raise RuntimeError("object store down")

    scheduler = make_scheduler(failing, interval_s=0.2)
    assert wait_for(lambda: len(attempts) >= 3)
    assert wait_for(lambda: scheduler.runs >= 3)
    assert "retrain failed" in caplog.text and "object store down" in caplog.text


def test_one_run_at_a_time_whatever_triggers_it(make_scheduler) -> None:
    release = threading.Event()
    running, peak, calls = [0], [0], []
    lock = threading.Lock()

    def slow() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            calls.append(1)
        release.wait(5)
        with lock:
            running[0] -= 1

    clock = Clock()
    scheduler = make_scheduler(slow, interval_s=0.1, clock=clock)
    assert wait_for(lambda: running[0] == 1)
    clock.now += 100
    scheduler.on_alert(ALERT)  # while a run is in progress
    time.sleep(0.5)  # several interval firings too
    assert len(calls) == 1 and peak[0] == 1
    release.set()
    assert wait_for(lambda: len(calls) >= 2)
    assert peak[0] == 1


def test_interval_zero_retrains_only_on_drift(make_scheduler) -> None:
    calls: list[int] = []
    scheduler = make_scheduler(lambda: calls.append(1), interval_s=0)
    time.sleep(2.5)  # APScheduler would take an interval of 0 as 1 s
    assert calls == []
    assert scheduler.on_alert(ALERT)
    assert wait_for(lambda: len(calls) == 1)
    time.sleep(2.5)
    assert len(calls) == 1


def test_an_alert_during_a_run_asks_for_one_more_run_right_after_it(make_scheduler) -> None:
    release = threading.Event()
    calls: list[int] = []

    def slow() -> None:
        calls.append(1)
        if len(calls) == 1:
            release.wait(5)

    clock = Clock()
    scheduler = make_scheduler(slow, interval_s=0, clock=clock)
    assert scheduler.on_alert(ALERT)
    assert wait_for(lambda: scheduler.running)
    clock.now += 100
    assert scheduler.on_alert(ALERT)  # the run in progress read its data before this alert
    clock.now += 100
    assert scheduler.on_alert(ALERT)  # several alerts during one run: still one more run
    time.sleep(0.3)
    assert len(calls) == 1
    release.set()
    assert wait_for(lambda: len(calls) == 2)
    time.sleep(0.5)
    assert len(calls) == 2 and scheduler.runs == 2


def test_runs_are_counted_by_trigger_and_outcome(make_scheduler) -> None:
    from prometheus_client import REGISTRY

    class Outcome:
        event = "rejected"

    def count(trigger: str, outcome: str) -> float:
        labels = {"trigger": trigger, "outcome": outcome}
        return REGISTRY.get_sample_value("recstream_scheduler_runs_total", labels) or 0.0

    before = count("drift", "rejected"), count("interval", "rejected")
    scheduler = make_scheduler(Outcome, interval_s=0)
    assert scheduler.on_alert(ALERT)
    assert wait_for(lambda: scheduler.runs == 1)
    assert (count("drift", "rejected"), count("interval", "rejected")) == (before[0] + 1, before[1])


def test_a_drift_run_settles_first_and_an_interval_run_does_not(make_scheduler) -> None:
    order: list[str] = []
    scheduler = make_scheduler(lambda: order.append("retrain"), settle=lambda: order.append("settle"))
    assert scheduler.on_alert(ALERT)
    assert wait_for(lambda: scheduler.runs == 1)
    assert order == ["settle", "retrain"]
    scheduler.scheduler.modify_job("retrain", next_run_time=datetime.now(UTC))  # as the interval would
    assert wait_for(lambda: scheduler.runs == 2)
    assert order == ["settle", "retrain", "retrain"]


def test_an_abandoned_run_is_counted_as_such_and_asks_for_no_follow_up(make_scheduler, caplog) -> None:
    from recstream.retrain.scheduler import Abandoned

    caplog.set_level("INFO", logger="recstream.retrain.scheduler")
    release = threading.Event()
    calls: list[int] = []

    def abandoned() -> None:
        calls.append(1)
        release.wait(5)
        raise Abandoned("stopping after epoch 3/10")

    clock = Clock()
    scheduler = make_scheduler(abandoned, interval_s=0, clock=clock)
    assert scheduler.on_alert(ALERT)
    assert wait_for(lambda: scheduler.running)
    clock.now += 100
    assert scheduler.on_alert(ALERT)  # would ask for a follow-up run
    release.set()
    assert wait_for(lambda: scheduler.runs == 1)
    time.sleep(0.5)
    assert len(calls) == 1
    assert "abandoned: stopping after epoch 3/10" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


CONCEPT = DriftAlert("concept", "page_hinkley_hit_rate", 20.0, 15.0, 1, {"from_ts": 1.5e9})
DATA = DriftAlert("data", "psi_item_popularity", 0.5, 0.2, 1, {"from": 2e9, "from_ts": 1.6e9})


def runs_given(scheduler: RetrainScheduler, given: list, clock: Clock, alerts: list[DriftAlert]) -> list:
    """Each alert (past the cooldown) starts one run; the drift starts the runs were given."""
    for alert in alerts:
        clock.now += 100
        before = len(given)
        assert scheduler.on_alert(alert)
        assert wait_for(lambda before=before: len(given) > before and not scheduler.running)
    return given


def test_the_drift_boost_lasts_until_a_version_trained_with_it_is_active(make_scheduler) -> None:
    clock, given, active = Clock(), [], []
    scheduler = make_scheduler(
        lambda: given.append(scheduler.run_drift_from), clock=clock, boost_served=lambda s: s in active
    )
    assert runs_given(scheduler, given, clock, [DATA]) == [None]  # a data alert retrains, no boost
    runs_given(scheduler, given, clock, [CONCEPT, DATA])
    assert given[1:] == [1.5e9, 1.5e9]  # the runs after the concept alert have it
    active.append(1.5e9)  # the updater activated a version trained with it
    assert runs_given(scheduler, given, clock, [DATA])[3:] == [None]
    assert scheduler.drift_from is None


def test_the_drift_boost_ends_after_a_bounded_number_of_runs_without_a_new_alert(make_scheduler) -> None:
    clock, given = Clock(), []
    scheduler = make_scheduler(lambda: given.append(scheduler.run_drift_from), clock=clock)
    runs_given(scheduler, given, clock, [CONCEPT] + [DATA] * MAX_BOOSTED_RUNS)
    assert given == [1.5e9] * MAX_BOOSTED_RUNS + [None]  # every version refused: it stops anyway
    runs_given(scheduler, given, clock, [CONCEPT, DATA])  # the drift still raises alarms: boosted again
    assert given[-2:] == [1.5e9, 1.5e9]
