"""The VM transport of the command seam: run argv inside a VM through its command agent.

The agent (``tests/vm/guest/agent.c`` in the lab image) listens on a virtio-serial port that
qemu exposes on the host as a unix socket (``-chardev socket,path=...,server=on``). This module
is the host side: ``VmConsole`` is a ``Runner`` transport that *executes* instead of wrapping
(see ``adapters.runner.ExecutingTransport``), so the real adapters run unchanged against the
VM's real drbdadm/drbdsetup, ip, arping and tgtd:

    runner = Runner(VmConsole("/run/lab/node1.agent"))
    RealDrbd(runner).observe(resources)

Invariants:

- One connection per VM, shared by every thread (qemu serves one client on the socket);
  requests carry ids, so several commands run in the VM at once (the agent runs each in its
  own process group). A reader thread delivers replies; writes are serialised by a lock.
- Every call is bounded: the agent kills the command's process group at ``timeout`` and says
  so; the host gives up ``slack`` seconds later anyway (a dead VM never answers), asks the
  agent to kill the command, and raises ``TimeoutError``.
- Failures are exceptions the runner maps: ``TimeoutError`` (timed out), ``FileNotFoundError``
  (no such command in the VM), ``ConnectionError`` (VM or agent not reachable: not started,
  killed, or the connection broke). When the connection breaks every waiting call fails at
  once and the next call reconnects, so one ``VmConsole`` outlives VM restarts.
- ``spawn`` starts a detached process in the VM (its own session, output to a log file in the
  VM) and returns a handle with ``pid`` (the VM's PID), ``poll``, ``wait`` and ``kill``; the
  agent reports the exit, so ``poll`` is a local lookup. When the connection breaks (the VM
  died) a handle whose exit was not reported reports ``-9``.
- ``stream`` starts a long-running command in the VM (its own session, stderr dropped) whose
  stdout comes back as it is written: ``on_line(line)`` for every line (no trailing newline;
  a last line without one is delivered at the end), then ``on_end(rc)`` exactly once, both
  from one delivery thread per stream (so a slow callback holds up only its own stream, and
  a callback may itself run commands on the same console). ``rc`` is the exit code, or minus
  the signal (``kill`` gives -9); when the connection breaks (the VM died) or is closed, every
  stream ends with -9, and the agent kills the streams of a connection that went away. Many
  streams run at once on one connection.
- Only the environment variables the caller names are sent (merged into the agent's own
  environment in the VM): the host's environment never leaks into the VM.

``python -m tests.vm.vmconsole SOCKET -- ARGV...`` runs one command the same way and exits
with its exit code (for debugging a VM by hand while no test holds its socket).
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import re
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Completed", "VmConsole", "VmProcess", "VmStream"]

_LOST = -9  # exit status reported for a process whose VM connection broke


@dataclass(frozen=True, slots=True)
class Completed:
    """A finished command: ``rc`` is the exit code, or minus the signal that killed it."""

    rc: int
    stdout: str
    stderr: str


@dataclass
class _Waiter:
    done: threading.Event = field(default_factory=threading.Event)
    rc: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    errno: int | None = None
    error: str | None = None  # the connection broke
    refused: str | None = None  # the agent could not serve the request ("E" reply)
    pid: int | None = None


class VmProcess:
    """A process started in the VM by ``VmConsole.spawn`` (see the module docstring)."""

    def __init__(self, console: VmConsole, session: _Session, ident: int, pid: int) -> None:
        self._console = console
        self._session = session
        self._id = ident
        self._pid = pid
        self._done = threading.Event()
        self._status: int | None = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._status

    def _ended(self, status: int) -> None:
        if self._status is None:
            self._status = status
        self._done.set()

    def poll(self) -> int | None:
        return self._status

    def wait(self, timeout: float | None = None) -> int:
        """The exit status; raises ``TimeoutError`` when it has not ended within ``timeout``."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"process {self._pid} in {self._console.label} still runs")
        assert self._status is not None
        return self._status

    def kill(self) -> None:
        """SIGKILL the process (a no-op when it has ended or the VM is gone)."""
        if self._status is None:
            with contextlib.suppress(OSError):
                self._session.send(f"K {self._id}\n".encode())


