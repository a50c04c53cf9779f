"""`recstream retrain --step data|train|publish --run-id ID`: the retrain as the Kubeflow pipeline's steps.

Each step is a process of its own (a pod in the pipeline), so what one step hands to the next
goes through the object store, under the run's prefix in the models bucket
(`<model>/_runs/<run-id>/`, beside the version directories and the registry):

- data: `data/train.parquet` (training events) and `data/test.parquet` (held-out items), then
  `data.json` (window, timings);
- train: `candidate/` (the SavedModel exported as the version number free at the time) and then
  `candidate.json` (metrics, parent version, timings, metadata fields);
- publish: `outcome.json` just before the outcome is announced; then the whole prefix is removed.
  A publish run again finds it: if the registry has that event, it only finishes the clean-up;
  if not, it publishes afresh (the next number, should the first attempt have uploaded one).

The marker of each step (`data.json`, `candidate.json`) is written after its other objects and
removed first when the step runs again, so a step's output is complete or absent. The work
itself is retrain/job.py's (`prepare_data`, `train_and_evaluate`, `publish`), the same code
one-shot `recstream retrain` runs in one process. The run's own objects are Parquet and JSON;
the candidate is the version directory exactly as one-shot retrain exports it.

Module-level imports are light (the CLI imports `check_run_id` to parse its arguments).
"""

from __future__ import annotations

import io
import json
import logging
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recstream.stream import storage
from recstream.stream.errors import RecstreamError

if TYPE_CHECKING:
    import pandas as pd
    from minio import Minio

    from recstream.retrain.job import Candidate, Outcome, Prepared, Progress, TuneRequest
    from recstream.stream.settings import Settings

log = logging.getLogger(__name__)

STEPS = ("data", "train", "publish")
RUNS = "_runs"  # under <model>/ in the models bucket
DATA_TRAIN, DATA_TEST, DATA_DONE = "data/train.parquet", "data/test.parquet", "data.json"
CANDIDATE, CANDIDATE_DONE = "candidate/", "candidate.json"
OUTCOME = "outcome.json"

# A KFP run id is a UUID; anything that is one safe object-name segment will do.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class MissingStepOutput(RecstreamError):
    """A step's predecessor has not (completely) run for this run id."""


def check_run_id(text: str) -> str:
    if not _RUN_ID.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a run id (1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit)"
        )
    return text


class RunObjects:
    """The objects of one run under `<model>/_runs/<run-id>/` in the models bucket."""

    def __init__(self, client: Minio, bucket: str, model: str, run_id: str) -> None:
        self.client, self.bucket, self.run_id = client, bucket, check_run_id(run_id)
        self.prefix = f"{model}/{RUNS}/{run_id}/"

    @classmethod
    def of(cls, settings: Settings, run_id: str) -> RunObjects:
        from recstream.stream.storage import make_client

        return cls(make_client(settings), settings.models_bucket, settings.model_name, run_id)

    def where(self, name: str = "") -> str:
        return f"{self.bucket}/{self.prefix}{name}"

    def names(self, under: str = "") -> list[str]:
        """Names (relative to the run's prefix) of the objects under `under`, sorted."""
        objects = self.client.list_objects(self.bucket, self.prefix + under, recursive=True)
        return sorted(o.object_name.removeprefix(self.prefix) for o in objects)

    def put(self, name: str, data: bytes, content_type: str) -> None:
        storage.put_object(self.client, self.bucket, self.prefix + name, data, content_type)

    def get(self, name: str) -> bytes | None:
        """The object's bytes, None when it does not exist."""
        return storage.read_object_or_none(self.client, self.bucket, self.prefix + name)

    def put_json(self, name: str, value: Any) -> None:
        self.put(name, json.dumps(value, indent=1).encode(), "application/json")

    def get_json(self, name: str) -> Any:
        data = self.get(name)
        return None if data is None else json.loads(data)

    def put_frame(self, name: str, frame: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False, compression="zstd")
        self.put(name, buffer.getvalue(), "application/vnd.apache.parquet")

    def get_frame(self, name: str) -> pd.DataFrame:
        import pandas as pd

        data = self.get(name)
        if data is None:
            raise MissingStepOutput(f"run {self.run_id}: {self.where(name)} is missing")
        return pd.read_parquet(io.BytesIO(data))

    def upload_dir(self, local: Path, under: str) -> int:
        return len(storage.upload_dir(self.client, self.bucket, local, self.prefix + under))

    def download_dir(self, under: str, dest: Path) -> Path:
        """Every object under `under` into `dest`; a key that would land outside `dest` is refused
        (UnsafeObjectKey) before anything is written."""
        names = self.names(under)
        if not names:
            raise MissingStepOutput(f"run {self.run_id}: nothing under {self.where(under)}")
        keys = [self.prefix + name for name in names]
        return storage.download_dir(self.client, self.bucket, keys, self.prefix + under, dest)

    def remove(self, under: str = "", last: str | None = None) -> int:
        """Remove the objects under `under` (`last`, if among them, after all the others)."""
        names = sorted(self.names(under), key=lambda name: name == last)
        for name in names:
            self.client.remove_object(self.bucket, self.prefix + name)
        return len(names)


# -- step 1: update data ---------------------------------------------------------------------
@dataclass
class DataReport:
    run_id: str
    where: str
    window: dict[str, Any]
    train_events: int
    holdout_users: int
    seconds: dict[str, float]


