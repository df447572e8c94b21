"""TgtAdapter against a real tgtd inside the namespace lab, checked by a real iSCSI client."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.runner import CommandResult
from adapters.tgt import TgtAdapter, TgtShow, parse_tgtadm_show
from adapters.wake import Wakeup
from reconciler.core.errors import TerminalError
from reconciler.core.observed import TargetObs
from reconciler.core.spec import Lun, Resource, Target
from tests.lab.netns import VIP, VIP_IP, Lab
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

IQN = "iqn.2024-01.test.lab:vol0"
CLIENT_IQN = "iqn.2024-01.test.lab:client"
LUN1 = Lun(lun=1, resource="r0", scsi_id="tandem-r0", scsi_sn="SN0001")
LUN2 = Lun(lun=2, resource="r1", scsi_id="tandem-r1", scsi_sn="SN0002")
R0 = Resource(name="r0", minor=0, disk="/dev/sdb")
R1 = Resource(name="r1", minor=1, disk="/dev/sdc")


def target(*luns: Lun, initiators: tuple[str, ...] = ("ALL",)) -> Target:
    return Target(iqn=IQN, luns=luns or (LUN1,), initiators=initiators)


class Clock:
    """Monotonic seconds the test moves (a re-list after ``resync`` without sleeping)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_adapter(
    lab: Lab,
    key: str,
    tmp_path: Path,
    *,
    wakeup: Wakeup | None = None,
    clock: Callable[[], float] | None = None,
) -> TgtAdapter:
    """A TgtAdapter in ``key``'s namespace whose resources are 64 MiB files in tmp_path."""

    def backing(resource: Resource) -> str:
        path = tmp_path / f"{key}-{resource.name}.img"
        if not path.exists():
            with open(path, "wb") as fh:
                fh.truncate(64 << 20)
        return str(path)

    return TgtAdapter(
        lab.runner(key),
        control_dir=str(tmp_path / f"{key}-tgt"),
        portal=VIP_IP,
        backing_for=backing,
        wakeup=wakeup,
        clock=clock or Clock(),
    )


def shown(tgt: TgtAdapter) -> TgtShow:
    """What tgtd itself says now (not the adapter's listing)."""
    res = tgt.runner.run(
        ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"], env=tgt.env
    )
    show = parse_tgtadm_show(res.stdout)
    assert show.ok, res.stdout
    return show


def client(lab: Lab, argv: list[str], timeout: float = 10) -> CommandResult:
    return lab.run("client", argv, check=False, timeout=timeout)


def qemu_io(lab: Lab, lun: int, *commands: str) -> CommandResult:
    argv = ["qemu-io", "-f", "raw", f"iscsi://{VIP_IP}:3260/{IQN}/{lun}"]
    for c in commands:
        argv += ["-c", c]
    return client(lab, argv)


def pid_of(adapter: TgtAdapter) -> int:
    return int(Path(adapter.pid_file).read_text())


def test_export_write_read_observe_stop(lab: Lab, tmp_path: Path) -> None:
    tgt = make_adapter(lab, "node1", tmp_path)
    spec = target(LUN1)
    assert tgt.observe(spec).running is False
    tgt.start(spec)
    tgt.export_lun(spec, LUN1, R0)
    lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])

    res = qemu_io(lab, 1, "write -P 0xab 0 1M", "read -P 0xab 0 1M")
    assert res.ok and "failed" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert "read 1048576/1048576" in res.stdout
    with open(tmp_path / "node1-r0.img", "rb") as fh:
        assert fh.read(16) == b"\xab" * 16
    # the initiator sees the spec's identity: unit serial number VPD page 0x80
    inq = client(lab, ["iscsi-inq", "-e", "1", "-c", "128", f"iscsi://{VIP_IP}/{IQN}/1"])
    assert inq.ok and "SN0001" in inq.stdout, inq.stdout + inq.stderr

    obs = tgt.observe(spec)
    assert obs.running is True and obs.exported_luns == frozenset({1}) and obs.error is None

    pid = pid_of(tgt)
    tgt.stop(spec)  # how long start, export and stop take: tests/bench/lab.py
    # The target is gone with its LUN; tgtd stays resident.
    assert shown(tgt).targets == ()
    assert os.path.exists(f"/proc/{pid}") and pid_of(tgt) == pid
    assert tgt.observe(spec) == TargetObs(running=False, daemon=True)
    assert not qemu_io(lab, 1, "read 0 4k").ok
    tgt.stop(spec)  # idempotent
    tgt.stop_daemon(spec)
    assert not os.path.exists(f"/proc/{pid}")
    assert not Path(tgt.pid_file).exists()
    assert tgt.observe(spec) == TargetObs(running=False, daemon=False)


