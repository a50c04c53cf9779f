"""`recstream up`: every service of the flow under one supervisor, in the foreground.

Each service (`recstream ingest|updater|scheduler|scorer`) runs as a child in its own
process group with its output in `$RECSTREAM_HOME/logs/<service>.log`. A service that
exits is started again after a backoff that doubles up to `max_backoff_s` and resets once
it has run for `stable_after_s` (stream.retry.Delays: each service's delay is state of this
process table, advanced by `poll`, not a call retried in place, so tenacity's loop does not
apply). Stopping (Ctrl-C, SIGTERM, `recstream down`) sends SIGTERM to every service, then
SIGKILL to what is left after the grace period.

Every port a service listens on (`SERVICE_PORTS`) is chosen free unless pinned in the
environment, so two stacks in two homes never collide; a pinned port must be free before
anything starts (`check_services`), and an unpinned one taken while its service was down is
replaced at the restart. `$RECSTREAM_HOME/run/services.json` records the supervisor's pid
and each service's pid, restarts, ports, metrics endpoint and last error, for
`recstream status` and `recstream down` (and `stack.env` has the ports while they run, for
programs that read the settings); `$RECSTREAM_HOME/prometheus/targets.json` lists the
metrics endpoints for a Prometheus `file_sd_configs` (`prometheus/prometheus.yml` beside it
is a config that uses it).

Workers: INGEST_WORKERS / SCORER_WORKERS start that many of the service, `<service>-1` ..
`<service>-N` (a service of one worker keeps its plain name), all in the service's one
consumer group, so Kafka shares the partitions among them. Each worker has its own ports (a
pinned port goes to the first), log, and Faust data dir (WORKER_NAME); services.json records
which service each is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from recstream.deploy.local.processes import (
    StackError,
    check_pinned_free,
    free_port,
    pid_alive,
    port_is_free,
    stop_pid,
)
from recstream.stream import retry
from recstream.stream.settings import FIELDS, Settings, read_env_file, write_env_file

log = logging.getLogger(__name__)

SERVICES = ("ingest", "updater", "scheduler", "scorer")
# Every port setting of each service, one table: under `recstream up` each is chosen free unless
# pinned, recorded, and checked before start. A new port of a service is one more entry here
# (tests/unit/test_supervisor.py fails on a <SERVICE>_*_PORT setting missing from it); an entry
# whose setting is not (yet) declared in stream/settings.py is ignored.
SERVICE_PORTS: dict[str, tuple[str, ...]] = {
    "ingest": ("INGEST_METRICS_PORT",),
    "updater": ("UPDATER_METRICS_PORT",),
    "scheduler": ("SCHEDULER_METRICS_PORT",),
    "scorer": ("SCORER_METRICS_PORT", "SCORER_HTTP_PORT"),
}
METRICS_PORT = {name: f"{name.upper()}_METRICS_PORT" for name in SERVICES}
WORKERS_SETTING = {"ingest": "ingest_workers", "scorer": "scorer_workers"}  # the scalable services
_FIELDS = {f.env: f for f in FIELDS}
TAIL_BYTES = 64 * 1024  # how much of a log is read to find a service's last error


def service_ports(name: str) -> tuple[str, ...]:
    """The declared port settings of a service (env names)."""
    return tuple(env for env in SERVICE_PORTS.get(name, ()) if env in _FIELDS)


def pinned_ports(environ: Mapping[str, str], services: tuple[str, ...] = SERVICES) -> dict[str, int]:
    """Port settings the user set to a port (not empty, not 0) in `environ`: env name -> port."""
    pinned = {}
    for name in services:
        for env in service_ports(name):
            raw = (environ.get(env) or "").strip()
            if not raw:
                continue
            try:
                port = int(cast(int, _FIELDS[env].parse(raw)))  # a port setting parses to an int
            except ValueError as exc:
                raise StackError(f"{env}={raw!r}: {exc}") from None
            if port:
                pinned[env] = port
    return pinned


def check_pinned(
    environ: Mapping[str, str], host: str, services: tuple[str, ...] = SERVICES
) -> dict[str, int]:
    """The pinned service ports, each free and pinned once; else one StackError line naming them."""
    pinned = pinned_ports(environ, services)
    check_pinned_free(pinned, host)
    return pinned


def check_services(
    home: Path,
    host: str,
    environ: Mapping[str, str] | None = None,
    infra: Mapping[str, int] | None = None,
) -> None:
    """What `recstream up` checks before it starts anything: no services of this home run yet, and
    every pinned port is free and pinned once, the services' (on `host`) and those of the parts of
    the infrastructure it will start (`infra`, setting -> port, on 127.0.0.1) in one check: two
    settings pinned to one port collide whichever half each belongs to."""
    if read_state(home, alive_only=False):
        raise StackError(f"services of {home} may still run: `recstream down` first")
    services = pinned_ports(os.environ if environ is None else environ)
    infra = dict(infra or {})
    check_pinned_free({**infra, **services}, host, hosts=dict.fromkeys(infra, "127.0.0.1"))


def last_error(log_path: Path, name: str) -> str:
    """The line of a service's log, since its last start, that best says why it exited.

    The CLI's one-line error (`recstream: ...`) if there is one, else the last error-looking
    line (a traceback ends in one), else the last line.
    """
    try:
        with open(log_path, "rb") as handle:
            handle.seek(max(handle.seek(0, os.SEEK_END) - TAIL_BYTES, 0))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    marker = text.rfind(f" start {name}\n")
    lines = [ln.strip() for ln in text[marker + 1 if marker >= 0 else 0 :].splitlines()[1:] if ln.strip()]
    if not lines:
        return ""
    ranked = (
        [ln for ln in lines if ln.startswith("recstream: ")],
        [ln for ln in lines if "Error" in ln or "Exception" in ln or " ERROR " in ln or " CRITICAL " in ln],
        lines,
    )
    return next(group[-1] for group in ranked if group)[:300]


def worker_names(service: str, workers: int) -> list[str]:
    """The workers of a service: its own name when it runs alone, else `<service>-<i>`."""
    return [service] if workers == 1 else [f"{service}-{i}" for i in range(1, workers + 1)]


def recorded_ports(home: Path) -> dict[str, int]:
    """Every port setting of the services a running supervisor of `home` recorded (of several
    workers of one service, the first's)."""
    ports: dict[str, int] = {}
    for service in read_state(home).get("services", {}).values():
        for setting, port in service.get("ports", {}).items():
            ports.setdefault(setting, port)
    return ports


def write_stack_env_ports(home: Path, ports: Mapping[str, int]) -> None:
    """Put the services' ports in stack.env beside the endpoints (none once they stop), so that a
    program reading the settings of this home (`recstream request --http`) finds them."""
    path = home / "stack.env"
    current = read_env_file(path)
    if not current:
        return  # no stack of this home wrote one
    every = {setting for settings in SERVICE_PORTS.values() for setting in settings}
    values = {k: v for k, v in current.items() if k not in every} | {k: str(v) for k, v in ports.items()}
    if values != current:
        write_env_file(path, values)


def targets_path(home: Path) -> Path:
    return home / "prometheus" / "targets.json"


PROMETHEUS_CONFIG = """\
# written by `recstream up`: `prometheus --config.file=<this file>` scrapes this home's services,
# found in targets.json beside it (rewritten when a port changes; empty once the services stop).
global:
  scrape_interval: 15s
scrape_configs:
  - job_name: recstream
    file_sd_configs:
      - files: [targets.json]
"""


def write_targets(home: Path, endpoints: Mapping[str, str], jobs: Mapping[str, str] | None = None) -> None:
    """Prometheus file_sd targets of the services' metrics: one group per worker, `job` = its service
    (`jobs`: worker -> service, default the worker's name), `worker` = its name when it is one of several."""
    path = targets_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    groups = [
        {
            "targets": [endpoint],
            "labels": {"job": (jobs or {}).get(name, name), "recstream_home": str(home)}
            | ({"worker": name} if (jobs or {}).get(name, name) != name else {}),
        }
        for name, endpoint in endpoints.items()
        if endpoint
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups, indent=1))
    os.replace(tmp, path)
    config = path.parent / "prometheus.yml"
    if not config.exists():
        config.write_text(PROMETHEUS_CONFIG)


