"""Pure tests of the tgtadm output parsers (captured real outputs, see
tests/fixtures/tgt/SOURCES.md) and of TgtAdapter.observe() over a scripted runner."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.runner import CommandResult
from adapters.tgt import (
    LocalProcessHost,
    TgtAccount,
    TgtAdapter,
    TgtConnection,
    parse_tgtadm_portals,
    parse_tgtadm_show,
    parse_tgtadm_sys,
)
from adapters.wake import Wakeup
from reconciler.core.errors import TerminalError, TransientError
from reconciler.core.observed import TargetObs
from reconciler.core.spec import Lun, Resource, Target

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tgt"
IQN = "iqn.2024-01.test.lab:vol0"
CLIENT = "iqn.2024-01.test.lab:client"
KVM = "iqn.2008-11.org.linux-kvm"
LUN1 = ("tandem-r0", "SN0001", "/tmp/zx1/lun1.img")
LUN2 = ("tandem-r1", "SN0002", "/tmp/zx1/lun2.img")
ADDRS_AND_NAME = ("198.51.100.10", "198.51.100.0/24", CLIENT)


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def show_fixtures() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("show-*.txt"))


def summary(text: str) -> list[dict[str, Any]]:
    show = parse_tgtadm_show(text)
    assert show.problems == ()
    return [
        {
            "tid": t.tid,
            "iqn": t.iqn,
            "state": t.state,
            "luns": {x.lun: (x.scsi_id, x.scsi_sn, x.backing_store_path) for x in t.data_luns},
            "acls": t.acls,
            "sessions": [(s.initiator, [c.address for c in s.connections]) for s in t.sessions],
        }
        for t in show.targets
    ]


def one(
    iqn: str = IQN,
    *,
    luns: Mapping[int, tuple[str, str, str]] | None = None,
    acls: tuple[str, ...] = (),
    sessions: Sequence[tuple[str, list[str]]] = (),
    tid: int = 1,
    state: str = "ready",
) -> dict[str, Any]:
    return {
        "tid": tid,
        "iqn": iqn,
        "state": state,
        "luns": dict(luns or {}),
        "acls": acls,
        "sessions": list(sessions),
    }


EXPECTED: dict[str, list[dict[str, Any]]] = {
    "show-01-no-targets.txt": [],
    "show-02-target-no-lun.txt": [one()],
    "show-03-one-lun-acl-all.txt": [one(luns={1: LUN1}, acls=("ALL",))],
    "show-04-two-luns.txt": [one(luns={1: LUN1, 2: LUN2}, acls=("ALL",))],
    "show-05-acl-addresses-iqn.txt": [one(luns={1: LUN1, 2: LUN2}, acls=ADDRS_AND_NAME)],
    "show-06-one-session.txt": [
        one(luns={1: LUN1, 2: LUN2}, acls=ADDRS_AND_NAME, sessions=[(KVM, ["198.51.100.10"])])
    ],
    "show-07-two-sessions.txt": [
        one(
            luns={1: LUN1, 2: LUN2},
            acls=("198.51.100.10", "ALL", CLIENT),
            sessions=[(CLIENT, ["198.51.100.10"]), (KVM, ["198.51.100.10"])],
        )
    ],
    "show-08-two-targets-accounts.txt": [
        one(luns={1: LUN1, 2: LUN2}, acls=("198.51.100.10", "ALL", CLIENT)),
        one(
            "iqn.2024-01.test.lab:vol1",
            tid=2,
            state="offline",
            luns={1: ("IET     00020001", "beaf21", "/tmp/zx1/lun2.img")},
            acls=("198.51.100.0/24",),
        ),
    ],
    "show-10-session-luns-deleted.txt": [
        one(acls=("ALL", "10.0.0.5/32"), sessions=[(KVM, ["198.51.100.10"])])
    ],
}


def test_every_fixture_has_expectations() -> None:
    assert set(show_fixtures()) == set(EXPECTED)
    assert len(EXPECTED) >= 5


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_table(name: str) -> None:
    assert summary(fixture(name)) == EXPECTED[name]


def test_details_of_a_full_output() -> None:
    show = parse_tgtadm_show(fixture("show-08-two-targets-accounts.txt"))
    first, second = show.targets
    controller = first.lun(0)
    assert controller is not None and controller.type == "controller"
    assert controller.scsi_id == "IET     00010000"  # inner spaces kept
    assert controller.backing_store_path is None  # tgt prints "None"
    lun1 = first.lun(1)
    assert lun1 is not None
    assert (lun1.type, lun1.size, lun1.online, lun1.readonly) == (
        "disk",
        "67 MB, Block size: 512",
        True,
        False,
    )
    assert (lun1.backing_store_type, lun1.backing_store_flags) == ("rdwr", "")
    assert second.lun(1) is not None and second.lun(1).backing_store_flags == "direct"  # type: ignore[union-attr]
    assert second.accounts == (TgtAccount("alice"), TgtAccount("bob", outgoing=True))
    assert first.driver == second.driver == "iscsi"
    assert show.by_iqn("iqn.2024-01.test.lab:vol1") is second and show.target(3) is None


def test_session_details() -> None:
    (t,) = parse_tgtadm_show(fixture("show-07-two-sessions.txt")).targets
    assert [s.nexus for s in t.sessions] == [5, 6]
    assert t.sessions[0].alias is None  # "alias: none"
    assert t.sessions[0].connections == (TgtConnection(0, "198.51.100.10"),)


def test_older_tgt_spelling() -> None:
    """tgt before 1.0 printed ``Status:`` and ``Backing store: PATH`` (upstream README.iscsi)."""
    text = "\n".join(
        [
            "Target 1: iqn.2001-04.com.example:disk",
            "    System information:",
            "        Driver: iscsi",
            "        Status: running",
            "    I_T nexus information:",
            "    LUN information:",
            "        LUN: 0",
            "            Type: controller",
            "            SCSI ID: deadbeaf1:0",
            "            SCSI SN: beaf10",
            "            Size: 0",
            "            Backing store: No backing store",
            "        LUN: 1",
            "            Type: disk",
            "            SCSI ID: deadbeaf1:1",
            "            SCSI SN: beaf11",
            "            Size: 55G",
            "            Backing store: /dev/vdb1",
            "    Account information:",
            "    ACL information:",
            "        192.0.2.0/24",
        ]
    )
    show = parse_tgtadm_show(text)
    assert show.ok
    (t,) = show.targets
    assert t.state == "running"
    assert t.lun(0) is not None and t.lun(0).backing_store_path is None  # type: ignore[union-attr]
    assert [(x.lun, x.backing_store_path) for x in t.data_luns] == [(1, "/dev/vdb1")]


@pytest.mark.parametrize("name", [n for n in sorted(EXPECTED) if EXPECTED[n]])
def test_truncation_is_detected_unless_indistinguishable(name: str) -> None:
    """A cut at a line boundary is noticed, except where the prefix is itself a complete
    output: right before a ``Target`` line, or inside a target's final ACL list."""
    lines = fixture(name).splitlines(keepends=True)
    in_acl = False
    for cut in range(1, len(lines)):
        last = lines[cut - 1].strip()
        if lines[cut - 1].startswith("    ") and not lines[cut - 1].startswith("        "):
            in_acl = last == "ACL information:"
        if lines[cut].startswith("Target ") or in_acl:
            continue
        show = parse_tgtadm_show("".join(lines[:cut]))
        assert not show.ok, f"cut after line {cut} went unnoticed"