def test_start_and_export_are_idempotent(lab: Lab, tmp_path: Path) -> None:
    tgt = make_adapter(lab, "node1", tmp_path)
    spec = target(LUN1, LUN2, initiators=("ALL", "198.51.100.10", CLIENT_IQN))
    try:
        for _ in range(2):
            tgt.start(spec)
            tgt.export_lun(spec, LUN1, R0)
            tgt.export_lun(spec, LUN2, R1)
        res = tgt.runner.run(
            ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"], env=tgt.env
        )
        show = parse_tgtadm_show(res.stdout)
        assert show.ok
        (t,) = show.targets
        assert t.acls == ("ALL", "198.51.100.10", CLIENT_IQN)
        assert [(x.lun, x.scsi_id, x.scsi_sn) for x in t.data_luns] == [
            (1, "tandem-r0", "SN0001"),
            (2, "tandem-r1", "SN0002"),
        ]
        assert tgt.observe(spec).exported_luns == frozenset({1, 2})
        # narrowing the ACL removes the extra entries
        narrowed = target(LUN1, LUN2, initiators=(CLIENT_IQN,))
        tgt.start(narrowed)
        res = tgt.runner.run(
            ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"], env=tgt.env
        )
        assert parse_tgtadm_show(res.stdout).targets[0].acls == (CLIENT_IQN,)
        # against the wider spec the ACLs no longer match: not serving as that spec says
        assert tgt.observe(spec).running is False
        assert tgt.observe(spec).daemon is True
        tgt.unexport_lun(narrowed, LUN2)
        tgt.unexport_lun(narrowed, LUN2)
        assert tgt.observe(narrowed).exported_luns == frozenset({1})
    finally:
        tgt.stop_daemon(spec)


def test_initiator_name_acl(lab: Lab, tmp_path: Path) -> None:
    tgt = make_adapter(lab, "node1", tmp_path)
    spec = target(LUN1, initiators=(CLIENT_IQN,))
    try:
        tgt.start(spec)
        tgt.export_lun(spec, LUN1, R0)
        lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])
        url = f"iscsi://{VIP_IP}/{IQN}/1"
        assert client(lab, ["iscsi-inq", "-i", CLIENT_IQN, url]).ok
        assert not client(lab, ["iscsi-inq", "-i", "iqn.2024-01.test.lab:intruder", url]).ok
    finally:
        tgt.stop_daemon(spec)


def test_stop_with_a_connected_session(lab: Lab, tmp_path: Path) -> None:
    tgt = make_adapter(lab, "node1", tmp_path)
    spec = target(LUN1)
    tgt.start(spec)
    tgt.export_lun(spec, LUN1, R0)
    lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])
    # a long-lived session (qemu-io sleeps 20 s inside the login); down() kills it
    lab.spawn(
        "client",
        ["qemu-io", "-f", "raw", f"iscsi://{VIP_IP}:3260/{IQN}/1", "-c", "sleep 20000"],
        log_name="qemu-io.log",
    )

    def sessions() -> int:
        return len(shown(tgt).targets[0].sessions)

    wait_for("the client's iSCSI session on node1's tgtd", sessions, timeout=5, interval=0.02)
    assert sessions() == 1
    pid = pid_of(tgt)
    tgt.stop(spec)  # the figure: tests/bench/lab.py
    # Deleted with --force: the session went with the target; the resident tgtd stays.
    assert shown(tgt).targets == ()
    assert os.path.exists(f"/proc/{pid}")
    assert tgt.observe(spec) == TargetObs(running=False, daemon=True)


def test_sigkill_then_observe_and_restart(lab: Lab, tmp_path: Path) -> None:
    wakeup = Wakeup()
    tgt = make_adapter(lab, "node1", tmp_path, wakeup=wakeup)
    spec = target(LUN1)
    tgt.start(spec)
    tgt.export_lun(spec, LUN1, R0)
    assert tgt.observe(spec).exported_luns == {1}
    pid = pid_of(tgt)
    assert wakeup.pending() is None
    os.kill(pid, signal.SIGKILL)  # from outside: the OOM killer, an operator
    # The watcher thread on tgtd's handle wakes the agent; the next observe says the daemon
    # is down at once, without a process (no tgtadm to learn that nothing answers).
    assert wakeup.wait(5) == "tgtd exited"
    before = tgt.runner.spawned
    assert tgt.observe(spec) == TargetObs(running=False, daemon=False)
    assert tgt.runner.spawned == before
    assert not Path(tgt.pid_file).exists()
    # a stale socket file is left behind; a new tgtd starts anyway
    tgt.start(spec)
    tgt.export_lun(spec, LUN1, R0)
    assert pid_of(tgt) != pid
    assert tgt.observe(spec).exported_luns == frozenset({1})
    tgt.stop(spec)


