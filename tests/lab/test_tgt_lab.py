"""TgtAdapter against a real tgtd inside the namespace lab, checked by a real iSCSI client."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from adapters.runner import CommandResult
from adapters.tgt import TgtAdapter, parse_tgtadm_show
from reconciler.core.errors import TerminalError
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


def make_adapter(lab: Lab, key: str, tmp_path: Path) -> TgtAdapter:
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
    )


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
    assert not os.path.exists(f"/proc/{pid}")
    assert not Path(tgt.pid_file).exists()
    assert tgt.observe(spec).running is False
    tgt.stop(spec)  # idempotent


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
        tgt.unexport_lun(narrowed, LUN2)
        tgt.unexport_lun(narrowed, LUN2)
        assert tgt.observe(narrowed).exported_luns == frozenset({1})
    finally:
        tgt.stop(spec)


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
        tgt.stop(spec)


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
        res = tgt.runner.run(
            ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"], env=tgt.env
        )
        return len(parse_tgtadm_show(res.stdout).targets[0].sessions)

    wait_for("the client's iSCSI session on node1's tgtd", sessions, timeout=5, interval=0.02)
    assert sessions() == 1
    pid = pid_of(tgt)
    tgt.stop(spec)  # the figure: tests/bench/lab.py
    assert not os.path.exists(f"/proc/{pid}")
    assert tgt.observe(spec).running is False


def test_sigkill_then_observe_and_restart(lab: Lab, tmp_path: Path) -> None:
    tgt = make_adapter(lab, "node1", tmp_path)
    spec = target(LUN1)
    tgt.start(spec)
    tgt.export_lun(spec, LUN1, R0)
    pid = pid_of(tgt)
    os.kill(pid, signal.SIGKILL)
    wait_for(
        "observe() to say tgtd is not running after its SIGKILL",
        lambda: tgt.observe(spec).running is False,
        timeout=2,
    )
    assert tgt.observe(spec) == type(tgt.observe(spec))(running=False)
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
        one.stop(spec)
        two.stop(spec)


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
        tgt.stop(spec)


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
        obs = tgt.observe(spec)
        assert obs.running is False and "interrupted start" in (obs.error or "")
        tgt.start(spec)
        assert tgt.observe(spec).exported_luns == frozenset({1})
        tgt.runner.run([*adm, "--op", "delete", "--force", "--tid", "1"], env=tgt.env)
        obs = tgt.observe(spec)
        assert obs.running is False and "without target 1" in (obs.error or "")
        tgt.start(spec)
        tgt.export_lun(spec, LUN1, R0)
        obs = tgt.observe(spec)
        assert obs.running is True and obs.exported_luns == frozenset({1}) and obs.error is None
    finally:
        tgt.stop(spec)
