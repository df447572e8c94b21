"""Reading the agent's lines back from the systemd journal (``journalctl -t tandem``).

Through the command seam (``adapters.runner``): ``journalctl -o json`` for the entries, and
for ``-f`` a poll with ``--after-cursor`` (the runner runs commands to completion, each with a
timeout; a 1 s poll is plenty for a person reading a log).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from adapters.runner import Runner
from reconciler.core.errors import AdapterError

IDENTIFIER = "tandem"


def journal_available() -> bool:
    """journald runs here (its socket exists) and journalctl is installed."""
    return os.path.exists("/run/systemd/journal/socket") and shutil.which("journalctl") is not None


@dataclass(frozen=True, slots=True)
class JournalLine:
    time: float  # epoch seconds
    priority: int
    message: str
    cursor: str


@dataclass
class Journal:
    runner: Runner = field(default_factory=lambda: Runner(timeout=30.0))
    identifier: str = IDENTIFIER

    def read(
        self, *, since: float | None = None, after_cursor: str | None = None
    ) -> list[JournalLine]:
        argv = ["journalctl", "-t", self.identifier, "-o", "json", "--no-pager", "-q"]
        if after_cursor is not None:
            argv += ["--after-cursor", after_cursor]
        elif since is not None:
            argv += ["--since", f"@{int(since)}"]
        result = self.runner.run(argv, check=False)
        if result.rc != 0 and not result.stdout:
            raise AdapterError(
                f"journalctl failed (exit {result.rc}): {result.stderr.strip()[:300]}"
            )
        return [line for raw in result.stdout.splitlines() if (line := _parse(raw))]

    def follow(
        self,
        *,
        cursor: str | None,
        since: float | None,
        sleep: Callable[[float], None],
        poll: float = 1.0,
    ) -> Iterator[JournalLine]:
        while True:
            lines = self.read(since=since, after_cursor=cursor)
            for line in lines:
                cursor = line.cursor
                yield line
            sleep(poll)


def _parse(raw: str) -> JournalLine | None:
    try:
        d = json.loads(raw)
        message = d.get("MESSAGE")
        if isinstance(message, list):  # journald stores non-UTF-8 text as a byte list
            message = bytes(message).decode("utf-8", "replace")
        return JournalLine(
            time=int(d["__REALTIME_TIMESTAMP"]) / 1e6,
            priority=int(d.get("PRIORITY", 6)),
            message=str(message or ""),
            cursor=str(d["__CURSOR"]),
        )
    except (ValueError, KeyError, TypeError):
        return None
