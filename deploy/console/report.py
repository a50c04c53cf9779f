"""`recstream report`: the timeline of a run (deploy/console/timeline.py) as one self-contained HTML page.

The page: the run's summary; aligned time series on one shared time axis (events/s, ingest
lag, requests/s, latency, online hit rate per version against the active version's offline
HR@10, each drift statistic over its threshold) with every activation, rejection, rollback
and drift alert drawn as a vertical line across all of them; the version table with offline
and online hit rates side by side.

Drawn with plotly (graph_objects only, no pandas): its JavaScript is inlined in the page, so
the file opens with no network and still zooms, pans and shows values on hover; a run of
hours stays one readable picture with zoom instead of an image per scale. plotly is imported
only here, when a report is written.
"""

from __future__ import annotations

import html
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recstream.deploy.console.timeline import Run, load_run, timeline_path
from recstream.stream.errors import RecstreamError

log = logging.getLogger(__name__)

REPORT = "report.html"
# How each registry event and an alert is marked: (line colour, dash, label).
MARKS = {
    "activated": ("#2ca02c", "solid"),
    "rejected": ("#7f7f7f", "dot"),
    "rolled_back": ("#ff7f0e", "dashdot"),
    "alert": ("#d62728", "dash"),
}
STATISTICS = {  # drift statistic -> short label
    "page_hinkley_hit_rate": "hit-rate fall (Page-Hinkley)",
    "psi_item_popularity": "item popularity PSI",
    "unknown_item_share": "unknown items share",
    "unknown_user_share": "unknown users share",
}
SHORT = {
    "page_hinkley_hit_rate": "hit rate",
    "psi_item_popularity": "PSI",
    "unknown_item_share": "new items",
    "unknown_user_share": "new users",
}


def write_report(home: Path, out: Path | None = None) -> Path:
    """Render the last run recorded under `home` to `out` (default `home/report.html`)."""
    run = load_run(timeline_path(home))
    out = out or home / REPORT
    if out.is_dir():
        raise RecstreamError(f"--out {out}: is a directory (give a file name)")
    if not out.parent.is_dir():
        raise RecstreamError(f"--out {out}: folder {out.parent} does not exist")
    page = render(run)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RecstreamError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


# -- what the page shows (pure: tested without a browser) ------------------------------------------
def versions(run: Run) -> list[dict[str, Any]]:
    """One row per version: its events' times, final status, offline metrics, online hit rate."""
    from recstream.stream.contracts.model_events import ModelEvent
    from recstream.stream.registry import RegistryState

    state = RegistryState(run.header.get("model", ""))
    rows: dict[int, dict[str, Any]] = {}
    for record in run.models:
        version = record["version"]
        row = rows.setdefault(version, {"version": version, "metrics": {}, "activated": []})
        event = record["event"]
        if event == "activated":
            row["activated"].append(record["t"])
        else:
            row.setdefault(event, record["t"])
        if record.get("metrics"):  # merged: a rollback's canary figures must not hide the HR@10
            row["metrics"] = {**row["metrics"], **record["metrics"]}
        if record.get("reason"):
            row["reason"] = record["reason"]
        if record.get("to") is not None:
            row["to"] = record["to"]
        state.apply(
            ModelEvent(event, state.model, version, {}, record.get("reason"), record.get("to"), record["t"])
        )
    for version, row in rows.items():
        row["status"] = state.status.get(version, "-")
        seen = (s["hit_rate"] for s in reversed(run.samples) if str(version) in s.get("hit_rate", {}))
        row["online"] = next((rates[str(version)] for rates in seen), None)
    return [rows[v] for v in sorted(rows)]


