"""The command line's tables and lines: retrain results, a rebuild beside its original, the
registry's history. Presentation only; the figures come from retrain and the registry."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table


def timing(seconds: dict[str, float]) -> str:
    return ", ".join(f"{step} {value:.1f}s" for step, value in seconds.items())


def epoch_printer(console: Console) -> Callable[[int, int, dict[str, float]], None]:
    """A training progress callback that prints one line per epoch."""

    def progress(epoch: int, epochs: int, logs: dict[str, float]) -> None:
        figures = "  ".join(f"{name} {value:.4f}" for name, value in logs.items())
        console.print(f"epoch {epoch}/{epochs}  {figures}", highlight=False)

    return progress


def trial_printer(console: Console) -> Callable[[int, int, Any, bool], None]:
    """`retrain --tune`'s progress: one line per trial (a retrain.tune.Trial) as it ends."""

    def on_trial(index: int, trials: int, trial: Any, best: bool) -> None:
        changes = ", ".join(f"{name}={value}" for name, value in trial.changes.items()) or "defaults"
        console.print(
            f"trial {index}/{trials} ({changes}): validation HR@10 {trial.hr:.4f} NDCG@10 {trial.ndcg:.4f}, "
            f"{trial.epochs} epochs in {trial.seconds:.1f}s" + ("  <- best so far" if best else ""),
            highlight=False,
            soft_wrap=True,  # one line per trial, whatever the terminal's width
        )

    return on_trial


def metrics_table(title: str, metrics: dict[str, dict[str, Any]]) -> Table:
    """HR@10, NDCG@10, coverage and users of each model on one holdout."""
    table = Table(title=title)
    for column in ("model", "HR@10", "NDCG@10", "coverage@10", "users"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, values in metrics.items():
        table.add_row(
            name,
            f"{values['hr']:.4f}",
            f"{values['ndcg']:.4f}",
            f"{values['coverage']:.3f}",
            f"{values['users']:,}",
        )
    return table


def rebuild_table(
    title: str, old: int, new: int, original: dict[str, dict[str, Any]], rebuilt: dict[str, dict[str, Any]]
) -> Table:
    """A version's metrics beside its rebuild's, model by model."""
    table = Table(title=title)
    table.add_column("model")
    for column in (f"v{old} HR@10", f"v{new} HR@10", f"v{old} NDCG@10", f"v{new} NDCG@10", "users"):
        table.add_column(column, justify="right")
    for name, values in rebuilt.items():
        before = original.get(name) or {}
        table.add_row(
            name,
            f"{before['hr']:.4f}" if "hr" in before else "-",
            f"{values['hr']:.4f}",
            f"{before['ndcg']:.4f}" if "ndcg" in before else "-",
            f"{values['ndcg']:.4f}",
            f"{values['users']:,}",
        )
    return table


def format_history(history: list[dict[str, Any]]) -> list[str]:
    """`recstream versions` as text: one line per version, a second for its offsets and code."""

    def when(ts: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"

    def hr(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, int | float) else "-"

    lines = []
    for row in history:
        figures, window = row["hr@10"], row["window"] or {}
        status = row["status"] + (f" ({row['reason']})" if row["reason"] else "")
        span = f"{when(window.get('first_ts'))}..{when(window.get('last_ts'))}"
        events = f"{window.get('events') or 0:,} events {span}"
        lines.append(
            f"v{row['version']:<4} {when(row['created'])}  {status}  "
            f"HR@10 {hr(figures.get('hr@10'))} vs popularity {hr(figures.get('popularity_hr@10'))}, "
            f"parent v{row['parent_version'] if row['parent_version'] is not None else '-'} "
            f"{hr(figures.get('parent_hr@10'))}" + (f"; {events}" if window.get("events") is not None else "")
        )
        lineage = row["lineage"] or {}
        if row["offsets"]:
            ranges = "; ".join(
                f"p{p} " + ",".join(f"{a}-{b}" for a, b in runs[:3]) + (" ..." if len(runs) > 3 else "")
                for p, runs in sorted(row["offsets"].items(), key=lambda item: int(item[0]))
            )
            code = lineage.get("code") or {}
            commit = (code.get("commit") or "no commit")[:12] + ("+dirty" if code.get("dirty") else "")
            objects = lineage.get("objects") or {}
            lines.append(
                f"      {lineage.get('topic')} {ranges}  ({objects.get('count')} objects "
                f"{str(objects.get('sha256', ''))[:19]}, recstream {code.get('recstream')} {commit}"
                + (f", rebuild of v{lineage['rebuild_of']}" if lineage.get("rebuild_of") else "")
                + ")"
            )
    return lines
