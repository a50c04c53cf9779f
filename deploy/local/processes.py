"""Daemons of the embedded stack: start detached, identify by pid and command, stop by process group.

The stack outlives the `recstream up` process that starts it, so every part runs in its
own session and is found again later through the pid recorded in the stack state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from recstream.stream.errors import RecstreamError

log = logging.getLogger(__name__)


class StackError(RecstreamError):
    """A part of the stack cannot be started, reached or stopped; the message is one line."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def check_pinned_free(
    pinned: Mapping[str, int], host: str = "127.0.0.1", hosts: Mapping[str, str] | None = None
) -> None:
    """Pinned ports (setting -> port) must be free and distinct: else one StackError line naming them,
    raised before anything starts instead of a service failing on "Address already in use".

    Each is checked on `host`, or on `hosts[setting]` for one listening elsewhere; pass every port
    of one start in one call, so that two settings pinned to one port are caught whatever they are."""
    problems: list[str] = []
    seen: dict[int, str] = {}
    for name, port in pinned.items():
        if port in seen:
            problems.append(f"{name} and {seen[port]} are both {port}")
        elif not port_is_free(port, (hosts or {}).get(name, host)):
            problems.append(f"{name} {port} is taken by another process")
        seen.setdefault(port, name)
    if problems:
        raise StackError("; ".join(problems) + " (unset a port setting to have a free port chosen)")


# Below the kernel's ephemeral range (32768+), so an outgoing connection cannot take a port
# between the moment it is chosen and the moment the server binds it.
PORT_RANGE = range(10000, 22000)


_PORTS = random.SystemRandom()  # not the global generator: training seeds that one


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now on `host`, outside the ephemeral range."""
    for port in _PORTS.sample(PORT_RANGE, 500):
        if port_is_free(port, host):
            return port
    raise StackError(f"no free port found on {host}")


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (state, ppid, ...); None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _proc_state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a live process has used so far; ProcessLookupError once gone."""
    fields = _stat_fields(pid)
    if fields is None:
        raise ProcessLookupError(f"process {pid} is gone")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """Live children of a process (Linux /proc), e.g. an ingest worker's encoder process."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def pid_alive(pid: int | None) -> bool:
    """True for a running process; a zombie is reaped (when it is our child) and counts as dead."""
    if not pid:
        return False
    state = _proc_state(pid)
    if state is None:
        return False
    if state in {"Z", "X"}:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def pid_runs(pid: int | None, executable: str) -> bool:
    """True when `pid` is alive and still runs `executable` (guards against a recycled pid)."""
    if not pid_alive(pid):
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except OSError:
        return False
    return Path(argv0).name == Path(executable).name


def start_daemon(argv: list[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None) -> int:
    """Start `argv` in a new session with output appended to `log_path`; returns its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    log.debug("started %s as pid %d", argv[0], proc.pid)
    return proc.pid


def stop_pid(pid: int, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal the process group of `pid`, escalate to SIGKILL after `timeout`, wait until it is gone."""
    for signum, wait in ((sig, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
    raise StackError(f"process {pid} did not stop")


def stop_child(proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> int:
    """Stop a child started in its own session and its group: `sig`, SIGKILL after `timeout`.

    Returns its exit code (the child is reaped, unlike with `stop_pid`).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def last_log_line(log_path: Path) -> str:
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def wait_healthy(name: str, pid: int, check: Callable[[], bool], timeout: float, log_path: Path) -> None:
    """Poll `check` until it passes; fail fast with the log's last line if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise StackError(f"{name} exited during start: {last_log_line(log_path)} (log: {log_path})")
        if check():
            return
        time.sleep(0.2)
    raise StackError(f"{name} not healthy after {timeout:.0f}s (log: {log_path})")
