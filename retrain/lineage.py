"""Lineage of a model version: exactly which landed records it learnt from, and with what.

metadata.json "lineage" (and the registry's `published` / `rejected` event objects) say:
- `topic` and `partitions`: per Kafka partition of the transactions topic, the offset ranges
  `[[first, last], ...]` (inclusive, sorted, disjoint) of the records read for the run (training
  events and held-out purchases: the window after deduplication). They come from the landed
  rows' `partition` and `offset` columns, which are the Kafka coordinates of each record;
- `records`: how many records that is; `oldest_event_ts` / `newest_event_ts`: their event times
  (the newest is what the served model's staleness counts from);
- `objects`: how many landed objects hold them and the SHA-256 of their sorted names. Object
  names carry partition and offset span (`part-<partition>-<first>-<last>.parquet`), so the list
  is the objects whose span overlaps a recorded range;
- `parent_version`, `parameters`, `seed`, `determinism` (how training was made reproducible),
  `rebuild_of` (the version a `--rebuild` reproduced, else None);
- `code`: the recstream version and the git commit (None outside a git checkout; `dirty` when
  tracked files differ from it); `libraries`: TensorFlow, Keras, pandas, pyarrow, numpy versions
  (read from package metadata: nothing here imports TensorFlow).

retrain.rebuild trains a version again from these records and parameters into a new version.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recstream.stream.errors import RecstreamError

if TYPE_CHECKING:
    import pandas as pd
    from minio import Minio


log = logging.getLogger(__name__)

LIBRARIES = ("tensorflow", "keras", "pandas", "pyarrow", "numpy")
ROOT = Path(__file__).resolve().parents[1]
# The registry's event objects are read with a 64 KiB bound: the event carries the ranges only
# while they are this small (metadata.json always has them all).
EVENT_RANGES_BYTES = 32 * 1024


class LineageError(RecstreamError):
    """A version's lineage is missing or its records are no longer what it recorded."""


# -- offsets -----------------------------------------------------------------------------------
def offset_ranges(offsets: Iterable[int]) -> list[list[int]]:
    """Sorted distinct offsets as inclusive `[first, last]` runs of consecutive offsets."""
    raw = offsets if isinstance(offsets, np.ndarray) else list(offsets)
    values = np.unique(np.asarray(raw, dtype=np.int64))
    if not len(values):
        return []
    breaks = np.flatnonzero(np.diff(values) != 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(values) - 1]])
    return [[int(values[s]), int(values[e])] for s, e in zip(starts, ends, strict=True)]


def partition_ranges(frame: pd.DataFrame) -> dict[str, list[list[int]]]:
    """Per partition (as a string key, JSON's), the offset ranges of the frame's rows."""
    if frame.empty:
        return {}
    ranges = {}
    for partition, offsets in frame.groupby("partition", sort=True)["offset"]:
        ranges[str(int(partition))] = offset_ranges(offsets.to_numpy())
    return ranges


