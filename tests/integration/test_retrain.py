"""Retrain on the real stack: seed slices streamed through ingest, then versions in the registry.

One chain, because each step needs the previous one: a first version from a seed slice, a
deliberately worse candidate refused by the gate, and a second version warm-started from
the first once more (new) data has landed, trained by the pipeline's steps after a drift.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from ingest_helpers import Worker, stored_rows, wait_for

from recstream.retrain.job import NotEnoughData, retrain_once
from recstream.retrain.steps import data_step, publish_step, train_step
from recstream.stream.contracts.model_events import ACTIVATED, ModelEvent, parse_model_event
from recstream.stream.produce import produce_file
from recstream.stream.producer import EventProducer
from recstream.stream.registry import ModelRegistry
from recstream.stream.settings import Settings
from recstream.stream.storage import ensure_buckets, make_client

pytestmark = pytest.mark.integration

# Seed rows (customers' baskets) per slice: about 50,000 and 25,000 purchases. Much smaller
# slices favour popularity.
FIRST_ROWS, SECOND_ROWS = 15000, 7500


def seed_slice(seed: Path, start: int, rows: int, out: Path) -> Path:
    lines = seed.read_text().splitlines()
    out.write_text("\n".join([lines[0], *lines[1 + start : 1 + start + rows]]) + "\n")
    return out


@pytest.fixture
def retrain_settings(settings: Settings, fresh_topic: str) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    bucket = f"retrain-{suffix}"
    ensure_buckets(make_client(settings), [bucket])
    return dataclasses.replace(
        settings,
        transactions_topic=fresh_topic,
        data_bucket=bucket,
        model_name=f"rec-{suffix}",
        topic_partitions=3,
        retrain_min_users=50,
    )


def land(settings: Settings, path: Path, log: Path) -> int:
    """Stream a file through `recstream ingest` until every event is in the store."""
    with EventProducer(settings) as producer:
        sent = produce_file(producer, path).sent
    worker = Worker(settings, log)
    try:
        before = len(stored_rows(settings))  # rows landed by earlier slices
        wait_for(lambda: len(stored_rows(settings)) >= before + sent, 180, worker, "landed rows")
    finally:
        worker.kill()
    return sent


def call_signatures(version_dir: Path, users: list[str]) -> dict:
    """Call the exported SavedModel from a separate process, as a consumer outside the project would."""
    script = """
import json, sys
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
users = json.loads(sys.argv[2])
out = model.signatures["serving_default"](user_id=tf.constant(users), k=tf.constant(5, tf.int32))
products = tf.constant(["no-such-item"] * len(users))
score = model.signatures["score"](users=tf.constant(users), products=products)
print(json.dumps({
    "items": [[i.decode() for i in row] for row in out["items"].numpy()],
    "scores": out["scores"].numpy().tolist(),
    "model_version": int(out["model_version"].numpy()),
    "score": score["scores"].numpy().tolist(),
}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(version_dir), json.dumps(users)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_stream_to_versions_gate_and_warm_start(
    retrain_settings: Settings, seed_file: Path, tmp_path: Path
) -> None:
    s = retrain_settings
    registry = ModelRegistry(make_client(s), s.models_bucket, s.model_name)

    with pytest.raises(NotEnoughData, match="too little data"):
        retrain_once(s)  # nothing landed yet
    assert registry.state().events == []

    land(s, seed_slice(seed_file, 0, FIRST_ROWS, tmp_path / "first.csv"), tmp_path / "ingest-1.log")
    epochs: list[int] = []
    first = retrain_once(s, progress=lambda epoch, epochs_total, logs: epochs.append(epoch))
    assert first.event == "published" and first.version == 1, first.reason
    assert epochs and epochs == sorted(epochs)
    metrics = first.metrics
    assert metrics["candidate"]["hr"] > metrics["popularity"]["hr"]

    version_dir = registry.download_version(1, tmp_path / "v1")
    meta = json.loads((version_dir / "metadata.json").read_text())
    assert meta["version"] == 1 and meta["parent_version"] is None
    assert meta["metrics"]["candidate"]["hr"] == metrics["candidate"]["hr"]
    assert meta["reference"]["item_share"] and meta["counts"]["holdout_users"] >= 50
    # Everything landed within RETRAIN_RECENT_S: the recent holdout is the whole one.
    assert meta["counts"]["recent_holdout_users"] == meta["counts"]["holdout_users"]
    assert meta["holdouts"]["whole"]["candidate"] == meta["metrics"]["candidate"]
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0
    known = next(iter(meta["reference"]["item_share"]))  # any item id works for the score call
    assert known
    answers = call_signatures(version_dir, ["no-such-customer", "another-stranger"])
    assert answers["model_version"] == 1
    assert answers["items"][0] == answers["items"][1]  # both get the popularity fallback
    assert len(answers["items"][0]) == 5 and len(set(answers["items"][0])) == 5
    assert all(isinstance(x, float) for row in answers["scores"] for x in row)

    # The updater would activate it; the next run warm-starts from the active version.
    registry.record(ModelEvent(ACTIVATED, s.model_name, 1))

    from recstream.retrain import cf_model as model

    # Untrained, and shaped differently so nothing is warm-started: worse than popularity.
    worse = retrain_once(s, params=dataclasses.replace(model.Params(), epochs=0, hidden=8))
    assert worse.event == "rejected" and worse.version == 2
    assert "gate:" in worse.reason
    assert registry.state().status[2] == "rejected"

    # As if a concept drift started with the second slice (its purchases' ts are their send times),
    # retrained as the pipeline's steps do (`recstream retrain --step data --drift-from TS`).
    drift_from = time.time()
    land(
        s, seed_slice(seed_file, FIRST_ROWS, SECOND_ROWS, tmp_path / "second.csv"), tmp_path / "ingest-2.log"
    )
    data_step(s, "drifted", drift_from=drift_from)
    train_step(s, "drifted")
    second = publish_step(s, "drifted")
    assert second.event == "published" and second.version == 3, second.reason
    meta2 = registry.metadata(3)
    assert meta2["parent_version"] == 1
    # Judged on the customers of the new regime (the second slice's), the whole holdout kept beside.
    recent, whole = meta2["counts"]["recent_holdout_users"], meta2["counts"]["holdout_users"]
    assert 50 <= recent < whole and meta2["metrics"]["candidate"]["users"] == recent
    assert meta2["holdouts"]["recent"]["candidate"] == meta2["metrics"]["candidate"]
    assert meta2["holdouts"]["whole"]["candidate"]["users"] == whole
    assert set(meta2["holdouts"]["whole"]) == {"candidate", "popularity", "active", "fallback"}
    assert meta2["window"]["recency"]["drift_from"] == drift_from
    assert meta2["counts"]["users"] > meta["counts"]["users"]  # the vocabulary grew with the stream
    assert "active" in meta2["metrics"]

    events = [parse_model_event(r.value) for r in read_updates(s)]
    assert [(e.event, e.version) for e in events] == [("published", 1), ("rejected", 2), ("published", 3)]


def read_updates(settings: Settings):
    from kafka_helpers import read_all

    return [
        r
        for r in read_all(settings.kafka_bootstrap, settings.model_updates_topic, 10_000, timeout_s=5)
        if json.loads(r.value).get("model") == settings.model_name
    ]
