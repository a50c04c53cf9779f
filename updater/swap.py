"""Move every model server from one entry of our model to another without failing a request.

A label may only be moved to a version that is already AVAILABLE (TF Serving's rule), and
`stable` must never point at nothing, so a change goes in three configs, each written to
models.config first and then pushed to the targets one by one:

1. load:    the current versions plus the new ones, labels unchanged; each target must
            report the new versions AVAILABLE and answer a canary by version number;
2. relabel: the same versions, the new labels; each target must answer the canary
            through `stable` with the expected version;
3. trim:    only the new entry's versions (the others unload).

Any failure before step 3 restores the entry found at the start, on every target, which
is possible because steps 1 and 2 keep every version that entry's labels name loaded.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from recstream.updater.errors import SwapFailed, Unavailable
from recstream.updater.serving import STABLE, ConfigFile, Entry, Target

log = logging.getLogger(__name__)


@dataclass
class SwapReport:
    canary_latency_ms: float
    seconds: float


class Fleet:
    """Our model's entry in models.config and the TF Serving targets that read that file."""

    def __init__(
        self,
        model: str,
        base_path: Path,
        config: ConfigFile,
        targets: list[Target],
        *,
        load_timeout_s: float = 120.0,
        canary_requests: int = 3,
    ) -> None:
        if not targets:
            raise ValueError("at least one model server target is needed")
        self.model, self.base_path, self.config, self.targets = model, Path(base_path), config, targets
        self.load_timeout_s, self.canary_requests = load_timeout_s, canary_requests

    def current(self) -> Entry | None:
        return self.config.entry(self.model)

    def serves(self, version: int) -> bool:
        """Whether every target answers through `stable` with `version` (Unavailable if one is down)."""
        return all(target.stable_version(self.model) == version for target in self.targets)

    def converge(self, final: Entry, stable: int) -> SwapReport:
        """Bring every target to `final`, with `stable` (one of its versions) checked by canary."""
        started = time.monotonic()
        before = self.current()
        loading = Entry(
            (before.versions if before else frozenset()) | final.versions, before.labels if before else {}
        )
        relabelled = Entry(loading.versions, final.labels)
        latencies: list[float] = []
        log.info(
            "%s: %s -> %s on %d target(s)",
            self.model,
            before.describe() if before else "nothing",
            final.describe(),
            len(self.targets),
        )
        try:
            self.config.set_entry(self.model, self.base_path, loading)
            deadline = time.monotonic() + self.load_timeout_s
            for target in self.targets:
                seen = {v: target.state(self.model, v) for v in final.versions}
                self._push(target)
                for version in sorted(final.versions, reverse=True):
                    target.wait_available(self.model, version, deadline, seen[version])
                latencies.append(target.canary(self.model, stable, label=None, requests=self.canary_requests))
            self.config.set_entry(self.model, self.base_path, relabelled)
            for target in self.targets:
                self._push(target)
                latencies.append(
                    target.canary(self.model, stable, label=STABLE, requests=self.canary_requests)
                )
        except (SwapFailed, Unavailable) as exc:
            log.warning("%s: %s; restoring %s", self.model, exc, before.describe() if before else "nothing")
            self.restore(before)
            raise
        except BaseException:
            self.restore(before)
            raise
        self.config.set_entry(self.model, self.base_path, final)
        for target in self.targets:
            try:
                self._push(target)
            except (SwapFailed, Unavailable) as exc:  # serving is right already; the file poll trims later
                log.warning("%s: trimming on %s failed: %s", self.model, target.endpoint, exc)
        return SwapReport(
            canary_latency_ms=round(statistics.median(latencies), 3) if latencies else 0.0,
            seconds=round(time.monotonic() - started, 3),
        )

    def restore(self, entry: Entry | None) -> None:
        """Best effort: the file first (every server converges on its next poll), then each target."""
        self.config.set_entry(self.model, self.base_path, entry)
        for target in self.targets:
            try:
                self._push(target)
            except Exception as exc:
                log.error("%s: restoring %s failed: %s", self.model, target.endpoint, exc)

    def _push(self, target: Target) -> None:
        """Send the whole file as it is now (other models' updaters may have changed their entries)."""
        with self.config.locked():
            target.reload(self.config.read(), self.model, self.load_timeout_s)
