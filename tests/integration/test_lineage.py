"""Lineage on the real stack: a version names the Kafka records it learnt from, `recstream versions`
shows it, and `recstream retrain --rebuild` trains it again from exactly those records.

One chain (each step needs the previous one's version): a seed slice and one invalid record (a
dead letter: a hole in the offsets) streamed through `recstream ingest`; a version; its offsets
against what the topic holds; `versions --json`; a rebuild (in this process: a fresh one would
pay TensorFlow's start again; `recstream retrain --rebuild` is the same function); misuse.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from ingest_helpers import Worker, stored_rows, wait_for
from kafka import KafkaProducer
from kafka_helpers import create_topic, read_all
from prometheus_client import REGISTRY

from recstream.retrain.cf_model import Params
from recstream.retrain.job import retrain_once
from recstream.retrain.lineage import digest, offset_ranges
from recstream.retrain.rebuild import rebuild
from recstream.stream.produce import produce_file
from recstream.stream.producer import EventProducer
from recstream.stream.registry import ModelRegistry
from recstream.stream.settings import Settings
from recstream.stream.storage import ensure_buckets, make_client
from recstream.updater.core import Updater

pytestmark = pytest.mark.integration

SEED_ROWS = 1600  # customers' baskets: about 5,500 purchases
PARAMS = Params(epochs=2)
# How close a rebuild comes (README): measured identical on this machine (op determinism, same
# seed, same records); the tolerance allows for another CPU's kernels.
REBUILD_HR_TOLERANCE = 0.005


@pytest.fixture
def lineage_settings(settings: Settings, fresh_topic: str) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    bucket = f"lineage-{suffix}"
    ensure_buckets(make_client(settings), [bucket])
    return dataclasses.replace(
        settings,
        transactions_topic=fresh_topic,
        data_bucket=bucket,
        model_name=f"lin-{suffix}",
        model_updates_topic=create_topic(
            settings.kafka_bootstrap, f"model-updates-lin-{suffix}", partitions=1
        ),
        topic_partitions=3,
        retrain_min_users=50,
        # a shared 2-core machine under load: the activation's validation and load may be slow
        updater_load_timeout_s=600.0,
        updater_validate_timeout_s=600.0,
    )


# `recstream` run by main(), then a check that TensorFlow was never imported.
NO_TENSORFLOW = (
    "import sys\nfrom deploy.cli import main\ncode = main(sys.argv[1:])\n"
    "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\nsys.exit(code)"
)


def cli(settings: Settings, *args: str, python: str | None = None) -> subprocess.CompletedProcess[str]:
    """`recstream ARGS` in a fresh process, on the test's topic, bucket and model."""
    env = {
        **os.environ,
        "RECSTREAM_HOME": str(settings.home),
        "TRANSACTIONS_TOPIC": settings.transactions_topic,
        "MODEL_UPDATES_TOPIC": settings.model_updates_topic,
        "MODEL_NAME": settings.model_name,
        "DATA_BUCKET": settings.data_bucket,
        "RETRAIN_MIN_USERS": str(settings.retrain_min_users),
    }
    return subprocess.run(
        [sys.executable, *(["-c", python] if python else ["-m", "recstream.deploy.cli"]), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_versions_name_their_records_and_rebuild_reproduces_them(
    lineage_settings: Settings, seed_file: Path, tmp_path: Path
) -> None:
    s = lineage_settings
    lines = seed_file.read_text().splitlines()
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text("\n".join(lines[: 1 + SEED_ROWS // 2]) + "\n")
    second.write_text("\n".join([lines[0], *lines[1 + SEED_ROWS // 2 : 1 + SEED_ROWS]]) + "\n")
    registry = ModelRegistry(make_client(s), s.models_bucket, s.model_name)
    updater = Updater(s)
    worker = Worker(s, tmp_path / "ingest.log")
    try:
        with EventProducer(s) as producer:
            sent = produce_file(producer, first).sent
        wait_for(lambda: len(stored_rows(s)) >= sent, 180, worker, "landed rows")
        v1 = retrain_once(s, params=PARAMS)
        assert v1.event == "published", v1.reason
        activated = updater.process(v1.version)  # the real model server loads it
        assert activated is not None and activated.event == "activated"
        newest_v1 = registry.metadata(v1.version)["lineage"]["newest_event_ts"]
        assert activated.metrics["newest_event_ts"] == newest_v1
        assert 0 < activated.metrics["event_to_activation_s"] <= activated.ts - newest_v1 + 1e-3
        stale_v1 = staleness(s)
        assert stale_v1 >= activated.ts - newest_v1

        # More purchases, one of them invalid (a dead letter: a hole in partition 0's offsets).
        raw = KafkaProducer(bootstrap_servers=s.kafka_bootstrap)
        bad = raw.send(s.transactions_topic, b'{"user_id": ""}', key=b"x", partition=0).get(timeout=30)
        raw.close()
        with EventProducer(s) as producer:
            sent += produce_file(producer, second).sent
        wait_for(lambda: len(stored_rows(s)) >= sent, 180, worker, "landed rows")
    finally:
        worker.kill()
    assert staleness(s) > stale_v1  # no newer version: what is served only gets older
    outcome = retrain_once(s, params=PARAMS)
    assert outcome.event == "published" and outcome.version == v1.version + 1, outcome.reason
    meta = registry.metadata(outcome.version)
    lineage = meta["lineage"]
    updater.served_freshness(outcome.version)  # as an activation of it would (one activation above)
    assert staleness(s) < stale_v1  # it learnt from newer purchases
    updater.close()

    # The offsets are exactly the valid records the topic holds: the dead letter is a hole.
    records = read_all(s.kafka_bootstrap, s.transactions_topic, sent + 1)
    assert len(records) == sent + 1
    held: dict[int, list[int]] = {}
    for record in records:
        if (record.partition, record.offset) != (0, bad.offset):
            held.setdefault(record.partition, []).append(record.offset)
    assert lineage["partitions"] == {str(p): offset_ranges(o) for p, o in sorted(held.items())}
    assert any(a <= bad.offset - 1 and b == bad.offset - 1 for a, b in lineage["partitions"]["0"])
    assert lineage["records"] == sent == meta["window"]["events"]
    assert lineage["topic"] == s.transactions_topic
    landed = sorted(o.object_name for o in make_client(s).list_objects(s.data_bucket, "transactions/", True))
    assert lineage["objects"] == {"count": len(landed), "sha256": digest(landed)}
    assert lineage["newest_event_ts"] == meta["window"]["last_ts"] > newest_v1
    assert lineage["parameters"] == PARAMS.as_dict() and lineage["seed"] == PARAMS.seed
    assert lineage["parent_version"] == v1.version and lineage["rebuild_of"] is None
    assert lineage["code"]["recstream"] and lineage["libraries"]["tensorflow"]
    assert lineage["libraries"]["pandas"] and lineage["libraries"]["pyarrow"]
    assert len(lineage["code"]["commit"]) == 40  # the tests run from the git checkout
    assert lineage["determinism"]["op_determinism"] is True
    assert "lineage" not in meta["window"]
    assert registry.state().lineage[outcome.version]["partitions"] == lineage["partitions"]

    # `recstream versions --json` reads the registry only, and never imports TensorFlow.
    listed = cli(s, "versions", "--json", python=NO_TENSORFLOW)
    assert listed.returncode == 0, listed.stderr
    rows = {row["version"]: row for row in json.loads(listed.stdout)["versions"]}
    assert rows[v1.version]["status"] == "active" and rows[outcome.version]["status"] == "published"
    assert rows[v1.version]["activations"][0]["event_to_activation_s"] == pytest.approx(
        activated.metrics["event_to_activation_s"], abs=1e-3
    )
    row = rows[outcome.version]
    assert row["offsets"] == lineage["partitions"] and row["lineage"]["objects"] == lineage["objects"]
    assert row["window"]["events"] == sent and row["parent_version"] == v1.version
    assert row["hr@10"]["hr@10"] == outcome.metrics["candidate"]["hr"]
    assert row["hr@10"]["popularity_hr@10"] == outcome.metrics["popularity"]["hr"]
    assert row["hr@10"]["parent_hr@10"] == outcome.metrics["active"]["hr"]

    # A rebuild: the same records, window, parent (warm start) and parameters, a new version.
    rebuilt = rebuild(s, outcome.version)
    again = rebuilt.outcome.version
    # Uploaded for comparison but announced `rejected`: no updater serves a model of older data.
    assert rebuilt.outcome.event == "rejected" and again == outcome.version + 1
    assert rebuilt.outcome.reason == f"rebuild of version {outcome.version}"
    rebuilt_meta = registry.metadata(again)
    assert rebuilt_meta["lineage"]["rebuild_of"] == outcome.version
    for key in ("partitions", "records", "objects", "parent_version"):
        assert rebuilt_meta["lineage"][key] == lineage[key], key
    parameters = rebuilt_meta["lineage"]["parameters"]  # a newer Params may add defaults
    assert {key: parameters[key] for key in lineage["parameters"]} == lineage["parameters"]
    for name in ("candidate", "popularity", "active"):
        before, after = meta["metrics"][name], rebuilt_meta["metrics"][name]
        assert before["users"] == after["users"]
        assert abs(before["hr"] - after["hr"]) <= REBUILD_HR_TOLERANCE, (name, before, after)
    assert registry.metadata(outcome.version) == meta  # the old version is untouched

    for args, fragment in (
        (["retrain", "--rebuild", "99"], "no version 99"),
        (["retrain", "--rebuild", "0"], "--rebuild"),
        (["retrain", "--rebuild", "1", "--step", "data", "--run-id", "r1"], "--rebuild goes alone"),
        (["versions", "--all"], "unrecognized arguments"),
    ):
        misuse = cli(s, *args)
        lines = [line for line in misuse.stderr.splitlines() if line.strip()]
        assert misuse.returncode != 0 and len(lines) == 1 and fragment in lines[0], (args, misuse.stderr)


def staleness(settings: Settings) -> float:
    value = REGISTRY.get_sample_value(
        "recstream_updater_served_staleness_seconds", {"model": settings.model_name}
    )
    assert value is not None, "no staleness exported"
    return value
