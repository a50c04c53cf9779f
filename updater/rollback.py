"""`recstream rollback [--to VERSION]`: serve the previous (or a given) version through `stable` now."""

from __future__ import annotations

from recstream.stream.contracts.model_events import ModelEvent
from recstream.stream.settings import Settings
from recstream.updater.core import Options, Updater


def rollback(settings: Settings, to: int | None = None, options: Options | None = None) -> ModelEvent:
    """Relabel, verify by canary on every target, announce `rolled_back`; raises RollbackError
    (NothingToRollBack, UnknownVersion) or Busy/Unavailable with a one-line message."""
    updater = Updater(settings, options)
    try:
        return updater.rollback(to)
    finally:
        updater.close()