def test_two_adapters_coexist(lab: Lab, tmp_path: Path) -> None:
    one = make_adapter(lab, "node1", tmp_path)
    two = make_adapter(lab, "node2", tmp_path)
    spec = target(LUN1)
    try:
        for tgt in (one, two):  # standby tgtd bound to the VIP before it exists
            tgt.start(spec)
            tgt.export_lun(spec, LUN1, R0)
        assert pid_of(one) != pid_of(two)
        assert one.observe(spec).exported_luns == two.observe(spec).exported_luns == {1}
        one.stop(spec)
        assert one.observe(spec).running is False
        assert two.observe(spec).running is True
        # the control socket, not the namespace, decides which daemon tgtadm reaches: an
        # adapter in node1 given node2's control_dir manages node2's tgtd
        crossed = TgtAdapter(lab.runner("node1"), control_dir=two.control_dir, portal=VIP_IP)
        assert crossed.observe(spec).exported_luns == {1}
    finally:
        one.stop_daemon(spec)
        two.stop_daemon(spec)


def test_portal_that_cannot_be_bound_is_refused(lab: Lab, tmp_path: Path) -> None:
    # the client namespace keeps ip_nonlocal_bind=0: tgtd would fall back to 0.0.0.0:3260
    tgt = make_adapter(lab, "client", tmp_path)
    with pytest.raises(TerminalError, match="could not bind portal"):
        tgt.start(target(LUN1))
    assert tgt.observe(target(LUN1)).running is False
    assert not Path(tgt.pid_file).exists()


def test_a_tgtd_started_after_the_observation_is_used_not_killed(lab: Lab, tmp_path: Path) -> None:
    """start() asks tgtd afresh even right after its own observation found it absent: a tgtd
    started meanwhile (another agent run on the same state directory) is used, not killed."""
    tgt = make_adapter(lab, "node1", tmp_path)
    other = make_adapter(lab, "node1", tmp_path)  # same control socket and PID file
    spec = target(LUN1)
    try:
        assert tgt.observe(spec).running is False
        other.start(spec)
        serving = pid_of(other)
        tgt.start(spec)
        tgt.export_lun(spec, LUN1, R0)
        assert pid_of(tgt) == serving and os.path.exists(f"/proc/{serving}")
        assert tgt.observe(spec).exported_luns == frozenset({1})
    finally:
        tgt.stop_daemon(spec)


def test_a_half_defined_target_is_not_reported_running(lab: Lab, tmp_path: Path) -> None:
    """An agent killed between spawning tgtd and binding the ACL leaves a tgtd whose target
    is missing or refuses every initiator. Reporting that as running would leave the primary
    serving nothing forever; reported not running (with why), start() repairs it."""
    tgt = make_adapter(lab, "node1", tmp_path)
    spec = target(LUN1)
    adm = ["tgtadm", "--lld", "iscsi", "--mode", "target"]
    try:
        tgt.start(spec)
        tgt.export_lun(spec, LUN1, R0)
        assert tgt.observe(spec).running is True
        tgt.runner.run([*adm, "--op", "unbind", "--tid", "1", "-I", "ALL"], env=tgt.env)
        tgt.invalidate()  # a change by hand is seen at the next re-list: force it here
        obs = tgt.observe(spec)
        assert obs.running is False and "interrupted start" in (obs.error or "")
        tgt.start(spec)
        assert tgt.observe(spec).exported_luns == frozenset({1})
        tgt.runner.run([*adm, "--op", "delete", "--force", "--tid", "1"], env=tgt.env)
        tgt.invalidate()
        assert tgt.observe(spec) == TargetObs(running=False, daemon=True)
        tgt.start(spec)
        tgt.export_lun(spec, LUN1, R0)
        obs = tgt.observe(spec)
        assert obs.running is True and obs.exported_luns == frozenset({1}) and obs.error is None
    finally:
        tgt.stop_daemon(spec)


# ------------------------------------------------------------------ the resident tgtd


