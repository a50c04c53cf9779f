"""`recstream retrain`: one run of DESIGN flow 3, from landed data to a published (or rejected) version.

read the window -> temporal holdout -> interactions on the active model's vocabulary ->
train (warm start) -> evaluate candidate, popularity and the active model on the same
holdout -> gate -> export -> upload (atomic) -> `published` on model-updates.
A refused candidate is announced `rejected` with the reason; its number is never reused.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain.baselines import Popularity
from retrain.dataset import Holdout, Interactions, build_interactions, temporal_holdout
from retrain.evaluate import EvalSet, Metrics, evaluate_scores, evaluation_set
from retrain.registry import ModelRegistry
from stream.errors import RecstreamError
from stream.model_events import PUBLISHED, REJECTED, ModelEvent
from stream.settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, float]], None]
# The data distributions the drift tracker compares live traffic with (metadata.json "reference").
REFERENCE_TOP_ITEMS = 300


class NotEnoughData(RecstreamError):
    """Too little landed data to train and judge a model; no version is made."""


@dataclass
class Outcome:
    event: str  # published | rejected
    version: int
    metrics: dict[str, Any]
    reason: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Candidate:
    trained: Any  # retrain.cf_model.Trained
    train: Interactions
    holdout: Holdout
    window: dict[str, Any]
    metrics: dict[str, dict[str, float | int]]
    parent: int | None
    seconds: dict[str, float]
    params: Any


def read_window(settings: Settings, now: float | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    from ingest.reader import read_transactions
    from stream.storage import make_client

    end = now if now is not None else time.time()
    start = end - settings.retrain_window_s if settings.retrain_window_s else None
    frame = read_transactions(
        make_client(settings),
        settings.data_bucket,
        start=start,
        end=None,
        columns=["user_id", "item_id", "ts", "offset"],
    )
    window = {
        "start": start,
        "end": end,
        "first_ts": float(frame["ts"].min()) if len(frame) else None,
        "last_ts": float(frame["ts"].max()) if len(frame) else None,
        "events": len(frame),
    }
    return frame, window


def train_candidate(
    settings: Settings,
    frame: pd.DataFrame,
    window: dict[str, Any],
    parent: tuple[int, Any] | None,
    progress: Progress | None = None,
    params: Any = None,
) -> Candidate:
    """Split, train (warm-started from `parent` = (version, Trained)) and evaluate on the holdout."""
    from retrain import cf_model as model

    started = time.monotonic()
    holdout = temporal_holdout(frame)
    if len(holdout.test) < settings.retrain_min_users:
        raise NotEnoughData(
            f"too little data to retrain: {len(frame):,} events give {len(holdout.test):,} users to "
            f"evaluate on, and RETRAIN_MIN_USERS is {settings.retrain_min_users:,}; no version made"
        )
    parent_model = parent[1] if parent else None
    train = build_interactions(
        holdout.train,
        users=parent_model.users if parent_model else None,
        items=parent_model.items if parent_model else None,
    )
    evalset = evaluation_set(train, holdout.test)
    prepared = time.monotonic()
    params = params if params is not None else model.Params()
    trained = model.train(train, params, parent=parent_model, progress=progress)
    trained_at = time.monotonic()
    metrics = {
        "candidate": evaluate_scores(trained.scores(evalset.users), evalset).as_dict(),
        "popularity": evaluate_scores(Popularity().fit(train).scores(evalset.users), evalset).as_dict(),
    }
    if parent_model is not None:
        metrics["active"] = _parent_metrics(parent_model, train, evalset).as_dict()
    seconds = {
        "prepare": round(prepared - started, 2),
        "train": round(trained_at - prepared, 2),
        "evaluate": round(time.monotonic() - trained_at, 2),
    }
    return Candidate(trained, train, holdout, window, metrics, parent[0] if parent else None, seconds, params)


def _parent_metrics(parent: Any, train: Interactions, evalset: EvalSet) -> Metrics:
    """The active model on the candidate's holdout: what it would serve today.

    Its vocabularies are prefixes of the candidate's, so its rows line up; items it has never seen
    cannot be recommended by it, and users it has never seen get its popularity fallback.
    """
    known = evalset.users < len(parent.users)
    scores = np.full((len(evalset.users), train.n_items), -np.inf)
    scores[:, : len(parent.items)] = np.asarray(parent.popularity, dtype=np.float64)
    if known.any():
        scores[known, : len(parent.items)] = parent.scores(evalset.users[known])
    return evaluate_scores(scores, evalset)


def gate(metrics: dict[str, dict[str, float | int]], tolerance: float) -> str | None:
    """None when the candidate may be published, else the reason it may not."""
    candidate, popularity = metrics["candidate"]["hr"], metrics["popularity"]["hr"]
    if not candidate > popularity:
        return f"HR@10 {candidate:.4f} does not beat popularity's {popularity:.4f}"
    active = metrics.get("active")
    if active is not None and candidate < active["hr"] - tolerance:
        return (
            f"HR@10 {candidate:.4f} is worse than the active model's {active['hr']:.4f} "
            f"by more than {tolerance:g}"
        )
    return None


def reference_distributions(train: Interactions) -> dict[str, Any]:
    """What the drift tracker compares live traffic with: item popularity and the vocabularies' sizes."""
    counts = np.bincount(train.items, minlength=train.n_items).astype(np.float64)
    share = counts / counts.sum() if counts.sum() else counts
    order = np.argsort(-share, kind="stable")[:REFERENCE_TOP_ITEMS]
    return {
        "item_share": {train.item_vocab.ids[i]: round(float(share[i]), 8) for i in order},
        "users": train.n_users,
        "items": train.n_items,
        "events": len(train.items),
    }


