"""What the stack uses to run the model server: its command line and health check (no TensorFlow)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from recstream.deploy.local.processes import free_port
from recstream.deploy.modelserver import command, rest_healthy
from recstream.deploy.modelserver.server import parse_args


def test_command_line_is_what_the_server_parses(tmp_path: Path) -> None:
    argv, env = command(tmp_path / "models" / "recommender", "recommender", 18500, 18501)
    assert argv[:3] == [sys.executable, "-m", "recstream.deploy.modelserver"]
    args = parse_args(argv[3:])
    assert (args.model_name, args.model_base_path) == (
        "recommender",
        str(tmp_path / "models" / "recommender"),
    )
    assert (args.grpc_port, args.rest_port, args.host) == (18500, 18501, "127.0.0.1")
    assert env["TF_CPP_MIN_LOG_LEVEL"] and env["PYTHONUNBUFFERED"] == "1"


def test_tf_serving_flag_spellings_are_accepted() -> None:
    args = parse_args(
        [
            "--port=9000",
            "--rest_api_port=9001",
            "--model_name=m",
            "--model_base_path=/models/m",
            "--file_system_poll_wait_seconds=0",
            "--max_num_load_retries=0",
            "--enable_model_warmup=false",
        ]
    )
    assert (args.grpc_port, args.rest_port, args.model_name, args.model_base_path) == (
        9000,
        9001,
        "m",
        "/models/m",
    )
    assert (args.file_system_poll_wait_seconds, args.max_num_load_retries, args.enable_model_warmup) == (
        0,
        0,
        False,
    )


def test_nothing_listening_is_unhealthy() -> None:
    assert not rest_healthy(f"127.0.0.1:{free_port()}", "recommender", timeout=0.5)


def test_free_ports_do_not_follow_the_global_random_seed() -> None:
    # Training seeds Python's global generator; ports drawn after it must still differ run to run.
    drawn = set()
    for _ in range(3):
        random.seed(1234)
        drawn.add(free_port())
    assert len(drawn) > 1
