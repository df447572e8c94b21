"""The one command seam: every external command of the product goes through ``Runner``.

Invariants:
- argv is always an explicit list (never a shell string), and every call has a timeout.
- A transport turns the argv into what is really spawned: ``Local`` runs it as is, ``Netns``
  prefixes ``ip netns exec NS`` (lab). A transport that also has ``execute``/``spawn``
  (``ExecutingTransport``, e.g. the VM tier's console agent, ``tests/vm/vmconsole.py``) carries
  the argv to where it runs itself; the runner then spawns nothing locally, sends only the
  environment variables the caller names, and maps the transport's exceptions to the same
  errors (``TimeoutError``/``ConnectionError`` -> transient, ``FileNotFoundError`` -> terminal).
- Failures map to ``TransientError`` (timeouts, codes the caller marks transient) or
  ``TerminalError`` (missing binary, other non-zero exits). ``check=False`` returns the result
  instead, for commands whose exit code is an answer (``ping``, ``tgtadm --op show``).
- ``stream`` starts a long-running command whose stdout is delivered line by line (DRBD's
  ``events2``): through ``sh`` for local and netns transports, through the transport's own
  ``stream`` for an executing transport that has one (``StreamingTransport``), and a
  ``TerminalError`` ("transport X cannot stream") for one that has not, so the caller can fall
  back to polling. Its contract, whichever side implements it: ``on_line(line)`` is called
  from one reader thread, in order, for every stdout line without its newline (stderr is not
  delivered); ``on_end(rc)`` is called exactly once, after the last ``on_line``, when the
  command ended for any reason (``rc`` < 0: killed by signal -rc, also by ``kill()``); an
  exception raised by a callback is logged and never stops the reader. Callers must expect
  ``on_line`` to start before ``stream`` returned, and ``on_end`` from any thread, also from
  inside ``kill()``. The handle's ``kill``
  ends that one process (never a group); ``wait(timeout)`` raises ``TimeoutError``.
- Nothing else in the product spawns processes (tests check that no other module imports
  ``subprocess`` or ``sh``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import sh

from adapters.tools import package_of
from reconciler.core.errors import TerminalError, TransientError

log = logging.getLogger(__name__)


class Transport(Protocol):
    @property
    def name(self) -> str: ...

    def wrap(self, argv: Sequence[str]) -> list[str]: ...


class Process(Protocol):
    """A started long-running command (``subprocess.Popen`` satisfies it)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class Executed(Protocol):
    """What ``ExecutingTransport.execute`` returns: ``rc`` < 0 means killed by signal -rc."""

    @property
    def rc(self) -> int: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...


@runtime_checkable
class ExecutingTransport(Protocol):
    """A transport that runs commands where they belong itself (no local process).

    ``execute`` raises ``TimeoutError`` when ``timeout`` expired (the command was killed),
    ``FileNotFoundError`` for a missing command, ``ConnectionError``/``OSError`` when the place
    cannot be reached. ``env`` holds only the caller's variables. ``wrap`` still gives the
    equivalent command line, for messages."""

    @property
    def name(self) -> str: ...

    def wrap(self, argv: Sequence[str]) -> list[str]: ...

    def execute(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> Executed: ...

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: str | None = None,
    ) -> Process: ...


@runtime_checkable
class StreamingTransport(Protocol):
    """An executing transport that can also stream a long-running command's output (the VM
    console agent, ``tests/vm/vmconsole.py``): the same contract as ``Runner.stream`` (see the
    module docstring). ``env`` holds only the caller's variables. It raises
    ``FileNotFoundError`` for a missing command and ``OSError`` when the place cannot be
    reached; once it returned a handle, every later failure (the connection lost, the command
    killed) ends in ``on_end`` (with a negative ``rc`` when the command's status is unknown)."""

    @property
    def name(self) -> str: ...

    def stream(
        self,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None],
        on_end: Callable[[int], None],
        env: Mapping[str, str] | None = None,
    ) -> Process: ...


@dataclass(frozen=True)
class Local:
    name: str = "local"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return list(argv)


@dataclass(frozen=True)
class Netns:
    """Run inside a named network namespace (``ip netns exec``)."""

    namespace: str
    name: str = "netns"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0


