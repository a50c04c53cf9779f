"""`recstream up --demo --for` from an empty home, as a user runs it (what `make run` does).

Empty stack -> seed purchases produced -> ingested -> retrained (RETRAIN_INTERVAL_S=60) ->
activated -> requests answered, none failing, through every swap; then everything stops and
the summary and the report are written; the report is opened in headless Chromium as a person
would look at it. The launch-of-new-products loop is test_closed_loop.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from browser import open_page
from kafka import KafkaConsumer, TopicPartition

from recstream.deploy.console.report import MARKS
from recstream.deploy.console.timeline import Run, load_run
from recstream.deploy.local.processes import pid_alive
from recstream.stream.contracts.alerts import parse_drift_alert
from recstream.stream.registry import ModelRegistry
from recstream.stream.settings import ENV_NAMES, load_settings
from recstream.stream.storage import make_client

pytestmark = pytest.mark.e2e

RUN_S = 150  # the first version is active about 105 s in on a loaded machine, the second at 165


def test_up_demo_turns_the_loop_and_stops_cleanly(tmp_path: Path, seed_file: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env |= {"RECSTREAM_HOME": str(home), "LOG_LEVEL": "INFO"}
    env |= {f"{name}_METRICS_PORT": "0" for name in ("INGEST", "SCORER", "UPDATER", "SCHEDULER")}
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recstream.deploy.cli",
                "up",
                "--demo",
                "--for",
                str(RUN_S),
                "--seed",
                str(seed_file),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        code = proc.wait(timeout=RUN_S + 240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"up --demo did not end: {log.read_text()[-3000:]}")
    output = log.read_text()
    assert code == 0, output[-3000:]

    summary = json.loads((home / "demo-summary.json").read_text())
    assert summary["events_produced"] > 10_000
    assert 0.8 * summary["events_produced"] < summary["events_ingested"] <= summary["events_produced"]
    assert summary["versions_activated"] >= 1, summary
    assert summary["recommendations_served"] > 200 and summary["request_errors"] == 0, summary
    assert 0.05 < summary["hit_rate"] < 1

    # The timeline of the run, and its report beside the summary.
    run = load_run(home / "timeline.jsonl")
    assert run.end - run.start >= RUN_S - 5 and len(run.samples) >= 10  # sampled until the end
    assert {k: v for k, v in run.summary.items() if k not in ("kind", "t")} == summary
    assert max(s.get("ingested", 0) for s in run.samples) > 0
    assert any(s.get("requests_per_s", 0) > 0 for s in run.samples)
    assert any(s.get("active") is not None for s in run.samples)
    report = home / "report.html"
    assert f"report written to {report}" in output
    _check_report_in_a_browser(report, run, tmp_path / "chromium")

    # Everything it started is gone: services, broker, object store, model server.
    state = json.loads((home / "run" / "stack.json").read_text())
    assert not any(pid_alive(entry.get("pid")) for entry in state.values() if isinstance(entry, dict))
    assert not (home / "run" / "services.json").exists()

    # Bring the infrastructure back to check what the loop left in it.
    subprocess.run(
        [sys.executable, "-m", "recstream.deploy.cli", "up", "--infra"],
        env=env,
        check=True,
        capture_output=True,
    )
    try:
        settings = load_settings({"RECSTREAM_HOME": str(home)}, environ={})
        registry = ModelRegistry(make_client(settings), settings.models_bucket, settings.model_name)
        state = registry.state()
        activated = [e.version for e in state.events if e.event == "activated"]
        # The summary and the timeline are taken while the services run: a version activated between
        # them and the stop is in the registry only (one run: 3 activated, 2 in the summary).
        assert 1 <= summary["versions_activated"] <= len(activated) and state.active == activated[-1]
        timeline = [m["version"] for m in run.models if m["event"] == "activated"]
        assert timeline == activated[: len(timeline)] and len(timeline) >= summary["versions_activated"]
        alerts = _records(settings.kafka_bootstrap, settings.drift_alerts_topic)
        assert all(parse_drift_alert(value).model_version in activated for value in alerts)
    finally:
        subprocess.run(
            [sys.executable, "-m", "recstream.deploy.cli", "down"], env=env, check=True, capture_output=True
        )


def _check_report_in_a_browser(report: Path, run: Run, profile: Path) -> None:
    """Drawn without a console message or the page's own error box: six aligned plots, a vertical
    line across them and a label for each activation and each alert, a table row per version."""
    dom, console = open_page(report, profile)
    assert console == [], console
    assert '<div id="report-errors" hidden=""></div>' in dom, re.findall(
        r'<div id="report-errors".*?</div>', dom
    )
    assert re.findall(r'<g class="subplot (\w+)"', dom) == ["xy", "x2y2", "x3y3", "x4y4", "x5y5", "x6y6"]
    assert len(re.findall(r'class="js-line"', dom)) >= 6  # the series are drawn
    activated = [m["version"] for m in run.models if m["event"] == "activated"]
    labels = re.findall(r'class="annotation-text"[^>]*data-unformatted="([^"]*)"', dom)
    assert [label for label in labels if re.fullmatch(r"v\d+", label)] == [f"v{v}" for v in activated]
    assert len([label for label in labels if label.startswith("alert ")]) == len(run.alerts)
    lines = _vertical_lines(dom)
    assert lines.count(_rgb(MARKS["activated"][0])) == len(activated) >= 1, lines
    assert lines.count(_rgb(MARKS["alert"][0])) == len(run.alerts), lines
    for version in activated:
        assert f'<tr data-version="{version}">' in dom


def _vertical_lines(dom: str) -> list[str]:
    """The colour of each line shape drawn from the top of the figure to its bottom."""
    shapes = re.findall(
        r'<path data-index="\d+" fill-rule="evenodd" d="M([\d.]+),([\d.]+)L([\d.]+),([\d.]+)" '
        r'style="[^"]*?stroke: (rgb\([^)]*\))',
        dom,
    )
    return [colour for x0, y0, x1, y1, colour in shapes if x0 == x1 and abs(float(y0) - float(y1)) > 1000]


def _rgb(colour: str) -> str:
    return "rgb({}, {}, {})".format(*(int(colour[i : i + 2], 16) for i in (1, 3, 5)))


def _records(bootstrap: str, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        values, idle = [], 0
        while idle < 3:
            batch = consumer.poll(timeout_ms=1000)
            idle = 0 if batch else idle + 1
            values += [r.value for records in batch.values() for r in records]
        return values
    finally:
        consumer.close()
