"""Model servers of one test (`python -m recstream.deploy.modelserver` subprocesses), as replicas sharing a
serving root and config file, the way the stack runs one."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from recstream.deploy import modelserver
from recstream.deploy.local.processes import free_port
from recstream.deploy.local.stack import EMPTY_MODEL_CONFIG, MODELSERVER_ARGS

START_TIMEOUT_S = 90.0


class Servers:
    def __init__(self, root: Path, model: str) -> None:
        self.root, self.model = root, model
        self.config = root / "models.config"
        self.config.write_text(EMPTY_MODEL_CONFIG)
        self.procs: dict[str, subprocess.Popen] = {}
        self.rest: dict[str, str] = {}

    def start(self, count: int = 1) -> list[str]:
        """Start `count` servers on free ports; their gRPC endpoints once each is healthy."""
        endpoints = [self._spawn(free_port(), free_port()) for _ in range(count)]
        for endpoint in endpoints:
            self.wait_healthy(endpoint)
        return endpoints

    def restart(self, endpoint: str) -> None:
        """Start a killed server again on the same ports."""
        grpc_port = int(endpoint.rpartition(":")[2])
        rest_port = int(self.rest[endpoint].rpartition(":")[2])
        self._spawn(grpc_port, rest_port)
        self.wait_healthy(endpoint)

    def kill(self, endpoint: str) -> None:
        proc = self.procs.pop(endpoint)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)

    def kill_all(self) -> None:
        for endpoint in list(self.procs):
            self.kill(endpoint)

    def wait_healthy(self, endpoint: str) -> None:
        proc, rest = self.procs[endpoint], self.rest[endpoint]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not modelserver.rest_healthy(rest, self.model):
            assert proc.poll() is None, f"model server {endpoint} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"model server {endpoint} not healthy in time"
            time.sleep(0.1)

    def _spawn(self, grpc_port: int, rest_port: int) -> str:
        argv, env = modelserver.command(
            self.root / self.model,
            self.model,
            grpc_port,
            rest_port,
            model_config_file=self.config,
            extra_args=MODELSERVER_ARGS,
        )
        endpoint = f"127.0.0.1:{grpc_port}"
        with open(self.root / f"server-{grpc_port}.log", "ab") as log:
            self.procs[endpoint] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.rest[endpoint] = f"127.0.0.1:{rest_port}"
        return endpoint