@dataclass
class Runner:
    """``spawned`` counts the processes this runner started (``run``, ``spawn`` and
    ``stream``, locally or through an executing transport): the idle-cost benchmark and the
    metrics read it."""

    transport: Transport = field(default_factory=Local)
    timeout: float = 10.0
    env: Mapping[str, str] | None = None
    spawned: int = 0

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = True,
        transient_codes: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` to completion. See the module docstring for the error mapping."""
        full = self.transport.wrap(argv)
        limit = self.timeout if timeout is None else timeout
        self.spawned += 1  # a counter for figures, never for decisions
        if isinstance(self.transport, ExecutingTransport):
            return self._execute(
                self.transport, argv, full, limit, check, transient_codes, env, stdin
            )
        merged = _merge_env(self.env, env)
        started = time.monotonic()
        try:
            cmd = sh.Command(full[0])
        except sh.CommandNotFound as exc:
            raise TerminalError(_not_found(full[0]), command=tuple(full)) from exc
        # sh's own ``_timeout`` (and ``wait(timeout=)``) polls at 100 ms granularity, which
        # would dominate a failover; a timer that kills the process keeps a call at ~5 ms.
        proc = cmd(
            *full[1:],
            _bg=True,
            _bg_exc=False,
            _ok_code=list(range(256)),
            _env=merged,
            _in=stdin,
            _return_cmd=True,
            _tty_out=False,
        )
        expired = threading.Event()

        def _expire() -> None:
            expired.set()
            with contextlib.suppress(Exception):
                proc.kill()

        timer = threading.Timer(limit, _expire)
        timer.daemon = True
        timer.start()
        try:
            proc.wait()
        except sh.SignalException as exc:
            if expired.is_set():
                raise TransientError(
                    f"{_short(argv)} timed out after {limit:g}s", command=tuple(full)
                ) from exc
            raise TransientError(
                f"{_short(argv)} was killed by a signal", command=tuple(full)
            ) from exc
        finally:
            timer.cancel()
        result = CommandResult(
            argv=tuple(full),
            rc=proc.exit_code,
            stdout=_text(proc.stdout),
            stderr=_text(proc.stderr),
            seconds=time.monotonic() - started,
        )
        return _checked(result, argv, check, transient_codes)

    def _execute(
        self,
        transport: ExecutingTransport,
        argv: Sequence[str],
        full: list[str],
        limit: float,
        check: bool,
        transient_codes: Sequence[int],
        env: Mapping[str, str] | None,
        stdin: str | None,
    ) -> CommandResult:
        """``run`` through an executing transport (same results, same error mapping)."""
        started = time.monotonic()
        command = tuple(full)
        try:
            done = transport.execute(
                argv, timeout=limit, env=_overrides(self.env, env), stdin=stdin
            )
        except TimeoutError as exc:
            raise TransientError(
                f"{_short(argv)} timed out after {limit:g}s", command=command
            ) from exc
        except FileNotFoundError as exc:
            raise TerminalError(_not_found(argv[0]), command=command) from exc
        except OSError as exc:
            raise TransientError(
                f"{_short(argv)}: {transport.name} transport failed: {exc}", command=command
            ) from exc
        if done.rc < 0:
            raise TransientError(f"{_short(argv)} was killed by a signal", command=command)
        result = CommandResult(
            argv=command,
            rc=done.rc,
            stdout=done.stdout,
            stderr=done.stderr,
            seconds=time.monotonic() - started,
        )
        return _checked(result, argv, check, transient_codes)

    @property
    def can_stream(self) -> bool:
        """Whether ``stream`` can work on this runner's transport (local and netns always;
        an executing transport only when it has ``stream``)."""
        return not isinstance(self.transport, ExecutingTransport) or isinstance(
            self.transport, StreamingTransport
        )

    def stream(
        self,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None],
        on_end: Callable[[int], None],
        env: Mapping[str, str] | None = None,
    ) -> Process:
        """Start a long-running command and deliver its stdout line by line (see the module
        docstring for the contract). Raises ``TerminalError`` for a missing command or a
        transport that cannot stream, ``TransientError`` when an executing transport cannot
        reach its place; after it returned, every outcome arrives through ``on_end``."""
        transport = self.transport
        if isinstance(transport, ExecutingTransport):
            if not isinstance(transport, StreamingTransport):
                raise TerminalError(
                    f"transport {transport.name} cannot stream", command=tuple(argv)
                )
            self.spawned += 1
            try:
                return transport.stream(
                    argv,
                    on_line=_guard(on_line, argv),
                    on_end=_once(on_end, argv),
                    env=_overrides(self.env, env),
                )
            except FileNotFoundError as exc:
                raise TerminalError(_not_found(argv[0]), command=tuple(argv)) from exc
            except OSError as exc:
                raise TransientError(
                    f"{_short(argv)}: {transport.name} transport failed: {exc}",
                    command=tuple(argv),
                ) from exc
        full = transport.wrap(argv)
        try:
            cmd = sh.Command(full[0])
        except sh.CommandNotFound as exc:
            raise TerminalError(_not_found(full[0]), command=tuple(full)) from exc
        self.spawned += 1
        return _ShStream(cmd, full, _merge_env(self.env, env), _guard(on_line, argv), on_end)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: str | None = None,
        new_session: bool = True,
    ) -> Process:
        """Start a long-running command (a daemon in foreground mode, a detached arping) and
        return its handle without waiting. The caller owns it (wait/kill by PID). Through an
        executing transport the process runs there (always in a new session) and ``log_path``
        is a path there."""
        self.spawned += 1
        if isinstance(self.transport, ExecutingTransport):
            try:
                return self.transport.spawn(argv, env=_overrides(self.env, env), log_path=log_path)
            except FileNotFoundError as exc:
                raise TerminalError(_not_found(argv[0]), command=tuple(argv)) from exc
            except OSError as exc:
                raise TransientError(
                    f"{_short(argv)}: {self.transport.name} transport failed: {exc}",
                    command=tuple(argv),
                ) from exc
        full = self.transport.wrap(argv)
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            return subprocess.Popen(
                full,
                env=_merge_env(self.env, env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=new_session,
            )
        except FileNotFoundError as exc:
            raise TerminalError(_not_found(full[0]), command=tuple(full)) from exc
        finally:
            if log_path and not isinstance(out, int):
                out.close()


class _ShStream:
    """A ``Process`` for a command started through ``sh`` with a line callback.

    sh calls its own ``_done`` from whichever thread first notices the exit, possibly before
    the output thread delivered the last lines; so ``on_end`` is called instead by a waiter
    thread of ours, after ``RunningCommand.wait`` (which joins sh's output thread)."""

    def __init__(
        self,
        cmd: sh.Command,
        full: list[str],
        env: dict[str, str] | None,
        on_line: Callable[[str], None],
        on_end: Callable[[int], None],
    ) -> None:
        def deliver(line: str | bytes) -> None:
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
            on_line(text.rstrip("\n"))

        self._ended = threading.Event()
        self._rc: int | None = None
        self._proc = cmd(
            *full[1:],
            _bg=True,
            _bg_exc=False,
            _ok_code=list(range(256)),
            _env=env,
            _out=deliver,
            _err=lambda _line: None,  # not delivered, and not collected either
            _no_out=True,
            _no_err=True,
            _return_cmd=True,
            _tty_out=False,
        )
        self.pid: int = self._proc.pid
        end = _once(on_end, full)
        _LIVE_STREAMS.add(self)

        def waiter() -> None:
            with contextlib.suppress(sh.ErrorReturnCode, sh.SignalException):
                self._proc.wait()
            rc = self._proc.process.exit_code
            self._rc = -9 if rc is None else int(rc)
            self._ended.set()
            _LIVE_STREAMS.discard(self)
            end(self._rc)

        threading.Thread(target=waiter, name=f"stream {_short(full)}", daemon=True).start()

    def poll(self) -> int | None:
        return self._rc if self._ended.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise TimeoutError(f"process {self.pid} still runs")
        assert self._rc is not None
        return self._rc

    def kill(self) -> None:
        if not self._ended.is_set():
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()


# Streams still running when the interpreter exits are killed (an agent or a ``--once`` run
# that ends without closing its adapters must not leave an idle ``events2`` behind).
_LIVE_STREAMS: weakref.WeakSet[_ShStream] = weakref.WeakSet()


@atexit.register
def _kill_live_streams() -> None:
    for stream in list(_LIVE_STREAMS):
        stream.kill()


def _guard(on_line: Callable[[str], None], argv: Sequence[str]) -> Callable[[str], None]:
    """A line callback that logs its own exceptions instead of stopping the reader (and
    never returns True, which would make sh stop calling it)."""

    def guarded(line: str) -> None:
        try:
            on_line(line)
        except Exception:
            log.exception("the line callback of %s failed", _short(argv))

    return guarded


def _once(on_end: Callable[[int], None], argv: Sequence[str]) -> Callable[[int], None]:
    """An end callback that runs at most once and logs its own exceptions."""
    lock = threading.Lock()
    called = False

    def once(rc: int) -> None:
        nonlocal called
        with lock:
            if called:
                return
            called = True
        try:
            on_end(rc)
        except Exception:
            log.exception("the end callback of %s failed", _short(argv))

    return once


def _checked(
    result: CommandResult, argv: Sequence[str], check: bool, transient_codes: Sequence[int]
) -> CommandResult:
    if check and result.rc != 0:
        message = (
            f"{_short(argv)} failed with exit code {result.rc}: "
            f"{(result.stderr or result.stdout).strip()[:400]}"
        )
        error = TransientError if result.rc in transient_codes else TerminalError
        raise error(message, command=result.argv, output=result.stderr or result.stdout)
    return result


def _overrides(
    base: Mapping[str, str] | None, extra: Mapping[str, str] | None
) -> dict[str, str] | None:
    """Only the variables the runner and the caller set (for transports that run elsewhere)."""
    if base is None and extra is None:
        return None
    return {**(base or {}), **(extra or {})}


def _merge_env(
    base: Mapping[str, str] | None, extra: Mapping[str, str] | None
) -> dict[str, str] | None:
    if base is None and extra is None:
        return None
    import os

    merged = dict(os.environ)
    merged.update(base or {})
    merged.update(extra or {})
    return merged


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value or "")


def _not_found(command: str) -> str:
    package = package_of(command)
    hint = f" (install the Debian package {package})" if package else ""
    return f"command not found: {command}{hint}"


def _short(argv: Sequence[str]) -> str:
    return " ".join(argv[:4]) + (" ..." if len(argv) > 4 else "")