class VmStream:
    """A command started by ``VmConsole.stream`` (see the module docstring): a ``Process``
    whose stdout lines go to ``on_line`` and whose end goes to ``on_end``, from its own
    delivery thread. ``wait``/``poll`` report the end once ``on_end`` has returned."""

    def __init__(
        self,
        console: VmConsole,
        session: _Session,
        ident: int,
        on_line: Callable[[str], None],
        on_end: Callable[[int], None],
    ) -> None:
        self._console = console
        self._session = session
        self._id = ident
        self._pid = 0
        self._on_line = on_line
        self._on_end = on_end
        self._queue: queue.SimpleQueue[bytes | int] = queue.SimpleQueue()
        self._done = threading.Event()
        self._status: int | None = None
        self._ending = False  # an end was queued: later ends are ignored
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._status

    def _begin(self, pid: int) -> None:
        """The agent started it: deliver what came (and comes) from now on."""
        self._pid = pid
        self._thread = threading.Thread(
            target=self._deliver, name=f"vmstream-{self._console.label}-{self._id}", daemon=True
        )
        self._thread.start()

    def _data(self, data: bytes) -> None:
        self._queue.put(data)

    def _ended(self, status: int) -> None:
        with self._lock:
            if self._ending:
                return
            self._ending = True
        self._queue.put(status)

    def _deliver(self) -> None:
        pending = b""
        while True:
            item = self._queue.get()
            if isinstance(item, int):
                if pending:
                    self._call(self._on_line, pending)
                with contextlib.suppress(Exception):  # a callback's bug must not hide the end
                    self._on_end(item)
                self._status = item
                self._done.set()
                return
            pending += item
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._call(self._on_line, line)

    @staticmethod
    def _call(on_line: Callable[[str], None], line: bytes) -> None:
        with contextlib.suppress(Exception):  # one bad line must not end the delivery
            on_line(line.decode("utf-8", "replace"))

    def poll(self) -> int | None:
        return self._status

    def wait(self, timeout: float | None = None) -> int:
        """The exit status (after ``on_end`` returned); ``TimeoutError`` when still running."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"stream {self._pid} in {self._console.label} still runs")
        assert self._status is not None
        return self._status

    def kill(self) -> None:
        """SIGKILL the command's process group (it ends with -9); a no-op once it ended."""
        if not self._ending:
            try:
                self._session.send(f"K {self._id}\n".encode())
            except OSError:
                self._ended(_LOST)  # the connection is gone: so is the stream


