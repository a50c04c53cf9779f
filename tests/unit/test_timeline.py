"""The timeline file `recstream up` records: bounded, alerts counted once, one file per run."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from recstream.deploy.console import timeline
from recstream.deploy.console.observe import Snapshot
from recstream.stream.settings import load_settings

START = 1_790_000_000.0


def settings_for(home: Path, **env: str):
    return load_settings({"RECSTREAM_HOME": str(home)}, environ=env)


def sample(i: int) -> dict:
    return {"kind": "sample", "t": START + 5 * i, "events_in": 1000 * i, "hit_rate": {"1": 0.2}, "lag": i}


def test_a_long_run_stays_bounded_and_keeps_its_whole_story(tmp_path: Path) -> None:
    path, max_bytes = tmp_path / "timeline.jsonl", 20_000
    timeline.append(path, [{"kind": "run", "t": START, "interval_s": 5}], max_bytes)
    sizes = []
    for i in range(2000):  # ~150 kB of samples through a 20 kB file
        extra = (
            [{"kind": "model", "t": START + 5 * i, "event": "activated", "version": i}]
            if i % 500 == 0
            else []
        )
        timeline.append(path, [sample(i), *extra], max_bytes)
        sizes.append(path.stat().st_size)
    assert max(sizes) <= max_bytes + 200  # over by at most the records of one sample, then thinned
    records = timeline.read_records(path)
    assert records[0] == {"kind": "run", "t": START, "interval_s": 5}
    samples = [r for r in records if r["kind"] == "sample"]
    assert samples[0]["t"] == START and samples[-1]["t"] == START + 5 * 1999  # from start to end
    assert [r["version"] for r in records if r["kind"] == "model"] == [0, 500, 1000, 1500]  # every event
    steps = {round(b["t"] - a["t"]) for a, b in itertools.pairwise(samples)}
    assert max(steps) >= 40 and len(samples) < 400  # a coarser step, evenly over the run


def test_records_other_than_samples_crowding_the_file_lose_the_oldest(tmp_path: Path) -> None:
    path, max_bytes = tmp_path / "timeline.jsonl", 5_000
    timeline.append(path, [{"kind": "run", "t": START}], max_bytes)
    for i in range(500):
        timeline.append(path, [{"kind": "alert", "t": START + i, "statistic": "psi", "count": 1}], max_bytes)
    records = timeline.read_records(path)
    assert path.stat().st_size <= max_bytes and records[0] == {"kind": "run", "t": START}
    alerts = [r["t"] - START for r in records[1:]]
    assert alerts == list(range(500 - len(alerts), 500))  # the newest, in order


def test_alerts_are_counted_once_across_samples_and_scorer_restarts(tmp_path: Path) -> None:
    recorder = timeline.Recorder(settings_for(tmp_path))
    scorer_up = {"scorer": {"metrics": True}}

    def alerts(at: float, counts: dict[str, float], services=scorer_up) -> list[tuple[float, str, int]]:
        snap = Snapshot(at=at, services=services, drift_alerts_by=counts, drift={"psi_item_popularity": 0.3})
        return [(r["t"], r["statistic"], r["count"]) for r in recorder._alerts(snap)]

    assert alerts(1, {}) == []
    assert alerts(2, {"psi_item_popularity": 1}) == [(2, "psi_item_popularity", 1)]
    assert alerts(3, {"psi_item_popularity": 1}) == []
    assert alerts(4, {}, services={"scorer": {"metrics": False}}) == []  # not scraped: no news
    assert alerts(5, {"psi_item_popularity": 3, "unknown_item_share": 1}) == [
        (5, "psi_item_popularity", 2),
        (5, "unknown_item_share", 1),
    ]
    assert alerts(6, {"psi_item_popularity": 1}) == [(6, "psi_item_popularity", 1)]  # restarted: from 0


def test_each_run_starts_a_file_with_its_thresholds_and_a_sample_of_a_stopped_system(tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    path.write_text('{"kind":"run","t":1}\n')
    recorder = timeline.Recorder(settings_for(tmp_path, DRIFT_PSI_THRESHOLD="0.3", TIMELINE_INTERVAL_S="2"))
    recorder.begin()
    assert (tmp_path / "timeline.previous.jsonl").read_text() == '{"kind":"run","t":1}\n'
    recorder.stop()  # never started: one last sample, of nothing running (no store configured)
    header, last = timeline.read_records(path)
    assert header["kind"] == "run" and header["interval_s"] == 2.0
    assert header["thresholds"]["psi_item_popularity"] == 0.3 and len(header["thresholds"]) == 4
    assert last["kind"] == "sample" and last["services_up"] == 0 and last["events_in"] == 0
    assert "lag" not in last and "p99_ms" not in last and "hit_rate" not in last  # unknown: left out


def test_a_sample_record_is_compact(tmp_path: Path) -> None:
    snap = Snapshot(
        at=START,
        events_in=1234,
        latency_p50_s=0.0123456,
        latency_p99_s=0.25,
        hit_rate={"2": 0.1234567},
        drift={"psi_item_popularity": 0.0812345},
        active_version=2,
    )
    record = timeline.sample_record(snap, {"events_per_s": 199.987})
    assert record["p50_ms"] == 12.35 and record["p99_ms"] == 250 and record["hit_rate"] == {"2": 0.1235}
    assert record["drift"] == {"psi_item_popularity": 0.08123} and record["events_per_s"] == 199.99
    assert len(json.dumps(record, separators=(",", ":"))) < 300