@dataclass
class Service:
    name: str
    env: dict[str, str]
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)  # port setting -> port
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    service: str = ""  # the CLI command it runs (`name` is the worker's): the name when empty
    restarts: int = 0
    delays: retry.Delays = field(
        default_factory=lambda: retry.Delays(retry.Policy(retry.SERVICE_RESTART_INITIAL_S, 60.0))
    )
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)
    last_error: str = ""

    def __post_init__(self) -> None:
        self.service = self.service or self.name

    @property
    def metrics(self) -> str:
        port = self.ports.get(METRICS_PORT.get(self.service, ""))
        return f"{self.host}:{port}" if port else ""


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        services: tuple[str, ...] = SERVICES,
        env: Mapping[str, str] | None = None,
        *,
        stable_after_s: float = 30.0,
        max_backoff_s: float = 60.0,
        grace_s: float = 40.0,  # beyond SCORER_DEADLINE_S: a scorer waiting on the model server ends cleanly
    ) -> None:
        self.settings = settings
        self.home = settings.home
        self.state_path = self.home / "run" / "services.json"
        self.stable_after_s, self.max_backoff_s, self.grace_s = stable_after_s, max_backoff_s, grace_s
        base = {**os.environ, "RECSTREAM_HOME": str(self.home), **(env or {})}
        self.host = settings.metrics_host
        self.pinned = check_pinned(base, self.host, services)
        self.services = []
        for name in services:
            workers = getattr(settings, WORKERS_SETTING.get(name, ""), 1)
            for index, worker in enumerate(worker_names(name, workers)):
                env = dict(base) | ({"WORKER_NAME": worker} if workers > 1 else {})
                service = Service(
                    worker, env, self.home / "logs" / f"{worker}.log", host=self.host, service=name
                )
                service.delays = retry.Delays(retry.Policy(retry.SERVICE_RESTART_INITIAL_S, max_backoff_s))
                self.services.append(service)
                for setting in service_ports(name):
                    pinned = self.pinned.get(setting) if index == 0 else None  # pinned: the first's
                    self._assign(service, setting, pinned or self._free_port())

    def _taken(self) -> set[int]:
        return {port for service in self.services for port in service.ports.values()} | set(
            self.pinned.values()
        )

    def _free_port(self) -> int:
        """A port free now and not given to another service of this supervisor."""
        taken = self._taken()
        while (port := free_port(self.host)) in taken:
            pass
        return port

    @staticmethod
    def _assign(service: Service, setting: str, port: int) -> None:
        service.ports[setting] = port
        service.env[setting] = str(port)

    def _replace_taken_ports(self, service: Service) -> None:
        """Before a restart: an unpinned port another process took meanwhile gets a new free one."""
        for setting, port in list(service.ports.items()):
            pinned = self.pinned.get(setting) == port
            if not pinned and not port_is_free(port, self.host):
                self._assign(service, setting, new := self._free_port())
                log.warning("%s: %s %d was taken; now %d", service.name, setting, port, new)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        for service in self.services:
            self._start(service)
        self._save()

    def _start(self, service: Service) -> None:
        service.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(service.log_path, "ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} start {service.name}\n".encode())
            out.flush()
            service.proc = subprocess.Popen(
                [sys.executable, "-m", "recstream.deploy.cli", service.service],
                env=service.env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops services in order
            )
        service.started_at = time.monotonic()
        service.restart_at = None
        log.info("%s: started pid %d (log %s)", service.name, service.proc.pid, service.log_path)

    def poll(self) -> list[str]:
        """Restart services that exited, with backoff; returns what happened, for the caller to show."""
        events, now = [], time.monotonic()
        for service in self.services:
            if service.proc is not None and service.proc.poll() is not None:
                code = service.proc.returncode
                service.exits.append(code)
                service.last_error = f"exit {code}: {last_error(service.log_path, service.name) or '-'}"
                if now - service.started_at >= self.stable_after_s:
                    service.delays.reset()
                delay = service.delays.next()
                service.restart_at = now + delay
                events.append(f"{service.name} exited ({service.last_error}); restarting in {delay:g}s")
                log.warning(events[-1])
                service.proc = None
                self._save()
            if service.proc is None and service.restart_at is not None and now >= service.restart_at:
                service.restarts += 1
                self._replace_taken_ports(service)
                self._start(service)
                self._save()
        return events

    def run(self, stop: threading.Event, interval_s: float = 0.5) -> None:
        while not stop.wait(interval_s):
            self.poll()

    def stop(self) -> None:
        running = [(s, s.proc) for s in self.services if s.proc is not None and s.proc.poll() is None]
        for _, proc in running:
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for service, proc in running:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %gs; killing it", service.name, self.grace_s)
                with contextlib.suppress(StackError):
                    stop_pid(proc.pid, timeout=0.1)
            log.info("%s: stopped", service.name)
        self.state_path.unlink(missing_ok=True)
        write_targets(self.home, {})
        write_stack_env_ports(self.home, {})

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "supervisor": os.getpid(),
            "services": {
                s.name: {
                    "service": s.service,
                    "pid": s.proc.pid if s.proc else None,
                    "restarts": s.restarts,
                    "ports": s.ports,
                    "pinned": sorted(k for k, v in s.ports.items() if self.pinned.get(k) == v),
                    "metrics": s.metrics,
                    "last_error": s.last_error,
                    "log": str(s.log_path),
                }
                for s in self.services
            },
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_path)
        write_targets(
            self.home, {s.name: s.metrics for s in self.services}, {s.name: s.service for s in self.services}
        )
        first: dict[str, int] = {}  # of several workers, the first's ports: any of them routes a user
        for s in self.services:
            for setting, port in s.ports.items():
                first.setdefault(setting, port)
        write_stack_env_ports(self.home, first)


