"""The VM transport without a VM: the real guest agent (tests/vm/guest/agent.c, compiled on the
host) serves ``tests.vm.vmconsole.VmConsole`` over a unix socket, and the product's ``Runner``
drives it. Runs in the default suite (not marked ``vm``): about a second, needs only gcc.

What a VM adds on top (the virtio-serial port, the guest's tools) is covered by the VM tier.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.runner import Runner
from reconciler.core.errors import TerminalError, TransientError
from tests.vm.vmconsole import VmConsole
from tests.waiting import wait_for

AGENT_SOURCE = Path(__file__).resolve().parent / "guest" / "agent.c"


@pytest.fixture(scope="module")
def agent_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is missing (apt-get install gcc): cannot build the guest agent")
    out = tmp_path_factory.mktemp("agent") / "tandem-agent"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(AGENT_SOURCE)], check=True)
    return out


class AgentServer:
    """Plays qemu's part: a listening socket; each connection gets a fresh agent process (so
    killing the agent is a VM crash, and reconnecting is the VM after its restart)."""

    def __init__(self, binary: Path) -> None:
        self.directory = tempfile.mkdtemp(prefix="tvc-", dir="/tmp")  # short socket path
        self.path = os.path.join(self.directory, "agent.sock")
        self.binary = binary
        self.procs: list[subprocess.Popen[bytes]] = []
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(self.path)
        self._srv.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            with conn:
                proc = subprocess.Popen(
                    [str(self.binary), f"fd:{conn.fileno()}"],
                    pass_fds=[conn.fileno()],
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},  # no host leak
                    stdin=subprocess.DEVNULL,
                )
            self.procs.append(proc)

    def crash(self) -> None:
        """SIGKILL the serving agent (the VM dies)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._srv.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        with contextlib.suppress(OSError):
            self._srv.close()
        self.crash()
        self._thread.join(timeout=2)
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def server(agent_binary: Path) -> Iterator[AgentServer]:
    srv = AgentServer(agent_binary)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def console(server: AgentServer) -> Iterator[VmConsole]:
    con = VmConsole(server.path, label="host-agent")
    try:
        yield con
    finally:
        con.close()


@pytest.fixture
def runner(console: VmConsole) -> Runner:
    return Runner(transport=console, timeout=10.0)


