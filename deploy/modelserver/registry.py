"""Loaded versions and their lifecycle: TF Serving's ServerCore + AspiredVersionsManager, in small.

A source thread polls each model's base path and marks the versions its policy wants
as *aspired*; a manager thread applies the availability-preserving policy one action
per model at a time (load the highest new aspired version; unload an unaspired one
only once an aspired version is AVAILABLE), so a model never goes dark during a swap.
Every state change is recorded (the servable state monitor behind GetModelStatus)
and logged. Requests resolve a version once and hold a reference to that servable;
an unload waits until those references are released, for at most `unload_wait_s`.

Loads and unloads run on daemon threads. A failure that is not a load error (a bug)
is logged and ends that version in END with the error; the manager goes on. Once the
server stops, a reload answers UNAVAILABLE, and `stop()` waits only `stop_grace_s`
for loads and unloads in progress: a load cannot be interrupted, so it is abandoned
to the exiting process.

Nothing here knows protos or TensorFlow: loading is the injected `load` callable.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from recstream.deploy.modelserver import config as cfg
from recstream.deploy.modelserver.errors import OK, ServingError, from_exception

log = logging.getLogger(__name__)


class State(enum.IntEnum):
    """ModelVersionStatus.State values."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True, slots=True)
class Status:
    code: grpc.StatusCode = OK
    message: str = ""


@dataclass(frozen=True, slots=True)
class VersionStatus:
    version: int
    state: State
    status: Status


class Servable(Protocol):
    """What the registry needs from a loaded version: a reference count it can wait on."""

    def acquire(self) -> None: ...
    def release(self) -> None: ...
    def wait_idle(self, timeout: float | None = None) -> bool: ...


Loader = Callable[[str, int, str], Any]
StateListener = Callable[[str, int, State, Status], None]


@dataclass(slots=True)
class _Harness:
    name: str
    version: int
    path: str
    state: State = State.START
    status: Status = field(default_factory=Status)
    servable: Any = None
    aspired: bool = True
    busy: bool = False


@dataclass(frozen=True, slots=True)
class Options:
    poll_wait_s: float = 1.0
    max_load_retries: int = 5
    load_retry_interval_s: float = 60.0
    allow_labels_for_unavailable: bool = False
    load_threads: int = 2
    # TF Serving waits for a version's requests without a bound; a stuck request would then
    # block every later load and unload of its model. After this, the version is unloaded
    # anyway: the requests still holding it keep their reference and finish on it.
    unload_wait_s: float = 30.0
    # On stop, how long loads and unloads in progress may still finish before they are abandoned.
    stop_grace_s: float = 3.0


def _describe(model: cfg.ModelConfig) -> str:
    policy = model.policy
    detail = {"latest": f"latest {policy.num_versions}", "specific": f"versions {sorted(policy.versions)}"}
    labels = f", labels {dict(model.labels)}" if model.labels else ""
    return f"{model.name} at {model.base_path} ({detail.get(policy.kind, policy.kind)}{labels})"


