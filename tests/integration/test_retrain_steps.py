"""The Kubeflow pipeline's steps, `recstream retrain --step data|train|publish --run-id ID`, on the stack.

The steps run one after another in this process, handing over only through the object store as
they do in separate pods. Data is a seed slice landed directly as Parquet (ingest's Lander), and
the model is small (few epochs), so the chain stays cheap. It checks that the steps publish the
same kind of version as one-shot retrain, stamp it with the number it is published as even when
that number was taken meanwhile, reject like one-shot does, and leave no run objects behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from recstream.ingest.encoding import encode
from recstream.ingest.landing import Backoff, Lander
from recstream.retrain import cf_model
from recstream.retrain.dataset import read_seed
from recstream.retrain.job import NotEnoughData, retrain_once
from recstream.retrain.steps import (
    OUTCOME,
    MissingStepOutput,
    RunObjects,
    data_step,
    publish_step,
    train_step,
)
from recstream.retrain.tune import TRIALS
from recstream.stream.contracts.model_events import ACTIVATED, REJECTED, ModelEvent, parse_model_event
from recstream.stream.contracts.records import Transaction
from recstream.stream.registry import ModelRegistry
from recstream.stream.settings import Settings
from recstream.stream.storage import ensure_buckets, make_client

SEED_ROWS = 5000  # customers' baskets: ~17,800 events, ~1,900 held-out users
TUNE_ROWS = 2500  # five trainings (four trials, then the chosen one): half the data, half the time
PARAMS = dataclasses.replace(cf_model.Params(), epochs=3, hidden=64)
RECSTREAM = [sys.executable, "-m", "recstream.deploy.cli"]


@pytest.fixture
def step_settings(settings: Settings) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    bucket = f"steps-{suffix}"
    ensure_buckets(make_client(settings), [bucket])
    return dataclasses.replace(
        settings,
        data_bucket=bucket,
        model_name=f"steps-{suffix}",
        retrain_min_users=50,
        gate_tolerance=0.05,  # the gate is not under test here; warm-started runs must pass it
    )


def land_seed(settings: Settings, seed: Path, rows: int, tmp_path: Path) -> int:
    """The first `rows` rows of the seed, landed as one batch of partition 0 with recent times."""
    lines = seed.read_text().splitlines()
    part = tmp_path / "seed-slice.csv"
    part.write_text("\n".join(lines[: 1 + rows]) + "\n")
    frame = read_seed(part)
    start = time.time() - len(frame)
    records = [
        (offset, None, Transaction(row.event_id, row.user_id, row.item_id, 1, start + offset).to_json(), None)
        for offset, row in enumerate(frame.itertuples(index=False))
    ]
    batch = encode("steps-test", 0, records, max_future_s=3600)
    assert batch.rows == len(frame)
    Lander(make_client(settings), settings.data_bucket, "steps-test", Backoff()).land(batch)
    return len(frame)


def stamp(version_dir: Path) -> int:
    """The model_version the exported graph answers with."""
    import tensorflow as tf

    model = tf.saved_model.load(str(version_dir))
    out = model.signatures["serving_default"](user_id=tf.constant(["nobody"]), k=tf.constant(3, tf.int32))
    return int(out["model_version"].numpy())


def cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RECSTREAM_HOME": str(settings.home),
        "DATA_BUCKET": settings.data_bucket,
        "MODELS_BUCKET": settings.models_bucket,
        "MODEL_NAME": settings.model_name,
        "RETRAIN_MIN_USERS": str(settings.retrain_min_users),
    }
    return subprocess.run(RECSTREAM + list(args), env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--step", "data"], "--step needs --run-id"),
        (["--run-id", "abc"], "--run-id needs --step"),
        (["--step", "deploy", "--run-id", "abc"], "invalid choice: 'deploy'"),
        (["--step", "data", "--run-id", "../other-model"], "is not a run id"),
        (
            ["--tune", "--step", "data", "--run-id", "abc"],
            "--tune goes with one-shot retrain or --step train",
        ),
        (["--tune-budget", "60"], "--tune-budget goes with --tune"),
        (["--tune", "--tune-budget", "0"], "--tune-budget"),
        (["--tune", "--rebuild", "3"], "--rebuild goes alone"),
    ],
)
def test_step_misuse_is_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from recstream.deploy.cli import main

    monkeypatch.setenv("RECSTREAM_HOME", "/nonexistent-recstream-home")
    with pytest.raises(SystemExit) as exit_info:
        main(["retrain", *args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.integration
def test_steps_publish_like_one_shot_retrain(
    step_settings: Settings, seed_file: Path, tmp_path: Path
) -> None:
    s = step_settings
    registry = ModelRegistry(make_client(s), s.models_bucket, s.model_name)
    run_a, run_b, run_c = (f"run-{uuid.uuid4()}" for _ in range(3))

    # Each step needs its predecessor's output, and says which step to run first.
    with pytest.raises(MissingStepOutput, match=f"--step data --run-id {run_a}"):
        train_step(s, run_a)
    with pytest.raises(MissingStepOutput, match=f"--step train --run-id {run_a}"):
        publish_step(s, run_a)
    with pytest.raises(NotEnoughData, match="too little data"):
        data_step(s, run_a)  # nothing landed yet
    missing = cli(s, "retrain", "--step", "publish", "--run-id", run_a)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert [line for line in missing.stderr.splitlines() if line.strip()] == [
        f"recstream: run {run_a} has no output of the train step ({s.models_bucket}/{s.model_name}/_runs/"
        f"{run_a}/candidate.json is missing): run `recstream retrain --step train --run-id {run_a}` first"
    ]

    events = land_seed(s, seed_file, SEED_ROWS, tmp_path)

    # One-shot retrain makes version 1; the updater would activate it.
    first = retrain_once(s, params=PARAMS)
    assert (first.event, first.version) == ("published", 1), first.reason
    registry.record(ModelEvent(ACTIVATED, s.model_name, 1))

    # The three steps make version 2, warm-started from (and compared with) version 1.
    data = cli(s, "retrain", "--step", "data", "--run-id", run_a)  # the data step as the pipeline runs it
    assert data.returncode == 0, data.stderr
    assert f"data of run {run_a}: {events:,} events" in data.stdout
    run = RunObjects.of(s, run_a)
    assert run.names() == ["data.json", "data/test.parquet", "data/train.parquet"]
    epochs: list[int] = []
    trained = train_step(s, run_a, progress=lambda epoch, total, logs: epochs.append(epoch), params=PARAMS)
    assert epochs == [1, 2, 3] and trained.provisional_version == 2
    assert {"candidate.json", "candidate/saved_model.pb", "candidate/metadata.json"} <= set(run.names())
    assert registry.state().events[-1].event == ACTIVATED  # nothing announced before publish
    second = publish_step(s, run_a)
    assert (second.event, second.version) == ("published", 2), second.reason
    assert run.names() == []  # the run's objects are gone

    meta1, meta2 = registry.metadata(1), registry.metadata(2)
    assert set(meta2) == set(meta1)  # the same kind of version as one-shot retrain
    assert (meta1["parent_version"], meta2["parent_version"]) == (None, 1)
    assert meta2["version"] == 2 and meta2["metrics"] == second.metrics
    assert set(meta2["metrics"]) == {"candidate", "popularity", "active"}
    assert meta2["counts"] == meta1["counts"] and meta2["parameters"] == meta1["parameters"]
    assert meta2["window"]["events"] == events and meta2["reference"]["item_share"]
    assert {"data", "prepare", "train", "evaluate"} <= set(meta2["seconds"])
    assert registry.state().status[2] == "published" and registry.state().metrics[2]["hr@10"] > 0
    assert stamp(registry.download_version(2, tmp_path / "v2")) == 2

    # Number 3 is taken between train and publish (by another run): the candidate becomes version 4.
    data_step(s, run_b)
    assert train_step(s, run_b, params=dataclasses.replace(PARAMS, epochs=1)).provisional_version == 3
    registry.record(ModelEvent(REJECTED, s.model_name, 3, reason="taken by a concurrent run"))
    third = publish_step(s, run_b)
    assert (third.event, third.version) == ("published", 4), third.reason
    assert registry.metadata(4)["version"] == 4 and registry.metadata(4)["parent_version"] == 1
    assert stamp(registry.download_version(4, tmp_path / "v4")) == 4
    assert RunObjects.of(s, run_b).names() == []

    # A candidate the gate refuses: `rejected` with the reason, no version directory, run cleaned up.
    data_step(s, run_c)
    train_step(s, run_c, params=dataclasses.replace(PARAMS, epochs=0, hidden=8))  # untrained
    refused = publish_step(s, run_c)
    assert (refused.event, refused.version) == ("rejected", 5) and refused.reason.startswith("gate: ")
    assert registry.state().status[5] == "rejected"
    assert not list(make_client(s).list_objects(s.models_bucket, registry.prefix(5)))
    assert RunObjects.of(s, run_c).names() == []

    # A publish retried after it announced (stopped while cleaning up) only finishes the clean-up;
    # one that stopped before announcing publishes afresh (here: there is nothing to publish).
    leftover = RunObjects.of(s, run_c)
    leftover.put_json(OUTCOME, dataclasses.asdict(refused))
    leftover.put_json("data.json", {})
    assert publish_step(s, run_c) == refused
    assert leftover.names() == []
    leftover.put_json(OUTCOME, dataclasses.asdict(dataclasses.replace(refused, version=77)))
    with pytest.raises(MissingStepOutput, match="no output of the train step"):
        publish_step(s, run_c)
    assert leftover.names() == []

    announced = [
        (e.event, e.version)
        for e in (parse_model_event(r) for r in read_updates(s))
        if e.model == s.model_name
    ]
    assert announced == [("published", 1), ("published", 2), ("published", 4), ("rejected", 5)]


def read_updates(settings: Settings) -> list[bytes]:
    from kafka_helpers import read_all

    return [
        r.value
        for r in read_all(settings.kafka_bootstrap, settings.model_updates_topic, 10_000, timeout_s=5)
        if json.loads(r.value).get("model") == settings.model_name
    ]


@pytest.mark.integration
def test_the_train_step_tunes_on_the_validation_split(
    step_settings: Settings, seed_file: Path, tmp_path: Path
) -> None:
    """`--tune` tries every configuration, keeps the best on validation, and says so in metadata.json."""
    s = step_settings
    land_seed(s, seed_file, TUNE_ROWS, tmp_path)
    run_id = f"run-{uuid.uuid4()}"
    data_step(s, run_id)
    tuned = cli(s, "retrain", "--step", "train", "--run-id", run_id, "--tune", timeout=900)
    assert tuned.returncode == 0, tuned.stderr
    lines = [line for line in tuned.stderr.splitlines() if line.startswith("trial ")]
    assert len(lines) == len(TRIALS) and lines[0].startswith(
        f"trial 1/{len(TRIALS)} (defaults): validation HR@10"
    )

    meta = RunObjects.of(s, run_id).get_json("candidate/metadata.json")
    tuning = meta["tuning"]
    assert [t["changes"] for t in tuning["trials"]] == list(TRIALS) and tuning["skipped"] == 0
    assert all(0 < t["hr"] <= 1 and t["epochs"] >= 1 for t in tuning["trials"])
    best = max(range(len(TRIALS)), key=lambda i: (tuning["trials"][i]["hr"], tuning["trials"][i]["ndcg"]))
    assert tuning["chosen"] == TRIALS[best] and lines[best].endswith("<- best so far")
    assert meta["parameters"] == dataclasses.replace(cf_model.Params(), **TRIALS[best]).as_dict()
    assert tuning["validation_users"] >= s.retrain_min_users and tuning["budget_s"] is None
    assert {"tune", "train"} <= set(meta["seconds"])