def test_stdout_stderr_and_exit_code_come_back_apart(runner: Runner) -> None:
    res = runner.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (res.rc, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert res.argv[-4:] == ("--", "sh", "-c", "echo out; echo err >&2; exit 3")


def test_a_failed_command_is_terminal_and_a_missing_one_says_so(runner: Runner) -> None:
    with pytest.raises(TerminalError, match="exit code 1"):
        runner.run(["false"])
    with pytest.raises(TerminalError, match="command not found: no-such-command-xyz"):
        runner.run(["no-such-command-xyz"], check=False)


def test_arguments_stdin_and_bytes_pass_unchanged(runner: Runner) -> None:
    res = runner.run(["printf", "%s|", "", "a b", "x\ny", "é;$(x)"])
    assert res.stdout == "|a b|x\ny|é;$(x)|"
    data = "".join(chr(c) for c in range(1, 256)) * 50
    assert runner.run(["cat"], stdin=data).stdout == data


def test_only_the_named_environment_reaches_the_node(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_HOST_ONLY", "leak")
    res = runner.run(["sh", "-c", 'echo "$FOO/${TANDEM_HOST_ONLY:-absent}"'], env={"FOO": "bar"})
    assert res.stdout == "bar/absent\n"


def test_timeout_kills_the_whole_process_group(runner: Runner, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    with pytest.raises(TransientError, match=r"timed out after 0\.3s"):
        runner.run(["sh", "-c", f"sleep 30 & echo $! > {pid_file}; wait"], timeout=0.3)
    child = int(pid_file.read_text())
    wait_for(
        f"the timed-out command's grandchild {child} to be killed",
        lambda: not Path(f"/proc/{child}").exists(),
        timeout=2,
    )


def test_commands_run_concurrently_on_one_connection(runner: Runner, tmp_path: Path) -> None:
    # A rendezvous: each command checks in, then waits until all four have. Run one after
    # another, the first would wait for the others until its timeout.
    here = tmp_path / "here"
    here.mkdir()
    meet = f"touch {here}/$$; until [ $(ls {here} | wc -l) -ge 4 ]; do sleep 0.01; done"
    results: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                runner.run(["sh", "-c", meet], check=False, timeout=10).rc
            )
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0, 0, 0, 0]


def test_spawned_processes_report_their_exit(runner: Runner, tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    done = runner.spawn(["sh", "-c", "echo hello; exit 7"], log_path=str(log))
    assert done.wait(5) == 7
    assert log.read_text() == "hello\n"
    sleeper = runner.spawn(["sleep", "30"])
    assert sleeper.poll() is None and Path(f"/proc/{sleeper.pid}").exists()
    sleeper.kill()
    assert sleeper.wait(5) == -9
    with pytest.raises(TerminalError, match="command not found"):
        runner.spawn(["no-such-daemon-xyz"])
    with pytest.raises(TransientError, match="could not run sleep"):
        runner.spawn(["sleep", "1"], log_path=str(tmp_path / "missing-dir" / "x.log"))


def test_a_crash_fails_waiting_calls_at_once_and_the_next_call_reconnects(
    runner: Runner, server: AgentServer, tmp_path: Path
) -> None:
    daemon = runner.spawn(["sleep", "30"])
    errors: list[Exception] = []
    pid_file = tmp_path / "long.pid"

    def long_call() -> None:
        try:
            runner.run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], timeout=20)
        except Exception as exc:
            errors.append(exc)

    waiting = threading.Thread(target=long_call)
    waiting.start()
    wait_for(
        "the long call to run in the agent (its pid file written)",
        lambda: pid_file.exists() and pid_file.read_text().strip(),
        timeout=5,
    )
    server.crash()
    waiting.join(timeout=10)
    assert not waiting.is_alive(), "the waiting call did not fail when the agent crashed"
    assert len(errors) == 1 and isinstance(errors[0], TransientError), errors
    assert daemon.wait(2) == -9  # its VM is gone: the process is reported ended
    for orphan in (daemon.pid, int(pid_file.read_text())):  # on the host they live on
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, 9)
    assert runner.run(["echo", "back"]).stdout == "back\n"  # a new agent, a new connection


def test_an_unreachable_vm_is_transient_and_ping_says_no(tmp_path: Path) -> None:
    console = VmConsole(str(tmp_path / "nothing.sock"), label="ghost", connect_timeout=0.2)
    with pytest.raises(TransientError, match="not reachable"):
        Runner(transport=console).run(["true"])
    assert console.ping(0.2) is False


# ------------------------------------------------------------------------------ streams


