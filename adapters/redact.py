"""Secrets the product must never print, and the one redaction helper every output uses.

Whoever reads a secret (the CHAP secrets file: ``adapters.tgt.chap``) registers it here with
``remember``; every output path runs its text through ``redact`` before it leaves the process:
the CLI's stdout and stderr (``redacting_streams``: ``get``, ``status``, ``--json``, errors), the
agent's log (``RedactFilter`` on its loggers: stream, rotated file, syslog), the event history,
the status record and alert mail. The adapters also keep secrets out of the errors they raise
(``adapters.tgt.adapter``), so this is the second line, not the only one.

Invariants:
- A registered secret is replaced by ``REDACTED`` wherever it occurs in the text, longest
  secret first (one secret may contain another).
- Secrets never contain a line break (the loader refuses them), so a stream that redacts whole
  lines (``RedactingStream`` buffers up to the line end) cannot let one through split across
  two writes.
- The registry only grows within a process: a secret once read stays masked even after the
  file changed.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

REDACTED = "[redacted]"
MIN_SECRET = 4  # shorter strings are not registered: they would mask ordinary words

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def remember(*values: str) -> None:
    """Register secrets to mask from now on (empty or very short values are ignored)."""
    global _secrets
    with _lock:
        known = set(_secrets)
        known.update(v for v in values if len(v) >= MIN_SECRET)
        _secrets = tuple(sorted(known, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``REDACTED``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_data(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with every string redacted."""
    if not _secrets:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


class RedactFilter(logging.Filter):
    """A logging filter (on a logger, so it covers every handler) that redacts the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = redact(record.getMessage())
            record.msg, record.args = message, None
        return True


class RedactingStream:
    """A text stream that writes whole lines, redacted, to ``target()`` (looked up at each
    write, so a stream swapped in later, as click's test runner does, is still used)."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self._pending = ""

    @property
    def inner(self) -> IO[str]:
        return self._target()  # type: ignore[no-any-return]

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            self.inner.write(redact(done + "\n"))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.inner.write(redact(self._pending))
            self._pending = ""
        self.inner.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ...
        if name == "buffer":
            # No way around the redaction: click writes to a text stream's binary buffer
            # when it finds the stream's encoding unsuitable (ASCII); without one it uses
            # the text stream as it is.
            raise AttributeError(name)
        return getattr(self.inner, name)


@contextmanager
def redacting_streams() -> Iterator[None]:
    """Route ``sys.stdout``/``sys.stderr`` through ``RedactingStream`` while the block runs."""
    out, err = sys.stdout, sys.stderr
    sys.stdout = RedactingStream(lambda: out)
    sys.stderr = RedactingStream(lambda: err)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, RedactingStream):
                stream.flush()
        sys.stdout, sys.stderr = out, err
