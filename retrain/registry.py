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

import io
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

from stream.errors import RecstreamError
from stream.model_events import (
    ACTIVATED,
    MAX_EVENT_BYTES,
    PUBLISHED,
    REJECTED,
    ROLLED_BACK,
    ModelEvent,
    parse_model_event,
)
from stream.schemas import InvalidMessage

if TYPE_CHECKING:
    from stream.producer import EventProducer

log = logging.getLogger(__name__)

METADATA = "metadata.json"
INVALID_EVENTS = Counter(
    "recstream_registry_invalid_events_total",
    "Objects under <model>/_events/ skipped because they are not a valid event",
    ["model"],
)


class UnsafeObjectKey(RecstreamError, ValueError):
    """An object key that would write outside the download's destination; nothing was written."""


def contained_path(dest: Path, relative_key: str) -> Path:
    """Where the object named `relative_key` (its key below the downloaded prefix) goes in `dest`.

    Refused before any byte is written: an empty key, an absolute one, empty / `.` / `..` parts,
    NUL or backslashes, and anything that resolves (symlinks included) outside `dest`.
    """
    parts = relative_key.split("/")
    if (
        not relative_key
        or relative_key.startswith("/")
        or "\\" in relative_key
        or "\x00" in relative_key
        or any(part in {"", ".", ".."} for part in parts)
    ):
        raise UnsafeObjectKey(f"object key {relative_key!r} is not a plain relative path")
    root = dest.resolve()
    target = (root / relative_key).resolve()
    if not target.is_relative_to(root) or target == root:
        raise UnsafeObjectKey(f"object key {relative_key!r} resolves outside {dest}")
    return target


@dataclass
class RegistryState:
    model: str
    active: int | None = None
    previous: int | None = None
    status: dict[int, str] = field(default_factory=dict)
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    events: list[ModelEvent] = field(default_factory=list)

    def apply(self, event: ModelEvent) -> None:
        self.events.append(event)
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

    # -- events ------------------------------------------------------------------------------
    def record(self, event: ModelEvent) -> None:
        """Append the event to the log, then refresh registry.json."""
        name = f"{self.model}/_events/{time.time_ns():020d}-{event.version:010d}-{event.event}.json"
        self._put(name, event.to_json(), "application/json")
        state = self.state()
        self._put(
            f"{self.model}/registry.json", json.dumps(state.to_dict(), indent=1).encode(), "application/json"
        )

    def announce(self, event: ModelEvent, producer: EventProducer, topic: str) -> None:
        """Record the event, then publish it on `model-updates` (so a reader of the topic always
        finds the registry at least as new as the event), and wait for delivery."""
        self.record(event)
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
                state.apply(event)
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
                return parse_model_event(data)
            except InvalidMessage as exc:
                reason = exc.reason
            except Exception as exc:  # a parser bug must not wedge the registry either
                reason = type(exc).__name__
                log.error("registry: event %s could not be parsed", name, exc_info=True)
        log.warning("registry: ignoring unreadable event %s (%s)", name, reason)
        INVALID_EVENTS.labels(self.model).inc()
        return None

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
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        if not any(p.relative_to(local_dir).as_posix() == METADATA for p in files):
            raise ValueError(f"{local_dir} has no {METADATA}")
        incoming = f"{self.model}/_incoming/{version}-{uuid.uuid4().hex[:12]}/"
        for path in files:
            self.client.fput_object(self.bucket, incoming + path.relative_to(local_dir).as_posix(), str(path))
        relative = sorted(
            (p.relative_to(local_dir).as_posix() for p in files), key=lambda rel: rel == METADATA
        )
        for rel in relative:
            self.client.copy_object(
                self.bucket, self.prefix(version) + rel, CopySource(self.bucket, incoming + rel)
            )
        for rel in relative:
            self.client.remove_object(self.bucket, incoming + rel)
        log.info("uploaded version %d (%d files)", version, len(files))

    def download_version(self, version: int, dest: Path) -> Path:
        """Download a complete version directory into `dest` (which must not exist yet)."""
        prefix = self.prefix(version)
        objects = list(self.client.list_objects(self.bucket, prefix, recursive=True))
        names = [o.object_name for o in objects]
        if prefix + METADATA not in names:
            raise FileNotFoundError(f"version {version} of {self.model} is not in the registry's bucket")
        targets = [(name, contained_path(dest, name.removeprefix(prefix))) for name in names]
        dest.mkdir(parents=True)
        for name, target in targets:
            self.client.fget_object(self.bucket, name, str(target))
        return dest

    def metadata(self, version: int) -> dict[str, Any]:
        return json.loads(self._get(self.prefix(version) + METADATA))

    # -- plumbing ----------------------------------------------------------------------------
    def _put(self, name: str, data: bytes, content_type: str) -> None:
        self.client.put_object(self.bucket, name, io.BytesIO(data), len(data), content_type=content_type)

    def _get(self, name: str, limit: int | None = None) -> bytes:
        """The object's bytes; with `limit`, more than `limit` bytes is InvalidMessage (read no further)."""
        response = self.client.get_object(self.bucket, name)
        try:
            if limit is None:
                return response.read()
            data = response.read(limit + 1)
            if len(data) > limit:
                raise InvalidMessage(f"value: larger than {limit} bytes")
            return data
        finally:
            response.close()
            response.release_conn()
