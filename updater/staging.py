"""Version directories under `<model base path>/<model>/`, the folder the model servers read.

A version appears there complete or not at all: it is fetched into a hidden staging
folder beside it (the servers only look at integer names), checked, then renamed into
place. Nothing that failed is left behind, so a server restarted on the base path alone
never finds a broken version as the highest one.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"


class VersionDirs:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def path(self, version: int) -> Path:
        return self.root / str(version)

    def on_disk(self) -> set[int]:
        try:
            return {
                int(p.name)
                for p in self.root.iterdir()
                if p.name.isascii() and p.name.isdigit() and p.is_dir()
            }
        except FileNotFoundError:
            return set()

    def has(self, version: int) -> bool:
        return (self.path(version) / "saved_model.pb").is_file()

    def stage(
        self,
        version: int,
        fetch: Callable[[Path], object],
        check: Callable[[Path], object] | None = None,
    ) -> Path:
        """`fetch(dest)` creates the version's files at dest (which does not exist yet); `check(dest)`
        may refuse them. Replaces a directory of the same number that is already there."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        try:
            fetch(staging)
            if check is not None:
                check(staging)
            target = self.path(version)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("staged version %d at %s", version, target)
        return target

    def remove(self, version: int) -> None:
        if self.path(version).exists():
            shutil.rmtree(self.path(version), ignore_errors=True)
            log.info("removed version %d from %s", version, self.root)

    def prune(self, keep: set[int]) -> list[int]:
        """Remove every version directory not in `keep`, and leftovers of interrupted staging."""
        removed = sorted(self.on_disk() - keep)
        for version in removed:
            self.remove(version)
        if self.root.is_dir():
            for leftover in self.root.glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)
        return removed
