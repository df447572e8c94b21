"""The two kinds of failure an adapter can report (kopf's TemporaryError/PermanentError split).

- ``TransientError``: may succeed if tried again soon (timeout, busy device, daemon starting);
  the executor retries it with backoff, and nothing else retries anything.
- ``TerminalError``: retrying blindly cannot help (refused by DRBD's own rules, missing binary,
  bad configuration); reported and alerted, and the next tick re-plans from a fresh observation.
"""

from __future__ import annotations


class AdapterError(Exception):
    """Base class of every error an adapter raises for an action."""

    def __init__(self, message: str, *, command: tuple[str, ...] = (), output: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.command = command
        self.output = output

    def __str__(self) -> str:
        return self.message


class TransientError(AdapterError):
    """Worth retrying: the same action may succeed in a moment."""


class TerminalError(AdapterError):
    """Not worth retrying within this tick."""
