"""The three-step swap across replicas, against fake targets that enforce TF Serving's label rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from recstream.updater.core import desired_entry
from recstream.updater.errors import SwapFailed, Unavailable
from recstream.updater.serving import ConfigFile, Entry, entry_of
from recstream.updater.swap import Fleet

MODEL = "rec"


class FakeTarget:
    """Loads what the pushed config lists; refuses to move a label to a version it has not loaded."""

    def __init__(self, name: str, *, fail_canary: str | None = None, down: bool = False) -> None:
        self.endpoint = name
        self.fail_canary, self.down = fail_canary, down
        self.entry: Entry | None = None
        self.pushes: list[Entry | None] = []

    def reload(self, config, model: str, timeout_s: float) -> None:
        if self.down:
            raise Unavailable(f"model server {self.endpoint} is unavailable")
        new = entry_of(config, model)
        loaded = self.entry.versions if self.entry else frozenset()
        old_labels = dict(self.entry.labels) if self.entry else {}
        for label, version in (new.labels if new else {}).items():
            if old_labels.get(label) != version and version not in loaded:
                raise SwapFailed("reload", f"label {label} to version {version}, which is not available")
        self.entry = new
        self.pushes.append(new)

    def state(self, model: str, version: int) -> tuple[str | None, str]:
        return ("AVAILABLE", "") if self.entry and version in self.entry.versions else (None, "")

    def wait_available(self, model: str, version: int, deadline: float, before: object = None) -> None:
        assert self.state(model, version)[0] == "AVAILABLE"

    def canary(self, model: str, version: int, *, label: str | None, requests: int) -> float:
        if self.fail_canary == (label or "version"):
            raise SwapFailed("canary", f"{self.endpoint}: wrong answer")
        served = self.entry.labels.get(label) if label else version
        assert served == version and version in self.entry.versions
        return 1.0

    def stable_version(self, model: str) -> int | None:
        return self.entry.labels.get("stable") if self.entry else None


def fleet(tmp_path: Path, *targets: FakeTarget) -> Fleet:
    return Fleet(MODEL, tmp_path / MODEL, ConfigFile(tmp_path / "models.config"), list(targets))  # type: ignore[arg-type]


def test_versions_load_everywhere_before_any_label_moves(tmp_path: Path) -> None:
    a, b = FakeTarget("a"), FakeTarget("b")
    swap = fleet(tmp_path, a, b)
    swap.converge(desired_entry(1, None), stable=1)
    swap.converge(desired_entry(2, 1), stable=2)
    swap.converge(desired_entry(3, 2), stable=3)
    for target in (a, b):
        assert target.entry == desired_entry(3, 2)
        assert target.pushes[-3:] == [
            Entry(frozenset({1, 2, 3}), {"stable": 2, "previous": 1}),  # load, labels unchanged
            Entry(frozenset({1, 2, 3}), {"stable": 3, "previous": 2}),  # relabel
            desired_entry(3, 2),  # trim
        ]
    assert swap.current() == desired_entry(3, 2) and swap.serves(3)


@pytest.mark.parametrize("failing", ["version", "stable"])
def test_a_failure_on_the_last_replica_restores_every_replica(tmp_path: Path, failing: str) -> None:
    a, b = FakeTarget("a"), FakeTarget("b")
    swap = fleet(tmp_path, a, b)
    swap.converge(desired_entry(2, 1), stable=2)
    b.fail_canary = failing
    with pytest.raises(SwapFailed, match="canary: b: wrong answer"):
        swap.converge(desired_entry(3, 2), stable=3)
    assert a.entry == b.entry == swap.current() == desired_entry(2, 1)


def test_an_unreachable_replica_restores_the_others_and_the_file(tmp_path: Path) -> None:
    a, b = FakeTarget("a"), FakeTarget("b", down=True)
    with pytest.raises(Unavailable):
        fleet(tmp_path, a, b).converge(desired_entry(1, None), stable=1)
    assert a.entry is None and fleet(tmp_path, a).current() is None


def test_a_failed_trim_does_not_undo_a_done_swap(tmp_path: Path) -> None:
    a, b = FakeTarget("a"), FakeTarget("b")
    swap = fleet(tmp_path, a, b)
    swap.converge(desired_entry(1, None), stable=1)
    original = b.reload
    calls = []

    def flaky(config, model, timeout_s):
        calls.append(1)
        if len(calls) == 3:  # load, relabel, then the trim fails
            raise Unavailable("gone")
        original(config, model, timeout_s)

    b.reload = flaky  # type: ignore[method-assign]
    swap.converge(desired_entry(2, 1), stable=2)
    assert swap.current() == desired_entry(2, 1) and a.entry == desired_entry(2, 1)
    assert b.entry is not None and b.entry.labels == {"stable": 2, "previous": 1}
