"""The real DRBD adapter against a fake Runner (canned CommandResults behind the real
interface; no patching), and the pure classification of drbdadm failures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.base import DrbdAdapter
from adapters.drbd import RealDrbd, SplitBrainRecord, classify_drbdadm_failure, drbd_not_loaded
from adapters.runner import CommandResult, Runner
from reconciler.core.errors import AdapterError, TerminalError, TransientError
from reconciler.core.observed import ConnState, DiskState, ResourceObs, Role
from reconciler.core.spec import Resource

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "drbd"

JSON = ("drbdsetup", "status", "--json")
TEXT = ("drbdsetup", "status", "--verbose")
PROC = ("cat", "/proc/drbd")

R1 = Resource(name="iscsi1", minor=1, disk="/dev/sdb")
R2 = Resource(name="iscsi2", minor=2, disk="/dev/sdc")

# What drbd-utils 9.22 prints (captured on this machine, no kernel module present).
NOT_LOADED = (
    "sh: 1: /sbin/modprobe: not found\nFailed to modprobe drbd (No such file or directory)\n"
)
# getopt's message from drbdsetup-84 (8.4 kernel), whose status command has no --json.
NO_JSON = "drbdsetup-84: unrecognized option '--json'\n"


Reply = CommandResult | AdapterError


@dataclass
class FakeRunner(Runner):
    """A Runner that answers from a script instead of spawning anything.

    ``script`` maps an argv to its replies, used in order; the last one repeats. An argv
    that is not scripted fails the test. ``check`` behaves like the real Runner's."""

    script: dict[tuple[str, ...], list[Reply]] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def on(self, argv: Sequence[str], rc: int = 0, stdout: str = "", stderr: str = "") -> None:
        result = CommandResult(tuple(argv), rc, stdout, stderr, 0.01)
        self.script.setdefault(tuple(argv), []).append(result)

    def raise_on(self, argv: Sequence[str], error: AdapterError) -> None:
        self.script.setdefault(tuple(argv), []).append(error)

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
        key = tuple(argv)
        self.calls.append(key)
        replies = self.script.get(key)
        assert replies, f"unexpected command {key}"
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(reply, AdapterError):
            raise reply
        if check and reply.rc != 0:
            error = TransientError if reply.rc in transient_codes else TerminalError
            raise error(f"{' '.join(argv)} failed", command=key, output=reply.stderr)
        return reply


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_real_drbd_satisfies_the_protocol() -> None:
    adapter: DrbdAdapter = RealDrbd(FakeRunner())
    assert adapter is not None


# ------------------------------------------------------------------------------ observe


def test_observe_json_one_call_and_absent_resource_is_down() -> None:
    runner = FakeRunner()
    runner.on(JSON, stdout=fixture("json_sync_source.json"))
    got = RealDrbd(runner).observe([R1, R2])
    assert runner.calls == [JSON]
    assert got[0].conn is ConnState.SYNC_SOURCE and got[0].sync_percent == 45.21
    assert got[1] == ResourceObs.down("iscsi2")


def test_observe_falls_back_to_text_for_good_on_an_84_kernel() -> None:
    runner = FakeRunner()
    runner.on(JSON, rc=20, stderr=NO_JSON)
    runner.on(TEXT, stdout=fixture("status84_established.txt").replace("datos", "iscsi1"))
    adapter = RealDrbd(runner)
    first = adapter.observe([R1])
    assert adapter.status_format == "text"
    second = adapter.observe([R1])
    assert runner.calls == [JSON, TEXT, TEXT]
    assert first == second
    assert first[0].role is Role.PRIMARY and first[0].conn is ConnState.CONNECTED


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_module_not_loaded_means_everything_down(fmt: str) -> None:
    runner = FakeRunner()
    runner.on(JSON if fmt == "json" else TEXT, rc=20, stderr=NOT_LOADED)
    got = RealDrbd(runner, status_format=fmt).observe([R1, R2])  # type: ignore[arg-type]
    assert got == (ResourceObs.down("iscsi1"), ResourceObs.down("iscsi2"))


