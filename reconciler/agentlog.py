"""The agent's log: journald-friendly lines for ``--watch``, a rotated file, and reading it back.

Every line carries the fields ``node`` and, when it is about one, ``resource`` and ``action``,
written as ``key=value`` words at the start of the message (journald's stream protocol has no
structured fields; these words are what ``reconcile log --node/--resource`` filters on).

- Under journald (``$JOURNAL_STREAM`` names the very stream the line goes to, as systemd sets it
  for a service's stdout/stderr) a line is ``<N>fields message``: ``<N>`` is the syslog priority
  journald parses (SyslogLevelPrefix); journald adds the time and the identifier (the unit's
  ``SyslogIdentifier=tandem``), so ``journalctl -t tandem`` finds it.
- Otherwise every line starts with a UTC timestamp and the level, and the same records also go
  to ``STATE_DIR/tandem-NODE.log`` (JSON lines, rotated by size: ``RotatingFileHandler``), which
  ``reconcile log`` reads when there is no journal.

Invariants: logging never raises into a tick (logging's handlers report their own errors); the
file is the agent's only writer (the node's agent lock), readers only read.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from adapters.redact import RedactFilter
from reconciler.agent import TickReport
from reconciler.record import simulated_note

LOGGER = "tandem"
LOG_BYTES = 1_000_000
LOG_BACKUPS = 3
# syslog priorities (journald reads them from the <N> prefix)
PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
LEVEL_OF_PRIORITY = {
    0: "EMERG",
    1: "ALERT",
    2: "CRITICAL",
    3: "ERROR",
    4: "WARNING",
    5: "NOTICE",
    6: "INFO",
    7: "DEBUG",
}
FIELDS = ("node", "resource", "action")
_FIELD_RE = re.compile(r"^((?:(?:node|resource|action)=\S+ )*)(.*)$", re.DOTALL)


def log_path(state_dir: Path, node: str) -> Path:
    return state_dir / f"tandem-{node}.log"


def under_journal(stream: IO[str], environ: dict[str, str] | None = None) -> bool:
    """True when ``stream`` is connected to journald (``$JOURNAL_STREAM`` is ``dev:inode`` of
    the stream systemd connected; a stream redirected elsewhere does not match)."""
    value = (environ if environ is not None else os.environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return bool(dev and ino) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def _fields_text(record: logging.LogRecord) -> str:
    words = [f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None)]
    return " ".join(words)


def utc_text(seconds: float) -> str:
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


class JournalFormatter(logging.Formatter):
    """``<N>fields message``: journald adds the time and the identifier."""

    def format(self, record: logging.LogRecord) -> str:
        prio = PRIORITY.get(record.levelno, 6)
        fields = _fields_text(record)
        text = record.getMessage().replace("\n", " ")
        return f"<{prio}>{fields + ' ' if fields else ''}{text}"


class TextFormatter(logging.Formatter):
    """``2026-01-31T12:00:00.123Z INFO fields message``: a timestamp on every line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields_text(record)
        text = record.getMessage().replace("\n", " ")
        return (
            f"{utc_text(record.created)} {record.levelname} {fields + ' ' if fields else ''}{text}"
        )


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for the rotated file that ``reconcile log`` reads."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname,
            "message": record.getMessage(),
        }
        for k in FIELDS:
            if getattr(record, k, None):
                out[k] = getattr(record, k)
        return json.dumps(out, sort_keys=True)


def setup(
    state_dir: Path,
    node: str,
    *,
    syslog: logging.Handler | None = None,
    tick_lines_to_stdout: bool = True,
) -> tuple[logging.Logger, logging.Logger]:
    """Configure ``--watch``'s loggers: ``tandem.tick`` (the tick lines: stdout, unless
    ``tick_lines_to_stdout`` is off because stdout carries ``--json``) and ``tandem.alert``
    (alerts, stderr, and the system log when ``syslog`` is given); the adapters' own warnings
    (logger ``adapters``) go to stderr too. Everything also reaches the rotated file unless
    stdout or stderr goes to the journal."""
    journal = under_journal(sys.stdout) or under_journal(sys.stderr)
    file: logging.Handler | None = None
    if not journal:
        state_dir.mkdir(parents=True, exist_ok=True)
        file = logging.handlers.RotatingFileHandler(
            log_path(state_dir, node),
            maxBytes=LOG_BYTES,
            backupCount=LOG_BACKUPS,
            encoding="utf-8",
        )
        file.setFormatter(JsonFormatter())

    def stream_handler(stream: IO[str]) -> logging.Handler:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JournalFormatter() if under_journal(stream) else TextFormatter())
        return handler

    def configure(name: str, *handlers: logging.Handler | None) -> logging.Logger:
        log = logging.getLogger(name)
        for old in list(log.handlers):
            log.removeHandler(old)
        for new in handlers:
            if new is not None:
                log.addHandler(new)
        log.setLevel(logging.INFO)
        log.propagate = False
        for stale in [f for f in log.filters if isinstance(f, RedactFilter)]:
            log.removeFilter(stale)
        log.addFilter(RedactFilter())  # on the logger: every handler gets the redacted text
        return log

    stderr = stream_handler(sys.stderr)
    tick = configure(
        f"{LOGGER}.tick", stream_handler(sys.stdout) if tick_lines_to_stdout else None, file
    )
    alert = configure(f"{LOGGER}.alert", stderr, file, syslog)
    configure("adapters", stderr, file)
    return tick, alert


