"""The command seam on this machine: real local processes (no network)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from adapters.runner import Runner, Transport
from reconciler.core.errors import TerminalError, TransientError


def test_exit_codes_map_to_results_and_errors() -> None:
    runner = Runner()
    ok = runner.run(["sh", "-c", "printf out; printf err >&2"])
    assert (ok.rc, ok.stdout, ok.stderr) == (0, "out", "err")
    answer = runner.run(["sh", "-c", "exit 3"], check=False)
    assert answer.rc == 3 and not answer.ok
    with pytest.raises(TerminalError, match="exit code 4"):
        runner.run(["sh", "-c", "echo broken >&2; exit 4"])
    with pytest.raises(TransientError, match="exit code 107"):
        runner.run(["sh", "-c", "exit 107"], transient_codes=(107,))
    with pytest.raises(TerminalError, match="command not found"):
        runner.run(["tandem-no-such-command"])
    assert runner.run(["cat"], stdin="fed").stdout == "fed"


def test_a_timeout_kills_the_command_promptly_and_is_transient(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(TransientError, match=r"timed out after 0\.2s"):
        Runner().run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], timeout=0.2)
    # Killed at its deadline and reaped before run() returned, not left to sleep its 30 s.
    assert not Path(f"/proc/{pid_file.read_text().strip()}").exists()


# ---------------------------------------------------------------------------- stream


class Collected:
    """What a stream delivered: its lines and its end (``ended`` is set by ``on_end``)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ends: list[int] = []
        self.lines_at_end: list[str] | None = None
        self.ended = threading.Event()
        self.first = threading.Event()

    def on_line(self, line: str) -> None:
        self.lines.append(line)
        self.first.set()

    def on_end(self, rc: int) -> None:
        self.ends.append(rc)
        self.lines_at_end = list(self.lines)
        self.ended.set()


def test_stream_delivers_every_line_then_the_end_once() -> None:
    runner = Runner()
    got = Collected()
    before = runner.spawned
    proc = runner.stream(
        ["sh", "-c", "printf 'a\\nb b\\n\\nlast-without-newline'; echo err >&2; exit 3"],
        on_line=got.on_line,
        on_end=got.on_end,
    )
    assert proc.wait(timeout=10) == 3
    assert got.ended.wait(10)
    assert got.lines == ["a", "b b", "", "last-without-newline"]
    assert got.lines_at_end == got.lines  # every line came before the end
    assert got.ends == [3] and proc.poll() == 3
    assert runner.spawned == before + 1
    proc.kill()  # killing an ended stream is a no-op
    assert got.ends == [3]


def test_a_killed_stream_ends_with_the_signal(tmp_path: Path) -> None:
    got = Collected()
    proc = Runner().stream(
        ["sh", "-c", "echo a; exec sleep 30"], on_line=got.on_line, on_end=got.on_end
    )
    assert got.first.wait(10)
    assert proc.poll() is None and not got.ended.is_set()
    with pytest.raises(TimeoutError):
        proc.wait(timeout=0)
    proc.kill()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert got.ended.wait(10) and got.ends == [-signal.SIGKILL] and got.lines == ["a"]
    assert not Path(f"/proc/{proc.pid}").exists() or _zombie(proc.pid) is False


def test_a_failing_line_callback_does_not_stop_the_stream() -> None:
    got = Collected()

    def picky(line: str) -> None:
        if line == "bad":
            raise ValueError("cannot take it")
        got.on_line(line)

    Runner().stream(["printf", "bad\\ngood\\n"], on_line=picky, on_end=got.on_end)
    assert got.ended.wait(10)
    assert got.lines == ["good"] and got.ends == [0]


def test_stream_of_a_missing_command_is_terminal() -> None:
    runner = Runner()
    with pytest.raises(TerminalError, match="command not found"):
        runner.stream(["tandem-no-such-command"], on_line=print, on_end=print)
    assert runner.spawned == 0


def test_stream_through_a_netns_transport_wraps_the_command() -> None:
    # `ip netns exec` needs root and a namespace; a transport that wraps with `env` shows the
    # wrapped argv is what runs (the netns transport is the same code path).
    got = Collected()
    Runner(cast(Transport, _EnvWrap())).stream(
        ["sh", "-c", 'echo "$TANDEM_WRAPPED"'], on_line=got.on_line, on_end=got.on_end
    )
    assert got.ended.wait(10) and got.lines == ["yes"]


def test_an_executing_transport_without_stream_cannot_stream() -> None:
    with pytest.raises(TerminalError, match="transport console cannot stream"):
        Runner(cast(Transport, _NoStream())).stream(["true"], on_line=print, on_end=print)


def test_an_executing_transport_that_streams_gets_the_call() -> None:
    transport = _Streams()
    runner = Runner(cast(Transport, transport), env={"A": "1"})
    got = Collected()
    handle = runner.stream(["drbdsetup", "events2"], on_line=got.on_line, on_end=got.on_end)
    assert handle is transport.handle and runner.spawned == 1
    assert transport.calls == [(["drbdsetup", "events2"], {"A": "1"})]
    transport.feed("exists -")
    transport.finish(-9)
    transport.finish(0)  # a second end from a sloppy transport is not passed on
    assert got.lines == ["exists -"] and got.ends == [-9]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return False


@dataclass(frozen=True)
class _EnvWrap:
    name: str = "envwrap"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return ["env", "TANDEM_WRAPPED=yes", *argv]


class _NoStream:
    """An executing transport (execute/spawn) without ``stream``."""

    name = "console"

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def execute(self, argv: Sequence[str], **_: object) -> object:
        raise AssertionError("not called")

    def spawn(self, argv: Sequence[str], **_: object) -> object:
        raise AssertionError("not called")


class _Handle:
    pid = 4242

    def poll(self) -> int | None:
        return None

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def kill(self) -> None:
        pass


class _Streams(_NoStream):
    """An executing transport that streams: it records the call and lets the test drive the
    callbacks it was given (the real one is the VM console, tests/vm/vmconsole.py)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Mapping[str, str] | None]] = []
        self.handle = _Handle()
        self._on_line: Callable[[str], None] = print
        self._on_end: Callable[[int], None] = print

    def stream(
        self,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None],
        on_end: Callable[[int], None],
        env: Mapping[str, str] | None = None,
    ) -> _Handle:
        self.calls.append((list(argv), env))
        self._on_line, self._on_end = on_line, on_end
        return self.handle

    def feed(self, line: str) -> None:
        self._on_line(line)

    def finish(self, rc: int) -> None:
        self._on_end(rc)


def test_can_stream_says_which_transports_stream() -> None:
    assert Runner().can_stream and Runner(cast(Transport, _EnvWrap())).can_stream
    assert not Runner(cast(Transport, _NoStream())).can_stream
    assert Runner(cast(Transport, _Streams())).can_stream