def summary(run: Run) -> list[tuple[str, str]]:
    """The run at a glance: (what, figure) rows."""
    last = run.samples[-1]
    # Counters at their highest: a last sample may have missed a service that was stopping.
    most = {k: max(s.get(k, 0) for s in run.samples) for k in ("events_in", "ingested", "dead_letters")}
    most |= {k: max(s.get(k, 0) for s in run.samples) for k in ("requests", "request_errors", "retrain_runs")}
    during = [m for m in run.models if m["t"] >= run.start]
    count = {e: sum(m["event"] == e for m in during) for e in ("published", "activated", "rejected")}
    count["rolled back"] = sum(m["event"] == "rolled_back" for m in during)
    by_statistic: dict[str, int] = {}
    for alert in run.alerts:
        by_statistic[alert["statistic"]] = by_statistic.get(alert["statistic"], 0) + alert.get("count", 1)
    rows = [
        ("started", f"{_clock(run.start, date=True)} UTC"),
        ("lasted", _duration(run.end - run.start)),
        (
            "events",
            f"{most['events_in']:,} consumed, {most['ingested']:,} ingested, "
            f"{most['dead_letters']:,} dead letters",
        ),
        (
            "requests",
            f"{most['requests']:,} answered ({most['request_errors']:,} errors), "
            f"p50 {_ms(last.get('p50_ms'))}, p99 {_ms(last.get('p99_ms'))} at the end",
        ),
        ("versions", ", ".join(f"{n} {event}" for event, n in count.items())),
        ("active at the end", f"v{last['active']}" if last.get("active") is not None else "none"),
        ("retrain runs", f"{most['retrain_runs']:,}"),
        (
            "drift alerts",
            ", ".join(f"{n} {STATISTICS.get(s, s)}" for s, n in sorted(by_statistic.items())) or "none",
        ),
        ("samples", f"{len(run.samples):,} (every {run.header.get('interval_s', '?')} s)"),
    ]
    if run.summary:
        demo = {k: v for k, v in run.summary.items() if k not in ("kind", "t")}
        rows.append(("demo", ", ".join(f"{k.replace('_', ' ')} {_value(v)}" for k, v in demo.items())))
    return rows


def marks(run: Run) -> list[dict[str, Any]]:
    """The vertical lines: registry events and alerts during the run, in time order."""
    found = []
    for record in run.models:
        if record["event"] == "published" or record["t"] < run.start:
            continue
        version, event = record["version"], record["event"]
        label = {
            "activated": f"v{version}",
            "rejected": f"v{version} rejected",
            "rolled_back": f"v{version}→v{record.get('to')}",
        }[event]
        hover = f"v{version} {event.replace('_', ' ')} at {_clock(record['t'])}" + (
            f": {record['reason']}" if record.get("reason") else ""
        )
        found.append({"t": record["t"], "kind": event, "label": label, "hover": hover})
    for alert in run.alerts:
        statistic = alert["statistic"]
        value = f" = {alert['value']:g}" if "value" in alert else ""
        threshold = run.header.get("thresholds", {}).get(statistic)
        found.append(
            {
                "t": alert["t"],
                "kind": "alert",
                "label": f"alert {SHORT.get(statistic, statistic)}",
                "hover": f"drift alert at {_clock(alert['t'])}: {STATISTICS.get(statistic, statistic)}{value}"
                + (f" (threshold {threshold:g})" if threshold is not None else ""),
            }
        )
    return sorted(found, key=lambda m: m["t"])