@pytest.mark.parametrize("name", show_fixtures())
def test_every_prefix_parses_without_exception(name: str) -> None:
    text = fixture(name)
    for cut in range(len(text) + 1):
        show = parse_tgtadm_show(text[:cut])
        complete = parse_tgtadm_show(text)
        # whatever a prefix yields is never more than the full output has
        assert len(show.targets) <= len(complete.targets)


def test_garbage_is_reported() -> None:
    for text in [
        "hello",
        "tgtadm: invalid request",
        "Target x: y",
        "    LUN information:",
        "Target 1: iqn.a\n    Bogus section:\n",
        "\x00\x01\x02",
    ]:
        assert not parse_tgtadm_show(text).ok, text


def test_acl_entries_are_validated() -> None:
    text = fixture("show-03-one-lun-acl-all.txt").replace("        ALL", "        198.51.1")
    assert not parse_tgtadm_show(text).ok


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_fuzz_arbitrary_text(text: str) -> None:
    show = parse_tgtadm_show(text)
    assert isinstance(show.problems, tuple)
    parse_tgtadm_sys(text)
    parse_tgtadm_portals(text)


_LINES = st.sampled_from(
    sorted({line for n in EXPECTED for line in fixture(n).splitlines()} | {"", "   ", "\t"})
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_LINES, max_size=60))
def test_fuzz_recombined_real_lines(lines: list[str]) -> None:
    """Plausible-looking output built from real lines in random order: never an exception,
    and every LUN the parser reports carries a number."""
    show = parse_tgtadm_show("\n".join(lines))
    for t in show.targets:
        assert all(isinstance(x.lun, int) for x in t.luns)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(EXPECTED)), st.data())
