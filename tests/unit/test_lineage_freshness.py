"""Pure logic of lineage and freshness: offset ranges, the metadata/event shapes, the version
history's statuses, the staleness gauge, and the demo's purchase-to-served median."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import REGISTRY

from recstream.deploy.console.observe import median_purchase_to_served
from recstream.deploy.console.tables import format_history
from recstream.retrain import lineage
from recstream.stream.contracts.metadata import newest_event_ts
from recstream.stream.contracts.model_events import ACTIVATED, PUBLISHED, REJECTED, ROLLED_BACK, ModelEvent
from recstream.stream.registry import RegistryState, version_history
from recstream.updater import metrics


def test_offset_ranges_are_sorted_disjoint_runs() -> None:
    assert lineage.offset_ranges([]) == []
    assert lineage.offset_ranges([12, 5, 3, 4, 9, 10, 4]) == [[3, 5], [9, 10], [12, 12]]
    assert lineage.offset_ranges(np.arange(1_000_000, 1_000_005)) == [[1_000_000, 1_000_004]]


def test_partition_ranges_and_membership_round_trip() -> None:
    frame = pd.DataFrame({"partition": [1, 0, 0, 1, 0, 2], "offset": [7, 0, 1, 9, 3, 0], "ts": 0.0})
    ranges = lineage.partition_ranges(frame)
    assert ranges == {"0": [[0, 1], [3, 3]], "1": [[7, 7], [9, 9]], "2": [[0, 0]]}
    partitions = np.array([0, 0, 0, 1, 1, 2, 3])
    offsets = np.array([1, 2, 3, 8, 9, 0, 0])
    assert lineage.in_ranges(partitions, offsets, ranges).tolist() == [
        True,
        False,
        True,
        False,
        True,
        True,
        False,
    ]
    assert lineage.partition_ranges(frame.iloc[:0]) == {}


def test_digest_is_of_the_sorted_names() -> None:
    assert lineage.digest(["b", "a"]) == lineage.digest(["a", "b"]) != lineage.digest(["a"])
    assert lineage.digest([]).startswith("sha256:")


def test_attach_moves_the_window_lineage_and_joins_the_training_part() -> None:
    records = {"topic": "t", "partitions": {"0": [[0, 9]]}, "records": 10, "newest_event_ts": 5.0}
    meta = lineage.attach(
        {
            "parent_version": 3,
            "parameters": {"seed": 7, "epochs": 2},
            "window": {"events": 10, "lineage": records},
            "lineage": {"code": {"commit": None}, "determinism": {"op_determinism": True}},
        }
    )
    assert "lineage" not in meta["window"] and meta["window"]["events"] == 10
    assert meta["lineage"]["partitions"] == {"0": [[0, 9]]} and meta["lineage"]["seed"] == 7
    assert meta["lineage"]["parent_version"] == 3 and meta["lineage"]["determinism"]["op_determinism"]
    assert newest_event_ts(meta) == 5.0
    assert newest_event_ts({"window": {"last_ts": 4.0}}) == 4.0  # a version made before lineage


def test_event_lineage_leaves_too_many_ranges_to_metadata() -> None:
    small = {"partitions": {"0": [[0, 1]]}, "records": 2}
    assert lineage.for_event(small) == small
    many = {"partitions": {"0": [[i * 2, i * 2] for i in range(10_000)]}, "records": 10_000}
    cut = lineage.for_event(many)
    assert cut["partitions"] is None and cut["partitions_in"] == "metadata.json"
    assert cut["records"] == 10_000


def test_git_commit_of_the_checkout_and_outside_one(tmp_path: Path) -> None:
    found = lineage.git_commit()
    assert found["commit"] is not None and len(found["commit"]) == 40  # the tests run from the checkout
    assert lineage.git_commit(tmp_path) == {"commit": None, "dirty": None}  # no failure without git
    versions = lineage.code_versions()
    assert set(versions["libraries"]) == set(lineage.LIBRARIES) and versions["libraries"]["pandas"]


def _sample(name: str, model: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"model": model})


def test_staleness_rises_until_an_activation_and_drops_after_it() -> None:
    model = "freshness-unit"
    assert metrics.activated(model, None, time.time()) is None  # unknown freshness: nothing set
    assert _sample("recstream_updater_served_staleness_seconds", model) is None
    metrics.served(model, time.time() - 1000)
    first = _sample("recstream_updater_served_staleness_seconds", model)
    time.sleep(0.05)
    later = _sample("recstream_updater_served_staleness_seconds", model)
    assert 1000 <= first < later  # no retrain: the served model only gets older
    count = _sample("recstream_updater_event_to_activation_seconds_count", model) or 0
    now = time.time()
    assert metrics.activated(model, now - 30, now) == 30
    assert _sample("recstream_updater_served_staleness_seconds", model) < 100  # fresh again
    assert _sample("recstream_updater_event_to_activation_seconds_count", model) == count + 1
    assert _sample("recstream_updater_last_event_to_activation_seconds", model) == 30
    assert _sample("recstream_updater_served_newest_event_timestamp_seconds", model) == now - 30


def test_median_purchase_to_served_counts_each_purchase_once() -> None:
    # activation at 200 learnt up to 180, at 100 up to 90 (given out of order)
    activations = [[200.0, 180.0], [100.0, 90.0]]
    # 50 -> served at 100 (50 s), 95 -> 200 (105 s), 150 -> 200 (50 s), 185 -> never served
    assert median_purchase_to_served(activations, [50.0, 95.0, 150.0, 185.0]) == 50.0
    assert median_purchase_to_served([], [1.0]) is None
    assert median_purchase_to_served(activations, [500.0]) is None
    # a rollback to an older version serves nothing newer: the later activation's coverage counts
    assert median_purchase_to_served([[100.0, 90.0], [150.0, 40.0], [300.0, 200.0]], [95.0]) == 205.0


class _Registry:
    """The two reads version_history makes, from events and metadata given in the test."""

    def __init__(self, state: RegistryState, metadata: dict[int, dict[str, Any]]) -> None:
        self._state, self._metadata = state, metadata

    def state(self) -> RegistryState:
        return self._state

    def metadata(self, version: int) -> dict[str, Any]:
        return self._metadata[version]


def test_version_history_statuses_reasons_and_figures() -> None:
    state = RegistryState("m")
    records = {
        "topic": "transactions",
        "partitions": {"0": [[0, 99]]},
        "records": 100,
        "newest_event_ts": 50.0,
    }
    flat = {"hr@10": 0.2, "popularity_hr@10": 0.1, "holdout_users": 80}
    state.apply(ModelEvent(PUBLISHED, "m", 1, flat, ts=60.0), records)
    state.apply(ModelEvent(ACTIVATED, "m", 1, ts=70.0))
    state.apply(
        ModelEvent(REJECTED, "m", 2, {**flat, "active_hr@10": 0.3}, reason="gate: worse", ts=80.0), records
    )
    state.apply(ModelEvent(PUBLISHED, "m", 3, flat, ts=90.0), records)
    state.apply(ModelEvent(ACTIVATED, "m", 3, ts=95.0))
    state.apply(ModelEvent(ROLLED_BACK, "m", 3, to=1, ts=99.0))
    meta = {
        "created": 59.0,
        "parent_version": None,
        "window": {"events": 100, "first_ts": 1.0, "last_ts": 50.0, "recency": {}},
        "metrics": {
            "candidate": {"hr": 0.2, "ndcg": 0.1, "users": 80, "k": 10},
            "popularity": {"hr": 0.1, "ndcg": 0.05, "users": 80, "k": 10},
        },
        "lineage": {**records, "parent_version": None, "code": {"commit": "a" * 40, "recstream": "0.1.0"}},
    }
    history = version_history(_Registry(state, {1: meta, 3: {**meta, "parent_version": 1}}))
    by = {row["version"]: row for row in history}
    assert [row["version"] for row in history] == [1, 2, 3]
    assert by[1]["status"] == "active" and by[1]["reason"] is None
    assert [a["event_to_activation_s"] for a in by[1]["activations"]] == [
        20.0,
        49.0,
    ]  # activated, rolled back to
    assert by[1]["offsets"] == {"0": [[0, 99]]} and by[1]["window"] == {
        "events": 100,
        "first_ts": 1.0,
        "last_ts": 50.0,
    }
    assert by[1]["hr@10"]["hr@10"] == 0.2 and by[1]["hr@10"]["popularity_hr@10"] == 0.1
    assert by[2]["status"] == REJECTED and by[2]["reason"] == "gate: worse"
    assert by[2]["hr@10"]["parent_hr@10"] == 0.3 and by[2]["lineage"] == records  # from the event object
    assert by[3]["status"] == ROLLED_BACK and by[3]["reason"] == "rolled back to version 1"
    assert by[3]["parent_version"] == 1
    json.dumps(history)  # --json prints it as it is
    text = "\n".join(format_history(history))
    assert "v1" in text and "gate: worse" in text and "p0 0-99" in text and "aaaaaaaaaaaa" in text
