"""Wake sources: cheap change detectors the watch loop polls between ticks (see
``adapters.base.WakeSource`` and ``reconciler.loop``).

A wake source never replaces observation: it only says "look now" instead of waiting for the
next tick. A missed or spurious change costs at most one tick, never a wrong decision.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


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