# -- the figure -------------------------------------------------------------------------------------
def figure(run: Run) -> Any:
    """The aligned time series with the marks across every row."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = [
        "events per second",
        "ingest lag (records behind)",
        "requests answered per second",
        "answer latency (ms)",
        "hit rate: online per version, offline HR@10 of the active version",
        "drift statistic ÷ its threshold (alert above 1)",
    ]
    fig = make_subplots(
        rows=len(rows), cols=1, shared_xaxes=True, vertical_spacing=0.045, subplot_titles=rows
    )
    x = [_iso(s["t"]) for s in run.samples]

    def series(row: int, name: str, values: list[Any], **style: Any) -> None:
        fig.add_trace(
            go.Scatter(x=x, y=values, name=name, mode="lines", legendgroup=str(row), **style), row=row, col=1
        )

    samples = run.samples
    series(1, "events in/s", [s.get("events_per_s") for s in samples])
    series(1, "ingested/s", [s.get("ingested_per_s") for s in samples])
    series(2, "lag", [s.get("lag") for s in samples])
    series(3, "requests/s", [s.get("requests_per_s") for s in samples])
    series(4, "p50 ms", [s.get("p50_ms") for s in samples])
    series(4, "p99 ms", [s.get("p99_ms") for s in samples])
    offline = {row["version"]: row["metrics"].get("hr@10") for row in versions(run)}
    for version in sorted({v for s in samples for v in s.get("hit_rate", {})}, key=int):
        series(5, f"online v{version}", [s.get("hit_rate", {}).get(version) for s in samples])
    series(
        5,
        "offline HR@10 (active)",
        [offline.get(s.get("active")) for s in samples],
        line={"dash": "dash", "shape": "hv", "color": "#444"},
    )
    thresholds = run.header.get("thresholds", {})
    statistics = sorted({name for s in samples for name in s.get("drift", {})})
    for name in statistics:
        limit = thresholds.get(name)
        raw = [s.get("drift", {}).get(name) for s in samples]
        series(
            6,
            STATISTICS.get(name, name),
            [None if v is None or not limit else v / limit for v in raw],
            customdata=[[v, limit] for v in raw],
            hovertemplate="%{customdata[0]:.4g} (threshold %{customdata[1]:g})",
        )
    if not statistics:  # none computed yet: the row still shows its axes and threshold
        series(6, "no drift statistic yet", [None] * len(samples), showlegend=False)
    fig.add_hline(y=1, row=6, col=1, line={"color": MARKS["alert"][0], "dash": "dot", "width": 1})

    for i, mark in enumerate(marks(run)):
        colour, dash = MARKS[mark["kind"]]
        at = _iso(mark["t"])
        fig.add_shape(
            type="line",
            xref="x",
            yref="paper",
            x0=at,
            x1=at,
            y0=0,
            y1=1,
            line={"color": colour, "dash": dash, "width": 1.5},
            layer="above",
        )
        fig.add_annotation(
            x=at,
            xref="x",
            y=1.0,
            yref="paper",
            yanchor="bottom",
            yshift=4 + 16 * (i % 3),  # three heights: close marks stay readable
            text=mark["label"],
            hovertext=mark["hover"],
            showarrow=False,
            font={"color": colour, "size": 11},
        )
    fig.update_layout(
        height=210 * len(rows) + 120,
        margin={"t": 90, "l": 70, "r": 30, "b": 50},
        hovermode="x unified",
        template="plotly_white",
        legend={"orientation": "v", "x": 1.01, "y": 1},
    )
    fig.update_xaxes(showticklabels=True, tickformat="%H:%M:%S")
    fig.update_xaxes(title_text="time (UTC)", row=len(rows), col=1)
    fig.update_yaxes(rangemode="tozero")
    return fig


# -- the page ---------------------------------------------------------------------------------------
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1400px;
       color: #222; padding: 0 16px; }}
h1 {{ font-size: 1.5em; margin-bottom: 4px; }} h2 {{ font-size: 1.15em; margin-top: 28px; }}
table {{ border-collapse: collapse; font-size: 0.92em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 12px 4px 0; text-align: left; vertical-align: top; }}
td.num, th.num {{ text-align: right; }}
.key {{ color: #555; font-size: 0.9em; }} .key span {{ margin-right: 18px; white-space: nowrap; }}
#report-errors {{ background: #fdd; border: 1px solid #d62728; padding: 8px; white-space: pre-wrap; }}
</style>
</head>
<body>
<div id="report-errors" hidden></div>
<script>
(function () {{
  var box = document.getElementById("report-errors");
  function show(text) {{ box.hidden = false; box.textContent += text + "\\n"; }}
  window.addEventListener("error", function (e) {{ show("error: " + e.message); }});
  window.addEventListener("load", function () {{
    if (!document.querySelector("#timeline .main-svg")) show("the charts could not be drawn");
  }});
}})();
</script>
<h1>{title}</h1>
<p class="key">{subtitle}</p>
<h2>Summary</h2>
<table id="summary">{summary}</table>
<h2>Timeline</h2>
<p class="key"><span style="color:{activated}">━ version activated</span>
<span style="color:{alert}">╌ drift alert</span><span style="color:{rejected}">┈ version rejected</span>
<span style="color:{rolled_back}">━ rollback</span>hover a label or a line for details; drag to zoom,
double-click to reset</p>
{figure}
<h2>Versions</h2>
<table id="versions">
<tr><th class="num">version</th><th>status</th><th>published</th><th>activated</th>
<th class="num">offline HR@10</th><th class="num">online hit rate</th><th>baselines (HR@10)</th>
<th>note</th></tr>
{versions}
</table>
<p class="key">Offline HR@10: on the retrain's held-out users. Online hit rate: recommendations this
version served that the customer's next purchase hit (the scorer's drift tracking), last value.</p>
<p class="key">Written by <code>recstream report</code> from {timeline} at {written} UTC.</p>
</body>
</html>
"""