def test_84_helper_without_proc_drbd_means_down() -> None:
    runner = FakeRunner()
    runner.on(
        TEXT,
        rc=20,
        stderr="Could not stat /proc/drbd: No such file or directory\n"
        "Make sure that the DRBD kernel module is installed and can be loaded!\n",
    )
    got = RealDrbd(runner, status_format="text").observe([R1])
    assert got == (ResourceObs.down("iscsi1"),)


def test_nothing_configured_means_down() -> None:
    runner = FakeRunner()
    runner.on(TEXT, stdout="# No currently configured DRBD found.\n")
    assert RealDrbd(runner, status_format="text").observe([R1]) == (ResourceObs.down("iscsi1"),)


def test_command_failure_makes_every_resource_unknown() -> None:
    runner = FakeRunner()
    runner.on(JSON, rc=10, stderr="error receiving netlink reply\n")
    got = RealDrbd(runner).observe([R1, R2])
    assert [o.name for o in got] == ["iscsi1", "iscsi2"]
    assert all(not o.known and o.error and "exit code 10" in o.error for o in got)


def test_timeout_makes_every_resource_unknown() -> None:
    runner = FakeRunner()
    runner.raise_on(JSON, TransientError("drbdsetup status --json timed out after 5s"))
    got = RealDrbd(runner).observe([R1, R2])
    assert all(not o.known and o.error and "timed out" in o.error for o in got)


def test_missing_binary_makes_every_resource_unknown() -> None:
    runner = FakeRunner()
    runner.raise_on(JSON, TerminalError("command not found: drbdsetup"))
    got = RealDrbd(runner).observe([R1])
    assert not got[0].known and got[0].error is not None and "not found" in got[0].error


def test_unreadable_output_is_unknown_not_down() -> None:
    runner = FakeRunner()
    runner.on(JSON, stdout='[\n{\n  "name": "iscsi1",\n  "node-id": 0,\n  "ro')  # truncated
    got = RealDrbd(runner).observe([R1, R2])
    assert all(not o.known for o in got)
    assert got[1].error is not None and "not understood" in got[1].error


def test_observe_proc_names_minors_from_the_spec() -> None:
    runner = FakeRunner()
    runner.on(PROC, stdout=fixture("proc84_mixed.txt"))
    got = RealDrbd(runner, status_format="proc").observe([R1, R2])
    assert got[0].role is Role.SECONDARY and got[0].peer_role is Role.PRIMARY  # minor 1
    assert got[1] == ResourceObs.down("iscsi2")  # minor 2 is cs:Unconfigured


def test_observe_proc_without_proc_drbd_is_down() -> None:
    runner = FakeRunner()
    runner.on(PROC, rc=1, stderr="cat: /proc/drbd: No such file or directory\n")
    got = RealDrbd(runner, status_format="proc").observe([R1])
    assert got == (ResourceObs.down("iscsi1"),)


def test_unknown_status_format_is_rejected() -> None:
    with pytest.raises(ValueError):
        RealDrbd(FakeRunner(), status_format="xml")  # type: ignore[arg-type]


# -------------------------------------------------------------------------- split brain


def _status(conn: str) -> str:
    """drbdsetup status --verbose text for iscsi1 with the given connection state."""
    role = "Secondary" if conn == "Connected" else "Unknown"
    peer = "UpToDate" if conn == "Connected" else "DUnknown"
    repl = "Established" if conn == "Connected" else "Off"
    return (
        "iscsi1 node-id:0 role:Primary suspended:no\n"
        "  volume:0 minor:1 disk:UpToDate client:no quorum:yes\n"
        f"  xcp-b node-id:1 connection:{conn} role:{role} congested:no\n"
        f"    volume:0 replication:{repl} peer-disk:{peer} resync-suspended:no\n\n"
    )


def _sequence(*states: str) -> tuple[RealDrbd, FakeRunner]:
    runner = FakeRunner()
    for state in states:
        runner.on(TEXT, stdout=_status(state))
    return RealDrbd(runner, status_format="text"), runner