def test_resident_daemon_on_a_node_that_does_not_serve(lab: Lab, tmp_path: Path) -> None:
    """The secondary's tgtd: started by start-daemon, no target defined, listening on the
    portal before the VIP is here (ip_nonlocal_bind=1), and observed idle without a process."""
    tgt = make_adapter(lab, "node2", tmp_path)
    spec = target(LUN1)
    assert tgt.observe(spec) == TargetObs(running=False, daemon=False)
    tgt.start_daemon()
    tgt.start_daemon()  # idempotent: the same tgtd
    pid = pid_of(tgt)
    try:
        assert shown(tgt).targets == ()
        assert tgt.observe(spec) == TargetObs(running=False, daemon=True)
        before = tgt.runner.spawned
        for _ in range(20):  # idle ticks
            assert tgt.observe(spec) == TargetObs(running=False, daemon=True)
        assert tgt.runner.spawned == before  # 0 spawns per idle observe
        assert pid_of(tgt) == pid and os.path.exists(f"/proc/{pid}")
    finally:
        tgt.stop_daemon(spec)


def test_takeover_defines_the_target_without_a_new_daemon(lab: Lab, tmp_path: Path) -> None:
    tgt = make_adapter(lab, "node1", tmp_path)
    spec = target(LUN1)
    try:
        tgt.start_daemon()
        pid = pid_of(tgt)
        before = tgt.runner.spawned
        tgt.start(spec)  # the takeover: a target on the resident tgtd
        tgt.export_lun(spec, LUN1, R0)
        assert pid_of(tgt) == pid and os.path.exists(f"/proc/{pid}")
        assert tgt.timings["start"] > 0  # measured: tests/bench/lab.py prints it
        # tgtadm calls only (sys/portal checks, target new, bind; show, LUN new/update)
        assert tgt.runner.spawned - before <= 7
        lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])
        res = qemu_io(lab, 1, "write -P 0x5c 0 64k", "read -P 0x5c 0 64k")
        assert res.ok and "failed" not in res.stdout + res.stderr, res.stdout + res.stderr
        assert tgt.observe(spec) == TargetObs(
            running=True, daemon=True, exported_luns=frozenset({1})
        )
        tgt.stop(spec)  # the old primary's stop: the target goes, tgtd stays
        assert pid_of(tgt) == pid and os.path.exists(f"/proc/{pid}")
        assert not qemu_io(lab, 1, "read 0 4k").ok
        tgt.start(spec)  # and a swap back defines it again on the same tgtd
        assert pid_of(tgt) == pid
    finally:
        tgt.stop_daemon(spec)


def test_the_listing_is_relisted_after_resync(lab: Lab, tmp_path: Path) -> None:
    """A target deleted by hand on the socket: the observation keeps the listing until
    ``resync`` seconds passed (the clock is the test's), then re-lists and sees it."""
    clock = Clock()
    tgt = make_adapter(lab, "node1", tmp_path, clock=clock)
    spec = target(LUN1)
    try:
        tgt.start(spec)
        tgt.export_lun(spec, LUN1, R0)
        assert tgt.observe(spec).running is True
        adm = ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "delete"]
        tgt.runner.run([*adm, "--force", "--tid", "1"], env=tgt.env)
        before = tgt.runner.spawned
        clock.now += tgt.resync - 0.5
        assert tgt.observe(spec).running is True  # the listing: no process
        assert tgt.runner.spawned == before
        clock.now += 0.5
        assert tgt.observe(spec) == TargetObs(running=False, daemon=True)
        assert tgt.runner.spawned == before + 2  # target show + portal show
    finally:
        tgt.stop_daemon(spec)


def test_an_agent_restart_finds_the_resident_daemon_through_its_pid_file(
    lab: Lab, tmp_path: Path
) -> None:
    first = make_adapter(lab, "node2", tmp_path)
    first.start_daemon()
    first.close()
    pid = pid_of(first)
    again = make_adapter(lab, "node2", tmp_path)  # a restarted agent: no handle
    spec = target(LUN1)
    try:
        assert again.observe(spec) == TargetObs(running=False, daemon=True)
        before = again.runner.spawned
        assert again.observe(spec).daemon is True and again.runner.spawned == before
        os.kill(pid, signal.SIGKILL)
        wait_for("tgtd to die", lambda: not os.path.exists(f"/proc/{pid}/stat"), timeout=5)
        # Reaped by the first adapter's watcher (or a zombie: not alive either way).
        assert again.observe(spec) == TargetObs(running=False, daemon=False)
        assert again.runner.spawned == before
    finally:
        again.stop_daemon(spec)
