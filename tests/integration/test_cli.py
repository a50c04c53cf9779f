"""The `recstream` command as a user runs it: one-line errors without tracebacks, produce summaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kafka_helpers import read_all

from recstream.deploy.local.processes import pid_alive
from recstream.stream.settings import Settings

RECSTREAM = [sys.executable, "-m", "recstream.deploy.cli"]


def run(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"KAFKA_BOOTSTRAP", "MINIO_ENDPOINT"}}
    clean.update({"RECSTREAM_HOME": str(home), **env})
    return subprocess.run(RECSTREAM + args, env=clean, capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["produce"], ["required: file"]),
        (["produce", "x.csv", "--rate", "0"], ["--rate", "must be > 0"]),
        (["produce", "x.csv", "--rate", "fast"], ["not a number"]),
        (["produce", "x.csv", "--limit", "-3"], ["--limit", "must be >= 1"]),
        (["launch"], ["invalid choice: 'launch'"]),
        ([], ["required: COMMAND"]),
    ],
)
def test_misuse_is_one_line(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    result = run(args, tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, *fragments)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    assert_one_line_error(run(["produce", str(tmp_path / "nope.csv")], tmp_path), "nope.csv", "No such file")
    assert_one_line_error(run(["produce", str(tmp_path)], tmp_path), "cannot read")
    binary = tmp_path / "blob.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    assert_one_line_error(run(["produce", str(binary)], tmp_path), "blob.csv")


def test_produce_without_a_stack_says_how_to_start_one(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id\nu1,i1\n")
    assert_one_line_error(run(["produce", str(events)], tmp_path / "empty-home"), "recstream up")


def test_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id\nu1,i1\n")
    result = run(["produce", str(events)], tmp_path, KAFKA_BOOTSTRAP="127.0.0.1:1", PRODUCER_TIMEOUT_S="3")
    assert_one_line_error(result, "no Kafka broker answers at 127.0.0.1:1")


@pytest.mark.integration
def test_produce_reports_invalid_rows_and_sends_the_rest(settings: Settings, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"user_id": "u1", "item_id": "i1"}\n'
        '{"user_id": "", "item_id": "i2"}\n'
        "not json\n"
        '{"user_id": 7, "item_id": 8, "quantity": 2}\n'
        '{"user_id": "u3", "item_id": "i3", "quantity": -1}\n'
    )
    topic = "cli-produce-test"
    result = run(["produce", str(events), "--rate", "100"], settings.home, TRANSACTIONS_TOPIC=topic)

    assert result.returncode == 0, result.stderr
    assert "sent 2 events to cli-produce-test" in result.stdout and "3 invalid rows" in result.stdout
    for line in (2, 3, 5):
        assert f"line {line}:" in result.stderr
    records = read_all(settings.kafka_bootstrap, topic, 2)
    assert sorted(r.key for r in records) == [b"7", b"u1"]


@pytest.mark.integration
def test_file_without_valid_rows_fails(settings: Settings, tmp_path: Path) -> None:
    events = tmp_path / "bad.csv"
    events.write_text("customerId,products\n,1|2\n")
    result = run(["produce", str(events)], settings.home, TRANSACTIONS_TOPIC="cli-empty-test")
    assert_one_line_error(result, "no valid event to send (1 invalid rows; first: line 2: user_id")


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys, deploy.cli; deploy.cli.build_parser().format_help();"
        "heavy = {'tensorflow', 'faust', 'pandas', 'kafka', 'minio'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.integration
def test_up_status_down_through_the_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"STACK_START_TIMEOUT_S": "60"}
    try:
        up = run(["up", "--infra"], home, **env)
        assert up.returncode == 0, up.stderr
        assert all(part in up.stdout for part in ("objectstore", "broker", "request-broker", "modelserver"))
        status = run(["status", "--json"], home, **env)
        assert status.returncode == 0, status.stderr
        parts = {p["name"]: p for p in json.loads(status.stdout)["parts"]}
        assert all(p["healthy"] and p["managed"] and p["pid"] for p in parts.values())
        again = run(["up", "--infra"], home, **env)  # reuses the running parts
        assert again.returncode == 0 and all(f"pid {p['pid']}" in again.stdout for p in parts.values())
    finally:
        down = run(["down"], home)
    assert down.returncode == 0 and "stopped: modelserver, request-broker, broker, objectstore" in down.stdout
    assert not any(pid_alive(p["pid"]) for p in parts.values())
    after = run(["status"], home)
    assert after.returncode == 1 and after.stdout.count("not running") == 4


def test_up_misuse_and_bad_log_level_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run(["up", "--for", "10"], tmp_path), "--for goes with --demo")
    assert_one_line_error(run(["up", "--infra", "--demo"], tmp_path), "--infra starts only")
    assert_one_line_error(run(["status"], tmp_path, LOG_LEVEL="verbose"), "LOG_LEVEL='VERBOSE'")