def data_step(
    settings: Settings, run_id: str, now: float | None = None, drift_from: float | None = None
) -> DataReport:
    """Read the window, split it, and store the split for the train step (NotEnoughData if too small).

    `drift_from` (event time, as in one-shot retrain) boosts the purchases since then and narrows
    the gate to them; it travels to the train and publish steps in `data.json`'s window.
    """
    from recstream.retrain.job import prepare_data

    run = RunObjects.of(settings, run_id)
    prepared = prepare_data(settings, now, drift_from=drift_from)
    started = time.monotonic()
    run.remove()  # a step run again starts this run afresh
    run.put_frame(DATA_TRAIN, prepared.holdout.train)
    run.put_frame(DATA_TEST, prepared.holdout.test)
    prepared.seconds["store"] = round(time.monotonic() - started, 2)
    run.put_json(DATA_DONE, {"window": prepared.window, "seconds": prepared.seconds, "created": time.time()})
    log.info("run %s: data stored under %s", run_id, run.where())
    return DataReport(
        run_id,
        run.where(),
        prepared.window,
        len(prepared.holdout.train),
        len(prepared.holdout.test),
        prepared.seconds,
    )


def load_prepared(run: RunObjects) -> Prepared:
    from recstream.retrain.dataset import Holdout
    from recstream.retrain.job import Prepared

    info = run.get_json(DATA_DONE)
    if info is None:
        raise MissingStepOutput(
            f"run {run.run_id} has no output of the data step ({run.where(DATA_DONE)} is missing): "
            f"run `recstream retrain --step data --run-id {run.run_id}` first"
        )
    holdout = Holdout(train=run.get_frame(DATA_TRAIN), test=run.get_frame(DATA_TEST))
    return Prepared(holdout, info["window"], info["seconds"])


# -- step 2: train ---------------------------------------------------------------------------
@dataclass
class TrainReport:
    run_id: str
    where: str
    candidate: Candidate
    provisional_version: int  # the number the export is stamped with; publish may pick another


def train_step(
    settings: Settings,
    run_id: str,
    progress: Progress | None = None,
    params: Any = None,
    tune: TuneRequest | None = None,
) -> TrainReport:
    """Train and evaluate on the data step's split; export the candidate under the run's prefix."""
    from recstream.retrain import savedmodel as export
    from recstream.retrain.job import metadata, train_and_evaluate
    from recstream.stream.registry import ModelRegistry

    run = RunObjects.of(settings, run_id)
    prepared = load_prepared(run)
    registry = ModelRegistry(run.client, settings.models_bucket, settings.model_name)
    with tempfile.TemporaryDirectory(prefix="recstream-train-") as tmp:
        workdir = Path(tmp)
        candidate = train_and_evaluate(prepared, registry, workdir, progress, params, tune)
        started = time.monotonic()
        version = registry.next_version()  # most likely publish's number: then its export is reused
        directory = export.export(
            candidate.trained,
            workdir / "candidate",
            version,
            metadata(settings, candidate, version),
            settings.model_name,
        )
        run.remove(CANDIDATE_DONE)  # an earlier attempt's output is incomplete from here on
        run.remove(CANDIDATE)
        files = run.upload_dir(directory, CANDIDATE)
        candidate.seconds["stage"] = round(time.monotonic() - started, 2)
        run.put_json(
            CANDIDATE_DONE,
            {
                "version": version,
                "metrics": candidate.metrics,
                "parent": candidate.parent,
                "seconds": candidate.seconds,
                "summary": candidate.summary,
                "created": time.time(),
            },
        )
    log.info("run %s: candidate (%d files) stored under %s", run_id, files, run.where(CANDIDATE))
    return TrainReport(run_id, run.where(CANDIDATE), candidate, version)


# -- step 3: publish -------------------------------------------------------------------------
def publish_step(settings: Settings, run_id: str) -> Outcome:
    """Gate the train step's candidate; publish it as the next version or reject it; clean up the run."""
    from recstream.retrain.job import Candidate, Exported, Outcome, publish
    from recstream.stream.registry import ModelRegistry

    run = RunObjects.of(settings, run_id)
    registry = ModelRegistry(run.client, settings.models_bucket, settings.model_name)
    done = run.get_json(OUTCOME)
    if done is not None:
        announced = {(e.event, e.version) for e in registry.state().events}
        if (done["event"], done["version"]) in announced:  # an earlier attempt stopped cleaning up
            log.info("run %s: already %s as version %d", run_id, done["event"], done["version"])
            run.remove(last=OUTCOME)
            return Outcome(**done)
        log.warning("run %s: an earlier attempt stopped before announcing; publishing again", run_id)
        run.remove(OUTCOME)
    info = run.get_json(CANDIDATE_DONE)
    if info is None:
        raise MissingStepOutput(
            f"run {run_id} has no output of the train step ({run.where(CANDIDATE_DONE)} is missing): "
            f"run `recstream retrain --step train --run-id {run_id}` first"
        )
    candidate = Candidate(info["metrics"], info["parent"], info["seconds"], info["summary"])
    with tempfile.TemporaryDirectory(prefix="recstream-publish-") as tmp:
        workdir = Path(tmp)
        directory = run.download_dir(CANDIDATE, workdir / "candidate")
        outcome = publish(
            settings,
            registry,
            candidate,
            workdir,
            Exported(directory, info["version"]),
            # Recorded before the announcement, so a retry can tell whether it happened.
            announcing=lambda outcome: run.put_json(OUTCOME, asdict(outcome)),
        )
    removed = run.remove(last=OUTCOME)
    log.info("run %s: %d objects removed from %s", run_id, removed, run.where())
    return outcome
