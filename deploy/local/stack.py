"""`recstream up --infra` / `down` / `status`: the embedded stack's lifecycle.

Configured endpoints (environment or flags) are used as they are; every part that is
not configured is started here, detached, and recorded in `$RECSTREAM_HOME/run/stack.json`
(pid, ports) so that a later `up` reuses it, restarts it if it died, and `down` stops it.
The endpoints in use are written to `$RECSTREAM_HOME/stack.env` for other programs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Set
from dataclasses import dataclass
from pathlib import Path

from recstream.deploy import modelserver
from recstream.deploy.local import broker, objectstore
from recstream.deploy.local.processes import (
    StackError,
    free_port,
    pid_alive,
    pid_runs,
    port_is_free,
    start_daemon,
    stop_pid,
    wait_healthy,
)
from recstream.stream.settings import Settings, load_settings, write_env_file
from recstream.stream.storage import ensure_buckets, make_client, store_healthy
from recstream.stream.topics import broker_metadata_ok, ensure_topics

log = logging.getLogger(__name__)

OBJECTSTORE = "objectstore"
BROKER = "broker"
REQUEST_BROKER = "request-broker"  # requests and answers only, on Tansu's memory engine (deploy/broker.py)
MODELSERVER = "modelserver"
PARTS = (OBJECTSTORE, BROKER, REQUEST_BROKER, MODELSERVER)  # start order; stopped in reverse
ENV_NAME = {
    OBJECTSTORE: "MINIO_ENDPOINT",
    BROKER: "KAFKA_BOOTSTRAP",
    REQUEST_BROKER: "REQUESTS_KAFKA_BOOTSTRAP",
    MODELSERVER: "TF_SERVING_GRPC",
}
# The model server follows its config file, which the updater writes before each reload (as with
# tensorflow/serving in deploy/compose); a bad version fails at once instead of retrying for minutes.
MODELSERVER_ARGS = (
    "--model-config-file-poll-wait-seconds",
    "30",
    "--allow-version-labels-for-unavailable-models",
    "--max-num-load-retries",
    "0",
)
EMPTY_MODEL_CONFIG = "model_config_list {}\n"
PORT_RELEASE_S = 2.0  # how long a restart waits for a killed part's port before taking another
START_ATTEMPTS = 3  # a part whose unpinned port was taken while it started gets new ports


@dataclass(frozen=True, slots=True)
class PartStatus:
    name: str
    endpoint: str | None
    managed: bool
    pid: int | None
    healthy: bool


class Stack:
    """One RECSTREAM_HOME's stack. `configured` holds only what the user set, never stack.env."""

    def __init__(self, configured: Settings) -> None:
        self.configured = configured
        self.home = configured.home
        self.run_dir = self.home / "run"
        self.state_path = self.run_dir / "stack.json"

    @classmethod
    def from_environment(cls, overrides: dict[str, str | None] | None = None) -> Stack:
        return cls(load_settings(overrides, use_stack_env=False))

    # -- state -------------------------------------------------------------------------------
    def _read_state(self) -> dict[str, dict]:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StackError(f"unreadable stack state {self.state_path}: {exc}") from exc

    def _write_state(self, state: dict[str, dict]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        os.replace(tmp, self.state_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict]]:
        """Serialize up/down of one home; yields the state and saves it on the way out."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "stack.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read_state()
            try:
                yield state
            finally:
                self._write_state(state)

    def log_path(self, part: str) -> Path:
        return self.home / "logs" / f"{part}.log"

    # -- effective settings ------------------------------------------------------------------
    def _configured_endpoint(self, part: str) -> str | None:
        if part == MODELSERVER:
            return self.configured.tf_serving_grpc
        if part == REQUEST_BROKER:
            return self.configured.requests_kafka_bootstrap_setting
        return self.configured.minio_endpoint if part == OBJECTSTORE else self.configured.kafka_bootstrap

    def _wanted(self, part: str) -> bool:
        """Every part but the request broker, which only comes with an embedded main broker: with a
        configured Kafka, requests live there unless REQUESTS_KAFKA_BOOTSTRAP says otherwise."""
        c = self.configured
        return part != REQUEST_BROKER or bool(c.requests_kafka_bootstrap_setting or not c.kafka_bootstrap)

    def _endpoint(self, part: str, state: dict[str, dict]) -> str | None:
        """The configured endpoint, else the embedded part's while it has a process."""
        if not self._wanted(part):
            return None
        entry = state.get(part, {})
        return self._configured_endpoint(part) or (entry.get("endpoint") if entry.get("pid") else None)

    def settings(self) -> Settings:
        """The configured settings completed with the endpoints of the embedded parts."""
        return self.settings_from(self._read_state())

    def settings_from(self, state: dict[str, dict]) -> Settings:
        serving = state.get(MODELSERVER, {})
        return dataclasses.replace(
            self.configured,
            minio_endpoint=self._endpoint(OBJECTSTORE, state),
            kafka_bootstrap=self._endpoint(BROKER, state),
            requests_kafka_bootstrap_setting=self._endpoint(REQUEST_BROKER, state),
            tf_serving_grpc=self._endpoint(MODELSERVER, state),
            tf_serving_rest=self.configured.tf_serving_rest
            or (serving.get("rest") if serving.get("pid") and serving.get("managed") else None),
        )

    def stack_env(self, settings: Settings) -> dict[str, str]:
        values = {
            "KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
            "REQUESTS_KAFKA_BOOTSTRAP": settings.requests_kafka_bootstrap_setting or "",
            "MINIO_ENDPOINT": settings.minio_endpoint or "",
            "MINIO_ACCESS_KEY": settings.minio_access_key,
            "MINIO_SECRET_KEY": settings.minio_secret_key,
            "MINIO_SECURE": "true" if settings.minio_secure else "false",
            "MINIO_REGION": settings.minio_region,
            "TF_SERVING_GRPC": settings.tf_serving_grpc or "",
            "TF_SERVING_REST": settings.tf_serving_rest or "",
            "MODEL_BASE_PATH": str(settings.model_base_path),
        }
        from recstream.deploy.local.supervisor import (
            recorded_ports,  # services `up` runs now keep their ports listed
        )

        values |= {setting: str(port) for setting, port in recorded_ports(self.home).items()}
        return {k: v for k, v in values.items() if v}

    # -- up ----------------------------------------------------------------------------------
    def up(self) -> Settings:
        """Bring every part to a healthy state, create buckets and topics, write stack.env.

        If any step fails, the parts this call started are stopped again, so a failed `up`
        leaves nothing behind that `down` would have to find.
        """
        started: list[str] = []
        try:
            with self._locked() as state:
                for part in PARTS:
                    if not self._wanted(part):
                        self._stop_entry(part, state.get(part, {}))  # e.g. a Kafka configured since
                    elif self._ensure_part(part, state):
                        started.append(part)
                settings = self.settings_from(state)
                ensure_buckets(make_client(settings), settings.buckets())
                ensure_topics(settings)
                write_env_file(settings.stack_env_path, self.stack_env(settings))
        except BaseException:
            for part in reversed(started):
                self.stop_part(part)
            raise
        log.info("stack is up; endpoints in %s", settings.stack_env_path)
        return settings

    def pinned_ports(self, part: str) -> dict[str, int]:
        """The ports of an embedded part the user pinned (setting name -> port)."""
        c = self.configured
        if part == OBJECTSTORE:
            port = c.objectstore_port
            return (
                {"OBJECTSTORE_PORT": port, "OBJECTSTORE_PORT's gRPC port": port + objectstore.GRPC_OFFSET}
                if port
                else {}
            )
        if part == BROKER:
            return {"BROKER_PORT": c.broker_port} if c.broker_port else {}
        if part == REQUEST_BROKER:
            return {"REQUEST_BROKER_PORT": c.request_broker_port} if c.request_broker_port else {}
        pinned = {
            "MODELSERVER_GRPC_PORT": c.modelserver_grpc_port,
            "MODELSERVER_REST_PORT": c.modelserver_rest_port,
        }
        return {name: port for name, port in pinned.items() if port}

    def pinned_ports_to_start(self) -> dict[str, int]:
        """The pinned ports of the parts `up` would start (`up` checks them before starting anything)."""
        state = self._read_state()
        pinned: dict[str, int] = {}
        for part in PARTS:
            entry = state.get(part, {})
            if (
                not self._wanted(part)
                or self._configured_endpoint(part)
                or (entry.get("pid") and self._runs(part, entry["pid"], self._executable(part)))
            ):
                continue  # not started by this `up`: a configured endpoint, or our own part reused
            pinned |= self.pinned_ports(part)
        return pinned

    def _ensure_part(self, part: str, state: dict[str, dict]) -> bool:
        """Make `part` healthy; True when this call started a process for it."""
        external = self._configured_endpoint(part)
        entry = state.get(part, {})
        if external:
            if not self._healthy(part, external):
                raise StackError(f"{ENV_NAME[part]}={external} is configured but does not answer")
            if entry.get("managed") and entry.get("endpoint") == external:
                return False  # our own part, named explicitly: keep it managed
            # The configured endpoint replaces our own part: stop it, or `down` could not find it later.
            self._stop_entry(part, entry)
            state[part] = {"endpoint": external, "managed": False}
            log.info("%s: using configured %s", part, external)
            return False
        executable = self._executable(part)
        if self._runs(part, entry.get("pid"), executable):
            self._wait(part, entry["pid"], entry["endpoint"], entry.get("rest"))
            log.info("%s: reusing pid %d at %s", part, entry["pid"], entry["endpoint"])
            return False
        if entry.get("pid"):
            log.info("%s: pid %d is gone; starting it again", part, entry["pid"])
        self._start_part(part, state)
        return True

    def _executable(self, part: str) -> str:
        if part == MODELSERVER:
            return sys.executable
        return objectstore.weed_binary() if part == OBJECTSTORE else broker.tansu_binary()

    def _runs(self, part: str, pid: int | None, executable: str) -> bool:
        """Whether `pid` still is this part; for the model server any Python is not enough."""
        if not pid_runs(pid, executable):
            return False
        if part != MODELSERVER:
            return True
        try:
            return b"recstream.deploy.modelserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    def _start_part(self, part: str, state: dict[str, dict]) -> None:
        """Start `part`; if it died at start because another program (another stack starting at the
        same time) took one of its unpinned ports in between, start it again on new ports."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_part_once(part, state)
                return
            except StackError:
                entry = state.get(part, {})
                if attempt == START_ATTEMPTS or self.pinned_ports(part) or not self._lost_a_port(entry):
                    raise
                log.warning("%s: a port was taken while it started; starting it on new ports", part)
                state[part] = {}

    @staticmethod
    def _lost_a_port(entry: dict) -> bool:
        """Whether the part of `entry` is dead and one of its ports is taken (by someone else)."""
        if pid_alive(entry.get("pid")):
            return False
        ports = [entry.get("port"), entry.get("grpc"), entry.get("rest_port")]
        ports += [
            p + offset for p in entry.get("ports", {}).values() for offset in (0, objectstore.GRPC_OFFSET)
        ]
        return any(port and not port_is_free(port) for port in ports)

    def _start_part_once(self, part: str, state: dict[str, dict]) -> None:
        entry = state.get(part, {})
        if part == OBJECTSTORE:
            ports = objectstore.choose_ports(self.configured.objectstore_port, entry.get("ports"))
            argv, env = objectstore.command(self.configured, self.home, ports)
            endpoint = f"127.0.0.1:{ports['s3']}"
            entry = {"ports": ports}
        elif part == MODELSERVER:
            argv, env, entry = self._modelserver_command(entry)
            endpoint = f"127.0.0.1:{entry['grpc']}"
        elif part == REQUEST_BROKER:
            port = _port("REQUEST_BROKER_PORT", self.configured.request_broker_port, entry.get("port"))
            argv, env = broker.memory_command(port)
            endpoint = f"127.0.0.1:{port}"
            entry = {"port": port}
        else:
            port = self._broker_port(entry.get("port"))
            store = self._endpoint(OBJECTSTORE, state)
            if not store:
                raise StackError("the broker needs the object store, which is not up")
            argv, env = broker.command(self.configured, port, store)
            ensure_buckets(make_client(self._with_store(store)), [self.configured.broker_bucket])
            endpoint = f"127.0.0.1:{port}"
            entry = {"port": port}
        pid = start_daemon(argv, env, self.log_path(part), cwd=self.home)
        entry.update({"pid": pid, "endpoint": endpoint, "managed": True})
        state[part] = entry
        self._wait(part, pid, endpoint, entry.get("rest"))
        log.info("%s: started pid %d at %s", part, pid, endpoint)

    def _modelserver_command(self, entry: dict) -> tuple[list[str], dict[str, str], dict]:
        grpc_port = _port("MODELSERVER_GRPC_PORT", self.configured.modelserver_grpc_port, entry.get("grpc"))
        rest_port = _port(
            "MODELSERVER_REST_PORT",
            self.configured.modelserver_rest_port,
            entry.get("rest_port"),
            {grpc_port},
        )
        config = self.configured.model_config_file
        config.parent.mkdir(parents=True, exist_ok=True)
        if not config.exists():
            config.write_text(EMPTY_MODEL_CONFIG)
        argv, env = modelserver.command(
            self.configured.model_base_path / self.configured.model_name,
            self.configured.model_name,
            grpc_port,
            rest_port,
            model_config_file=config,
            extra_args=MODELSERVER_ARGS,
        )
        return argv, env, {"grpc": grpc_port, "rest_port": rest_port, "rest": f"127.0.0.1:{rest_port}"}

    def _broker_port(self, previous: int | None) -> int:
        return _port("BROKER_PORT", self.configured.broker_port, previous)

    def _with_store(self, endpoint: str) -> Settings:
        return dataclasses.replace(self.configured, minio_endpoint=endpoint)

    def _healthy(self, part: str, endpoint: str, rest: str | None = None) -> bool:
        """`rest`: the model server's REST endpoint, checked instead of gRPC when known (no protos)."""
        if part == MODELSERVER:
            rest = self.configured.tf_serving_rest if endpoint == self.configured.tf_serving_grpc else rest
            if rest:
                return modelserver.rest_healthy(rest, self.configured.model_name)
            return modelserver.grpc_healthy(endpoint, self.configured.model_name)
        if part == OBJECTSTORE:
            return store_healthy(make_client(self._with_store(endpoint), retries=0, timeout_s=2.0))
        return broker_metadata_ok(endpoint)

    def _wait(self, part: str, pid: int, endpoint: str, rest: str | None = None) -> None:
        wait_healthy(
            part,
            pid,
            lambda: self._healthy(part, endpoint, rest),
            self.configured.stack_start_timeout_s,
            self.log_path(part),
        )

    # -- single-part control (operators and fault tests) --------------------------------------
    def _stop_entry(self, part: str, entry: dict) -> bool:
        """Stop the process of a managed entry if it still runs; True if one was stopped."""
        pid = entry.get("pid")
        entry["pid"] = None
        if entry.get("managed") and pid is not None and self._runs(part, pid, self._executable(part)):
            stop_pid(pid)
            log.info("%s: stopped pid %d", part, pid)
            return True
        return False

    def stop_part(self, part: str) -> bool:
        with self._locked() as state:
            return self._stop_entry(part, state.get(part, {}))

    def start_part(self, part: str) -> None:
        with self._locked() as state:
            self._ensure_part(part, state)

    # -- down / status -----------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop every part this home started (broker first); returns the ones stopped."""
        if not self.state_path.exists():
            return []
        stopped, errors = [], []
        for part in reversed(PARTS):
            try:
                if self.stop_part(part):
                    stopped.append(part)
            except StackError as exc:  # go on: the other part must still be stopped
                errors.append(str(exc))
        with contextlib.suppress(FileNotFoundError):
            (self.home / "stack.env").unlink()
        if errors:
            raise StackError("; ".join(errors))
        return stopped

    def status(self) -> list[PartStatus]:
        state = self._read_state()
        result = []
        for part in filter(self._wanted, PARTS):
            entry = state.get(part, {})
            endpoint = self._endpoint(part, state)
            managed = not self._configured_endpoint(part)
            pid = (
                entry.get("pid")
                if managed and self._runs(part, entry.get("pid"), self._executable(part))
                else None
            )
            healthy = bool(
                endpoint
                and (pid is not None or not managed)
                and self._healthy(part, endpoint, entry.get("rest"))
            )
            result.append(PartStatus(part, endpoint, managed, pid, healthy))
        return result


def _released(port: int, within_s: float = PORT_RELEASE_S) -> bool:
    """Whether `port` is free, waiting a moment: a part just killed holds its port until the kernel
    has finished its exit, and taking a new one then would move a stable endpoint for nothing."""
    deadline = time.monotonic() + within_s
    while not port_is_free(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _port(name: str, pinned: int, previous: int | None, taken: Set[int] = frozenset()) -> int:
    """The pinned port, else the previous one while free (stable endpoints), else a free one."""
    if pinned:
        if not port_is_free(pinned):
            raise StackError(f"{name} {pinned} is taken by another process")
        return pinned
    if previous and previous not in taken and _released(previous):
        return previous
    while (port := free_port()) in taken:
        pass
    return port
