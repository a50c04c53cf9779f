"""Why an update or a rollback did not happen: each message is one line for a person or an event."""

from __future__ import annotations

from recstream.stream.errors import RecstreamError


class UpdaterError(RecstreamError):
    """An update, restore or rollback could not be done; serving was left as it was."""


class Unavailable(UpdaterError):
    """A model server or the object store did not answer: the same work can be tried again later."""


class SwapFailed(UpdaterError):
    """A version did not load or answer correctly; `kind` names the step (metrics label)."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = one_line(reason)
        super().__init__(f"{kind}: {self.reason}")


class Busy(UpdaterError):
    """Another update or rollback of the same model holds its lock."""


class RollbackError(UpdaterError):
    """A rollback was refused or failed."""


class NothingToRollBack(RollbackError):
    """No version is active, or none is left to go back to."""


class UnknownVersion(RollbackError):
    """The version asked for was never activated (or does not exist)."""


def one_line(text: str, limit: int = 300) -> str:
    """Events and CLI errors carry one line: collapse whitespace, cut long library messages."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