def test_fuzz_mutated_fixture(name: str, data: st.DataObject) -> None:
    lines = fixture(name).splitlines()
    if lines:
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = data.draw(st.text(max_size=40))
    parse_tgtadm_show("\n".join(lines))


def test_sys_and_portal_parsers() -> None:
    ready = parse_tgtadm_sys(fixture("sys-show-ready.txt"))
    assert ready.state == "ready" and ("iscsi", "ready") in ready.llds and not ready.problems
    assert parse_tgtadm_sys(fixture("sys-show-offline.txt")).state == "offline"
    assert parse_tgtadm_sys("garbage").state is None
    assert parse_tgtadm_portals(fixture("portal-show-vip.txt")) == ("198.51.100.3:3260",)
    assert parse_tgtadm_portals(fixture("portal-show-fallback.txt")) == (
        "[::]:3260",
        "0.0.0.0:3260",
    )


# ------------------------------------------------------------------ observe over a fake runner


class ScriptedRunner:
    """Answers tgtadm calls from a table keyed by (mode, op); records every argv. An answer
    is (rc, stdout) or (rc, stdout, stderr)."""

    def __init__(self, answers: Mapping[tuple[str, str], tuple[Any, ...]]) -> None:
        self.answers = dict(answers)
        self.calls: list[list[str]] = []

    @property
    def spawned(self) -> int:
        return len(self.calls)

    def run(self, argv: Sequence[str], **kw: Any) -> CommandResult:
        self.calls.append(list(argv))
        mode = argv[argv.index("--mode") + 1]
        op = argv[argv.index("--op") + 1]
        rc, out, *err = self.answers.get((mode, op), (0, ""))
        if kw.get("check", True) and rc:
            error = TransientError if rc in kw.get("transient_codes", ()) else TerminalError
            raise error(f"rc {rc}")
        stderr = err[0] if err else ("" if rc == 0 else "tgtadm: boom")
        return CommandResult(tuple(argv), rc, out, stderr, 0.0)

    def spawn(self, argv: Sequence[str], **kw: Any) -> Any:
        raise AssertionError("no process may be spawned here")