def test_standalone_after_connecting_is_a_suspected_split_brain() -> None:
    adapter, _ = _sequence("Connecting", "StandAlone", "Connected")
    assert not adapter.observe([R1])[0].split_brain
    assert adapter.observe([R1])[0].split_brain
    assert adapter.split_brain_suspects == {"iscsi1"}
    assert not adapter.observe([R1])[0].split_brain  # connected again: resolved
    assert adapter.split_brain_suspects == frozenset()


def test_standalone_after_our_own_disconnect_is_not_split_brain() -> None:
    adapter, runner = _sequence("Connected", "StandAlone")
    runner.on(("drbdadm", "disconnect", "iscsi1"))
    adapter.observe([R1])
    adapter.disconnect(R1)
    assert not adapter.observe([R1])[0].split_brain


def test_standalone_again_after_our_connect_is_split_brain() -> None:
    # Agent restart: the first StandAlone is not suspicious, but a connect that ends in
    # StandAlone again means DRBD refused the peer.
    adapter, runner = _sequence("StandAlone", "StandAlone")
    runner.on(("drbdadm", "connect", "iscsi1"))
    assert not adapter.observe([R1])[0].split_brain
    adapter.connect(R1)
    assert adapter.observe([R1])[0].split_brain


def test_split_brain_memory_survives_unknown_and_down_observations() -> None:
    runner = FakeRunner()
    runner.on(TEXT, stdout=_status("Connecting"))
    runner.on(TEXT, stdout=_status("StandAlone"))
    runner.raise_on(TEXT, TransientError("timed out"))
    runner.on(TEXT, stdout="# No currently configured DRBD found.\n")
    runner.on(TEXT, stdout=_status("StandAlone"))
    adapter = RealDrbd(runner, status_format="text")
    flags = [adapter.observe([R1])[0].split_brain for _ in range(5)]
    assert flags == [False, True, False, False, True]  # unknown/down obs carry no flag


def test_inference_can_be_disabled_and_marking_still_works() -> None:
    adapter, _ = _sequence("Connecting", "StandAlone", "StandAlone")
    adapter = RealDrbd(adapter._runner, status_format="text", infer_split_brain=False)
    assert not adapter.observe([R1])[0].split_brain
    assert not adapter.observe([R1])[0].split_brain
    adapter.mark_split_brain("iscsi1")
    assert adapter.observe([R1])[0].split_brain
    adapter.clear_split_brain("iscsi1")
    assert adapter.split_brain_suspects == frozenset()


# ------------------------------------------- split brain across processes (persisted record)


def _process(path: Path, *states: str) -> tuple[RealDrbd, FakeRunner]:
    """A fresh adapter, as a new agent process or ``reconcile --once`` run builds it: nothing in
    memory, the node's record file at ``path``, ``states`` its status outputs in order."""
    runner = FakeRunner()
    for state in states:
        runner.on(TEXT, stdout=_status(state))
    return RealDrbd(runner, status_format="text", record=SplitBrainRecord(path)), runner


def test_a_later_process_still_reports_the_split_brain(tmp_path: Path) -> None:
    path = tmp_path / "drbd-node1.json"
    first, _ = _process(path, "Connecting", "StandAlone")
    assert [first.observe([R1])[0].split_brain for _ in range(2)] == [False, True]
    second, _ = _process(path, "StandAlone")
    assert second.observe([R1])[0].split_brain
    assert second.split_brain_suspects == {"iscsi1"}
    # Control: the same observations without the record carry no suspicion.
    forgetful, _ = _sequence("StandAlone")
    assert not forgetful.observe([R1])[0].split_brain


def test_a_once_run_infers_from_the_recorded_connection_state(tmp_path: Path) -> None:
    # `reconcile --once` every minute: the split happens between two runs.
    path = tmp_path / "drbd-node1.json"
    earlier, _ = _process(path, "Connected")
    assert not earlier.observe([R1])[0].split_brain
    later, _ = _process(path, "StandAlone")
    assert later.observe([R1])[0].split_brain


