"""What the updater does to one model: activate a published version, restore the active one, roll back.

The registry (stream/registry.py) is the source of truth: a version is processed only while
its status is `published`, so replaying `model-updates` or restarting the updater never
activates or announces anything twice. Every change to what is served holds the model's
lock file under the model base path, shared with `recstream rollback` in other processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recstream.stream.contracts.metadata import newest_event_ts
from recstream.stream.contracts.model_events import ACTIVATED, PUBLISHED, REJECTED, ROLLED_BACK, ModelEvent
from recstream.stream.registry import ModelRegistry, RegistryState
from recstream.stream.settings import Settings
from recstream.stream.storage import UnsafeObjectKey
from recstream.updater import metrics
from recstream.updater.errors import (
    NothingToRollBack,
    RollbackError,
    SwapFailed,
    Unavailable,
    UnknownVersion,
    UpdaterError,
)
from recstream.updater.locks import file_lock
from recstream.updater.serving import PREVIOUS, STABLE, ConfigFile, Entry, Target
from recstream.updater.staging import VersionDirs
from recstream.updater.swap import Fleet
from recstream.updater.validate import validate

if TYPE_CHECKING:
    from recstream.stream.producer import EventProducer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """Knobs of the updater: the first four from Settings (`from_settings`), the rest fixed here."""

    targets: tuple[str, ...]  # TF_SERVING_TARGETS, else TF_SERVING_GRPC
    load_timeout_s: float  # UPDATER_LOAD_TIMEOUT_S
    validate_timeout_s: float  # UPDATER_VALIDATE_TIMEOUT_S
    reconcile_interval_s: float  # UPDATER_RECONCILE_S
    canary_requests: int = 3
    lock_timeout_s: float = 600.0
    rpc_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Options:
        raw = settings.tf_serving_targets or settings.require("tf_serving_grpc")
        return cls(
            targets=tuple(t.strip() for t in raw.split(",") if t.strip()),
            load_timeout_s=settings.updater_load_timeout_s,
            validate_timeout_s=settings.updater_validate_timeout_s,
            reconcile_interval_s=settings.updater_reconcile_s,
        )


def ever_activated(state: RegistryState) -> set[int]:
    """Versions that served as `stable` at some point: the only ones a rollback may go to."""
    return {e.version for e in state.events if e.event == ACTIVATED} | {
        e.to for e in state.events if e.event == ROLLED_BACK and e.to is not None
    }


def pending(state: RegistryState) -> list[int]:
    return sorted(v for v, status in state.status.items() if status == PUBLISHED)


def desired_entry(active: int, previous: int | None) -> Entry:
    versions = {active} | ({previous} if previous is not None else set())
    labels = {STABLE: active} | ({PREVIOUS: previous} if previous is not None else {})
    return Entry(frozenset(versions), labels)


class Updater:
    def __init__(
        self,
        settings: Settings,
        options: Options | None = None,
        *,
        registry: ModelRegistry | None = None,
        producer: EventProducer | None = None,
    ) -> None:
        from recstream.stream.storage import make_client

        self.settings = settings
        self.options = options or Options.from_settings(settings)
        self.model = settings.model_name
        self.registry = registry or ModelRegistry(make_client(settings), settings.models_bucket, self.model)
        self._producer = producer
        self._own_producer = producer is None
        self.dirs = VersionDirs(settings.model_base_path / self.model)
        self.targets = [Target(e, self.options.rpc_timeout_s) for e in self.options.targets]
        self.fleet = Fleet(
            self.model,
            self.dirs.root,
            ConfigFile(settings.model_config_file),
            self.targets,
            load_timeout_s=self.options.load_timeout_s,
            canary_requests=self.options.canary_requests,
        )
        self.lock_path = settings.model_base_path / ".locks" / f"{self.model}.lock"
        self.known_active: int | None = None  # what the last look at the registry said, for cheap checks
        self._newest: dict[int, float | None] = {}  # version -> newest event it learnt from (freshness)

    def close(self) -> None:
        for target in self.targets:
            target.close()
        if self._producer is not None and self._own_producer:
            self._producer.close()
            self._producer = None

    # -- public operations -----------------------------------------------------------------------
    def process(self, version: int) -> ModelEvent | None:
        """Handle a `published` version: activate it or reject it; None if it needs nothing."""
        with self._locked():
            state = self._state()
            self._ensure_serving(state)
            return self._process(state, version)

    def reconcile(self) -> list[ModelEvent]:
        """Make the servers serve the registry's active version, then process versions left published."""
        events: list[ModelEvent] = []
        with self._locked():
            state = self._state()
            self._ensure_serving(state)
            for version in pending(state):
                event = self._process(state, version)
                if event is not None:
                    events.append(event)
                    state = self._state()
            current = self.fleet.current()
            self.dirs.prune(set(current.versions) if current else set())
        return events

    def check(self) -> None:
        """Cheap periodic check: one canary per target; a full reconcile only if something is off."""
        if self.known_active is not None and self.fleet.serves(self.known_active):
            return
        self.reconcile()

    def rollback(self, to: int | None = None) -> ModelEvent:
        """Serve the previous version (or `to`, which must have been activated before) through `stable`."""
        with self._locked():
            state = self._state()
            current = state.active
            if current is None:
                raise NothingToRollBack(f"model {self.model} has no active version: nothing to roll back")
            to = self._rollback_target(state, current, to)
            before = self.fleet.current()
            if not self.dirs.has(to):
                try:
                    self.dirs.stage(to, self._fetch(to))
                except SwapFailed as exc:
                    raise RollbackError(
                        f"version {to} of {self.model} cannot be staged: {exc.reason}"
                    ) from None
            try:
                report = self.fleet.converge(desired_entry(to, None), stable=to)
            except SwapFailed as exc:
                if before is None or to not in before.versions:
                    self.dirs.remove(to)
                raise RollbackError(
                    f"rollback of {self.model} to version {to} failed, serving is unchanged: {exc}"
                ) from None
            self.dirs.prune({to})
            event = ModelEvent(
                ROLLED_BACK,
                self.model,
                current,
                metrics={"canary_latency_ms": report.canary_latency_ms, "seconds": report.seconds},
                to=to,
            )
            self._announce(event)
            metrics.ROLLBACKS.labels(self.model).inc()
            metrics.ACTIVE_VERSION.labels(self.model).set(to)
            self.served_freshness(to)
            self.known_active = to
            return event

    # -- steps -----------------------------------------------------------------------------------
    def _rollback_target(self, state: RegistryState, current: int, to: int | None) -> int:
        if to is None:
            if state.previous is None:
                raise NothingToRollBack(
                    f"model {self.model} has no previous version to roll back to "
                    f"(version {current} is active; name one with --to)"
                )
            return state.previous
        if to == current:
            raise RollbackError(f"version {to} of {self.model} is already active")
        if to not in ever_activated(state):
            if to not in state.status:
                raise UnknownVersion(f"model {self.model} has no version {to}")
            raise UnknownVersion(f"version {to} of {self.model} was never activated ({state.status[to]})")
        return to

    def _process(self, state: RegistryState, version: int) -> ModelEvent | None:
        status = state.status.get(version)
        if status is None:
            log.warning("version %d of %s is not in the registry: ignored", version, self.model)
            return None
        if status != PUBLISHED:
            log.info("version %d of %s is already %s: nothing to do", version, self.model, status)
            return None
        if state.active is not None and version < state.active:
            return self._reject(
                version, SwapFailed("superseded", f"version {state.active} is already active")
            )
        started = time.monotonic()
        try:
            report, metadata = self._activate(state, version)
        except SwapFailed as exc:
            return self._reject(version, exc)
        seconds = round(time.monotonic() - started, 3)
        found = metadata.get("metrics")
        newest = self._newest[version] = newest_event_ts(metadata)
        now = time.time()  # one clock reading: the event's ts and its freshness agree exactly
        freshness = metrics.activated(self.model, newest, now)
        event = ModelEvent(
            ACTIVATED,
            self.model,
            version,
            ts=now,
            metrics={
                **(found if isinstance(found, dict) else {}),
                **state.metrics.get(version, {}),  # the flat figures of the `published` event
                "canary_latency_ms": report.canary_latency_ms,
                "activation_s": seconds,
                **(
                    {"newest_event_ts": newest, "event_to_activation_s": round(freshness, 3)}
                    if freshness is not None
                    else {}
                ),
            },
        )
        self._announce(event)
        metrics.ACTIVATIONS.labels(self.model).inc()
        metrics.ACTIVE_VERSION.labels(self.model).set(version)
        metrics.LAST_ACTIVATION_SECONDS.labels(self.model).set(seconds)
        metrics.LAST_ACTIVATION_TIMESTAMP.labels(self.model).set_to_current_time()
        self.known_active = version
        return event

    def _activate(self, state: RegistryState, version: int) -> tuple[Any, dict[str, Any]]:
        log.info("%s: activating version %d", self.model, version)
        before = self.fleet.current()
        timeout = self.options.validate_timeout_s
        path = self.dirs.stage(version, self._fetch(version), lambda d: validate(d, version, timeout))
        try:
            report = self.fleet.converge(desired_entry(version, state.active), stable=version)
        except BaseException:
            if before is None or version not in before.versions:
                self.dirs.remove(version)
            raise
        self.dirs.prune({version} | ({state.active} if state.active is not None else set()))
        return report, _read_metadata(path)

    def _ensure_serving(self, state: RegistryState) -> None:
        """Load the registry's active (and previous) version again if the servers lost them."""
        active = state.active
        self.known_active = active
        if active is None:
            return
        metrics.ACTIVE_VERSION.labels(self.model).set(active)
        self.served_freshness(active)
        desired = desired_entry(active, state.previous)
        current = self.fleet.current()
        if (
            current is not None
            and current.labels.get(STABLE) == active
            and current.versions <= desired.versions
            and all(self.dirs.has(v) for v in current.versions)
            and self.fleet.serves(active)
        ):
            return
        log.warning(
            "%s: the model servers do not serve active version %d (config: %s): loading it again",
            self.model,
            active,
            current.describe() if current else "no entry",
        )
        try:
            if not self.dirs.has(active):
                self.dirs.stage(active, self._fetch(active))
            if state.previous is not None and not self.dirs.has(state.previous):
                try:
                    self.dirs.stage(state.previous, self._fetch(state.previous))
                except SwapFailed as exc:
                    log.warning("%s: previous version %d left out: %s", self.model, state.previous, exc)
                    desired = desired_entry(active, None)
            self.fleet.converge(desired, stable=active)
        except SwapFailed as exc:
            raise UpdaterError(f"cannot serve active version {active} of {self.model} again: {exc}") from None
        self.dirs.prune(set(desired.versions))
        metrics.RESTORES.labels(self.model).inc()
        log.info("%s: active version %d is served again", self.model, active)

    def _reject(self, version: int, exc: SwapFailed) -> ModelEvent:
        log.warning("%s: version %d rejected: %s", self.model, version, exc)
        event = ModelEvent(REJECTED, self.model, version, reason=str(exc))
        self._announce(event)
        metrics.REJECTIONS.labels(self.model, exc.kind).inc()
        return event

    def served_freshness(self, version: int) -> None:
        """Point the staleness gauge at `version`'s newest event (its metadata.json, read once)."""
        if version not in self._newest:
            try:
                self._newest[version] = newest_event_ts(self.registry.metadata(version))
            except Exception as exc:  # freshness is for the record: never fail serving on it
                log.warning("%s: freshness of version %d unknown: %s", self.model, version, exc)
                return
        metrics.served(self.model, self._newest[version])

    # -- plumbing --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(self.lock_path, self.options.lock_timeout_s, f"the update lock of model {self.model}"):
            yield

    def _state(self) -> RegistryState:
        try:
            return self.registry.state()
        except Exception as exc:  # minio's S3Error, urllib3's connection errors
            raise Unavailable(f"the model registry cannot be read: {type(exc).__name__}: {exc}") from None

    def _fetch(self, version: int) -> Callable[[Path], None]:
        return lambda dest: self._download(version, dest)

    def _download(self, version: int, dest: Path) -> None:
        try:
            self.registry.download_version(version, dest)
        except (FileNotFoundError, UnsafeObjectKey) as exc:  # retrying would not change either
            raise SwapFailed("download", str(exc)) from None
        except Exception as exc:
            raise Unavailable(
                f"version {version} cannot be downloaded: {type(exc).__name__}: {exc}"
            ) from None

    def _announce(self, event: ModelEvent) -> None:
        from recstream.stream.producer import EventProducer

        if self._producer is None:
            self._producer = EventProducer(self.settings, client_id="recstream-updater")
        self.registry.announce(event, self._producer, self.settings.model_updates_topic)


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        found = json.loads((path / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
