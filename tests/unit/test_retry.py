"""The retry policies (stream.retry) and the consumer factories' common settings (stream.consumers)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from recstream.stream import retry
from recstream.stream.consumers import options
from recstream.stream.settings import Settings, SettingsError, load_settings

FAST = retry.Policy(0.001, 0.004)  # the real policies' shape, with delays a test does not wait for


class Flaky:
    """Fails `failures` times with `error`, then returns "done"."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def test_delays_double_from_the_first_up_to_the_cap() -> None:
    assert [retry.STORE_CALL.delay(n) for n in range(1, 8)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5, 5])
    assert [retry.UPDATER.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 16, 30]
    assert retry.FILE_LOCK.delay(100_000) == 0.25  # a service failing for days: the cap, no overflow


def test_delays_follow_failures_and_start_again_after_a_success() -> None:
    delays = retry.Delays(retry.Policy(1.0, 2.0))
    assert [delays.next() for _ in range(3)] == [1.0, 2.0, 2.0]
    delays.reset()
    assert delays.next() == 1.0


def test_forever_retries_until_the_call_succeeds_logging_and_counting_each_retry() -> None:
    flaky, logged, counted = Flaky(4, OSError("store down")), [], []
    retrying = retry.forever(
        FAST,
        log_retry=lambda exc, delay: logged.append((str(exc), delay)),
        on_retry=lambda: counted.append(1),
    )
    assert retrying(flaky) == "done"
    assert flaky.calls == 5 and len(counted) == 4
    assert logged == [
        ("store down", 0.001),
        ("store down", 0.002),
        ("store down", 0.004),
        ("store down", 0.004),
    ]


def test_forever_raises_what_it_does_not_retry_at_once() -> None:
    flaky, counted = Flaky(1, ValueError("a bug")), []
    with pytest.raises(ValueError, match="a bug"):
        retry.forever(FAST, retry_on=OSError, on_retry=lambda: counted.append(1))(flaky)
    assert flaky.calls == 1 and counted == []


def test_forever_async_retries_and_a_cancelled_task_stops_during_its_delay() -> None:
    async def attempt_until(flaky: Flaky, policy: retry.Policy) -> str:
        async for attempt in retry.forever_async(policy, retry_on=ConnectionError):
            with attempt:
                return flaky()
        raise AssertionError("forever ended")

    async def scenario() -> tuple[str, int, int]:
        quick = Flaky(2, ConnectionError("broker restarting"))
        result = await attempt_until(quick, FAST)
        stuck = Flaky(10**9, ConnectionError("broker gone"))
        task = asyncio.ensure_future(attempt_until(stuck, retry.Policy(60.0, 60.0)))
        while stuck.calls == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)  # well before the 60 s delay would end
        return result, quick.calls, stuck.calls

    assert asyncio.run(scenario()) == ("done", 3, 1)


def test_poll_calls_the_check_until_done_and_its_errors_end_the_polling() -> None:
    answers = iter([False, False, True])
    calls = []

    def done() -> bool:
        calls.append(1)
        return next(answers)

    retry.poll(FAST, done)
    assert len(calls) == 3

    def late() -> bool:
        raise TimeoutError("past the deadline")

    with pytest.raises(TimeoutError, match="past the deadline"):
        retry.poll(FAST, late)


def _settings() -> Settings:
    return dataclasses.replace(load_settings({}, environ={}), kafka_bootstrap="broker:9092")


def test_a_consumer_never_auto_commits_and_gets_the_settings_bootstrap() -> None:
    got = options((), _settings(), None, None, None, None, None, {})
    assert got == {"bootstrap_servers": "broker:9092", "enable_auto_commit": False}  # client defaults else
    other = options((), None, "requests:9093", None, None, None, None, {})
    assert other["bootstrap_servers"] == "requests:9093"
    unset = dataclasses.replace(_settings(), kafka_bootstrap=None)
    with pytest.raises(SettingsError, match="KAFKA_BOOTSTRAP"):
        options((), unset, None, None, None, None, None, {})


def test_only_a_consumer_joining_a_group_gets_the_broker_liveness_settings() -> None:
    settings = dataclasses.replace(_settings(), broker_session_timeout_s=6.0, broker_heartbeat_s=1.0)
    joined = options(("t",), settings, None, "g", "g", "earliest", 50, {"max_poll_records": 1})
    assert joined == {
        "bootstrap_servers": "broker:9092",
        "enable_auto_commit": False,
        "group_id": "g",
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "client_id": "g",
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": 50,
        "max_poll_records": 1,
    }
    offsets_only = options((), settings, None, "g", None, None, None, {})  # assigns, never joins
    assert "session_timeout_ms" not in offsets_only and offsets_only["group_id"] == "g"
