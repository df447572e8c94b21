"""One long-running command whose stdout lines feed an observation cache (``Runner.stream``).

``LineStream`` owns the command for an event-fed adapter (the VIP address monitor, the
peer pingers): it starts it lazily (``ensure``, from the adapter's ``observe``), never from a
callback and never when it is built; it starts it again on the next ``ensure`` after it ended;
``close`` kills it for good.

Invariants:

- ``generation`` counts the starts: a line or an end from an older generation is never
  passed on (a stream killed and started again cannot feed the new cache with old lines).
- ``running`` is True from a successful start until the end of that generation arrived.
- ``ensure`` never raises: a command that cannot start leaves ``running`` False and the reason
  in ``error`` (the adapter then reports "unknown" or reads afresh, never the old cache).
- ``last_line`` is the monotonic time of the newest line (``started`` before the first), so a
  caller can tell a stream that stalls from one that is quiet only if its command speaks
  periodically (``ping`` does, ``ip monitor`` does not).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

from adapters.runner import Process, Runner

__all__ = ["LineStream"]


class LineStream:
    """See the module docstring. ``on_line(line)`` and ``on_end(rc)`` run on the stream's
    reader thread; ``clock`` is injectable for tests."""

    def __init__(
        self,
        runner: Runner,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None],
        on_end: Callable[[int], None] | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.argv = list(argv)
        self.env = env
        self._on_line = on_line
        self._on_end = on_end
        self._clock = clock
        self._lock = threading.Lock()
        self._proc: Process | None = None
        self._closed = False
        self.generation = 0
        self.running = False
        self.started = 0.0
        self.last_line = 0.0
        self.ended_rc: int | None = None
        self.error: str | None = None

    def ensure(self) -> bool:
        """Start the command unless it runs (or the stream was closed); True when it runs."""
        with self._lock:
            if self._closed:
                self.error = "closed"
                return False
            if self.running:
                return True
            self.generation += 1
            gen = self.generation
        try:
            proc = self.runner.stream(
                self.argv,
                on_line=lambda line: self._line(gen, line),
                on_end=lambda rc: self._end(gen, rc),
                env=self.env,
            )
        except Exception as exc:  # the adapter turns it into "unknown"
            with self._lock:
                self.error = f"cannot start {' '.join(self.argv[:3])}: {exc}"
            return False
        with self._lock:
            if gen != self.generation or self._closed:  # closed meanwhile
                stale: Process | None = proc
            else:
                stale = None
                self._proc = proc
                # An end that raced in before this point already bumped the generation.
                self.running = True
                self.started = self.last_line = self._clock()
                self.error = None
        if stale is not None:
            stale.kill()
            return False
        return True

    def _line(self, gen: int, line: str) -> None:
        with self._lock:
            if gen != self.generation:
                return
            self.last_line = self._clock()
        self._on_line(line)

    def _end(self, gen: int, rc: int) -> None:
        with self._lock:
            if gen != self.generation:
                return
            self.generation += 1  # nothing more from this start, even if it raced ``ensure``
            self.running = False
            self.ended_rc = rc
            self._proc = None
            self.error = f"{self.argv[0]} stream ended (rc {rc})"
        if self._on_end is not None:
            self._on_end(rc)

    def close(self) -> None:
        """Kill the command and never start it again (idempotent)."""
        with self._lock:
            self._closed = True
            proc, self._proc = self._proc, None
            self.running = False
            self.generation += 1
        if proc is not None:
            proc.kill()
