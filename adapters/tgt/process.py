"""The node's files and process table as the tgt adapter needs them: ``ProcessHost``.

``LocalProcessHost`` (the default: direct OS calls, for ``Local``/``Netns`` transports, where the
agent shares the node's file system and PID namespace) or ``CommandProcessHost`` (the same
through the runner, for a node the agent reaches remotely, e.g. a VM over the VM tier's console
transport). Either way they concern only the tgtd PID the adapter started or recorded.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from adapters.runner import CommandResult, Runner
from reconciler.core.errors import TerminalError


class ProcessHost(Protocol):
    """The node's files and processes as the adapter needs them (see the module docstring).

    Queries never raise for a missing file or process (``read_file`` -> None, ``alive`` ->
    False); ``make_dir``/``write_file`` raise ``TerminalError``/``TransientError`` when they
    fail; ``kill`` of a process that is gone is not an error."""

    def make_dir(self, path: str) -> None:
        """Create ``path`` (mode 0700, parents too) unless it exists."""
        ...

    def read_file(self, path: str) -> str | None: ...

    def write_file(self, path: str, text: str) -> None:
        """Atomically: readers see the old or the new content, never a part."""
        ...

    def remove_file(self, path: str) -> None: ...

    def alive(self, pid: int) -> bool:
        """``pid`` exists and is not a zombie."""
        ...

    def is_process(self, pid: int, comm: str, env_entry: str) -> bool:
        """``pid`` is alive, named ``comm``, and has ``env_entry`` (``K=V``) in its environment."""
        ...

    def kill(self, pid: int) -> None:
        """SIGKILL ``pid``."""
        ...

    def tail(self, path: str, size: int) -> str:
        """The last ``size`` bytes of ``path`` as text ("" when unreadable)."""
        ...


class LocalProcessHost:
    """Direct OS calls: the agent shares the node's file system and PID namespace."""

    def make_dir(self, path: str) -> None:
        try:
            Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise TerminalError(f"cannot create {path}: {exc.strerror or exc}") from exc

    def read_file(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def write_file(self, path: str, text: str) -> None:
        try:
            _write_atomic(path, text)
        except OSError as exc:
            raise TerminalError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def remove_file(self, path: str) -> None:
        with contextlib.suppress(OSError):
            Path(path).unlink()

    def alive(self, pid: int) -> bool:
        return _alive(pid)

    def is_process(self, pid: int, comm: str, env_entry: str) -> bool:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != comm:
                return False
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return env_entry.encode() in environ and _alive(pid)

    def kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def tail(self, path: str, size: int) -> str:
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - size))
                return fh.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""


class CommandProcessHost:
    """The same operations as commands on the node through the runner (``mkdir``, ``cat``,
    ``mv``, ``rm``, ``kill``, ``tail`` and ``/proc`` reads), for a node reached remotely.
    Transport failures propagate as the runner's ``TransientError``."""

    def __init__(self, runner: Runner, *, timeout: float = 5.0) -> None:
        self.runner = runner
        self.timeout = timeout

    def _run(self, argv: Sequence[str], *, stdin: str | None = None) -> CommandResult:
        return self.runner.run(argv, check=False, timeout=self.timeout, stdin=stdin)

    def make_dir(self, path: str) -> None:
        res = self._run(["mkdir", "-p", "-m", "0700", path])
        if not res.ok:
            raise TerminalError(failure_text(f"mkdir {path}", res), command=res.argv)

    def read_file(self, path: str) -> str | None:
        res = self._run(["cat", path])
        return res.stdout if res.ok else None

    def write_file(self, path: str, text: str) -> None:
        script = 'cat > "$1.tmp" && mv -f "$1.tmp" "$1"'
        res = self._run(["sh", "-c", script, "sh", path], stdin=text)
        if not res.ok:
            raise TerminalError(failure_text(f"writing {path}", res), command=res.argv)

    def remove_file(self, path: str) -> None:
        self._run(["rm", "-f", path])

    def alive(self, pid: int) -> bool:
        res = self._run(["cat", f"/proc/{int(pid)}/stat"])
        return res.ok and _stat_alive(res.stdout)

    def is_process(self, pid: int, comm: str, env_entry: str) -> bool:
        comm_res = self._run(["cat", f"/proc/{int(pid)}/comm"])
        if not comm_res.ok or comm_res.stdout.strip() != comm:
            return False
        env_res = self._run(["cat", f"/proc/{int(pid)}/environ"])
        return env_res.ok and env_entry in env_res.stdout.split("\0") and self.alive(pid)

    def kill(self, pid: int) -> None:
        self._run(["kill", "-9", str(int(pid))])

    def tail(self, path: str, size: int) -> str:
        res = self._run(["tail", "-c", str(int(size)), path])
        return res.stdout.strip() if res.ok else ""


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return _stat_alive(stat)


def _stat_alive(stat: str) -> bool:
    """``/proc/PID/stat`` text of a process that is not a zombie."""
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], [])


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


def failure_text(what: str, res: CommandResult) -> str:
    return f"{what} exited {res.rc}: {(res.stderr or res.stdout).strip()[:300]}"
