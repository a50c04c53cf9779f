"""What every benchmark shares: a throwaway embedded stack and the JSON result format."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from recstream.deploy.local.stack import Stack
from recstream.stream.settings import Settings, load_settings

RESULTS = Path(__file__).resolve().parent / "results"
SEED = Path(__file__).resolve().parents[2] / "shared" / "data" / "transactions.csv"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)


@contextlib.contextmanager
def temporary_stack() -> Iterator[Settings]:
    """A stack in a temporary home on free ports, stopped afterwards whatever happens."""
    with tempfile.TemporaryDirectory(prefix="recstream-bench-") as home:
        stack = Stack(load_settings({"RECSTREAM_HOME": home}, environ={}, use_stack_env=False))
        try:
            stack.up()
            yield stack.settings()
        finally:
            stack.down()


def recstream_child(command: str, env: Mapping[str, str], out: IO[bytes]) -> subprocess.Popen[bytes]:
    """`recstream <command>` as a child in its own session, output to `out`: stop it (and anything
    it started) with deploy.local.processes.stop_child."""
    return subprocess.Popen(
        [sys.executable, "-m", "recstream.deploy.cli", command],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def write_result(name: str, figure: float, unit: str, limit: float, limit_name: str, **details: Any) -> Path:
    """One JSON per run: the figure, the limit measured beside it in the same run, and their ratio."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    result = {
        "benchmark": name,
        "figure": round(figure, 3),
        "unit": unit,
        "limit": round(limit, 3),
        "limit_is": limit_name,
        "ratio": round(figure / limit, 3) if limit else None,
        "when": stamp,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **details,
    }
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
