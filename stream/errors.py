"""The base of every expected failure: the CLI prints its one-line message and exits non-zero."""


class RecstreamError(Exception):
    """An expected failure (bad input, unreachable service) whose message is one line for a person."""