def test_a_once_run_after_the_previous_runs_connect_infers_a_refusal(tmp_path: Path) -> None:
    path = tmp_path / "drbd-node1.json"
    first, runner = _process(path, "StandAlone")
    runner.on(("drbdadm", "connect", "iscsi1"))
    assert not first.observe([R1])[0].split_brain
    first.connect(R1)
    second, _ = _process(path, "StandAlone")
    assert second.observe([R1])[0].split_brain


def test_a_once_run_after_the_previous_runs_disconnect_is_not_split_brain(
    tmp_path: Path,
) -> None:
    path = tmp_path / "drbd-node1.json"
    first, runner = _process(path, "Connected")
    runner.on(("drbdadm", "disconnect", "iscsi1"))
    first.observe([R1])
    first.disconnect(R1)
    second, _ = _process(path, "StandAlone", "StandAlone")
    assert [second.observe([R1])[0].split_brain for _ in range(2)] == [False, False]


def test_the_recorded_suspicion_clears_when_connected_again(tmp_path: Path) -> None:
    path = tmp_path / "drbd-node1.json"
    first, _ = _process(path, "Connecting", "StandAlone")
    first.observe([R1])
    assert first.observe([R1])[0].split_brain
    healed, _ = _process(path, "Connected")
    assert not healed.observe([R1])[0].split_brain
    after, _ = _process(path, "StandAlone")
    assert after.split_brain_suspects == frozenset()
    # StandAlone coming from Connected is suspicious again (nobody here disconnected it).
    assert after.observe([R1])[0].split_brain


def test_a_discard_connect_clears_the_recorded_suspicion(tmp_path: Path) -> None:
    path = tmp_path / "drbd-node1.json"
    first, _ = _process(path, "Connecting", "StandAlone")
    first.observe([R1])
    assert first.observe([R1])[0].split_brain
    victim, runner = _process(path, "Connecting")
    runner.on(("drbdadm", "connect", "--discard-my-data", "iscsi1"))
    victim.connect(R1, discard_my_data=True)
    assert victim.split_brain_suspects == frozenset()
    resyncing, _ = _process(path, "Connecting")
    assert not resyncing.observe([R1])[0].split_brain


def test_a_marked_split_brain_is_persisted(tmp_path: Path) -> None:
    path = tmp_path / "drbd-node1.json"
    first, _ = _process(path)
    first.mark_split_brain("iscsi1")
    second, _ = _process(path, "StandAlone")
    assert second.observe([R1])[0].split_brain
    second.clear_split_brain("iscsi1")
    third, _ = _process(path, "StandAlone")
    assert third.split_brain_suspects == frozenset()


def test_a_read_only_record_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "drbd-node1.json"
    runner = FakeRunner()
    runner.on(TEXT, stdout=_status("Connecting"))
    runner.on(TEXT, stdout=_status("StandAlone"))
    dry = RealDrbd(runner, status_format="text", record=SplitBrainRecord(path, read_only=True))
    assert [dry.observe([R1])[0].split_brain for _ in range(2)] == [False, True]
    assert not path.exists()


@pytest.mark.parametrize("content", ["", "{not json", '{"resources": []}', '["x"]'])
def test_an_unreadable_record_counts_as_empty(tmp_path: Path, content: str) -> None:
    path = tmp_path / "drbd-node1.json"
    path.write_text(content)
    adapter, _ = _process(path, "StandAlone", "Connecting", "StandAlone")
    assert [adapter.observe([R1])[0].split_brain for _ in range(3)] == [False, False, True]


# ------------------------------------------------------------------------------ actions


