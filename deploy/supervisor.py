"""`recstream up`: every service of the flow under one supervisor, in the foreground.

Each service (`recstream ingest|updater|scheduler|scorer`) runs as a child in its own
process group with its output in `$RECSTREAM_HOME/logs/<service>.log`. A service that
exits is started again after a backoff that doubles up to `max_backoff_s` and resets once
it has run for `stable_after_s`. Stopping (Ctrl-C, SIGTERM, `recstream down`) sends
SIGTERM to every service, then SIGKILL to what is left after the grace period.

`$RECSTREAM_HOME/run/services.json` records the supervisor's pid and each service's pid,
restarts and metrics endpoint, for `recstream status` and `recstream down`.
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

from deploy.processes import StackError, free_port, pid_alive, port_is_free, stop_pid
from stream.settings import Settings

log = logging.getLogger(__name__)

SERVICES = ("ingest", "updater", "scheduler", "scorer")
METRICS_PORT = {
    "ingest": "INGEST_METRICS_PORT",
    "updater": "UPDATER_METRICS_PORT",
    "scheduler": "SCHEDULER_METRICS_PORT",
    "scorer": "SCORER_METRICS_PORT",
}


@dataclass
class Service:
    name: str
    env: dict[str, str]
    log_path: Path
    metrics: str
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = 1.0
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)


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
        self.services = []
        for name in services:
            env, metrics = dict(base), ""
            if name in METRICS_PORT:
                port = self._metrics_port(name, base)
                env[METRICS_PORT[name]], metrics = str(port), f"{settings.metrics_host}:{port}"
            self.services.append(Service(name, env, self.home / "logs" / f"{name}.log", metrics))

    def _metrics_port(self, name: str, env: Mapping[str, str]) -> int:
        """The configured port while free; else (or when 0) a free one, recorded for `status`."""
        configured = int(env.get(METRICS_PORT[name]) or getattr(self.settings, f"{name}_metrics_port"))
        if configured and port_is_free(configured, self.settings.metrics_host):
            return configured
        if configured:
            log.warning("%s: metrics port %d is taken; using a free one", name, configured)
        return free_port()

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
                [sys.executable, "-m", "stream.cli", service.name],
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
                if now - service.started_at >= self.stable_after_s:
                    service.backoff_s = 1.0
                service.restart_at = now + service.backoff_s
                events.append(f"{service.name} exited with {code}; restarting in {service.backoff_s:g}s")
                log.warning(events[-1])
                service.backoff_s = min(service.backoff_s * 2, self.max_backoff_s)
                service.proc = None
            if service.proc is None and service.restart_at is not None and now >= service.restart_at:
                service.restarts += 1
                self._start(service)
                self._save()
        return events

    def run(self, stop: threading.Event, interval_s: float = 0.5) -> None:
        while not stop.wait(interval_s):
            self.poll()

    def stop(self) -> None:
        running = [s for s in self.services if s.proc is not None and s.proc.poll() is None]
        for service in running:
            os.killpg(service.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for service in running:
            try:
                service.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %gs; killing it", service.name, self.grace_s)
                with contextlib.suppress(StackError):
                    stop_pid(service.proc.pid, timeout=0.1)
            log.info("%s: stopped", service.name)
        self.state_path.unlink(missing_ok=True)

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "supervisor": os.getpid(),
            "services": {
                s.name: {
                    "pid": s.proc.pid if s.proc else None,
                    "restarts": s.restarts,
                    "metrics": s.metrics,
                    "log": str(s.log_path),
                }
                for s in self.services
            },
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_path)


def read_state(home: Path, *, alive_only: bool = True) -> dict:
    """services.json ({} when none): by default only while its supervisor runs."""
    try:
        state = json.loads((home / "run" / "services.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if not alive_only or pid_alive(state.get("supervisor")) else {}


def _is_service(pid: int | None, name: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    command = any(arg == b"stream.cli" or arg.endswith(b"/recstream") for arg in argv)
    return command and name.encode() in argv


def stop_running(home: Path, timeout_s: float = 60.0) -> bool:
    """Stop this home's supervisor and its services, also those a supervisor killed hard left
    behind; True if anything was stopped."""
    state = read_state(home, alive_only=False)
    pid = state.get("supervisor")
    stopped = False
    if pid_alive(pid) and _is_service(pid, "up"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        stopped = True
    for name, service in state.get("services", {}).items():
        if pid_alive(service.get("pid")) and _is_service(service["pid"], name):
            stop_pid(service["pid"])
            stopped = True
    (home / "run" / "services.json").unlink(missing_ok=True)
    return stopped