class _Session:
    """One connection to the agent: a socket, a reader thread and the waiting calls."""

    def __init__(self, sock: socket.socket, label: str) -> None:
        self.sock = sock
        self.label = label
        self.lock = threading.Lock()
        self.waiters: dict[int, _Waiter] = {}
        self.procs: dict[int, VmProcess] = {}
        self.streams: dict[int, VmStream] = {}
        self.early_exits: dict[int, int] = {}  # exits reported before spawn() took the handle
        self.alive = True
        self.error = ""
        self.reader = threading.Thread(target=self._read, name=f"vmconsole-{label}", daemon=True)
        self.reader.start()

    def send(self, data: bytes) -> None:
        if not self.alive:
            raise ConnectionError(f"{self.label}: connection to the VM agent is closed")
        try:
            with self.lock:
                self.sock.sendall(data)
        except OSError as exc:
            self.fail(f"send failed: {exc}")
            raise ConnectionError(f"{self.label}: {exc}") from exc

    def fail(self, why: str) -> None:
        with self.lock:
            if not self.alive:
                return
            self.alive = False
            self.error = why
            waiters = list(self.waiters.values())
            procs = list(self.procs.values())
            streams = list(self.streams.values())
            self.waiters.clear()
            self.procs.clear()
            self.streams.clear()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        for w in waiters:
            w.error = why
            w.done.set()
        for p in procs:
            p._ended(_LOST)
        for st in streams:
            st._ended(_LOST)

    def _read(self) -> None:
        buf = bytearray()
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    self.fail("the VM agent closed the connection (VM stopped?)")
                    return
                buf += chunk
                self._parse(buf)
        except OSError as exc:
            self.fail(f"connection to the VM agent failed: {exc}")

    def _parse(self, buf: bytearray) -> None:
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                return
            head = bytes(buf[:nl]).decode("ascii", "replace").split()
            if not head:
                del buf[: nl + 1]
                continue
            kind = head[0]
            if kind == "R" and len(head) == 6:
                nout, nerr = int(head[3]), int(head[4])
                if len(buf) < nl + 1 + nout + nerr:
                    return  # wait for the rest of the output
                body = bytes(buf[nl + 1 : nl + 1 + nout + nerr])
                del buf[: nl + 1 + nout + nerr]
                w = self._take(int(head[1]))
                if w is not None:
                    w.rc, w.timed_out = int(head[2]), head[5] == "1"
                    w.stdout, w.stderr = body[:nout], body[nout:]
                    w.done.set()
                continue
            if kind == "D" and len(head) == 3:
                size = int(head[2])
                if len(buf) < nl + 1 + size:
                    return  # wait for the rest of the chunk
                data = bytes(buf[nl + 1 : nl + 1 + size])
                del buf[: nl + 1 + size]
                with self.lock:
                    stream = self.streams.get(int(head[1]))
                if stream is not None:
                    stream._data(data)
                continue
            del buf[: nl + 1]
            ident = int(head[1]) if len(head) > 1 and head[1].isdigit() else -1
            if kind == "O" or (kind == "S" and len(head) == 3):
                w = self._take(ident)
                if w is not None:
                    w.pid = int(head[2]) if kind == "S" else None
                    w.done.set()
            elif kind == "F" and len(head) == 3:
                w = self._take(ident)
                if w is not None:
                    w.errno = int(head[2])
                    w.done.set()
            elif kind == "E":
                w = self._take(ident)
                if w is not None:
                    w.refused = " ".join(head[2:]) or "request refused"
                    w.done.set()
            elif kind == "Z" and len(head) == 3:
                with self.lock:
                    stream = self.streams.pop(ident, None)
                    proc = self.procs.pop(ident, None) if stream is None else None
                    if stream is None and proc is None:
                        self.early_exits[ident] = int(head[2])
                if stream is not None:
                    stream._ended(int(head[2]))
                if proc is not None:
                    proc._ended(int(head[2]))
            # anything else: noise (ignored)

    def _take(self, ident: int) -> _Waiter | None:
        with self.lock:
            return self.waiters.pop(ident, None)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class VmConsole:
    """``Runner`` transport for a VM reached through its agent's socket (module docstring).

    ``label`` names the VM in messages; ``connect_timeout`` bounds connecting to the socket;
    ``slack`` is how long after a command's timeout the host stops waiting for the agent.
    """

    name = "vm"

    def __init__(
        self,
        path: str,
        *,
        label: str | None = None,
        connect_timeout: float = 2.0,
        slack: float = 2.0,
    ) -> None:
        self.path = path
        self.label = label or path
        self.connect_timeout = connect_timeout
        self.slack = slack
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._session: _Session | None = None

    # --------------------------------------------------------------------- connection
    def _connect(self) -> _Session:
        with self._lock:
            if self._session is not None and self._session.alive:
                return self._session
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                raise ConnectionError(
                    f"{self.label}: VM agent socket {self.path} not reachable: "
                    f"{exc.strerror or exc}"
                ) from exc
            sock.settimeout(None)
            self._session = _Session(sock, self.label)
            return self._session

    def close(self) -> None:
        """Drop the connection (waiting calls fail; the next call reconnects)."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.fail("closed by the host")

    def ping(self, timeout: float = 1.0) -> bool:
        """True when the agent answers within ``timeout`` (never raises)."""
        try:
            session = self._connect()
            ident = next(self._ids)
            waiter = self._register(session, ident)
            session.send(f"P {ident}\n".encode())
        except OSError:
            return False
        ok = waiter.done.wait(timeout) and waiter.error is None
        if not ok:
            session._take(ident)
        return ok

    def _register(self, session: _Session, ident: int) -> _Waiter:
        waiter = _Waiter()
        with session.lock:
            if not session.alive:
                raise ConnectionError(f"{self.label}: {session.error}")
            session.waiters[ident] = waiter
        return waiter

    # --------------------------------------------------------------------- transport
    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The equivalent command line (used in messages; see the module docstring)."""
        return [sys.executable, "-m", "tests.vm.vmconsole", self.path, "--", *argv]

    def execute(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> Completed:
        """Run ``argv`` in the VM and wait for it (see the module docstring for errors)."""
        session = self._connect()
        ident = next(self._ids)
        payload = _payload(argv, env, (stdin or "").encode())
        waiter = self._register(session, ident)
        limit_ms = max(1, int(timeout * 1000))
        header = f"X {ident} r {limit_ms} {len(payload)}\n".encode()
        session.send(header + payload)
        if not waiter.done.wait(timeout + self.slack):
            session._take(ident)
            with contextlib.suppress(OSError):
                session.send(f"K {ident}\n".encode())
            raise TimeoutError(f"{self.label}: no answer within {timeout + self.slack:g}s")
        return self._result(waiter, argv, timeout)

    def _result(self, waiter: _Waiter, argv: Sequence[str], timeout: float) -> Completed:
        self._raise_failure(waiter, argv)
        if waiter.timed_out:
            raise TimeoutError(f"{self.label}: {argv[0]} timed out after {timeout:g}s")
        return Completed(
            waiter.rc,
            waiter.stdout.decode("utf-8", "replace"),
            waiter.stderr.decode("utf-8", "replace"),
        )

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: str | None = None,
    ) -> VmProcess:
        """Start ``argv`` detached in the VM; its output goes to ``log_path`` in the VM."""
        session = self._connect()
        ident = next(self._ids)
        payload = _payload(argv, env, (log_path or "").encode())
        waiter = self._register(session, ident)
        session.send(f"X {ident} s 0 {len(payload)}\n".encode() + payload)
        if not waiter.done.wait(self.connect_timeout + self.slack):
            session._take(ident)
            raise TimeoutError(f"{self.label}: no answer to spawn {argv[0]}")
        self._raise_failure(waiter, argv)
        assert waiter.pid is not None
        proc = VmProcess(self, session, ident, waiter.pid)
        with session.lock:
            early = session.early_exits.pop(ident, None)
            if session.alive and early is None:
                session.procs[ident] = proc
        if early is not None:
            proc._ended(early)  # a short process: its exit came with (or before) this answer
        elif not session.alive:
            proc._ended(_LOST)
        return proc

    def stream(
        self,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None],
        on_end: Callable[[int], None],
        env: Mapping[str, str] | None = None,
    ) -> VmStream:
        """Start ``argv`` in the VM and stream its stdout lines (see the module docstring).
        Raises like ``spawn`` when it cannot start (then neither callback is called)."""
        session = self._connect()
        ident = next(self._ids)
        payload = _payload(argv, env, b"")
        handle = VmStream(self, session, ident, on_line, on_end)
        waiter = self._register(session, ident)
        with session.lock:
            session.streams[ident] = handle  # before the request: its first lines may race in
        try:
            session.send(f"X {ident} t 0 {len(payload)}\n".encode() + payload)
            if not waiter.done.wait(self.connect_timeout + self.slack):
                session._take(ident)
                with contextlib.suppress(OSError):
                    session.send(f"K {ident}\n".encode())
                raise TimeoutError(f"{self.label}: no answer to stream {argv[0]}")
            self._raise_failure(waiter, argv)
        except BaseException:
            with session.lock:
                session.streams.pop(ident, None)
            raise
        assert waiter.pid is not None
        handle._begin(waiter.pid)
        return handle

    def _raise_failure(self, waiter: _Waiter, argv: Sequence[str]) -> None:
        if waiter.error is not None:
            raise ConnectionError(f"{self.label}: {waiter.error}")
        if waiter.refused is not None:
            raise OSError(f"{self.label}: the agent could not run {argv[0]}: {waiter.refused}")
        if waiter.errno is not None:
            if waiter.errno == 2:
                raise FileNotFoundError(2, f"{argv[0]}: command not found in {self.label}")
            raise OSError(waiter.errno, f"{argv[0]}: cannot execute in {self.label}")

    def __repr__(self) -> str:
        return f"VmConsole({self.path!r}, label={self.label!r})"


def _payload(argv: Sequence[str], env: Mapping[str, str] | None, rest: bytes) -> bytes:
    """``argc NUL argv... envc NUL K=V... rest``: every string NUL-terminated."""
    if not argv:
        raise ValueError("empty argv")
    envs = []
    for key, value in (env or {}).items():
        if not _ENV_NAME.match(key):
            raise ValueError(f"bad environment variable name {key!r}")
        envs.append(f"{key}={value}")
    strings = [str(len(argv)), *map(str, argv), str(len(envs)), *envs]
    data = [s.encode() for s in strings]
    if any(b"\0" in d for d in data):
        raise ValueError("an argument or environment value contains a NUL byte")
    return b"".join(d + b"\0" for d in data) + rest


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m tests.vm.vmconsole SOCKET -- ARGV...", file=sys.stderr)
        return 2
    console = VmConsole(args[0])
    try:
        done = console.execute(args[2:], timeout=60.0)
    except OSError as exc:
        print(f"vmconsole: {exc}", file=sys.stderr)
        return 255
    finally:
        console.close()
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.rc if done.rc >= 0 else 128 - done.rc


if __name__ == "__main__":
    sys.exit(main())
