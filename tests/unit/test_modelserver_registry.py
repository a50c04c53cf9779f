"""The model server's version lifecycle with fake servables: policy, swap, labels, errors (no TensorFlow)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from recstream.deploy.modelserver.config import ModelConfig, VersionPolicy
from recstream.deploy.modelserver.errors import ServingError
from recstream.deploy.modelserver.registry import Options, Registry, State, Status

DEADLINE_S = 10.0
ROOT = Path(__file__).resolve().parents[2]


class Bug(BaseException):
    """Not a load error: something no loader is expected to raise."""


class FakeServable:
    def __init__(self, name: str, version: int) -> None:
        self.name, self.version = name, version
        self._users = 0
        self._idle = threading.Condition()

    def acquire(self) -> None:
        with self._idle:
            self._users += 1

    def release(self) -> None:
        with self._idle:
            self._users -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._users == 0, timeout)


class Harness:
    """A registry over a fake disk: {base_path: {version: path}}, with controllable loads."""

    def __init__(self, stop: threading.Event | None = None, **options) -> None:
        self.disk: dict[str, dict[int, str]] = {}
        self.failing: set[tuple[str, int]] = set()
        self.bugs: dict[tuple[str, int], BaseException] = {}
        self.gates: dict[tuple[str, int], threading.Event] = {}
        self.loads: list[tuple[str, int]] = []
        self.events: list[tuple[str, int, State]] = []
        options = {"poll_wait_s": 0, "max_load_retries": 0, **options}
        self.registry = Registry(self._load, Options(**options), list_versions=self._list, stop=stop)
        self.registry.add_listener(self._record)

    def _list(self, base_path: str) -> dict[int, str]:
        if base_path not in self.disk:
            raise FileNotFoundError(base_path)
        return dict(self.disk[base_path])

    def _load(self, name: str, version: int, path: str) -> FakeServable:
        self.loads.append((name, version))
        gate = self.gates.get((name, version))
        if gate is not None:
            assert gate.wait(DEADLINE_S)
        if (name, version) in self.failing:
            raise ServingError(grpc.StatusCode.DATA_LOSS, f"corrupt {path}")
        if (name, version) in self.bugs:
            raise self.bugs[name, version]
        return FakeServable(name, version)

    def _record(self, name: str, version: int, state: State, status: Status) -> None:
        self.events.append((name, version, state))

    def put(self, name: str, *versions: int) -> None:
        self.disk.setdefault(f"/{name}", {}).update({v: f"/{name}/{v}" for v in versions})

    def state(self, name: str, version: int) -> State | None:
        try:
            return self.registry.status(name, version)[0].state
        except ServingError:
            return None

    def wait_for(self, predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; events: {self.events}"
            time.sleep(0.01)

    def latest(self, name: str) -> int:
        with self.registry.acquire(name) as servable:
            return servable.version


LATEST = VersionPolicy()


def model(name: str, policy: VersionPolicy = LATEST, **labels: int) -> ModelConfig:
    return ModelConfig(name=name, base_path=f"/{name}", policy=policy, labels=labels)


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    yield harness
    harness.registry.stop()


def test_start_loads_the_latest_version_before_returning(h: Harness) -> None:
    h.put("m", 1, 2, 3)
    h.registry.start([model("m")])
    assert h.state("m", 3) == State.AVAILABLE
    assert h.loads == [("m", 3)]
    assert h.latest("m") == 3
    assert [e[2] for e in h.events] == [State.START, State.LOADING, State.AVAILABLE]


def test_new_version_is_available_before_the_old_one_unloads(h: Harness) -> None:
    h.put("m", 1)
    h.registry.start([model("m")])
    h.gates[("m", 2)] = gate = threading.Event()
    h.put("m", 2)
    h.registry.poll()
    h.wait_for(lambda: h.state("m", 2) == State.LOADING)
    assert h.latest("m") == 1  # the old version serves while the new one loads
    gate.set()
    h.wait_for(lambda: h.state("m", 1) == State.END)
    assert h.latest("m") == 2
    order = [(v, s) for _, v, s in h.events]
    assert order.index((2, State.AVAILABLE)) < order.index((1, State.UNLOADING)) < order.index((1, State.END))


def test_an_unload_waits_for_requests_holding_the_version(h: Harness) -> None:
    h.put("m", 1)
    h.registry.start([model("m")])
    with h.registry.acquire("m") as held:
        h.put("m", 2)
        h.registry.poll()
        h.wait_for(lambda: h.state("m", 1) == State.UNLOADING)
        assert h.latest("m") == 2  # new requests already get the new version
        time.sleep(0.2)
        assert h.state("m", 1) == State.UNLOADING
        assert held.version == 1
    h.wait_for(lambda: h.state("m", 1) == State.END)


def test_a_version_that_fails_to_load_ends_with_its_error_and_the_old_one_keeps_serving(h: Harness) -> None:
    h.put("m", 1)
    h.registry.start([model("m")])
    h.failing.add(("m", 2))
    h.put("m", 2)
    h.registry.poll()
    h.wait_for(lambda: h.state("m", 2) == State.END)
    statuses = h.registry.status("m")
    assert [(s.version, s.state) for s in statuses] == [(2, State.END), (1, State.AVAILABLE)]
    assert statuses[0].status.code == grpc.StatusCode.DATA_LOSS
    assert "corrupt /m/2" in statuses[0].status.message
    assert h.latest("m") == 1
    h.registry.poll()  # still aspired, still failed: not retried
    time.sleep(0.1)
    assert h.loads.count(("m", 2)) == 1


def test_load_is_retried_up_to_the_limit() -> None:
    h = Harness(max_load_retries=2, load_retry_interval_s=0)
    try:
        h.put("m", 1)
        h.failing.add(("m", 1))
        with pytest.raises(ServingError) as error:
            h.registry.start([model("m")])
        assert error.value.code == grpc.StatusCode.UNKNOWN
        assert "1 model(s) did not become available" in error.value.message
        assert h.loads == [("m", 1)] * 3
        assert [e[2] for e in h.events] == [State.START, State.LOADING, State.END]
    finally:
        h.registry.stop()


def test_specific_policy_serves_exactly_the_listed_versions(h: Harness) -> None:
    h.put("m", 1, 2, 3)
    h.registry.start([model("m")])
    h.registry.reload([model("m", VersionPolicy("specific", versions=frozenset({1, 2})))])
    h.wait_for(lambda: h.state("m", 3) == State.END and h.state("m", 1) == State.AVAILABLE)
    assert h.state("m", 2) == State.AVAILABLE
    assert h.latest("m") == 2
    with h.registry.acquire("m", version=1) as servable:
        assert servable.version == 1


def test_labels_may_only_name_available_versions(h: Harness) -> None:
    h.put("m", 1, 2)
    h.registry.start([model("m", VersionPolicy("specific", versions=frozenset({1})))])
    both = VersionPolicy("specific", versions=frozenset({1, 2}))
    with pytest.raises(ServingError) as error:
        h.registry.reload([model("m", both, stable=2, previous=1)])
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 2 of model m" in error.value.message
    assert h.state("m", 2) is None  # a rejected config changes nothing
    h.registry.reload([model("m", both, stable=1)])
    h.wait_for(lambda: h.state("m", 2) == State.AVAILABLE)
    h.registry.reload([model("m", both, stable=2, previous=1)])
    with h.registry.acquire("m", label="stable") as servable:
        assert servable.version == 2
    h.registry.reload([model("m", both, stable=1, previous=2)])  # rollback: immediate
    with h.registry.acquire("m", label="stable") as servable:
        assert servable.version == 1
    with pytest.raises(ServingError) as error, h.registry.acquire("m", label="canary"):
        pass
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.message == "Unrecognized servable version label: canary"


def test_allow_labels_for_unavailable_only_for_new_labels() -> None:
    h = Harness(allow_labels_for_unavailable=True)
    try:
        h.put("m", 1, 2)
        h.gates[("m", 2)] = threading.Event()
        policy = VersionPolicy("specific", versions=frozenset({1}))
        h.registry.start([model("m", policy, stable=1)])
        both = VersionPolicy("specific", versions=frozenset({1, 2}))
        h.registry.reload([model("m", both, stable=1, canary=2)])  # new label on a version not loaded
        with pytest.raises(ServingError) as error:
            h.registry.reload([model("m", both, stable=2, canary=2)])  # moving a label needs AVAILABLE
        assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
        h.gates[("m", 2)].set()
    finally:
        h.registry.stop()


def test_unknown_model_version_and_name_errors(h: Harness) -> None:
    h.put("m", 1)
    h.registry.start([model("m")])
    cases = [
        ({"name": "x"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(x)"),
        (
            {"name": "m", "version": 9},
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(m, 9)",
        ),
        ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    ]
    for spec, code, message in cases:
        with pytest.raises(ServingError) as error, h.registry.acquire(**spec):
            pass
        assert (error.value.code, error.value.message) == (code, message)
    with pytest.raises(ServingError) as error:
        h.registry.status("x")
    assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_model_without_versions_does_not_block_and_loads_when_one_appears(h: Harness) -> None:
    h.disk["/m"] = {}
    h.registry.start([model("m")])
    with pytest.raises(ServingError) as error, h.registry.acquire("m"):
        pass
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    h.put("m", 4)
    h.registry.poll()
    h.wait_for(lambda: h.state("m", 4) == State.AVAILABLE)


def test_a_model_left_out_of_the_config_is_unloaded(h: Harness) -> None:
    h.put("a", 1)
    h.put("b", 1)
    h.registry.start([model("a"), model("b")])
    h.registry.reload([model("a")])
    h.wait_for(lambda: h.state("b", 1) == State.END)
    with pytest.raises(ServingError), h.registry.acquire("b"):
        pass
    assert h.latest("a") == 1


def test_a_new_model_that_fails_makes_the_reload_fail(h: Harness) -> None:
    h.put("a", 1)
    h.put("bad", 1)
    h.failing.add(("bad", 1))
    h.registry.start([model("a")])
    with pytest.raises(ServingError) as error:
        h.registry.reload([model("a"), model("bad")])
    assert error.value.code == grpc.StatusCode.UNKNOWN
    assert "{name: bad version: 1} due to error: DATA_LOSS" in error.value.message
    assert h.latest("a") == 1


def test_a_version_unloaded_then_wanted_again_is_loaded_again(h: Harness) -> None:
    h.put("m", 1, 2)
    h.registry.start([model("m", VersionPolicy("specific", versions=frozenset({1})))])
    h.registry.reload([model("m", VersionPolicy("specific", versions=frozenset({2})))])
    h.wait_for(lambda: h.state("m", 1) == State.END)
    h.registry.reload([model("m", VersionPolicy("specific", versions=frozenset({1})))])  # rollback by policy
    h.wait_for(lambda: h.state("m", 1) == State.AVAILABLE and h.state("m", 2) == State.END)
    assert h.loads == [("m", 1), ("m", 2), ("m", 1)]
    assert h.latest("m") == 1


def test_a_version_wanted_again_while_it_unloads_is_loaded_again(h: Harness) -> None:
    h.put("m", 1, 2)
    both = VersionPolicy("specific", versions=frozenset({1, 2}))
    h.registry.start([model("m", both)])
    h.wait_for(lambda: h.state("m", 1) == State.AVAILABLE and h.state("m", 2) == State.AVAILABLE)
    with h.registry.acquire("m", version=1) as held:
        h.registry.reload([model("m", VersionPolicy("specific", versions=frozenset({2})))])
        h.wait_for(lambda: h.state("m", 1) == State.UNLOADING)
        reload = threading.Thread(target=h.registry.reload, args=([model("m", both)],))
        reload.start()  # a rollback's config, while a request still holds version 1
        time.sleep(0.2)
        assert held.version == 1
    reload.join(DEADLINE_S)
    h.wait_for(lambda: h.state("m", 1) == State.AVAILABLE)
    assert h.loads.count(("m", 1)) == 2


def test_the_manager_goes_on_after_an_unexpected_error(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    h.put("m", 1)
    h.registry.start([model("m")])
    manage, failures = h.registry._manage, []

    def buggy(name: str) -> None:
        if not failures:
            failures.append(name)
            raise RuntimeError("bug in the manager")
        manage(name)

    monkeypatch.setattr(h.registry, "_manage", buggy)
    h.put("m", 2)
    h.registry.poll()
    h.wait_for(lambda: h.state("m", 2) == State.AVAILABLE and h.state("m", 1) == State.END)
    assert failures == ["m"]
    assert "managing model m failed" in caplog.text and "bug in the manager" in caplog.text


@pytest.mark.parametrize("fault", ["listener", "loader"])
def test_an_unexpected_error_in_a_load_ends_the_version_and_the_model_goes_on(
    h: Harness, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    h.put("m", 1)
    h.registry.start([model("m")])
    if fault == "listener":

        def listener(name: str, version: int, state: State, status: Status) -> None:
            if (name, version, state) == ("m", 2, State.LOADING):
                raise RuntimeError("bug in the listener")

        h.registry.add_listener(listener)
    else:
        h.bugs["m", 2] = Bug("bug in the loader")
    h.put("m", 2)
    h.registry.poll()
    h.wait_for(lambda: h.state("m", 2) == State.END)  # not left LOADING
    status = h.registry.status("m", 2)[0].status
    assert status.code == grpc.StatusCode.UNKNOWN
    assert f"bug in the {fault}" in status.message
    assert h.latest("m") == 1
    assert "unexpected error in the load of m version 2" in caplog.text
    h.put("m", 3)  # the model's later loads and unloads still happen
    h.registry.poll()
    h.wait_for(lambda: h.state("m", 3) == State.AVAILABLE and h.state("m", 1) == State.END)


def test_an_unload_waits_for_a_stuck_request_only_so_long(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(unload_wait_s=0.2)
    try:
        h.put("m", 1)
        h.registry.start([model("m")])
        with h.registry.acquire("m") as stuck:
            h.put("m", 2)
            h.registry.poll()
            h.wait_for(lambda: h.state("m", 1) == State.END)  # while the request still holds it
            assert "m version 1: requests still running after 0.2 s; unloading it anyway" in caplog.text
            h.put("m", 3)
            h.registry.poll()
            h.wait_for(lambda: h.state("m", 3) == State.AVAILABLE and h.state("m", 2) == State.END)
            assert stuck.version == 1
    finally:
        h.registry.stop()
    assert Options().unload_wait_s == 30.0


def test_a_reload_while_the_server_stops_is_unavailable_and_changes_nothing() -> None:
    stop = threading.Event()
    h = Harness(stop=stop)
    try:
        h.put("m", 1, 2)
        h.put("n", 1)
        both = VersionPolicy("specific", versions=frozenset({1, 2}))
        h.registry.start([model("m", both)])
        h.wait_for(lambda: h.state("m", 1) == State.AVAILABLE)
        h.registry.reload([model("m", both, stable=1)])
        stop.set()  # SIGTERM: the gRPC server still answers while it drains
        with pytest.raises(ServingError) as error:
            h.registry.reload([model("m", both, stable=2), model("n")])
        assert error.value.code == grpc.StatusCode.UNAVAILABLE
        assert h.state("n", 1) is None
        with h.registry.acquire("m", label="stable") as servable:
            assert servable.version == 1
    finally:
        h.registry.stop()


def test_a_reload_waiting_for_a_new_model_is_unavailable_once_the_server_stops() -> None:
    stop = threading.Event()
    h = Harness(stop=stop, stop_grace_s=0.1)
    h.gates["n", 1] = gate = threading.Event()
    try:
        h.put("n", 1)
        h.registry.start([])
        errors: list[ServingError] = []

        def reload() -> None:
            try:
                h.registry.reload([model("n")])
            except ServingError as exc:
                errors.append(exc)

        thread = threading.Thread(target=reload)
        thread.start()
        h.wait_for(lambda: h.state("n", 1) == State.LOADING)
        stop.set()
        thread.join(DEADLINE_S)
        assert [e.code for e in errors] == [grpc.StatusCode.UNAVAILABLE]  # not a success
    finally:
        gate.set()
        h.registry.stop()


def test_stop_does_not_wait_for_a_load_in_progress() -> None:
    """A process whose registry is stopped during a long load exits after the grace, not after the load."""
    script = textwrap.dedent(
        """
        import logging, threading, time
        from recstream.deploy.modelserver.config import ModelConfig
        from recstream.deploy.modelserver.registry import Options, Registry

        logging.basicConfig()
        loading = threading.Event()

        def load(name, version, path):
            loading.set()
            time.sleep(120)  # like a TensorFlow load: cannot be interrupted

        stop = threading.Event()
        options = Options(poll_wait_s=0, stop_grace_s=0.5)
        registry = Registry(load, options, list_versions=lambda path: {1: "/m/1"}, stop=stop)
        threading.Thread(target=registry.start, args=([ModelConfig("m", "/m")],), daemon=True).start()
        assert loading.wait(30)
        stop.set()  # what SIGTERM does
        print("all finished:", registry.stop(), flush=True)
        """
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "all finished: False"
    assert "without waiting for the load or unload of m version 1 (LOADING)" in result.stderr
    assert time.monotonic() - started < 20