class Registry:
    def __init__(
        self,
        load: Loader,
        options: Options = Options(),
        list_versions: Callable[[str], dict[int, str]] = cfg.list_versions,
        stop: threading.Event | None = None,
    ) -> None:
        self._load = load
        self._options = options
        self._list_versions = list_versions
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._reload_lock = threading.Lock()
        self._poll_lock = threading.Lock()  # a poll started before a reload must not undo it
        self._stop = stop or threading.Event()  # shared with the process, so a signal ends a long load
        self._models: dict[str, cfg.ModelConfig] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._harnesses: dict[str, dict[int, _Harness]] = {}
        self._states: dict[str, dict[int, VersionStatus]] = {}
        self._poll_errors: dict[str, str] = {}
        self._listeners: list[StateListener] = []
        self._slots = threading.BoundedSemaphore(max(options.load_threads, 1))  # loads/unloads at once
        self._actions = 0  # loads and unloads started and not finished
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def start(self, models: list[cfg.ModelConfig]) -> None:
        """Apply the initial config and wait for its models, as TF Serving does before it listens.

        A model whose latest version fails raises UNKNOWN (TF Serving exits then too); a
        model with no versions on disk yet does not hold the start up.
        """
        self._threads = [
            threading.Thread(target=self._manage_loop, name="servable-manager", daemon=True),
            threading.Thread(target=self._poll_loop, name="servable-source", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.reload(models)

    def stop(self) -> bool:
        """Stop; False when loads or unloads were still running after `stop_grace_s` (abandoned)."""
        self._stop.set()
        with self._lock:
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            if self._changed.wait_for(lambda: not self._actions, self._options.stop_grace_s):
                return True
            running = [
                f"{h.name} version {h.version} ({h.state.name})"
                for harnesses in self._harnesses.values()
                for h in harnesses.values()
                if h.busy
            ]
        log.warning("stopping without waiting for the load or unload of %s", ", ".join(running) or "?")
        return False

    def _shutting_down(self) -> ServingError:
        return ServingError(grpc.StatusCode.UNAVAILABLE, "The model server is shutting down")

    # -- config --------------------------------------------------------------------------------
    def reload(self, models: list[cfg.ModelConfig]) -> None:
        """Replace the config (HandleReloadConfigRequest); labels are checked first, then applied.

        Like ServerCore, it waits only for models that are new to the config (at the start:
        all of them); new versions of known models load in the background.
        """
        with self._reload_lock:
            if self._stop.is_set():
                raise self._shutting_down()
            with self._lock:
                labels = self._checked_labels(models)
                new = {m.name for m in models} - self._models.keys()
                changed = list(self._models.values()) != models
                self._models = {m.name: m for m in models}
                self._labels = labels
            if changed:
                log.info("config: %s", "; ".join(map(_describe, models)) or "no models")
            self.poll()
            self._wait_available(new)

    def _checked_labels(self, models: list[cfg.ModelConfig]) -> dict[str, dict[str, int]]:
        """ServerCore::UpdateModelVersionLabelMap: a label may only name an AVAILABLE version.

        With allow_labels_for_unavailable, a label that is new (or keeps its version) may
        name any version, so a version can be labelled before it has loaded.
        """
        result: dict[str, dict[str, int]] = {}
        for model in models:
            for label, version in model.labels.items():
                allow_any = False
                if self._options.allow_labels_for_unavailable:
                    existing = self._labels.get(model.name, {}).get(label)
                    allow_any = existing is None or existing == version
                state = self._states.get(model.name, {}).get(version)
                if not allow_any and (state is None or state.state != State.AVAILABLE):
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference",
                    )
                result.setdefault(model.name, {})[label] = version
        return result

    def _wait_available(self, names: set[str]) -> None:
        """Block until the highest aspired version of each model is AVAILABLE or has failed."""
        failed: list[str] = []
        with self._lock:
            pending = set(names)
            while pending and not self._stop.is_set():
                for name in list(pending):
                    aspired = [h for h in self._harnesses.get(name, {}).values() if h.aspired]
                    if not aspired:
                        pending.discard(name)  # nothing on disk yet: TF Serving would wait forever
                        continue
                    top = max(aspired, key=lambda h: h.version)
                    if top.state == State.AVAILABLE:
                        pending.discard(name)
                    elif top.state == State.END:
                        pending.discard(name)
                        failed.append(
                            f"{{name: {name} version: {top.version}}} due to error: "
                            f"{top.status.code.name}: {top.status.message}"
                        )
                if pending:
                    self._changed.wait(0.5)
        if pending:
            raise self._shutting_down()
        if failed:
            raise ServingError(
                grpc.StatusCode.UNKNOWN,
                f"{len(failed)} model(s) did not become available: {{{', '.join(failed)}}}",
            )

    # -- source: versions on disk -> aspired ----------------------------------------------------
    def poll(self) -> None:
        """One pass of the file-system source over every configured model."""
        with self._poll_lock:
            self._poll()

    def _poll(self) -> None:
        with self._lock:
            models = list(self._models.values())
            removed = [name for name in self._harnesses if name not in self._models]
        for name in removed:
            self._set_aspired(name, {})
        for model in models:
            try:
                on_disk = self._list_versions(model.base_path)
            except OSError as exc:
                self._note_poll_error(model.name, f"Could not find base path {model.base_path}: {exc}")
                continue
            if not on_disk:
                self._note_poll_error(
                    model.name,
                    f"No versions of servable {model.name} found under base path {model.base_path}",
                )
            else:
                self._poll_errors.pop(model.name, None)
            self._set_aspired(model.name, model.policy.select(on_disk))

    def _note_poll_error(self, name: str, message: str) -> None:
        if self._poll_errors.get(name) != message:
            self._poll_errors[name] = message
            log.warning("%s", message)

    def _poll_loop(self) -> None:
        interval = self._options.poll_wait_s
        if interval <= 0:
            return  # polled once at start and on every reload
        while not self._stop.wait(interval):
            try:
                self.poll()
            except Exception:
                log.exception("file-system poll failed")

    def _set_aspired(self, name: str, aspired: dict[int, str]) -> None:
        with self._lock:
            harnesses = self._harnesses.setdefault(name, {})
            for version, harness in list(harnesses.items()):
                wanted = version in aspired
                if wanted and not harness.aspired and harness.state == State.END and not harness.busy:
                    del harnesses[version]  # wanted again after it ended: a new servable, loaded afresh
                    continue
                harness.aspired = wanted
            for version, path in aspired.items():
                if version not in harnesses:
                    harnesses[version] = harness = _Harness(name, version, path)
                    self._publish(harness, State.START, Status())
            self._changed.notify_all()

    # -- manager: the availability-preserving policy --------------------------------------------
    def _manage_loop(self) -> None:
        with self._lock:
            while not self._stop.is_set():
                for name in list(self._harnesses):
                    try:
                        self._manage(name)
                    except Exception:  # a bug must not stop every later load and unload
                        log.exception("managing model %s failed", name)
                self._changed.wait(0.5)

    def _manage(self, name: str) -> None:
        harnesses = self._harnesses[name]
        for version, harness in list(harnesses.items()):
            if harness.aspired or harness.busy:
                continue
            if harness.state == State.START:  # never loaded and no longer wanted
                self._publish(harness, State.END, Status())
            if harness.state == State.END:
                del harnesses[version]
        if not harnesses:
            if name not in self._models:
                del self._harnesses[name]
            return
        if any(h.busy for h in harnesses.values()):
            return
        aspired = [h for h in harnesses.values() if h.aspired]
        unaspired_serving = [h for h in harnesses.values() if not h.aspired and h.state == State.AVAILABLE]
        aspired_serving = any(h.state == State.AVAILABLE for h in aspired)
        if unaspired_serving and (not aspired or aspired_serving or len(unaspired_serving) > 1):
            self._spawn("unload", self._unload, min(unaspired_serving, key=lambda h: h.version))
            return
        new = [h for h in aspired if h.state == State.START]
        if new:
            self._spawn("load", self._load_version, max(new, key=lambda h: h.version))

    def _spawn(self, what: str, action: Callable[[_Harness], None], harness: _Harness) -> None:
        """Run a load or unload on a daemon thread, so that one still running at exit is not waited for."""
        harness.busy = True
        self._actions += 1
        thread = threading.Thread(
            target=self._run, args=(what, action, harness), name=f"servable-{what}", daemon=True
        )
        thread.start()

    def _run(self, what: str, action: Callable[[_Harness], None], harness: _Harness) -> None:
        try:
            with self._slots:
                if not self._stop.is_set():
                    action(harness)
        except BaseException as exc:  # not a load error (those end the version in _load_version)
            log.exception("unexpected error in the %s of %s version %d", what, harness.name, harness.version)
            error = from_exception(exc)
            with self._lock:
                if harness.busy:  # left LOADING or UNLOADING: end it with the error, as TF Serving does
                    harness.busy, harness.servable = False, None
                    try:
                        self._publish(harness, State.END, Status(error.code, error.message))
                    except Exception:
                        log.exception("state listener failed")
        finally:
            with self._lock:
                self._actions -= 1
                self._changed.notify_all()

    def _load_version(self, harness: _Harness) -> None:
        with self._lock:
            self._publish(harness, State.LOADING, Status())
        servable, status = None, Status()
        for attempt in range(self._options.max_load_retries + 1):
            if attempt:
                with self._lock:
                    if not harness.aspired:
                        log.info("load retry cancelled for %s version %d", harness.name, harness.version)
                        break
                if self._stop.wait(self._options.load_retry_interval_s):
                    break
                log.info("retrying load of %s version %d: retry %d", harness.name, harness.version, attempt)
            try:
                servable = self._load(harness.name, harness.version, harness.path)
                break
            except Exception as exc:
                error = from_exception(exc)
                status = Status(error.code, error.message)
                if attempt < self._options.max_load_retries:
                    log.warning("%s version %d failed to load: %s", harness.name, harness.version, error)
        with self._lock:
            harness.busy = False
            if servable is not None:
                harness.servable = servable
                self._publish(harness, State.AVAILABLE, Status())
            else:
                self._publish(harness, State.END, status)
            self._changed.notify_all()

    def _unload(self, harness: _Harness) -> None:
        with self._lock:
            # Out of the serving map from here on: no new request can resolve to it.
            self._publish(harness, State.UNLOADING, Status())
            servable = harness.servable
        if not servable.wait_idle(self._options.unload_wait_s):  # requests already holding it finish on it
            log.warning(
                "%s version %d: requests still running after %g s; unloading it anyway",
                harness.name,
                harness.version,
                self._options.unload_wait_s,
            )
        with self._lock:
            harness.servable = None
            harness.busy = False
            self._publish(harness, State.END, Status())
            harnesses = self._harnesses.get(harness.name, {})
            if harness.aspired and harnesses.get(harness.version) is harness:
                # Wanted again while it was unloading: load it afresh, as TF Serving does.
                harnesses[harness.version] = fresh = _Harness(harness.name, harness.version, harness.path)
                self._publish(fresh, State.START, Status())
            self._changed.notify_all()

    def _publish(self, harness: _Harness, state: State, status: Status) -> None:
        harness.state, harness.status = state, status
        self._states.setdefault(harness.name, {})[harness.version] = VersionStatus(
            harness.version, state, status
        )
        for listener in self._listeners:
            listener(harness.name, harness.version, state, status)

    # -- requests ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def acquire(self, name: str, version: int | None = None, label: str | None = None) -> Iterator[Any]:
        """The servable for a request (specific version, label, or latest), held until exit."""
        if not name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        with self._lock:
            if label is not None:
                version = self._labels.get(name, {}).get(label)
                if version is None:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}"
                    )
            ready = {v: h for v, h in self._harnesses.get(name, {}).items() if h.state == State.AVAILABLE}
            harness = ready.get(version) if version is not None else ready.get(max(ready, default=-1))
            if harness is None:
                request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
            servable = harness.servable
            servable.acquire()
        try:
            yield servable
        finally:
            servable.release()

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """GetModelStatus: the last state of one or all versions ever managed, newest first."""
        with self._lock:
            states = self._states.get(name, {})
            if version is not None:
                if version not in states:
                    raise ServingError(
                        grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}"
                    )
                return [states[version]]
            if not states:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
            return [states[v] for v in sorted(states, reverse=True)]