def render(run: Run, timeline: str = "timeline.jsonl") -> str:
    """The whole page (plotly's JavaScript inlined: no network needed to open it)."""
    fig = figure(run)
    plot = fig.to_html(
        full_html=False,
        include_plotlyjs=True,
        div_id="timeline",
        config={"displaylogo": False, "responsive": True},
    )
    esc = html.escape
    summary_rows = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in summary(run))
    version_rows = "\n".join(_version_row(row, run.start) for row in versions(run))
    return PAGE.format(
        title=esc(f"recstream run of {_clock(run.start, date=True)} UTC"),
        subtitle=esc(
            f"{_duration(run.end - run.start)}, {len(run.samples):,} samples; "
            f"model {run.header.get('model', '?')}"
        ),
        summary=summary_rows,
        figure=plot,
        versions=version_rows or '<tr><td colspan="8">no version yet</td></tr>',
        timeline=esc(timeline),
        written=_clock(datetime.now(UTC).timestamp(), date=True),
        **{kind: colour for kind, (colour, _) in MARKS.items()},
    )


def _version_row(row: dict[str, Any], start: float) -> str:
    esc = html.escape
    metrics = row["metrics"]
    baselines = ", ".join(
        f"{k.removesuffix('_hr@10')} {v:.3f}" for k, v in sorted(metrics.items()) if k.endswith("_hr@10")
    )
    note = row.get("reason", "")
    if "rolled_back" in row:
        note = f"rolled back at {_at(row['rolled_back'], start)} to v{row.get('to')}" + (
            f"; {note}" if note else ""
        )
    if "rejected" in row and not note:
        note = f"rejected at {_at(row['rejected'], start)}"
    cells = [
        f'<td class="num">v{row["version"]}</td>',
        f"<td>{esc(row['status'])}</td>",
        f"<td>{_at(row['published'], start) if 'published' in row else '-'}</td>",
        f"<td>{', '.join(_at(t, start) for t in row['activated']) or '-'}</td>",
        f'<td class="num">{_rate(metrics.get("hr@10"))}</td>',
        f'<td class="num">{_rate(row["online"])}</td>',
        f"<td>{esc(baselines) or '-'}</td>",
        f"<td>{esc(note)}</td>",
    ]
    return f'<tr data-version="{row["version"]}">{"".join(cells)}</tr>'


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _clock(t: float, date: bool = False) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")


def _at(t: float, start: float) -> str:
    """A time of the run as its clock time and its offset from the start."""
    offset = t - start
    return f"{_clock(t)} ({'+' if offset >= 0 else '−'}{_duration(abs(offset))})"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 120:
        return f"{minutes} min {seconds} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _value(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else json.dumps(value)
