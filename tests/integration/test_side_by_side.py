"""Two stacks on one machine: two `recstream up` in two homes, as a user starts a second one.

Every service port is chosen free unless pinned, so neither stack's services crash on the
other's ports; each home records its own ports for `status` and Prometheus. A pinned port
that is taken stops `up` with one line before anything starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from port_helpers import held_port

from recstream.deploy.console import observe
from recstream.deploy.local import stack as stack_module
from recstream.deploy.local.processes import free_port, stop_child
from recstream.deploy.local.stack import BROKER, OBJECTSTORE, Stack
from recstream.deploy.local.supervisor import METRICS_PORT, SERVICES, service_ports, services_status
from recstream.stream.settings import ENV_NAMES, FIELDS, load_settings
from recstream.stream.topics import broker_metadata_ok

pytestmark = pytest.mark.integration

RECSTREAM = [sys.executable, "-m", "recstream.deploy.cli"]
START_TIMEOUT_S = 240  # two stacks starting at once on a shared 2-core machine


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment without any recstream setting: nothing pinned."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    return env | {"RECSTREAM_HOME": str(home), "LOG_LEVEL": "INFO", **extra}


def _cli(args: list[str], home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        RECSTREAM + args, env=_env(home, **extra), capture_output=True, text=True, timeout=120
    )


@contextlib.contextmanager
def _up(*homes: Path) -> Iterator[list[subprocess.Popen]]:
    """`recstream up` in each home, each in its own process group; all stopped together whatever
    happens, then `down` for anything a killed `up` could leave behind."""
    procs: list[subprocess.Popen] = []
    try:
        for home in homes:
            home.mkdir(parents=True)
            with open(home.parent / f"{home.name}-up.log", "wb") as out:
                procs.append(
                    subprocess.Popen(
                        [*RECSTREAM, "up"],
                        env=_env(home),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        yield procs
    finally:
        for proc in procs:  # SIGTERM to all first: they stop in parallel
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            stop_child(proc, timeout=60)
        for home in homes:
            _cli(["down"], home)


def _serving(home: Path) -> dict[str, dict] | None:
    """The services of `home` once every one runs and answers /metrics, none with another's metrics."""
    services = services_status(home)
    if set(services) != set(SERVICES) or not all(s["pid"] for s in services.values()):
        return None
    for name, service in services.items():
        page = observe.scrape(service["metrics"])
        others = tuple(f"recstream_{other}_" for other in SERVICES if other != name)
        if not page or any(metric.startswith(others) for metric in page):  # none, or another's
            return None
    return services


def _logs(home: Path) -> str:
    return json.dumps({p.name: p.read_text()[-800:] for p in (home / "logs").glob("*.log")})[-4000:]


def _wait_serving(homes: dict[Path, subprocess.Popen]) -> dict[Path, dict[str, dict]]:
    deadline = time.monotonic() + START_TIMEOUT_S
    ready: dict[Path, dict[str, dict]] = {}
    while len(ready) < len(homes):
        for home, up in homes.items():
            assert up.poll() is None, f"`up` in {home} exited: {_logs(home)}"
            assert time.monotonic() < deadline, f"{home} not serving: {_logs(home)}"
            if home not in ready and (services := _serving(home)):
                ready[home] = services
        time.sleep(1)
    return ready


def test_two_stacks_run_side_by_side(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    defaults = {int(f.default) for f in FIELDS for name in SERVICES if f.env in service_ports(name)}
    assert {9401, 9402, 9403, 9404} <= defaults
    with _up(one, two) as (up_one, up_two):
        serving = _wait_serving({one: up_one, two: up_two})
        ports = {
            home: {p for s in svc.values() for p in s["ports"].values()} for home, svc in serving.items()
        }
        assert len(ports[one]) == len(ports[two]) >= len(SERVICES)
        assert not ports[one] & ports[two] and not defaults & (ports[one] | ports[two])

        bodies = {}
        for home, services in serving.items():
            status = _cli(["status", "--json"], home)
            assert status.returncode == 0, status.stderr
            bodies[home] = body = json.loads(status.stdout)
            for name, mine in services.items():
                shown = body["services"][name]
                assert shown["ports"] == mine["ports"] and shown["pid"] == mine["pid"]
                assert shown["metrics"] == f"127.0.0.1:{mine['ports'][METRICS_PORT[name]]}"
                assert shown["restarts"] == 0 and not shown["last_error"], shown  # no crash loop
                assert body["snapshot"]["services"][name]["metrics"], name  # status scraped its own
            # Programs reading this home's settings find its services' ports (the scorer's HTTP view).
            settings = load_settings({"RECSTREAM_HOME": str(home)}, environ={})
            recorded = {k: v for s in services.values() for k, v in s["ports"].items()}
            assert {f.env: getattr(settings, f.attr) for f in FIELDS if f.env in recorded} == recorded
            targets = json.loads((home / "prometheus" / "targets.json").read_text())
            assert {t["labels"]["job"]: t["targets"] for t in targets} == {
                name: [s["metrics"]] for name, s in services.items()
            }
            assert all(t["labels"]["recstream_home"] == str(home) for t in targets)
        endpoints = [{p["endpoint"] for p in bodies[home]["parts"]} for home in (one, two)]
        # Object store, broker, request broker, model server: each its own endpoint, none shared.
        assert len(endpoints[0]) == 4 and not endpoints[0] & endpoints[1]
    assert json.loads((one / "prometheus" / "targets.json").read_text()) == []  # stopped: nothing to scrape


@pytest.mark.parametrize(
    ("args", "setting"),
    [(["up"], "INGEST_METRICS_PORT"), (["up", "--infra"], "BROKER_PORT")],
)
def test_a_pinned_port_that_is_taken_stops_up_before_anything_starts(
    tmp_path: Path, args: list[str], setting: str
) -> None:
    home = tmp_path / "home"
    with held_port() as port:  # another program has the port
        result = _cli(args, home, **{setting: str(port)})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{setting} {port} is taken by another process" in lines[0], result.stderr
    assert not (home / "logs").exists() and not (home / "run" / "stack.json").exists()  # nothing started


def test_a_part_whose_port_is_taken_while_it_starts_starts_again_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another stack starting at the same moment binds the port this one just chose for its broker.
    with held_port() as taken:
        chosen = iter([taken])
        monkeypatch.setattr(stack_module, "free_port", lambda: next(chosen, 0) or free_port())
        stack = Stack(load_settings({"RECSTREAM_HOME": str(tmp_path)}, environ={}))
        try:
            stack.start_part(OBJECTSTORE)
            stack.start_part(BROKER)
            entry = stack._read_state()[BROKER]
            assert entry["port"] != taken and broker_metadata_ok(entry["endpoint"])
            assert stack.log_path(BROKER).read_text().count(" start: ") == 2  # the first one died
        finally:
            stack.down()
