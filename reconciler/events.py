"""The agent's event history: what it did and what it refused, bounded and persisted.

One JSON object per line in ``STATE_DIR/events-NODE.jsonl``: ``time`` (epoch seconds), ``node``,
``action`` (an action kind, ``promote``, ``add-vip``...; for a refusal the refused change),
``resource``, ``result`` (``ok``, ``failed``, ``not-run``, ``refused``), ``reason`` (the plan's
reason, or the safety rule's) and ``error`` (a failed step's message).

Invariants:
- Appending is append-safe: each tick's events are one ``write`` on an ``O_APPEND`` file, so a
  crash leaves at most one torn last line, which readers skip and report.
- The history is bounded: once the file holds more than ``2 x limit`` lines it is rewritten
  atomically (temporary file + rename) with the newest ``limit``.
- A refusal is recorded when it starts (or its reason changes), not on every tick it lasts:
  a refusal that lasts hours must not push every action out of a bounded history.
- Reading never raises for a bad file: unreadable lines come back as problems, in words.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapters.redact import redact
from reconciler.agent import TickReport

EVENTS_KEPT = 1000


@dataclass(frozen=True, slots=True)
class Event:
    time: float
    node: str
    action: str
    result: str  # ok | failed | not-run | refused
    reason: str
    resource: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: object) -> Event:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            return cls(
                time=float(data["time"]),
                node=str(data["node"]),
                action=str(data["action"]),
                result=str(data["result"]),
                reason=str(data.get("reason", "")),
                resource=None if data.get("resource") is None else str(data["resource"]),
                error=None if data.get("error") is None else str(data["error"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"missing or bad field ({exc})") from exc


def events_path(state_dir: Path, node: str) -> Path:
    return state_dir / f"events-{node}.jsonl"


def from_report(
    report: TickReport, *, refusals_seen: frozenset[tuple[str, str]] = frozenset()
) -> list[Event]:
    """The events of one tick: each step run (ok/failed), each planned action left unrun after
    a failure, and each refusal not in ``refusals_seen`` (``(what, reason)`` pairs of the
    previous tick). A dry run records nothing."""
    if report.result is None:
        return []
    p, when = report.plan, report.started
    out: list[Event] = []
    ran = {id(step.action): step for step in report.result.steps}
    for action in p.actions:
        step = ran.get(id(action))
        error: str | None
        if step is None:
            result, error = "not-run", "an earlier step failed"
        elif step.skipped:  # a dependency of its chain failed
            result, error = "not-run", step.error
        else:
            result, error = ("ok", None) if step.ok else ("failed", step.error)
        out.append(
            Event(
                time=when,
                node=p.node,
                action=action.kind.value,
                result=result,
                reason=action.reason,
                resource=action.resource or action.vip,
                error=error,
            )
        )
    for b in p.blocked:
        if (b.what, b.reason) in refusals_seen:
            continue
        out.append(
            Event(
                time=when,
                node=p.node,
                action=b.what,
                result="refused",
                reason=b.reason,
                resource=b.resource,
            )
        )
    return out


class EventLog:
    """Appends a node's events to its bounded history file."""

    def __init__(self, path: Path, *, limit: int = EVENTS_KEPT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.path = path
        self.limit = limit
        self._lines: int | None = None  # counted on first use

    def append(self, events: Sequence[Event]) -> None:
        if not events:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._lines is None:
            self._lines = _count_lines(self.path)
        blob = redact("".join(json.dumps(e.to_json(), sort_keys=True) + "\n" for e in events))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, blob.encode("utf-8"))
        finally:
            os.close(fd)
        self._lines += len(events)
        if self._lines > 2 * self.limit:
            self._lines = _truncate(self.path, self.limit)


class TickEvents:
    """The watch loop's event observer (a ``reconciler.loop.TickObserver``)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._refusals: frozenset[tuple[str, str]] = frozenset()

    def __call__(self, report: TickReport) -> None:
        self.log.append(from_report(report, refusals_seen=self._refusals))
        self._refusals = frozenset((b.what, b.reason) for b in report.plan.blocked)


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


def _truncate(path: Path, keep: int) -> int:
    """Rewrite ``path`` atomically with its last ``keep`` lines; returns the count kept."""
    with open(path, "rb") as fh:
        lines = fh.readlines()[-keep:]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".events-")
    with os.fdopen(fd, "wb") as out:
        out.writelines(lines)
    os.replace(tmp, path)
    return len(lines)


def load(paths: Iterable[Path]) -> tuple[list[Event], list[str]]:
    """Every readable event of the files, oldest first; the problems found, in words."""
    events: list[Event] = []
    problems: list[str] = []
    for path in paths:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"{path}: cannot read ({exc.strerror or exc})")
            continue
        bad = 0
        first_bad = 0
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                events.append(Event.from_json(json.loads(line.decode("utf-8"))))
            except (ValueError, UnicodeDecodeError):
                bad += 1
                first_bad = first_bad or n
        if bad:
            problems.append(
                f"{path}: {bad} unreadable line(s) skipped (first: line {first_bad}); "
                "the file is not valid JSON lines there (a torn write or a manual edit)"
            )
    events.sort(key=lambda e: e.time)
    return events, problems


def node_files(state_dir: Path, node: str | None) -> list[Path]:
    if node is not None:
        return [events_path(state_dir, node)]
    return sorted(state_dir.glob("events-*.jsonl"))
