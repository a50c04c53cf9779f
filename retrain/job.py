"""`recstream retrain`: one run of DESIGN flow 3, from landed data to a published (or rejected) version.

read the window -> temporal holdout -> interactions on the active model's vocabulary ->
train (warm start, recency-weighted) -> evaluate candidate, popularity and the active model on
the same holdout -> gate -> export -> upload (atomic) -> `published` on model-updates.
A refused candidate is announced `rejected` with the reason; its number is never reused.

The gate judges the regime a version will serve: its figures (metrics "candidate", "popularity",
"active") are on the recent holdout, the held-out purchases of the window's last
RETRAIN_RECENT_S (or since the drift start the scheduler passes); metadata.json "holdouts" has
the figures of both holdouts ("recent", "whole") and of serving's popularity fallback. How
much recent data weigh is decided when the data are prepared and travels with them
(`Prepared.window["recency"]`), so step mode follows it too.

The run is three functions, the Kubeflow pipeline's steps (update data -> train -> publish):
`prepare_data`, `train_and_evaluate` and `publish`. `retrain_once` calls them in sequence in
one process; `retrain/steps.py` runs each in its own process (`recstream retrain --step`) and
hands their results over through the object store.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstream.retrain.baselines import Popularity
from recstream.retrain.dataset import (
    Holdout,
    Interactions,
    Recency,
    build_interactions,
    recent_test,
    temporal_holdout,
)
from recstream.retrain.evaluate import EvalSet, Metrics, evaluate_scores, evaluation_set
from recstream.retrain.lineage import (
    attach,
    data_lineage,
    deterministic_training,
    for_event,
    of_candidate,
    training_lineage,
)
from recstream.retrain.tune import OnTrial, search
from recstream.stream.contracts.metadata import METADATA, DriftReference
from recstream.stream.contracts.model_events import PUBLISHED, REJECTED, ModelEvent
from recstream.stream.errors import RecstreamError
from recstream.stream.registry import ModelRegistry
from recstream.stream.settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, float]], None]
# The data distributions the drift tracker compares live traffic with (metadata.json "reference").
# Every product the model knows (the drift tracker counts a product left out as unknown), up to
# a bound that keeps metadata.json small for very large catalogues.
REFERENCE_TOP_ITEMS = 20_000
# Fewest held-out users of the gate's recent holdout when no drift says where the regime starts:
# below this its HR@10 is too noisy to tell a 0.01 loss (standard error ~0.013 at 0.2).
RECENT_MIN_USERS = 1000


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
class Prepared:
    """Step 1's result: the window's events split into training events and held-out items."""

    holdout: Holdout
    window: dict[str, Any]
    seconds: dict[str, float]


@dataclass
class Candidate:
    """Step 2's result: a trained and evaluated model, and what its metadata.json will say.

    `summary` holds the metadata fields known once trained (window, counts, parameters,
    reference distributions). `trained` (retrain.cf_model.Trained) is None when the candidate
    was read back from another process's export (see `Exported`).
    """

    metrics: dict[str, dict[str, float | int]]
    parent: int | None
    seconds: dict[str, float]
    summary: dict[str, Any]
    trained: Any = None


@dataclass(frozen=True)
class TuneRequest:
    """`retrain --tune`: search the parameters (retrain.tune) within `budget_s` (None: every trial)."""

    budget_s: float | None = None
    min_users: int = 1  # fewest users to validate on (RETRAIN_MIN_USERS)
    on_trial: OnTrial | None = None


@dataclass(frozen=True)
class Exported:
    """A candidate already exported as a version directory whose graph is stamped `version`."""

    directory: Path
    version: int


def read_window(settings: Settings, now: float | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    from recstream.stream.lake import read_transactions
    from recstream.stream.storage import make_client

    end = now if now is not None else time.time()
    start = end - settings.retrain_window_s if settings.retrain_window_s else None
    client = make_client(settings)
    frame = read_transactions(
        client,
        settings.data_bucket,
        start=start,
        end=None,
        columns=["user_id", "item_id", "ts", "offset", "partition"],
    )
    records = data_lineage(client, settings.data_bucket, settings.transactions_topic, frame)
    frame = frame.drop(columns="partition")
    window = {
        "start": start,
        "end": end,
        "first_ts": float(frame["ts"].min()) if len(frame) else None,
        "last_ts": float(frame["ts"].max()) if len(frame) else None,
        "events": len(frame),
        "lineage": records,  # moved to metadata.json "lineage" by retrain.lineage.attach
    }
    return frame, window


def recency_plan(settings: Settings, window: dict[str, Any], drift_from: float | None) -> dict[str, Any]:
    """How the run weighs its data and where the gate's recent holdout starts (JSON, in the window).

    `drift_from`: where the concept drift behind the run started, in event time (the purchases'
    `ts`, like `window`'s), if any; the regime to serve starts there, so the recent holdout does
    not reach back before it.
    """
    last = window.get("last_ts")
    recent_from = None
    if settings.retrain_recent_s > 0 and last is not None:
        recent_from = last - settings.retrain_recent_s
    min_users = RECENT_MIN_USERS
    if drift_from is not None and (recent_from is None or drift_from > recent_from):
        # The new regime may be small yet: judge on it alone, down to RETRAIN_MIN_USERS.
        recent_from, min_users = drift_from, settings.retrain_min_users
    return {
        "half_life_s": settings.retrain_half_life_s,
        "drift_from": drift_from,
        "drift_share": settings.retrain_drift_share,
        "recent_from": recent_from,
        "recent_min_users": min_users,
    }


def prepare_data(settings: Settings, now: float | None = None, drift_from: float | None = None) -> Prepared:
    """Step 1 (update data): read the window and split it with the temporal holdout.

    `drift_from` (see `recency_plan`) comes from the drift alert that triggered the run.
    Raises NotEnoughData when it holds too few users to evaluate on.
    """
    started = time.monotonic()
    frame, window = read_window(settings, now)
    window["recency"] = recency_plan(settings, window, drift_from)
    holdout = temporal_holdout(frame)
    if len(holdout.test) < settings.retrain_min_users:
        raise NotEnoughData(
            f"too little data to retrain: {len(frame):,} events give {len(holdout.test):,} users to "
            f"evaluate on, and RETRAIN_MIN_USERS is {settings.retrain_min_users:,}; no version made"
        )
    return Prepared(holdout, window, {"data": round(time.monotonic() - started, 2)})


def train_candidate(
    prepared: Prepared,
    parent: tuple[int, Any] | None,
    progress: Progress | None = None,
    params: Any = None,
    tune: TuneRequest | None = None,
) -> Candidate:
    """Train (warm-started from `parent` = (version, Trained)) and evaluate on the holdout.

    The gate's figures (`metrics`) are on the recent holdout; `summary["holdouts"]` has both
    holdouts' figures ("recent", "whole"), with the serving fallback's. With `tune`, the
    parameters are the best of a few tried on the training events' own validation split
    (retrain.tune), and `summary["tuning"]` says what was tried.
    """
    from recstream.retrain import cf_model as model

    started = time.monotonic()
    holdout = prepared.holdout
    plan = prepared.window.get("recency") or {}
    recency = Recency(
        half_life_s=float(plan.get("half_life_s") or 0.0),
        drift_from=plan.get("drift_from"),
        drift_share=float(plan.get("drift_share") or 0.0),
    )
    parent_model = parent[1] if parent else None
    train = build_interactions(
        holdout.train,
        users=parent_model.users if parent_model else None,
        items=parent_model.items if parent_model else None,
    )
    recent = recent_test(holdout.test, plan.get("recent_from"), int(plan.get("recent_min_users") or 0))
    evalsets = {"recent": evaluation_set(train, recent), "whole": evaluation_set(train, holdout.test)}
    prepared_at = time.monotonic()
    params = params if params is not None else model.Params()
    determinism = deterministic_training()
    tuning = None
    if tune is not None:
        tuning = search(
            holdout.train,
            params,
            parent_model,
            recency,
            tune.budget_s,
            tune.min_users,
            on_trial=tune.on_trial,
        )
        params = tuning.chosen
    tuned_at = time.monotonic()
    trained = model.train(train, params, parent=parent_model, progress=progress, recency=recency)
    trained_at = time.monotonic()
    popularity = Popularity().fit(train)
    holdouts: dict[str, dict[str, dict[str, float | int]]] = {}
    for name, evalset in evalsets.items():
        figures = holdouts[name] = {
            "candidate": evaluate_scores(trained.scores(evalset.users), evalset).as_dict(),
            "popularity": evaluate_scores(popularity.scores(evalset.users), evalset).as_dict(),
            # serving's fallback for unknown customers: the model's recency-weighted popularity
            "fallback": evaluate_scores(
                np.broadcast_to(trained.popularity, (len(evalset.users), train.n_items)), evalset
            ).as_dict(),
        }
        if parent_model is not None:
            figures["active"] = _parent_metrics(parent_model, train, evalset).as_dict()
    metrics: dict[str, dict[str, float | int]] = {
        name: holdouts["recent"][name]
        for name in ("candidate", "popularity", "active")
        if name in holdouts["recent"]
    }
    seconds = {
        **prepared.seconds,
        "prepare": round(prepared_at - started, 2),
        **({"tune": round(tuned_at - prepared_at, 2)} if tuning is not None else {}),
        "train": round(trained_at - tuned_at, 2),
        "evaluate": round(time.monotonic() - trained_at, 2),
    }
    summary = {
        "window": prepared.window,
        "counts": {
            "events": len(holdout.train) + len(holdout.test),
            "train_events": len(holdout.train),
            "holdout_users": len(holdout.test),
            "recent_holdout_users": len(recent),
            "users": train.n_users,
            "items": train.n_items,
        },
        "parameters": params.as_dict(),
        **({"tuning": tuning.as_dict()} if tuning is not None else {}),
        "reference": reference_distributions(train),
        "holdouts": holdouts,
        "lineage": {**training_lineage(), "determinism": determinism},
    }
    return Candidate(metrics, parent[0] if parent else None, seconds, summary, trained)


def train_and_evaluate(
    prepared: Prepared,
    registry: ModelRegistry,
    workdir: Path,
    progress: Progress | None = None,
    params: Any = None,
    tune: TuneRequest | None = None,
) -> Candidate:
    """Step 2 (train): warm-start from the active version (if any), train, evaluate."""
    return train_candidate(prepared, load_active(registry, workdir), progress, params, tune)


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
    """None when the candidate may be published, else the reason it may not.

    It reads "candidate", "popularity" and "active": the recent holdout's figures (the whole
    holdout's are for the record, in metadata.json "holdouts"), the regime the version will serve.
    """
    candidate, popularity = metrics["candidate"]["hr"], metrics["popularity"]["hr"]
    users = metrics["candidate"].get("users")
    on = f" on the {users:,} recent held-out users" if isinstance(users, int) else ""
    if not candidate > popularity:
        return f"HR@10 {candidate:.4f} does not beat popularity's {popularity:.4f}{on}"
    active = metrics.get("active")
    if active is not None and candidate < active["hr"] - tolerance:
        return (
            f"HR@10 {candidate:.4f} is worse than the active model's {active['hr']:.4f} "
            f"by more than {tolerance:g}{on}"
        )
    return None


def reference_distributions(train: Interactions) -> dict[str, Any]:
    """What the drift tracker compares live traffic with: item popularity and the vocabularies' sizes."""
    counts = np.bincount(train.items, minlength=train.n_items).astype(np.float64)
    share = counts / counts.sum() if counts.sum() else counts
    order = np.argsort(-share, kind="stable")[:REFERENCE_TOP_ITEMS]
    return DriftReference(
        item_share={train.item_vocab.ids[i]: round(float(share[i]), 8) for i in order},
        users=train.n_users,
        items=train.n_items,
        events=len(train.items),
    ).to_dict()


def metadata(settings: Settings, candidate: Candidate, version: int) -> dict[str, Any]:
    meta = {
        "model": settings.model_name,
        "version": version,
        "created": time.time(),
        "parent_version": candidate.parent,
        "metrics": candidate.metrics,
        "seconds": dict(candidate.seconds),
        **candidate.summary,
    }
    return attach(meta)  # the window's and the training's lineage joined in "lineage"


def load_active(registry: ModelRegistry, workdir: Path) -> tuple[int, Any] | None:
    """The active version's model for warm start and comparison (None before the first activation)."""
    from recstream.retrain import cf_model as model

    active = registry.state().active
    if active is None:
        return None
    directory = registry.download_version(active, workdir / f"parent-{active}")
    return active, model.load(directory)


def export_candidate(
    settings: Settings, candidate: Candidate, version: int, workdir: Path, exported: Exported | None = None
) -> Path:
    """The version directory of `candidate` as `version`, in `workdir` unless `exported` already is it.

    An export stamped with another number (taken meanwhile by another run) is exported again from
    the model state saved beside it.
    """
    from recstream.retrain import cf_model as model
    from recstream.retrain import savedmodel as export

    meta = metadata(settings, candidate, version)
    if exported is not None and exported.version == version:
        (exported.directory / METADATA).write_text(json.dumps(meta, indent=1, sort_keys=True))
        return exported.directory
    trained = candidate.trained
    if trained is None:
        if exported is None:
            raise ValueError("a candidate without its model needs its export")
        log.info(
            "version %d was taken since the candidate was exported: exporting it again as %d",
            exported.version,
            version,
        )
        trained = model.load(exported.directory)
    return export.export(trained, workdir / str(version), version, meta, settings.model_name)


def publish(
    settings: Settings,
    registry: ModelRegistry,
    candidate: Candidate,
    workdir: Path,
    exported: Exported | None = None,
    announcing: Callable[[Outcome], None] | None = None,
    not_served: str | None = None,
) -> Outcome:
    """Step 3 (publish): gate; upload as the next version and announce `published`, or announce
    `rejected` with the reason. `announcing` gets the outcome just before it is announced.
    `not_served`: a version for the record only (a rebuild), uploaded when it passes the gate
    but announced `rejected` with this reason, so that no updater serves it."""
    from recstream.stream.producer import EventProducer

    reason = gate(candidate.metrics, settings.gate_tolerance)
    version = registry.next_version()
    flat = _flat_metrics(candidate.metrics)
    with EventProducer(settings, client_id="recstream-retrain") as producer:
        if reason is not None:
            event = ModelEvent(REJECTED, settings.model_name, version, flat, reason=f"gate: {reason}")
            outcome = Outcome(REJECTED, version, candidate.metrics, event.reason, candidate.seconds)
        else:
            started = time.monotonic()
            directory = export_candidate(settings, candidate, version, workdir, exported)
            registry.upload_version(directory, version)
            candidate.seconds["export"] = round(time.monotonic() - started, 2)
            if not_served is None:
                event = ModelEvent(PUBLISHED, settings.model_name, version, flat)
            else:
                event = ModelEvent(REJECTED, settings.model_name, version, flat, reason=not_served)
            outcome = Outcome(event.event, version, candidate.metrics, event.reason, candidate.seconds)
        if announcing is not None:
            announcing(outcome)
        lineage = for_event(of_candidate(candidate.summary, candidate.parent))
        registry.announce(event, producer, settings.model_updates_topic, lineage=lineage)
    return outcome


def retrain_once(
    settings: Settings,
    progress: Progress | None = None,
    params: Any = None,
    drift_from: float | None = None,
    tune: TuneRequest | None = None,
) -> Outcome:
    """One retrain now (`params`: retrain.cf_model.Params, default ones when None): the three
    steps in this process. `drift_from`: the event-time start of the concept drift that
    triggered it (the purchases since then weigh at least RETRAIN_DRIFT_SHARE, and the gate
    judges them). `tune`: try a few parameters first (retrain.tune) and train the best.

    Raises NotEnoughData when the window is too small to train and judge a model.
    """
    from recstream.stream.storage import make_client

    registry = ModelRegistry(make_client(settings), settings.models_bucket, settings.model_name)
    with tempfile.TemporaryDirectory(prefix="recstream-retrain-") as tmp:
        workdir = Path(tmp)
        prepared = prepare_data(settings, drift_from=drift_from)
        candidate = train_and_evaluate(prepared, registry, workdir, progress, params, tune)
        return publish(settings, registry, candidate, workdir)


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
