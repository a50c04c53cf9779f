"""`recstream report` from a synthetic timeline: what the page holds, and the command's misuse.

The page as a browser draws it is checked by tests/e2e/test_demo_loop.py on a real run.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from recstream.deploy.cli import main
from recstream.deploy.console import report
from recstream.deploy.console.timeline import load_run

START = 1_790_000_000.0
THRESHOLDS = {
    "page_hinkley_hit_rate": 15.0,
    "psi_item_popularity": 0.2,
    "unknown_item_share": 0.2,
    "unknown_user_share": 0.5,
}


def write_timeline(home: Path, samples: int = 60, step: float = 5.0) -> Path:
    """A run of 5 minutes: v1 then v2 activated, a PSI alert, v3 rejected, v2 rolled back to v1.
    An older run before it must not show."""
    old = [{"kind": "run", "t": START - 9000, "interval_s": step}, {"kind": "sample", "t": START - 8990}]
    records: list[dict[str, Any]] = [
        *old,
        {"kind": "run", "t": START, "interval_s": step, "model": "recs", "thresholds": THRESHOLDS},
        # A version of an earlier run: in the table, no line (it predates the run).
        {"kind": "model", "t": START - 500, "event": "published", "version": 7, "metrics": {"hr@10": 0.3}},
    ]
    for i in range(samples):
        sample: dict[str, Any] = {
            "kind": "sample",
            "t": START + i * step,
            "events_in": 1000 * i,
            "ingested": 950 * i,
            "events_per_s": 200.0,
            "ingested_per_s": 190.0,
            "lag": 20 + i % 7,
            "requests": 30 * i,
            "request_errors": 0,
            "retrain_runs": i // 12,
        }
        if i > 24:
            sample |= {
                "requests_per_s": 6.0,
                "p50_ms": 12.0,
                "p99_ms": 80.0 + i,
                "active": 1 if i < 36 else 2,
                "hit_rate": {"1": round(0.15 + 0.001 * i, 4)} | ({"2": 0.2} if i >= 38 else {}),
                "drift": {"psi_item_popularity": 0.05 + 0.004 * i, "unknown_user_share": 0.3},
            }
        records.append(sample)
    records += [
        {"kind": "model", "t": START + 110, "event": "published", "version": 1, "metrics": {"hr@10": 0.21}},
        {"kind": "model", "t": START + 120, "event": "activated", "version": 1},
        {
            "kind": "model",
            "t": START + 170,
            "event": "published",
            "version": 2,
            "metrics": {"hr@10": 0.24, "popularity_hr@10": 0.12},
        },
        {"kind": "model", "t": START + 180, "event": "activated", "version": 2},
        {"kind": "alert", "t": START + 200, "statistic": "psi_item_popularity", "count": 1, "value": 0.21},
        {
            "kind": "model",
            "t": START + 240,
            "event": "rejected",
            "version": 3,
            "metrics": {"hr@10": 0.1},
            "reason": "gate: below popularity",
        },
        {
            "kind": "model",
            "t": START + 260,
            "event": "rolled_back",
            "version": 2,
            "to": 1,
            "metrics": {"canary_latency_ms": 3.1, "seconds": 0.4},  # as updater/core.py sends them
        },
        {"kind": "summary", "t": START + 300, "events_produced": 60_000, "hit_rate": 0.17},
    ]
    home.mkdir(parents=True, exist_ok=True)
    path = home / "timeline.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "sample", "t": 17')  # torn
    return path


class Page(HTMLParser):
    """Tables by id (rows of cell texts, with each row's attributes) and every script/link source."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[dict[str, str], list[str]]]] = {}
        self.sources: list[str] = []
        self.scripts = 0
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: v or "" for k, v in attrs}
        self.sources += [attr[k] for k in ("src", "href") if k in attr]
        if tag == "script":
            self.scripts += 1
        elif tag == "table":
            self._table = attr.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append((attr, []))
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1][1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_the_page_is_self_contained_and_shows_the_run(tmp_path: Path) -> None:
    write_timeline(tmp_path)
    out = report.write_report(tmp_path)
    assert out == tmp_path / "report.html"
    text = out.read_text()
    page = Page()
    page.feed(text)

    # No network needed: nothing loaded from anywhere, plotly's JS inlined.
    assert page.sources == []
    assert "Plotly.newPlot" in text and len(text) > 1_000_000  # the plotly.js bundle is in the page
    assert '<div id="timeline"' in text

    summary = {row[0]: row[1] for _, row in page.tables["summary"]}
    assert summary["versions"] == "2 published, 2 activated, 1 rejected, 1 rolled back"
    assert summary["active at the end"] == "v2"
    assert summary["lasted"] == "4 min 55 s"
    assert summary["drift alerts"] == "1 item popularity PSI"
    assert "events produced 60,000" in summary["demo"] and "hit rate 0.17" in summary["demo"]

    header, *rows = page.tables["versions"]
    assert header[1][4:6] == ["offline HR@10", "online hit rate"]  # side by side
    by_version = {attrs["data-version"]: cells for attrs, cells in rows}
    assert list(by_version) == ["1", "2", "3", "7"]
    assert by_version["1"][1] == "active"  # after the rollback to it
    assert by_version["1"][4:6] == ["0.210", "0.209"]  # offline, last online
    assert by_version["2"][1] == "rolled_back" and "to v1" in by_version["2"][7]
    assert by_version["2"][4] == "0.240" and by_version["2"][6] == "popularity 0.120"  # past its rollback
    assert by_version["3"][1] == "rejected" and by_version["3"][7] == "gate: below popularity"
    assert by_version["3"][5] == "-"  # never served
    assert "(+2 min 0 s)" in by_version["1"][3]  # activated 120 s into the run


def test_marks_and_series_are_aligned_on_one_time_axis(tmp_path: Path) -> None:
    run = load_run(write_timeline(tmp_path))
    assert len(run.samples) == 60 and run.start == START  # the older run is left out
    fig = report.figure(run)

    labels = [a.text for a in fig.layout.annotations if a.yref == "paper" and a.xref == "x"]
    assert labels == ["v1", "v2", "alert PSI", "v3 rejected", "v2→v1"]
    lines = [s for s in fig.layout.shapes if s.yref == "paper"]
    assert [s.x0 for s in lines] == [report._iso(START + t) for t in (120, 180, 200, 240, 260)]
    assert all(s.y0 == 0 and s.y1 == 1 for s in lines)  # across every row

    axes = {trace.xaxis for trace in fig.data}
    assert len(axes) == 6  # one row each ...
    assert all(fig.layout[f"xaxis{i or ''}"].matches == "x6" for i in range(5))  # ... on one time axis
    names = {trace.name for trace in fig.data}
    assert {"online v1", "online v2", "offline HR@10 (active)", "p99 ms", "item popularity PSI"} <= names
    psi = next(t for t in fig.data if t.name == "item popularity PSI")
    assert psi.y[-1] == pytest.approx((0.05 + 0.004 * 59) / 0.2)  # over its threshold
    offline = next(t for t in fig.data if t.name == "offline HR@10 (active)")
    assert offline.y[30] == 0.21 and offline.y[-1] == 0.24


def test_the_command_writes_where_asked_and_misuse_is_one_line(tmp_path: Path, capsys) -> None:
    home = tmp_path / "home"
    assert main(["--home", str(home), "report"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no timeline at" in err and "recstream up" in err

    write_timeline(home)
    out = tmp_path / "run.html"
    assert main(["--home", str(home), "report", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"report written to {out}\n" and out.stat().st_size > 1_000_000

    for argv, message in (
        (["report", "--out", str(tmp_path / "missing" / "r.html")], "does not exist"),
        (["report", "--out", str(tmp_path)], "is a directory"),
    ):
        assert main(["--home", str(home), *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    with pytest.raises(SystemExit) as exit_:
        main(["--home", str(home), "report", "--bogus"])
    assert exit_.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_a_timeline_without_samples_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "timeline.jsonl").write_text(json.dumps({"kind": "run", "t": START, "interval_s": 5}) + "\n")
    assert main(["--home", str(tmp_path), "report"]) == 1
    assert "no sample recorded yet (one every 5 s" in capsys.readouterr().err