@pytest.mark.parametrize(
    ("call", "argv"),
    [
        (lambda a: a.primary(R1), ("drbdadm", "primary", "iscsi1")),
        (lambda a: a.primary(R1, force=True), ("drbdadm", "primary", "--force", "iscsi1")),
        (lambda a: a.secondary(R1), ("drbdadm", "secondary", "iscsi1")),
        (lambda a: a.connect(R1), ("drbdadm", "connect", "iscsi1")),
        (
            lambda a: a.connect(R1, discard_my_data=True),
            ("drbdadm", "connect", "--discard-my-data", "iscsi1"),
        ),
        (lambda a: a.disconnect(R1), ("drbdadm", "disconnect", "iscsi1")),
    ],
)
def test_action_command_lines(call: object, argv: tuple[str, ...]) -> None:
    runner = FakeRunner()
    runner.on(argv)
    call(RealDrbd(runner))  # type: ignore[operator]
    assert runner.calls == [argv]


def test_up_loads_the_module_then_adjusts() -> None:
    runner = FakeRunner()
    runner.on(("modprobe", "drbd"), rc=1, stderr="modprobe: FATAL: Module drbd not found\n")
    runner.on(("drbdadm", "adjust", "iscsi1"))
    RealDrbd(runner).up(R1)
    assert runner.calls == [("modprobe", "drbd"), ("drbdadm", "adjust", "iscsi1")]


def test_up_without_modprobe_still_adjusts() -> None:
    runner = FakeRunner()
    runner.raise_on(("modprobe", "drbd"), TerminalError("command not found: modprobe"))
    runner.on(("drbdadm", "adjust", "iscsi1"))
    RealDrbd(runner).up(R1)
    assert runner.calls[-1] == ("drbdadm", "adjust", "iscsi1")


def test_refused_promotion_explains_why() -> None:
    runner = FakeRunner()
    runner.on(
        ("drbdadm", "primary", "iscsi1"),
        rc=11,
        stderr="iscsi1: State change failed: (-1) Multiple primaries not allowed by config\n"
        "Command 'drbdsetup primary iscsi1' terminated with exit code 11\n",
    )
    with pytest.raises(TerminalError) as info:
        RealDrbd(runner).primary(R1)
    assert "DRBD refused to promote iscsi1: the peer is still Primary" in str(info.value)
    assert "Multiple primaries" in str(info.value)
    assert info.value.command == ("drbdadm", "primary", "iscsi1")


def test_demote_of_a_held_device_is_transient() -> None:
    runner = FakeRunner()
    runner.on(
        ("drbdadm", "secondary", "iscsi1"),
        rc=11,
        stderr="iscsi1: State change failed: (-12) Device is held open by someone\n",
    )
    with pytest.raises(TransientError, match=r"refused to demote iscsi1.*held open"):
        RealDrbd(runner).secondary(R1)


def test_disconnect_of_a_standalone_resource_succeeds() -> None:
    runner = FakeRunner()
    runner.on(
        ("drbdadm", "disconnect", "iscsi1"),
        rc=11,
        stderr="iscsi1: State change failed: (-15) Can not disconnect a StandAlone device\n",
    )
    RealDrbd(runner).disconnect(R1)


def test_connect_while_connecting_succeeds_but_not_with_discard() -> None:
    msg = "iscsi1: Failure: (125) Device has a net-config (use disconnect first)\n"
    runner = FakeRunner()
    runner.on(("drbdadm", "connect", "iscsi1"), rc=10, stderr=msg)
    runner.on(("drbdadm", "connect", "--discard-my-data", "iscsi1"), rc=10, stderr=msg)
    adapter = RealDrbd(runner)
    adapter.connect(R1)
    with pytest.raises(TerminalError, match="disconnect it before connecting"):
        adapter.connect(R1, discard_my_data=True)


def test_action_timeout_is_transient() -> None:
    runner = FakeRunner()
    runner.raise_on(
        ("drbdadm", "primary", "iscsi1"), TransientError("drbdadm primary iscsi1 timed out")
    )
    with pytest.raises(TransientError):
        RealDrbd(runner).primary(R1)


# ----------------------------------------------------------- classification (pure function)