def metadata(settings: Settings, candidate: Candidate, version: int) -> dict[str, Any]:
    return {
        "model": settings.model_name,
        "version": version,
        "created": time.time(),
        "parent_version": candidate.parent,
        "metrics": candidate.metrics,
        "window": candidate.window,
        "counts": {
            "events": len(candidate.holdout.train) + len(candidate.holdout.test),
            "train_events": len(candidate.holdout.train),
            "holdout_users": len(candidate.holdout.test),
            "users": candidate.train.n_users,
            "items": candidate.train.n_items,
        },
        "parameters": candidate.params.as_dict(),
        "seconds": candidate.seconds,
        "reference": reference_distributions(candidate.train),
    }


def load_active(registry: ModelRegistry, workdir: Path) -> tuple[int, Any] | None:
    """The active version's model for warm start and comparison (None before the first activation)."""
    from retrain import cf_model as model

    active = registry.state().active
    if active is None:
        return None
    directory = registry.download_version(active, workdir / f"parent-{active}")
    return active, model.load(directory)


def retrain_once(settings: Settings, progress: Progress | None = None, params: Any = None) -> Outcome:
    """One retrain now (`params`: retrain.cf_model.Params, default ones when None).

    Raises NotEnoughData when the window is too small to train and judge a model.
    """
    from retrain import savedmodel as export
    from stream.producer import EventProducer
    from stream.storage import make_client

    registry = ModelRegistry(make_client(settings), settings.models_bucket, settings.model_name)
    with tempfile.TemporaryDirectory(prefix="recstream-retrain-") as tmp:
        workdir = Path(tmp)
        frame, window = read_window(settings)
        parent = load_active(registry, workdir)
        candidate = train_candidate(settings, frame, window, parent, progress, params)
        reason = gate(candidate.metrics, settings.gate_tolerance)
        version = registry.next_version()
        flat = _flat_metrics(candidate.metrics)
        with EventProducer(settings, client_id="recstream-retrain") as producer:
            if reason is not None:
                event = ModelEvent(REJECTED, settings.model_name, version, flat, reason=f"gate: {reason}")
                registry.announce(event, producer, settings.model_updates_topic)
                return Outcome(REJECTED, version, candidate.metrics, event.reason, candidate.seconds)
            started = time.monotonic()
            directory = workdir / str(version)
            export.export(
                candidate.trained,
                directory,
                version,
                metadata(settings, candidate, version),
                settings.model_name,
            )
            registry.upload_version(directory, version)
            candidate.seconds["export"] = round(time.monotonic() - started, 2)
            registry.announce(
                ModelEvent(PUBLISHED, settings.model_name, version, flat),
                producer,
                settings.model_updates_topic,
            )
    return Outcome(PUBLISHED, version, candidate.metrics, None, candidate.seconds)


def _flat_metrics(metrics: dict[str, dict[str, float | int]]) -> dict[str, float | int]:
    """The event's metrics: the candidate's hr@10, ndcg@10, coverage@10; <name>_hr@10 of the others."""
    k = metrics["candidate"]["k"]
    flat: dict[str, float | int] = {
        f"hr@{k}": metrics["candidate"]["hr"],
        f"ndcg@{k}": metrics["candidate"]["ndcg"],
        f"coverage@{k}": metrics["candidate"]["coverage"],
        "holdout_users": metrics["candidate"]["users"],
    }
    for name, values in metrics.items():
        if name != "candidate":
            flat[f"{name}_hr@{k}"] = values["hr"]
    return flat
