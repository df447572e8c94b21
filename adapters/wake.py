"""Waking the watch loop (``reconciler.loop``): ``Wakeup`` (the push side every event-fed
adapter notifies), the file wake sources (``adapters.base.WakeSource``: cheap fingerprints of
pool.conf, the operator file, the simulated world, the spec file) and ``FileWatch``, which
turns changes of those files into notifications (inotify; polling where inotify cannot be
used).

A wake source never replaces observation: it only says "look now" instead of waiting for the
next tick. A missed or spurious change costs at most one tick, never a wrong decision.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.base import WakeSource

log = logging.getLogger(__name__)


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


class FileWatch:
    """Watches the wake sources' files and notifies ``wakeup`` when one changed: one thread
    per agent (``start``; building it starts nothing), stopped by ``close`` (idempotent).

    - **inotify** (the normal case): the thread blocks on the files' *directories* (the files
      are replaced by rename, which a watch on the file itself would lose) and, on an event
      about a source's file name, recomputes that source's fingerprint and notifies
      ``wakeup.notify(source.name)`` only when it differs from the last one seen. So a
      ``DerivedFileWake`` (the simulated world) still wakes a node only for what its digest
      keeps, never for the node's own changes. A directory that does not exist (yet) is
      waited for on its nearest existing ancestor and watched once it appears; a directory
      removed is waited for again the same way. An idle agent's thread wakes only for events
      in those directories (the agent's own state files there are filtered out by name).
    - **polling** (the fallback): where inotify cannot be used (no ``inotify_simple``, the
      kernel refuses an instance or a watch: ``ENOSYS``, ``EMFILE``, ``ENOSPC``, ``EACCES``),
      every source's fingerprint is compared every ``poll`` seconds, as the loop did before;
      the reason is logged once per watcher (a warning on ``adapters.wake``: the agent's
      stderr and log file). A source with no ``path`` (a generic ``WakeSource``) is always
      polled, also next to inotify.

    The first fingerprints are taken after the watches are armed, so a change after
    ``start`` returns is never lost; a spurious wake costs a tick, never a decision.
    ``mode`` says what the thread does: "inotify", "polling" or "off" (not started / closed).
    """

    _MASK_NAMES = (
        "CLOSE_WRITE",
        "MODIFY",
        "MOVED_TO",
        "MOVED_FROM",
        "CREATE",
        "DELETE",
        "ATTRIB",
        "DELETE_SELF",
        "MOVE_SELF",
    )

    def __init__(
        self,
        sources: Sequence[WakeSource],
        wakeup: Wakeup,
        *,
        poll: float,
        inotify: Callable[[], Any] | None = None,
    ) -> None:
        self.sources = tuple(sources)
        self.wakeup = wakeup
        self.poll = poll
        self.mode = "off"
        self.fallback_reason: str | None = None
        self._inotify_factory = inotify
        self._seen: list[object] = [None] * len(self.sources)
        self._closed = threading.Event()
        self._started = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pipe: tuple[int, int] | None = None
        self._notifier: Any = None
        self._watches: dict[int, Path] = {}  # wd -> the directory it watches

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> FileWatch:
        """Arm the watches, take the first fingerprints and start the thread (once)."""
        with self._lock:
            if self._started or self._closed.is_set():
                return self
            self._started = True
            if self.sources:
                self._begin()
        return self

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            if self._pipe is not None:
                with contextlib.suppress(OSError):
                    os.write(self._pipe[1], b"x")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._lock:
            if self._notifier is not None:
                with contextlib.suppress(OSError):
                    self._notifier.close()
                self._notifier = None
            if self._pipe is not None:
                for fd in self._pipe:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                self._pipe = None
            self.mode = "off"

    def _begin(self) -> None:
        try:
            self._arm_inotify()
        except Exception as exc:  # any reason inotify cannot be used: poll, and say why once
            self._drop_inotify()
            self.fallback_reason = f"{type(exc).__name__}: {exc}"
            log.warning(
                "file wakes fall back to polling every %gs (inotify cannot be used: %s)",
                self.poll,
                self.fallback_reason,
            )
            self.mode = "polling"
            target: Callable[[], None] = self._run_polling
        else:
            self.mode = "inotify"
            target = self._run_inotify
        self._seen = [_fingerprint(s) for s in self.sources]
        self._thread = threading.Thread(target=target, name="file-wakes", daemon=True)
        self._thread.start()

    # -- inotify ---------------------------------------------------------------------------

    def _arm_inotify(self) -> None:
        # In pyproject; an ImportError falls back to polling like any other reason.
        import inotify_simple  # type: ignore[import-untyped]

        flags = inotify_simple.flags
        factory: Callable[[], Any] = self._inotify_factory or inotify_simple.INotify
        self._flags = flags
        mask = 0
        for name in self._MASK_NAMES:
            mask |= int(getattr(flags, name))
        self._mask = mask
        self._notifier = factory()
        self._pipe = os.pipe()
        self._rearm()

    def _drop_inotify(self) -> None:
        if self._notifier is not None:
            with contextlib.suppress(Exception):
                self._notifier.close()
            self._notifier = None
        if self._pipe is not None:
            for fd in self._pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pipe = None
        self._watches.clear()

    def _directories(self) -> set[Path]:
        return {_directory(s) for s in self.sources if _path(s) is not None}

    def _rearm(self) -> None:
        """Watch every wanted directory that exists; for one that does not, its nearest
        existing ancestor (so its creation is seen). Raises OSError for what is not a
        missing directory (the caller falls back to polling)."""
        watched = set(self._watches.values())
        wanted: set[Path] = set()
        for directory in sorted(self._directories()):
            here = directory
            while here not in watched:
                try:
                    wd = int(self._notifier.add_watch(str(here), self._mask))
                except (FileNotFoundError, NotADirectoryError):
                    if here.parent == here:
                        raise
                    here = here.parent
                    continue
                self._watches[wd] = here
                watched.add(here)
            wanted.add(here)
        for wd, where in list(self._watches.items()):
            if where not in wanted:  # an ancestor no longer awaited: its directory is here
                self._watches.pop(wd)
                with contextlib.suppress(OSError):
                    self._notifier.rm_watch(wd)

    def _run_inotify(self) -> None:
        import select

        assert self._pipe is not None
        poller = select.poll()
        poller.register(self._notifier.fileno(), select.POLLIN)
        poller.register(self._pipe[0], select.POLLIN)
        polled = [i for i, s in enumerate(self.sources) if _path(s) is None]
        timeout_ms = int(self.poll * 1000) if polled and self.poll > 0 else None
        while not self._closed.is_set():
            try:
                ready = poller.poll(timeout_ms)
                if self._closed.is_set():
                    return
                if not ready:
                    self._check(polled)
                    continue
                self._handle(self._notifier.read(timeout=0))
            except Exception as exc:  # the watcher must not die silently: poll from now on
                if self._closed.is_set():
                    return
                self.fallback_reason = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "file wakes fall back to polling every %gs (inotify failed: %s)",
                    self.poll,
                    self.fallback_reason,
                )
                with self._lock:
                    self._drop_inotify()
                    self.mode = "polling"
                self._check(range(len(self.sources)))
                self._run_polling()
                return
            if polled:
                self._check(polled)

    def _handle(self, events: Iterable[Any]) -> None:
        dirs = self._directories()
        missing = dirs - set(self._watches.values())
        rearm = False
        names: dict[Path, set[str]] = {}
        ignored = int(self._flags.IGNORED)
        overflow = int(self._flags.Q_OVERFLOW)
        for event in events:
            if event.mask & overflow:  # the kernel dropped events: look at every source
                rearm = True
                continue
            if event.mask & ignored:  # the directory went away (not a watch we removed)
                rearm = self._watches.pop(event.wd, None) is not None or rearm
                continue
            where = self._watches.get(event.wd)
            if where is None:
                continue
            if missing and event.name:
                child = where / event.name
                if any(m == child or child in m.parents for m in missing):
                    rearm = True  # an awaited directory (or one on its way) appeared
            if where in dirs:
                names.setdefault(where, set()).add(event.name)
        if rearm:
            self._rearm()
            self._check(range(len(self.sources)))  # the files may have come with their dir
            return
        hit = [
            i
            for i, s in enumerate(self.sources)
            if (p := _path(s)) is not None and p.name in names.get(_directory(s), ())
        ]
        self._check(hit)

    # -- polling ---------------------------------------------------------------------------

    def _run_polling(self) -> None:
        every = self.poll if self.poll > 0 else 0.005
        while not self._closed.wait(every):
            self._check(range(len(self.sources)))

    def _check(self, indexes: Iterable[int]) -> None:
        for i in indexes:
            source = self.sources[i]
            now = _fingerprint(source)
            if now != self._seen[i]:
                self._seen[i] = now
                self.wakeup.notify(source.name)


def _path(source: WakeSource) -> Path | None:
    path = getattr(source, "path", None)
    return Path(path).absolute() if isinstance(path, (str, os.PathLike)) else None


def _directory(source: WakeSource) -> Path:
    path = _path(source)
    assert path is not None
    return path.parent


def _fingerprint(source: WakeSource) -> object:
    try:
        return source.fingerprint()
    except Exception as exc:  # a wake source must not stop the agent; the tick observes anyway
        return ("failed", type(exc).__name__)