def in_ranges(partitions: np.ndarray, offsets: np.ndarray, ranges: dict[str, list[list[int]]]) -> np.ndarray:
    """Bool mask: which (partition, offset) pairs fall in the recorded ranges."""
    partitions = np.asarray(partitions, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    mask = np.zeros(len(offsets), dtype=bool)
    for key, runs in ranges.items():
        if not runs:
            continue
        mine = partitions == int(key)
        bounds = np.asarray(runs, dtype=np.int64)
        at = np.searchsorted(bounds[:, 0], offsets[mine], side="right") - 1
        ok = at >= 0
        ok[ok] = offsets[mine][ok] <= bounds[at[ok], 1]
        mask[np.flatnonzero(mine)] = ok
    return mask


def _overlaps(runs: list[list[int]], first: int, last: int) -> bool:
    bounds = np.asarray(runs, dtype=np.int64)
    at = int(np.searchsorted(bounds[:, 0], last, side="right")) - 1
    return at >= 0 and int(bounds[at, 1]) >= first


# -- landed objects ----------------------------------------------------------------------------
def landed_objects(
    client: Minio, bucket: str, ranges: dict[str, list[list[int]]], oldest_ts: float, newest_ts: float
) -> list[str]:
    """Sorted names of the landed objects whose offset span overlaps a recorded range.

    Objects are filed by their rows' event date, so only the dates from `oldest_ts` to
    `newest_ts` are listed.
    """
    from recstream.stream.contracts.lake import event_date, parse_object_name
    from recstream.stream.lake import object_names

    names = []
    for name in object_names(client, bucket, event_date(oldest_ts), event_date(newest_ts)):
        try:
            _, partition, first, last = parse_object_name(name)
        except ValueError:
            continue  # not an object ingest wrote
        runs = ranges.get(str(partition))
        if runs and _overlaps(runs, first, last):
            names.append(name)
    return sorted(names)


def digest(names: Iterable[str]) -> str:
    """SHA-256 of the sorted object names, one per line."""
    return "sha256:" + hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def data_lineage(client: Minio, bucket: str, topic: str, frame: pd.DataFrame) -> dict[str, Any]:
    """The records part of the lineage, from the frame read for a run (columns partition, offset, ts)."""
    ranges = partition_ranges(frame)
    oldest = float(frame["ts"].min()) if len(frame) else None
    newest = float(frame["ts"].max()) if len(frame) else None
    names = landed_objects(client, bucket, ranges, oldest, newest) if oldest and newest else []
    return {
        "topic": topic,
        "partitions": ranges,
        "records": len(frame),
        "oldest_event_ts": oldest,
        "newest_event_ts": newest,
        "objects": {"count": len(names), "sha256": digest(names)},
        "rebuild_of": None,
    }


# -- code and libraries ------------------------------------------------------------------------
def git_commit(root: Path = ROOT) -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it; None values without git."""
    found: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        top = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        lines = top.stdout.split()
        if top.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root.resolve():
            return found  # not a checkout of this project (an installed package, say)
        found["commit"] = lines[1]
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        found["dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return found


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def code_versions() -> dict[str, Any]:
    return {
        "code": {"recstream": _version("recstream"), **git_commit()},
        "libraries": {name: _version(name) for name in LIBRARIES},
    }


# -- determinism -------------------------------------------------------------------------------
def deterministic_training(single_thread: bool = False) -> dict[str, Any]:
    """Make this process's TensorFlow training reproducible on CPU; returns what was applied.

    cf_model.train seeds python, numpy, TensorFlow and Keras from `Params.seed`; op determinism
    makes the kernels deterministic as well. Measured on the whole seed: with it, a run with
    TensorFlow's default thread pools and one with a single thread train byte-identical weights,
    so `single_thread` (possible only before TensorFlow's runtime starts) is not needed.
    """
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    if single_thread and _applied.get("threads") is None:
        try:
            tf.config.threading.set_inter_op_parallelism_threads(1)
            tf.config.threading.set_intra_op_parallelism_threads(1)
            _applied["threads"] = 1
        except RuntimeError:  # the runtime is initialised: the thread pools are fixed now
            log.info("TensorFlow already started: training keeps its thread pools")
    return {"op_determinism": True, "threads": _applied.get("threads")}


_applied: dict[str, Any] = {}  # what this process set (thread pools can be set once)


def training_lineage() -> dict[str, Any]:
    """What the training process adds: code and library versions (determinism is set apart)."""
    return code_versions()


def attach(meta: dict[str, Any]) -> dict[str, Any]:
    """metadata.json with "lineage": the window's records part moved out of "window", joined with
    the parent, parameters, seed and the training process's part (candidate summary "lineage")."""
    window = dict(meta.get("window") or {})
    records = window.pop("lineage", None) or {}
    trained = meta.get("lineage") or {}
    parameters = meta.get("parameters") or {}
    lineage = {
        **records,
        "parent_version": meta.get("parent_version"),
        "parameters": parameters,
        "seed": parameters.get("seed"),
        **trained,
    }
    return {**meta, "window": window, "lineage": lineage}


def for_event(lineage: dict[str, Any]) -> dict[str, Any]:
    """The lineage a registry event object carries: all of it, unless the ranges are too many
    for the event's size bound (then `partitions` is left to metadata.json)."""
    import json

    if len(json.dumps(lineage.get("partitions") or {})) <= EVENT_RANGES_BYTES:
        return lineage
    return {**lineage, "partitions": None, "partitions_in": "metadata.json"}


def of_candidate(summary: dict[str, Any], parent: int | None) -> dict[str, Any]:
    """The lineage a candidate's metadata.json will have (for its registry event)."""
    return attach({**summary, "parent_version": parent})["lineage"]


# -- reading a version's records again ---------------------------------------------------------
def read_records(client: Minio, bucket: str, lineage: dict[str, Any]) -> pd.DataFrame:
    """The records a version learnt from: its objects, filtered to its offset ranges, deduplicated
    as the reader does. LineageError when the objects or the records are not the recorded ones."""
    from recstream.stream.contracts.lake import COLUMNS
    from recstream.stream.lake import latest_per_event, read_objects

    ranges = lineage.get("partitions")
    if not ranges or lineage.get("records") is None:
        raise LineageError("the version's lineage has no offset ranges")
    names = landed_objects(client, bucket, ranges, lineage["oldest_event_ts"], lineage["newest_event_ts"])
    recorded = lineage.get("objects") or {}
    if digest(names) != recorded.get("sha256"):
        raise LineageError(
            f"the landed objects changed since the version was trained: {len(names)} objects now "
            f"overlap its offset ranges, {recorded.get('count')} did (digest differs)"
        )
    frame = read_objects(client, bucket, names, COLUMNS)
    frame = frame[in_ranges(frame["partition"].to_numpy(), frame["offset"].to_numpy(), ranges)]
    frame = latest_per_event(frame).reset_index(drop=True)
    if len(frame) != lineage["records"] or partition_ranges(frame) != ranges:
        raise LineageError(
            f"the objects hold {len(frame):,} of the version's records in its offset ranges, "
            f"it recorded {lineage['records']:,}"
        )
    return frame