@pytest.mark.parametrize(
    ("action", "output", "kind", "says"),
    [
        (
            "primary",
            "r0: State change failed: (-1) Multiple primaries not allowed by config",
            TerminalError,
            "DRBD refused to promote r0: the peer is still Primary",
        ),
        (
            "primary",
            "0: State change failed: (-2) Need access to UpToDate data\n"
            "Command 'drbdsetup 0 primary' terminated with exit code 17",
            TerminalError,
            "no access to UpToDate data",
        ),
        (
            "primary",
            "State change failed: (-2) Refusing to be Primary without at least one UpToDate disk",
            TerminalError,
            "no access to UpToDate data",
        ),
        (
            "primary",
            "r0: State change failed: (-7) Refusing to be Primary while peer is not outdated",
            TerminalError,
            "peer is not known to be Outdated",
        ),
        ("primary", "r0: State change failed: (-22) No quorum", TerminalError, "no quorum"),
        (
            "secondary",
            "r0: State change failed: (-12) Device is held open by someone",
            TransientError,
            "refused to demote r0",
        ),
        ("secondary", "r0: Device or resource busy", TransientError, "held open"),
        (
            "primary",
            "r0: State change failed: (-18) In transient state, retry after next state change",
            TransientError,
            "busy",
        ),
        (
            "primary",
            "r0: State change failed: (-19) Concurrent state changes detected and aborted",
            TransientError,
            "busy",
        ),
        (
            "secondary",
            "r0: State change failed: (-23) Timeout in operation",
            TransientError,
            "busy",
        ),
        (
            "primary",
            "r0: State change failed: (-10) State change was refused by peer node",
            TerminalError,
            "peer refused",
        ),
        (
            "connect",
            "r0: State change failed: (-11) Device is diskless, the requested operation "
            "requires a disk",
            TerminalError,
            "no local disk",
        ),
        (
            "adjust",
            "'r0' not defined in your config (for this host).",
            TerminalError,
            "does not know resource r0",
        ),
        ("connect", "r0: Failure: (158) Unknown resource", TerminalError, "does not know"),
        ("adjust", NOT_LOADED, TerminalError, "kernel module is not loaded"),
        ("secondary", "something new and strange", TerminalError, "exit code 11"),
        ("secondary", "", TerminalError, "no output"),
    ],
)
def test_classify_drbdadm_failure(
    action: str, output: str, kind: type[AdapterError], says: str
) -> None:
    error = classify_drbdadm_failure(action, "r0", 11, output, command=("drbdadm", action, "r0"))
    assert type(error) is kind
    assert says in error.message
    assert error.command == ("drbdadm", action, "r0")
    assert error.output == output


def test_not_loaded_markers() -> None:
    assert drbd_not_loaded(NOT_LOADED)
    assert drbd_not_loaded("Could not connect to 'drbd' generic netlink family")
    assert not drbd_not_loaded("r0: No such resource")


def test_observed_disk_states_are_passed_through_untouched() -> None:
    runner = FakeRunner()
    runner.on(JSON, stdout=fixture("json_two_volumes_sync_target.json"))
    obs = RealDrbd(runner).observe([R1])[0]
    assert obs.disk is DiskState.INCONSISTENT and obs.peer_role is Role.PRIMARY


def test_disconnect_of_a_standalone_resource_is_already_done() -> None:
    from adapters.drbd.adapter import _already_done

    # drbd-utils 9.22 on an 8.4 kernel (captured in the VM tier), and DRBD 8.4's own text.
    utils9_on_84 = (
        "r0: Failure: (162) Invalid configuration request\n"
        "additional info from kernel:\nunknown connection\n"
        "Command 'drbdsetup-84 disconnect ipv4:10.0.0.1:7789 ipv4:10.0.0.2:7789' "
        "terminated with exit code 10"
    )
    assert _already_done("disconnect", [], utils9_on_84)
    assert _already_done(
        "disconnect", [], "State change failed: can not disconnect a StandAlone device"
    )
    assert not _already_done("disconnect", [], "Failure: (127) Device minor not allocated")