SPEC = Target(
    iqn=IQN,
    luns=(
        Lun(lun=1, resource="r0", scsi_id="tandem-r0", scsi_sn="SN0001"),
        Lun(lun=2, resource="r1", scsi_id="tandem-r1", scsi_sn="SN0002"),
    ),
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def adapter(
    answers: Mapping[tuple[str, str], tuple[Any, ...]],
    tmp_path: Path,
    clock: Clock | None = None,
    resync: float = 30.0,
) -> tuple[TgtAdapter, ScriptedRunner]:
    runner = ScriptedRunner(answers)
    tgt = TgtAdapter(
        runner,  # type: ignore[arg-type]
        control_dir=str(tmp_path / "ctl"),
        clock=clock or Clock(),
        resync=resync,
    )
    return tgt, runner


EXISTS = (22, "", "tgtadm: this target already exists")


READY = (0, fixture("sys-show-ready.txt"))


def test_observe_not_running(tmp_path: Path) -> None:
    tgt, _ = adapter({("target", "show"): (107, "")}, tmp_path)
    obs = tgt.observe(SPEC)
    assert obs.running is False and obs.daemon is False and obs.error is None


def test_observe_resident_daemon_without_the_target(tmp_path: Path) -> None:
    """The secondary's normal state: tgtd runs with no target defined. Not serving, and no
    error (a stop-target would be planned for an error on a running daemon)."""
    tgt, _ = adapter({("target", "show"): (0, "")}, tmp_path)
    obs = tgt.observe(SPEC)
    assert (obs.running, obs.daemon, obs.error) == (False, True, None)


def test_observe_answers_from_the_listing_until_resync(tmp_path: Path) -> None:
    clock = Clock()
    two_luns = (0, fixture("show-04-two-luns.txt"))
    tgt, runner = adapter({("target", "show"): two_luns}, tmp_path, clock, resync=30.0)
    first = tgt.observe(SPEC)
    # One listing: `target show` and `sys show` (whether the system is ready).
    listing = runner.spawned
    assert first.running is True and listing == 2
    # A LUN deleted by hand on the socket: not seen before the re-list ...
    runner.answers[("target", "show")] = (0, fixture("show-03-one-lun-acl-all.txt"))
    clock.now += 29.9
    assert tgt.observe(SPEC) == first and runner.spawned == listing
    # ... and seen by it, at most `resync` seconds later.
    clock.now += 0.1
    again = tgt.observe(SPEC)
    assert again.exported_luns == frozenset({1}) and runner.spawned == 2 * listing


def test_every_action_drops_the_listing(tmp_path: Path) -> None:
    clock = Clock()
    answers = {("target", "show"): (0, fixture("show-02-target-no-lun.txt"))}
    tgt, runner = adapter(answers, tmp_path, clock)
    assert tgt.observe(SPEC).exported_luns == frozenset()
    tgt.backing_for = lambda resource: f"/dev/drbd{resource.minor}"
    tgt.export_lun(SPEC, SPEC.luns[0], Resource(name="r0", minor=0, disk="/dev/sdb"))
    runner.answers[("target", "show")] = (0, fixture("show-04-two-luns.txt"))
    before = runner.spawned
    assert tgt.observe(SPEC).exported_luns == frozenset({1, 2})  # same clock: re-listed
    assert runner.spawned == before + 2  # one listing: `target show` and `sys show`


def test_a_failed_relist_is_unknown_not_the_older_listing(tmp_path: Path) -> None:
    clock = Clock()
    tgt, runner = adapter(
        {("target", "show"): (0, fixture("show-04-two-luns.txt"))}, tmp_path, clock
    )
    assert tgt.observe(SPEC).running is True
    runner.answers[("target", "show")] = (0, "<html>oops</html>")
    clock.now += 30.0
    obs = tgt.observe(SPEC)
    assert obs.running is None and obs.error and "unreadable" in obs.error
    # Not cached either: the next observation asks again.
    runner.answers[("target", "show")] = (0, fixture("show-04-two-luns.txt"))
    assert tgt.observe(SPEC).running is True


def test_observe_exported(tmp_path: Path) -> None:
    tgt, runner = adapter(
        {("sys", "show"): READY, ("target", "show"): (0, fixture("show-04-two-luns.txt"))}, tmp_path
    )
    obs = tgt.observe(SPEC)
    assert (obs.running, obs.exported_luns, obs.error) == (True, frozenset({1, 2}), None)
    assert all(c[0] == "tgtadm" for c in runner.calls)


def test_observe_wrong_identity_is_not_exported(tmp_path: Path) -> None:
    text = fixture("show-04-two-luns.txt").replace("SN0002", "beaf12")
    tgt, _ = adapter({("sys", "show"): READY, ("target", "show"): (0, text)}, tmp_path)
    obs = tgt.observe(SPEC)
    assert obs.running is True and obs.exported_luns == frozenset({1})
    assert obs.error is not None and "LUN 2" in obs.error


def test_observe_garbage_is_unknown(tmp_path: Path) -> None:
    tgt, _ = adapter(
        {("sys", "show"): READY, ("target", "show"): (0, "<html>oops</html>")}, tmp_path
    )
    obs = tgt.observe(SPEC)
    assert obs.running is None and obs.error and "unreadable" in obs.error


def test_start_sets_an_offline_daemon_ready(tmp_path: Path) -> None:
    """A tgtd left offline (an older agent's stop interrupted) is made ready by start."""
    answers = {
        ("sys", "show"): (0, fixture("sys-show-offline.txt")),
        ("target", "new"): EXISTS,
        ("target", "show"): (0, fixture("show-03-one-lun-acl-all.txt")),
    }
    tgt, runner = adapter(answers, tmp_path)
    tgt.start(SPEC)
    assert ["--mode", "sys", "--op", "update", "--name", "State", "-v", "ready"] in [
        c[1:] for c in runner.calls
    ]


def test_observe_other_iqn_on_the_tid(tmp_path: Path) -> None:
    text = fixture("show-03-one-lun-acl-all.txt").replace(IQN, "iqn.2024-01.other.lab:x")
    tgt, _ = adapter({("sys", "show"): READY, ("target", "show"): (0, text)}, tmp_path)
    obs = tgt.observe(SPEC)
    assert obs.running is True and obs.exported_luns == frozenset() and obs.error


def test_observe_never_raises_on_runner_errors(tmp_path: Path) -> None:
    class Broken(ScriptedRunner):
        def run(self, argv: Sequence[str], **kw: Any) -> CommandResult:
            raise TransientError("tgtadm timed out after 5s")

    tgt = TgtAdapter(Broken({}), control_dir=str(tmp_path))  # type: ignore[arg-type]
    obs = tgt.observe(SPEC)
    assert obs.running is None and obs.error == "tgtadm timed out after 5s"


def test_export_lun_commands(tmp_path: Path) -> None:
    tgt, runner = adapter({("target", "show"): (0, fixture("show-02-target-no-lun.txt"))}, tmp_path)
    tgt.backing_for = lambda resource: f"/dev/drbd{resource.minor}"
    tgt.export_lun(SPEC, SPEC.luns[0], Resource(name="r0", minor=0, disk="/dev/sdb"))
    issued = [" ".join(c[1:]) for c in runner.calls]
    assert issued[1:] == [
        "--lld iscsi --mode logicalunit --op new --tid 1 --lun 1 -b /dev/drbd0 --bsoflags direct",
        "--lld iscsi --mode logicalunit --op update --tid 1 --lun 1"
        " --params scsi_id=tandem-r0,scsi_sn=SN0001",
    ]
    tgt.direct_io = False  # buffered I/O: the LUN is created without the flag
    runner.calls.clear()
    tgt.export_lun(SPEC, SPEC.luns[0], Resource(name="r0", minor=0, disk="/dev/sdb"))
    assert " ".join(runner.calls[1][1:]).endswith("-b /dev/drbd0")


def test_export_lun_is_a_no_op_when_exported(tmp_path: Path) -> None:
    tgt, runner = adapter({("target", "show"): (0, fixture("show-04-two-luns.txt"))}, tmp_path)
    tgt.backing_for = lambda resource: "/tmp/zx1/lun1.img"
    tgt.export_lun(SPEC, SPEC.luns[0], Resource(name="r0", minor=0, disk="/dev/sdb"))
    assert len(runner.calls) == 1  # just the show


def test_start_asks_tgtd_afresh_after_an_observation_found_none(tmp_path: Path) -> None:
    """No hint from observe() into start(): the decision to spawn comes from tgtd's answer."""
    tgt, runner = adapter({("sys", "show"): (107, ""), ("target", "show"): (107, "")}, tmp_path)
    assert tgt.observe(SPEC).daemon is False
    # Another agent run on the same state directory started tgtd in between: spawning a
    # second one (the runner's spawn fails the test) would fight it for the socket.
    runner.answers[("sys", "show")] = READY
    runner.answers[("target", "show")] = (0, fixture("show-03-one-lun-acl-all.txt"))
    tgt.start(SPEC)  # the runner's spawn would fail the test
    assert ["--mode", "sys", "--op", "show"] in [c[1:] for c in runner.calls[1:]]


def test_acl_options(tmp_path: Path) -> None:
    tgt, runner = adapter(
        {
            ("sys", "show"): READY,
            ("target", "new"): EXISTS,
            ("target", "show"): (0, fixture("show-03-one-lun-acl-all.txt")),
        },
        tmp_path,
    )
    spec = Target(iqn=IQN, luns=SPEC.luns, initiators=(CLIENT, "198.51.100.0/24"))
    tgt.start(spec)
    tail = [c[6:] for c in runner.calls if "bind" in c or "unbind" in c]
    assert tail == [
        ["bind", "--tid", "1", "-Q", CLIENT],
        ["bind", "--tid", "1", "-I", "198.51.100.0/24"],
        ["unbind", "--tid", "1", "-I", "ALL"],
    ]


class FakeTgtd:
    """A tgtd handle (``Process``) whose death the test decides."""

    pid = 4_000_000  # above any pid_max: no real process has it

    def __init__(self) -> None:
        self.code: int | None = None
        self.exited = threading.Event()

    def poll(self) -> int | None:
        return self.code

    def wait(self, timeout: float | None = None) -> int:
        self.exited.wait(timeout)
        return -9 if self.code is None else self.code

    def kill(self) -> None:
        self.die(-9)

    def die(self, code: int) -> None:
        self.code = code
        self.exited.set()


class SpawningRunner(ScriptedRunner):
    """tgtd starts on ``spawn``: the socket answers from then on."""

    def __init__(self, answers: Mapping[tuple[str, str], tuple[Any, ...]]) -> None:
        super().__init__(answers)
        self.tgtd: FakeTgtd | None = None

    def spawn(self, argv: Sequence[str], **kw: Any) -> Any:
        assert argv[0] == "tgtd"
        self.calls.append(list(argv))
        self.answers[("sys", "show")] = READY
        self.answers[("target", "show")] = (0, "")
        self.tgtd = FakeTgtd()
        return self.tgtd


class KillingHost(LocalProcessHost):
    """The node's process table for the fake tgtd: SIGKILL ends it."""

    def __init__(self, runner: SpawningRunner) -> None:
        self.runner = runner

    def alive(self, pid: int) -> bool:
        tgtd = self.runner.tgtd
        return tgtd is not None and pid == tgtd.pid and tgtd.code is None

    def kill(self, pid: int) -> None:
        if self.runner.tgtd is not None and pid == self.runner.tgtd.pid:
            self.runner.tgtd.die(-9)


def test_the_daemons_exit_wakes_the_agent_and_observe_says_down_without_a_process(
    tmp_path: Path,
) -> None:
    runner = SpawningRunner({("sys", "show"): (107, ""), ("target", "show"): (107, "")})
    wakeup = Wakeup()
    tgt = TgtAdapter(
        runner,  # type: ignore[arg-type]
        control_dir=str(tmp_path / "ctl"),
        wakeup=wakeup,
        clock=Clock(),
        host=KillingHost(runner),
    )
    tgt.start_daemon()
    assert runner.tgtd is not None
    assert tgt.observe(SPEC) == TargetObs(running=False, daemon=True)
    idle = runner.spawned
    assert tgt.observe(SPEC).daemon is True and runner.spawned == idle  # the listing
    assert wakeup.pending() is None
    runner.tgtd.die(-9)  # killed from outside
    assert wakeup.wait(10.0) == "tgtd exited"
    assert tgt.observe(SPEC) == TargetObs(running=False, daemon=False)
    assert runner.spawned == idle
    assert not (tmp_path / "ctl" / "tgtd.pid").exists()  # the dead PID is forgotten


def _join_watcher(pid: int) -> None:
    for thread in threading.enumerate():
        if thread.name == f"tgtd-watch-{pid}":
            thread.join(10.0)


def test_a_tgtd_this_adapter_kills_does_not_wake_the_agent(tmp_path: Path) -> None:
    """stop's SIGKILL of a tgtd that cannot delete its target is this adapter's own work: the
    watcher sees the exit (the next observe re-lists) but does not wake the agent for it."""
    runner = SpawningRunner({("sys", "show"): (107, ""), ("target", "show"): (107, "")})
    wakeup = Wakeup()
    tgt = TgtAdapter(
        runner,  # type: ignore[arg-type]
        control_dir=str(tmp_path / "ctl"),
        wakeup=wakeup,
        host=KillingHost(runner),
    )
    tgt.start_daemon()
    assert runner.tgtd is not None
    runner.answers[("target", "show")] = (0, fixture("show-03-one-lun-acl-all.txt"))
    runner.answers[("target", "delete")] = (22, "", "tgtadm: this logical unit is still active")
    tgt.stop(SPEC)
    assert runner.tgtd.code == -9
    _join_watcher(runner.tgtd.pid)
    assert wakeup.pending() is None
    runner.answers[("target", "show")] = (107, "")
    assert tgt.observe(SPEC) == TargetObs(running=False, daemon=False)
