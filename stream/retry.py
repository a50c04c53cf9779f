"""The project's retry policies, on tenacity: capped exponential backoff written once.

A `Policy` is a first delay doubled after each consecutive failure up to a cap (tenacity's
`wait_exponential`, no jitter: each process retries its own dependency, there is no contention
to spread). The named policies below are every backoff the project uses, with why each has its
numbers. Three shapes use them:
- `forever` / `forever_async`: retry one call until it succeeds, never giving up (a log line and
  a counter per retry), for calls whose giving up would lose data or stop a service for good;
- `poll`: call a check until it says done, waiting by the policy between calls (its own deadline
  and errors raise from the check);
- `Delays`: the same delays for loops that schedule their next try instead of blocking on one
  call (the updater's reconcile, the supervisor's restarts), so they share the formula.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_never,
    wait_exponential,
)

RetryLog = Callable[[BaseException, float], None]  # (the failure, the delay before the next try)
Exceptions = type[BaseException] | tuple[type[BaseException], ...]


@dataclass(frozen=True, slots=True)
class Policy:
    """Capped exponential backoff: `initial_s`, doubled after each consecutive failure, at most `cap_s`."""

    initial_s: float
    cap_s: float

    def wait(self) -> wait_exponential:
        return wait_exponential(multiplier=self.initial_s, max=self.cap_s)

    def delay(self, attempt: int) -> float:
        """The delay after failed attempt number `attempt` (1: the first), as tenacity computes it."""
        state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        return self.wait()(state)


# Ingest's object-store calls (marker reads, object and marker writes): never given up, since giving
# up would commit offsets of rows that are not stored; 5 s keeps a store back within seconds.
STORE_CALL = Policy(0.2, 5.0)
# The updater service after a failed reconcile or record: model servers and the registry restart
# in seconds to minutes, and a failing reconcile costs them a full reload check.
UPDATER = Policy(1.0, 30.0)
# Waiting for another process's model lock (an update, restore or rollback in flight).
FILE_LOCK = Policy(0.01, 0.25)
# Polling a model server until a version it loads is AVAILABLE (loads take tens of ms to seconds).
MODEL_LOAD = Policy(0.05, 0.5)
# The scorer's Predict while the model server is unavailable (requests expire at SCORER_DEADLINE_S).
PREDICT = Policy(0.1, 5.0)
# The scorer's request path after a failed cycle (the request broker timed out or restarted).
REQUEST_CYCLE = Policy(0.1, 5.0)
# The local supervisor's restarts of a service that exited; its cap is the supervisor's max_backoff_s.
SERVICE_RESTART_INITIAL_S = 1.0


def _before_sleep(
    log_retry: RetryLog | None, on_retry: Callable[[], None] | None
) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if log_retry is not None and exc is not None:
            log_retry(exc, state.upcoming_sleep)
        if on_retry is not None:
            on_retry()

    return before_sleep


def _forever(
    policy: Policy, log_retry: RetryLog | None, on_retry: Callable[[], None] | None, retry_on: Exceptions
) -> dict[str, Any]:
    """What `forever` and `forever_async` share: the policy's delays, no end, the last error re-raised."""
    return {
        "wait": policy.wait(),
        "stop": stop_never,
        "retry": retry_if_exception_type(retry_on),
        "before_sleep": _before_sleep(log_retry, on_retry),
        "reraise": True,
    }


def forever(
    policy: Policy,
    *,
    log_retry: RetryLog | None = None,
    on_retry: Callable[[], None] | None = None,
    retry_on: Exceptions = Exception,
) -> Retrying:
    """Retry a call failing with `retry_on` until it succeeds; anything else is raised as it is.

    `log_retry` and `on_retry` run once per retry, before its delay. Use as
    `forever(...)(call)`, or `for attempt in forever(...): with attempt: ...`."""
    return Retrying(**_forever(policy, log_retry, on_retry, retry_on))


def forever_async(
    policy: Policy,
    *,
    log_retry: RetryLog | None = None,
    on_retry: Callable[[], None] | None = None,
    retry_on: Exceptions = Exception,
) -> AsyncRetrying:
    """`forever` for coroutines: the delays are awaited, so a cancelled task stops at once
    (CancelledError is not an Exception: it is never retried)."""
    return AsyncRetrying(**_forever(policy, log_retry, on_retry, retry_on))


def poll(policy: Policy, done: Callable[[], bool]) -> None:
    """Call `done` until it returns True, waiting by `policy` between calls. Its exceptions end the
    polling as they are: a deadline or a failure is the check's to raise."""
    Retrying(
        wait=policy.wait(),
        stop=stop_never,
        retry=retry_if_result(lambda finished: not finished),
        reraise=True,
    )(done)


class Delays:
    """A policy's delays for a loop that schedules its next try rather than retry one call in place:
    `next()` after each failure, `reset()` after a success."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.failures = 0

    def next(self) -> float:
        """The delay before the next try, one more consecutive failure counted."""
        self.failures += 1
        return self.policy.delay(self.failures)

    def reset(self) -> None:
        self.failures = 0
