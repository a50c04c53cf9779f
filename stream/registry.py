"""The model registry in the object store: version directories and their life events.

Layout under the models bucket (DESIGN: `models/<model>/<version>/`):
- `<model>/<version>/...`: a TF Serving version directory (SavedModel, assets.extra,
  metadata.json). It is uploaded under `<model>/_incoming/<version>-<nonce>/` first and
  copied into place with metadata.json last; a version counts only once its `published`
  record exists, so a crash mid-export leaves nothing visible (the next version number
  skips the partial directory).
- `<model>/_events/<ns>-<version>-<event>.json`: one object per `model-updates` event,
  never rewritten. Several programs write events (retrain, updater, rollback), so an
  append-only log cannot lose one writer's update to another's.
- `<model>/registry.json`: the state folded from the log (active, previous, per-version
  status and metrics), rewritten after each event for readers that want one object.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minio import Minio
from minio.commonconfig import CopySource
from prometheus_client import Counter

from recstream.stream import storage
from recstream.stream.contracts.metadata import METADATA, newest_event_ts
from recstream.stream.contracts.model_events import (
    ACTIVATED,
    MAX_EVENT_BYTES,
    PUBLISHED,
    REJECTED,
    ROLLED_BACK,
    ModelEvent,
    parse_model_event,
)
from recstream.stream.contracts.records import InvalidMessage

if TYPE_CHECKING:
    from recstream.stream.producer import EventProducer

log = logging.getLogger(__name__)

INVALID_EVENTS = Counter(
    "recstream_registry_invalid_events_total",
    "Objects under <model>/_events/ skipped because they are not a valid event",
    ["model"],
)


@dataclass
class RegistryState:
    model: str
    active: int | None = None
    previous: int | None = None
    status: dict[int, str] = field(default_factory=dict)
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    events: list[ModelEvent] = field(default_factory=list)
    # version -> the lineage its `published` / `rejected` event object carries (retrain/lineage.py)
    lineage: dict[int, dict[str, Any]] = field(default_factory=dict)

    def apply(self, event: ModelEvent, lineage: dict[str, Any] | None = None) -> None:
        self.events.append(event)
        if lineage is not None and event.event in (PUBLISHED, REJECTED):
            self.lineage.setdefault(event.version, lineage)
        if event.event == PUBLISHED:
            self.status[event.version] = PUBLISHED
            self.metrics[event.version] = event.metrics
        elif event.event == REJECTED:
            self.status[event.version] = REJECTED
        elif event.event == ACTIVATED:
            if self.active is not None and self.active != event.version:
                if self.previous is not None and self.previous != event.version:
                    self.status[self.previous] = "retired"
                self.previous = self.active
                self.status[self.active] = "previous"
            self.active = event.version
            self.status[event.version] = "active"
        elif event.event == ROLLED_BACK:
            self.status[event.version] = ROLLED_BACK
            if event.to is not None:
                self.previous, self.active = None, event.to
                self.status[event.to] = "active"

    def published(self) -> list[int]:
        """Versions that completed export (whatever happened to them afterwards)."""
        return sorted({e.version for e in self.events if e.event == PUBLISHED})

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "active": self.active,
            "previous": self.previous,
            "versions": {
                str(v): {"status": s, "metrics": self.metrics.get(v, {})}
                for v, s in sorted(self.status.items())
            },
            "updated": time.time(),
        }


class ModelRegistry:
    def __init__(self, client: Minio, bucket: str, model: str) -> None:
        self.client, self.bucket, self.model = client, bucket, model
        self._events: dict[str, ModelEvent | None] = {}  # event objects are never rewritten: read once
        self._lineage: dict[str, dict[str, Any]] = {}  # event object -> the lineage it carries

    # -- events ------------------------------------------------------------------------------
    def record(self, event: ModelEvent, lineage: dict[str, Any] | None = None) -> None:
        """Append the event to the log, then refresh registry.json.

        `lineage` (retrain/lineage.py) goes into the event object beside the event's fields (the
        `model-updates` record stays the contract's); readers of the event ignore it.
        """
        name = f"{self.model}/_events/{time.time_ns():020d}-{event.version:010d}-{event.event}.json"
        body = event.to_json()
        if lineage is not None:
            body = json.dumps({**event.to_dict(), "lineage": lineage}, separators=(",", ":")).encode()
            if len(body) > MAX_EVENT_BYTES:  # never make the event unreadable: drop the lineage
                log.warning("lineage of version %d too large for its event object: left out", event.version)
                body = event.to_json()
        self._put(name, body, "application/json")
        state = self.state()
        self._put(
            f"{self.model}/registry.json", json.dumps(state.to_dict(), indent=1).encode(), "application/json"
        )

    def announce(
        self,
        event: ModelEvent,
        producer: EventProducer,
        topic: str,
        lineage: dict[str, Any] | None = None,
    ) -> None:
        """Record the event (with `lineage` in the registry's object), then publish it on
        `model-updates` (so a reader of the topic always finds the registry at least as new as the
        event), and wait for delivery."""
        self.record(event, lineage)
        producer.send(topic, event.to_json(), key=event.model)
        producer.flush()
        log.info(
            "%s %s version %d%s",
            event.event,
            event.model,
            event.version,
            f": {event.reason}" if event.reason else "",
        )

    def state(self) -> RegistryState:
        state = RegistryState(self.model)
        names = sorted(
            o.object_name
            for o in self.client.list_objects(self.bucket, f"{self.model}/_events/", recursive=True)
        )
        for name in names:
            if name not in self._events:
                self._events[name] = self._read_event(name)
            if (event := self._events[name]) is not None:
                state.apply(event, self._lineage.get(name))
        return state

    def _read_event(self, name: str) -> ModelEvent | None:
        """The event an object holds, or None (logged, counted, remembered) when it holds none:
        one malformed object must not stop every reader of the registry."""
        try:
            data = self._get(name, limit=MAX_EVENT_BYTES)  # a store error is raised: state() is retried
        except InvalidMessage as exc:
            data, reason = None, exc.reason
        if data is not None:
            try:
                event = parse_model_event(data)
                self._remember_lineage(name, data)
                return event
            except InvalidMessage as exc:
                reason = exc.reason
            except Exception as exc:  # a parser bug must not wedge the registry either
                reason = type(exc).__name__
                log.error("registry: event %s could not be parsed", name, exc_info=True)
        log.warning("registry: ignoring unreadable event %s (%s)", name, reason)
        INVALID_EVENTS.labels(self.model).inc()
        return None

    def _remember_lineage(self, name: str, data: bytes) -> None:
        """Keep the lineage an event object carries (the event itself is already validated)."""
        found = json.loads(data).get("lineage")
        if isinstance(found, dict):
            self._lineage[name] = found

    # -- versions ----------------------------------------------------------------------------
    def prefix(self, version: int) -> str:
        return f"{self.model}/{version}/"

    def _version_dirs(self) -> set[int]:
        found = set()
        for obj in self.client.list_objects(self.bucket, f"{self.model}/"):
            name = obj.object_name.removeprefix(f"{self.model}/").rstrip("/")
            if obj.is_dir and name.isdigit():
                found.add(int(name))
        return found

    def next_version(self) -> int:
        """One above every version ever registered or partly uploaded: numbers are never reused."""
        taken = self._version_dirs() | {e.version for e in self.state().events}
        return max(taken, default=0) + 1

    def upload_version(self, local_dir: Path, version: int) -> None:
        """Upload a version directory so it appears complete or not at all (metadata.json last)."""
        if not (local_dir / METADATA).is_file():
            raise ValueError(f"{local_dir} has no {METADATA}")
        incoming = f"{self.model}/_incoming/{version}-{uuid.uuid4().hex[:12]}/"
        relative = storage.upload_dir(self.client, self.bucket, local_dir, incoming, last=METADATA)
        for rel in relative:
            self.client.copy_object(
                self.bucket, self.prefix(version) + rel, CopySource(self.bucket, incoming + rel)
            )
        for rel in relative:
            self.client.remove_object(self.bucket, incoming + rel)
        log.info("uploaded version %d (%d files)", version, len(relative))

    def download_version(self, version: int, dest: Path) -> Path:
        """Download a complete version directory into `dest` (which must not exist yet)."""
        prefix = self.prefix(version)
        objects = list(self.client.list_objects(self.bucket, prefix, recursive=True))
        names = [o.object_name for o in objects]
        if prefix + METADATA not in names:
            raise FileNotFoundError(f"version {version} of {self.model} is not in the registry's bucket")
        for name in names:  # every key checked before the destination is made
            storage.contained_path(dest, name.removeprefix(prefix))
        dest.mkdir(parents=True)
        return storage.download_dir(self.client, self.bucket, names, prefix, dest)

    def metadata(self, version: int) -> dict[str, Any]:
        return json.loads(self._get(self.prefix(version) + METADATA))

    # -- plumbing ----------------------------------------------------------------------------
    def _put(self, name: str, data: bytes, content_type: str) -> None:
        storage.put_object(self.client, self.bucket, name, data, content_type)

    def _get(self, name: str, limit: int | None = None) -> bytes:
        return storage.read_object(self.client, self.bucket, name, limit)


# -- history (`recstream versions`) ----------------------------------------------------------------
def _figures(meta: dict[str, Any] | None, flat: dict[str, Any]) -> dict[str, Any]:
    """HR@10 of the version, popularity and its parent on the same (the gate's) holdout."""
    metrics = (meta or {}).get("metrics") or {}
    if metrics.get("candidate"):
        k = metrics["candidate"].get("k", 10)
        pick = {"candidate": f"hr@{k}", "popularity": f"popularity_hr@{k}", "active": f"parent_hr@{k}"}
        figures = {name: metrics[key]["hr"] for key, name in pick.items() if key in metrics}
        figures[f"ndcg@{k}"] = metrics["candidate"].get("ndcg")
        figures["holdout_users"] = metrics["candidate"].get("users")
        return figures
    renamed = {"active_hr@10": "parent_hr@10"}
    keep = ("hr@10", "ndcg@10", "popularity_hr@10", "active_hr@10", "holdout_users")
    return {renamed.get(key, key): flat[key] for key in keep if key in flat}


def version_history(registry: ModelRegistry) -> list[dict[str, Any]]:
    """Every version of the registry, oldest first: when it was made, its data window and offsets,
    HR@10 against popularity and its parent on the same holdout, status (with the reason of a
    rejection or rollback), activations and their freshness, and its lineage.

    Reads the registry only: its event objects and each exported version's metadata.json.
    """
    state = registry.state()
    exported = set(state.published())
    history = []
    for version in sorted(state.status):
        events = [e for e in state.events if e.version == version]
        meta: dict[str, Any] | None = None
        if version in exported:
            try:
                meta = registry.metadata(version)
            except Exception as exc:  # a version directory removed by hand: the events still tell
                log.warning("version %d: metadata.json unreadable (%s)", version, exc)
        published = next((e for e in events if e.event == PUBLISHED), None)
        rejected = [e for e in events if e.event == REJECTED]
        rolled = [e for e in events if e.event == ROLLED_BACK]
        status = state.status[version]
        reason = None
        if status == REJECTED and rejected:
            reason = rejected[-1].reason
        elif status == ROLLED_BACK and rolled:
            reason = f"rolled back to version {rolled[-1].to}"
        lineage = (meta or {}).get("lineage") or state.lineage.get(version)
        newest = newest_event_ts(meta) if meta else (lineage or {}).get("newest_event_ts")
        activations = [
            {
                "at": e.ts,
                "event_to_activation_s": round(e.ts - newest, 3) if newest is not None else None,
            }
            for e in state.events
            if (e.event == ACTIVATED and e.version == version) or (e.event == ROLLED_BACK and e.to == version)
        ]
        window = {k: v for k, v in ((meta or {}).get("window") or {}).items() if k != "recency"}
        history.append(
            {
                "version": version,
                "status": status,
                "reason": reason,
                "created": (meta or {}).get("created", events[0].ts if events else None),
                "window": window or None,
                "offsets": (lineage or {}).get("partitions"),
                "hr@10": _figures(meta, (published or (rejected[0] if rejected else events[0])).metrics),
                "parent_version": (meta or {}).get("parent_version", (lineage or {}).get("parent_version")),
                "newest_event_ts": newest,
                "activations": activations,
                "lineage": lineage,
            }
        )
    return history