def read_state(home: Path, *, alive_only: bool = True) -> dict:
    """services.json ({} when none): by default only while its supervisor runs."""
    try:
        state = json.loads((home / "run" / "services.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if not alive_only or pid_alive(state.get("supervisor")) else {}


def services_status(home: Path, names: tuple[str, ...] | None = None) -> dict[str, dict]:
    """Each supervised service of this home as `status` shows it ({} when no supervisor runs);
    with `names`, exactly those services, one not recorded shown as not running."""
    recorded = read_state(home).get("services", {})
    return {
        name: {
            "service": info.get("service", name),
            "pid": info.get("pid") if pid_alive(info.get("pid")) else None,
            "restarts": info.get("restarts", 0),
            "ports": info.get("ports", {}),
            "metrics": info.get("metrics") or "",
            "last_error": info.get("last_error", ""),
        }
        for name in (recorded if names is None else names)
        for info in [recorded.get(name, {})]
    }


def _is_service(pid: int | None, name: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    command = any(arg == b"recstream.deploy.cli" or arg.endswith(b"/recstream") for arg in argv)
    return command and name.encode() in argv


def stop_running(home: Path, timeout_s: float = 60.0) -> bool:
    """Stop this home's supervisor and its services, also those a supervisor killed hard left
    behind; True if anything was stopped."""
    state = read_state(home, alive_only=False)
    pid = state.get("supervisor")
    stopped = False
    if pid is not None and pid_alive(pid) and _is_service(pid, "up"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        stopped = True
    for name, service in state.get("services", {}).items():
        if pid_alive(service.get("pid")) and _is_service(service["pid"], service.get("service", name)):
            stop_pid(service["pid"])
            stopped = True
    (home / "run" / "services.json").unlink(missing_ok=True)
    if targets_path(home).exists():
        write_targets(home, {})
    return stopped