def tick_lines(report: TickReport) -> list[tuple[int, str, dict[str, str]]]:
    """What ``--watch`` logs about a tick: (level, message, fields). Quiet ticks (converged, no
    refusal) log nothing."""
    p = report.plan
    node = {"node": p.node}
    out: list[tuple[int, str, dict[str, str]]] = []
    if not (p.actions or p.blocked or p.warnings):
        return out
    if (note := simulated_note(report.simulated)) is not None:
        out.append((logging.INFO, note, node))  # every output of a simulated run says so
    out.append((logging.INFO, f"should be {p.desired_role} ({p.role_reason})", node))
    steps = {id(s.action): s for s in (report.result.steps if report.result else ())}
    for action in p.actions:
        fields = dict(node, action=action.kind.value)
        if action.resource or action.vip:
            fields["resource"] = str(action.resource or action.vip)
        step = steps.get(id(action))
        if step is None:
            level, mark = logging.WARNING, "not run"
        elif step.ok:
            level, mark = logging.INFO, "ok"
        elif step.skipped:  # a dependency of its chain failed
            level, mark = logging.WARNING, step.error or "not run"
        else:
            level, mark = logging.ERROR, f"FAILED: {step.error or ''}"
        out.append((level, f"{action.describe()} - {action.reason}: {mark}", fields))
    for b in p.blocked:
        fields = dict(node, action=b.what)
        if b.resource:
            fields["resource"] = b.resource
        out.append((logging.WARNING, f"blocked {b.what}: {b.reason}", fields))
    for w in p.warnings:
        fields = dict(node, resource=w.resource) if w.resource else node
        out.append((logging.WARNING, f"warning: {w.message}", fields))
    return out


class TickLogger:
    """The watch loop's log observer (a ``reconciler.loop.TickObserver``)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log

    def __call__(self, report: TickReport) -> None:
        for level, message, fields in tick_lines(report):
            self.log.log(level, message, extra=fields)


# --- reading the log back --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    time: float
    level: str
    message: str
    node: str | None = None
    resource: str | None = None
    action: str | None = None

    def render(self) -> str:
        fields = " ".join(
            f"{k}={v}"
            for k, v in (("node", self.node), ("resource", self.resource), ("action", self.action))
            if v
        )
        return f"{utc_text(self.time)} {self.level} {fields + ' ' if fields else ''}{self.message}"


@dataclass(frozen=True, slots=True)
class Filter:
    since: float | None = None
    node: str | None = None
    resource: str | None = None

    def admits(self, e: Entry) -> bool:
        return (
            (self.since is None or e.time >= self.since)
            and (self.node is None or e.node == self.node)
            and (self.resource is None or e.resource == self.resource)
        )


def entry_from_json(line: str) -> Entry | None:
    try:
        d = json.loads(line)
        if not isinstance(d, dict):
            return None
        return Entry(
            time=float(d["time"]),
            level=str(d.get("level", "INFO")),
            message=str(d.get("message", "")),
            node=d.get("node"),
            resource=d.get("resource"),
            action=d.get("action"),
        )
    except (ValueError, KeyError, TypeError):
        return None


def entry_from_message(when: float, priority: int, message: str) -> Entry:
    """An entry from a journal line (``key=value`` words first, then the text)."""
    m = _FIELD_RE.match(message)
    words, text = (m.group(1), m.group(2)) if m else ("", message)
    fields = dict(w.split("=", 1) for w in words.split())
    return Entry(
        time=when,
        level=LEVEL_OF_PRIORITY.get(priority, "INFO"),
        message=text,
        node=fields.get("node"),
        resource=fields.get("resource"),
        action=fields.get("action"),
    )


def read_file(path: Path) -> list[Entry]:
    """The rotated file's entries, oldest first (its backups ``.3`` .. ``.1`` first)."""
    out: list[Entry] = []
    for p in [*(path.with_name(f"{path.name}.{i}") for i in range(LOG_BACKUPS, 0, -1)), path]:
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        out.extend(e for line in text.splitlines() if (e := entry_from_json(line)))
    return out


def follow_file(
    path: Path,
    *,
    poll: float = 0.2,
    from_end: bool = True,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Entry]:
    """New entries as the agent writes them (``from_end``: only what comes after the current
    end); survives rotation (the file is replaced: the new one is read from its start)."""
    fh: IO[str] | None = None
    ino: int | None = None
    buf = ""
    first = from_end
    try:
        while not stop():
            if fh is None:
                try:
                    fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                    ino = os.fstat(fh.fileno()).st_ino
                    if first:
                        fh.seek(0, os.SEEK_END)  # what is there was printed already
                except FileNotFoundError:
                    first = False  # created later: read it all
                    sleep(poll)
                    continue
            first = False
            chunk = fh.read()
            if chunk:
                buf += chunk
                *lines, buf = buf.split("\n")
                for line in lines:
                    if (e := entry_from_json(line)) is not None:
                        yield e
                continue
            try:
                rotated = os.stat(path).st_ino != ino
            except FileNotFoundError:
                rotated = True
            if rotated:
                fh.close()
                fh, buf = None, ""
                continue
            sleep(poll)
    finally:
        if fh is not None:
            fh.close()


_REL = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?$")
_UNIT = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_since(text: str, *, now: float) -> float:
    """``--since``: a duration ago (``90s``, ``10m``, ``2h``, ``1d``, a bare number is seconds),
    an ISO 8601 time (``2026-01-31T12:00``, UTC unless it says otherwise) or ``@EPOCH``."""
    t = text.strip()
    if t.startswith("@"):
        return float(t[1:])
    m = _REL.match(t)
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    stamp = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def select(entries: Sequence[Entry], flt: Filter) -> list[Entry]:
    return [e for e in entries if flt.admits(e)]
