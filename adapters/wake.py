"""Wake sources: cheap change detectors the watch loop polls between ticks (see
``adapters.base.WakeSource`` and ``reconciler.loop``).

A wake source never replaces observation: it only says "look now" instead of waiting for the
next tick. A missed or spurious change costs at most one tick, never a wrong decision.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path


class Wakeup:
    """The push side of waking the watch loop: an event stream (DRBD ``events2``, netlink
    address events, inotify on pool.conf or the operator file, tgtd's exit) calls ``notify``
    from its own thread when what it watches changed; the loop ``wait``s on it between ticks.

    Thread-safe. ``notify`` never blocks and never raises. A notification that arrives while
    a tick runs is kept, so the next wait returns at once (the loop calls ``clear`` right
    *before* each tick, never after it). Like every wake source it only says "look now": the
    next tick observes everything afresh, so a spurious or lost notification costs at most
    one tick, never a wrong decision."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._reason: str | None = None

    def notify(self, reason: str) -> None:
        with self._cond:
            if self._reason is None:
                self._reason = reason
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._reason = None

    def pending(self) -> str | None:
        with self._cond:
            return self._reason

    def wait(self, timeout: float | None) -> str | None:
        """Block until notified or ``timeout`` passed; the first pending reason, or None.
        The reason stays pending until ``clear``."""
        with self._cond:
            if self._reason is None:
                self._cond.wait_for(lambda: self._reason is not None, timeout=timeout)
            return self._reason


class FileWake:
    """A file that changes by being rewritten (pool.conf, the operator's choices): its inode,
    size and modification time. A missing or unreadable file has its own fingerprint."""

    def __init__(self, path: Path, name: str | None = None) -> None:
        self.path = path
        self.name = name or str(path)

    def fingerprint(self) -> object:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return ("unreadable", exc.errno)
        return (st.st_ino, st.st_size, st.st_mtime_ns)


class DerivedFileWake:
    """A file whose content changes for reasons the agent does not care about (a simulated
    world's step counter): ``digest`` turns the content into what matters, recomputed only
    when the file's stat changes."""

    def __init__(self, path: Path, digest: Callable[[bytes], object], name: str) -> None:
        self.path = path
        self.name = name
        self._digest = digest
        self._stat: object = None
        self._value: object = None

    def fingerprint(self) -> object:
        stat = FileWake(self.path).fingerprint()
        if stat != self._stat:
            try:
                content = self.path.read_bytes()
            except OSError as exc:
                value: object = ("unreadable", exc.errno)
            else:
                try:
                    value = self._digest(content)
                except Exception as exc:  # a half-understood file is a change, never a crash
                    value = ("undigestable", type(exc).__name__, len(content))
            self._stat, self._value = stat, value
        return self._value