class Lines:
    """What a stream delivered: its lines in order, then its end (exactly once)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ends: list[int] = []
        self.ended = threading.Event()

    def on_line(self, line: str) -> None:
        self.lines.append(line)

    def on_end(self, rc: int) -> None:
        self.ends.append(rc)
        self.ended.set()


def test_a_stream_delivers_lines_as_they_come_then_its_exit(
    console: VmConsole, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    got = Lines()
    script = (
        f"echo first; echo noise >&2; until [ -e {go} ]; do sleep 0.01; done; "
        "printf 'x\\ntail'; exit 3"
    )
    proc = console.stream(["sh", "-c", script], on_line=got.on_line, on_end=got.on_end)
    assert proc.pid > 0
    # "first" arrives while the command still runs (it waits for the file): streamed, not
    # collected at the end.
    wait_for("the first line", lambda: got.lines == ["first"], timeout=5)
    assert proc.poll() is None and not got.ends
    go.touch()
    assert proc.wait(5) == 3
    assert got.lines == ["first", "x", "tail"]  # stderr dropped; the unterminated last line kept
    assert got.ends == [3]


def test_killing_a_stream_kills_its_process_group_and_ends_it_once(console: VmConsole) -> None:
    got = Lines()
    proc = console.stream(
        ["sh", "-c", "sleep 30 & echo $!; wait"], on_line=got.on_line, on_end=got.on_end
    )
    wait_for("the child's pid", lambda: len(got.lines) == 1, timeout=5)
    child = int(got.lines[0])
    proc.kill()
    assert proc.wait(5) == -9
    wait_for(
        f"the stream's child {child} to be killed",
        lambda: not Path(f"/proc/{child}").exists(),
        timeout=2,
    )
    proc.kill()  # ended: a no-op
    assert got.ends == [-9]


def test_many_streams_and_commands_share_one_connection(console: VmConsole) -> None:
    streams = [Lines() for _ in range(8)]
    procs = [
        console.stream(
            ["sh", "-c", f"for i in 1 2 3 4 5; do echo {n}-$i; sleep 0.01; done"],
            on_line=s.on_line,
            on_end=s.on_end,
        )
        for n, s in enumerate(streams)
    ]
    assert console.execute(["echo", "meanwhile"], timeout=5).stdout == "meanwhile\n"
    for proc in procs:
        assert proc.wait(10) == 0
    for n, s in enumerate(streams):
        assert s.lines == [f"{n}-{i}" for i in range(1, 6)]
        assert s.ends == [0]


def test_a_callback_may_run_commands_on_the_same_console(console: VmConsole) -> None:
    answers: list[str] = []
    done = threading.Event()

    def on_line(line: str) -> None:
        answers.append(console.execute(["echo", f"saw {line}"], timeout=5).stdout.strip())

    proc = console.stream(["echo", "it"], on_line=on_line, on_end=lambda rc: done.set())
    assert proc.wait(10) == 0 and done.is_set()
    assert answers == ["saw it"]


def test_a_stream_that_cannot_start_raises_and_calls_nothing(console: VmConsole) -> None:
    got = Lines()
    with pytest.raises(FileNotFoundError, match="no-such-streamer-xyz"):
        console.stream(["no-such-streamer-xyz"], on_line=got.on_line, on_end=got.on_end)
    assert console.execute(["true"], timeout=5).rc == 0
    assert got.lines == [] and got.ends == []


def test_a_vm_crash_ends_every_stream_with_minus_9_and_streams_start_again(
    console: VmConsole, server: AgentServer
) -> None:
    first, second = Lines(), Lines()
    pids: list[int] = []
    for got in (first, second):
        console.stream(
            ["sh", "-c", "echo $$; exec sleep 30"], on_line=got.on_line, on_end=got.on_end
        )
    wait_for("both streams running", lambda: len(first.lines) == len(second.lines) == 1, timeout=5)
    pids = [int(first.lines[0]), int(second.lines[0])]
    server.crash()
    assert first.ended.wait(5) and second.ended.wait(5)
    assert first.ends == [-9] and second.ends == [-9]
    for orphan in pids:  # on the host they outlive the agent (a VM's die with it)
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, 9)
    again = Lines()
    assert console.stream(["echo", "back"], on_line=again.on_line, on_end=again.on_end).wait(5) == 0
    assert again.lines == ["back"]


def test_closing_the_connection_makes_the_agent_end_its_streams(console: VmConsole) -> None:
    got = Lines()
    console.stream(["sh", "-c", "echo $$; exec sleep 30"], on_line=got.on_line, on_end=got.on_end)
    wait_for("the stream's pid", lambda: len(got.lines) == 1, timeout=5)
    pid = int(got.lines[0])
    console.close()
    assert got.ended.wait(5) and got.ends == [-9]
    # The agent saw its host go away and killed the stream's process group.
    wait_for(f"stream {pid} killed by the agent", lambda: not _alive(pid), timeout=5)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or before the read
        return False


def test_the_runner_streams_through_the_console_and_counts_it(runner: Runner) -> None:
    got = Lines()
    before = runner.spawned
    proc = runner.stream(["printf", "a\\nb\\n"], on_line=got.on_line, on_end=got.on_end)
    assert proc.wait(5) == 0
    assert (got.lines, got.ends, runner.spawned - before) == (["a", "b"], [0], 1)
    with pytest.raises(TerminalError, match="command not found: no-such-streamer-xyz"):
        runner.stream(["no-such-streamer-xyz"], on_line=got.on_line, on_end=got.on_end)
