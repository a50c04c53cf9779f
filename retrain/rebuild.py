"""`recstream retrain --rebuild V`: train version V again from the records its lineage names.

The rebuild reads exactly V's recorded records (refusing when the landed objects or records
changed), applies V's window, parameters and parent, and is uploaded for comparison but never
served.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recstream.retrain.job import Outcome, Prepared, Progress, publish, train_candidate
from recstream.retrain.lineage import LineageError, data_lineage, deterministic_training, read_records
from recstream.stream.settings import Settings

log = logging.getLogger(__name__)

REBUILD_OF = "rebuild of version"  # the reason a rebuilt version is announced with (never served)


@dataclass
class Rebuilt:
    original: int
    original_metrics: dict[str, dict[str, Any]]
    outcome: Outcome


def rebuild(settings: Settings, version: int, progress: Progress | None = None) -> Rebuilt:
    """Train `version` again from its recorded records, window, parent and parameters into a new
    version, uploaded for comparison (when it passes the gate, as any candidate) but announced
    `rejected` with the reason "rebuild of version N", so that no updater serves a model of older
    data in place of the active one; the old version is left as it is."""
    from recstream.retrain import cf_model as model
    from recstream.retrain.dataset import temporal_holdout
    from recstream.stream.contracts.metadata import METADATA
    from recstream.stream.registry import ModelRegistry
    from recstream.stream.storage import make_client

    client = make_client(settings)
    registry = ModelRegistry(client, settings.models_bucket, settings.model_name)
    state = registry.state()
    if version not in state.status:
        raise LineageError(f"model {settings.model_name} has no version {version}")
    if version not in state.published():
        raise LineageError(
            f"version {version} of {settings.model_name} was never exported ({state.status[version]}): "
            "only exported versions can be rebuilt"
        )
    meta = registry.metadata(version)
    lineage = meta.get("lineage") or {}
    if not lineage.get("partitions"):
        raise LineageError(f"version {version} has no lineage in its {METADATA} (made before lineage)")
    started = time.monotonic()
    frame = read_records(client, settings.data_bucket, lineage)
    # Op determinism as the original had; one thread is not needed (measured: identical weights
    # with TensorFlow's default pools and with one thread, which trains 5.6 times slower).
    applied = deterministic_training()
    window = {key: value for key, value in meta["window"].items() if key != "lineage"}
    records = data_lineage(client, settings.data_bucket, lineage.get("topic") or "", frame)
    records["topic"] = lineage.get("topic")
    records["rebuild_of"] = version
    window["lineage"] = records
    holdout = temporal_holdout(frame[["user_id", "item_id", "ts", "offset"]])
    prepared = Prepared(holdout, window, {"data": round(time.monotonic() - started, 2)})
    params = model.Params.from_dict(meta["parameters"])  # fields it predates as they were then
    log.info(
        "rebuilding version %d from %d records (threads %s)", version, len(frame), applied.get("threads")
    )
    with tempfile.TemporaryDirectory(prefix="recstream-rebuild-") as tmp:
        workdir = Path(tmp)
        parent = None
        if meta.get("parent_version") is not None:
            number = int(meta["parent_version"])
            parent = (number, model.load(registry.download_version(number, workdir / f"parent-{number}")))
        candidate = train_candidate(prepared, parent, progress, params)
        outcome = publish(settings, registry, candidate, workdir, not_served=f"{REBUILD_OF} {version}")
    return Rebuilt(version, meta.get("metrics") or {}, outcome)
