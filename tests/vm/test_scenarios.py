"""Tier 2: the agents drive real DRBD 8.4, iproute2, arping and tgtd in qemu VMs, and a real
iSCSI client (qemu-io over libiscsi in the client VM) checks the data through the VIP.

The scenarios share one cluster and run in order: fresh bring-up, planned swap, primary crash,
rejoin, the crash floor, split brain. Each one times the agents next to a hand-scripted floor
(the same commands sent directly through the same transport, no observation, no decisions);
the table is printed at the end of the run (see conftest).

    pytest -m vm tests/vm -s        # about 2-3 minutes on 2 cores (TCG)
"""

from __future__ import annotations

import hashlib
import time

import pytest
from click.testing import CliRunner, Result

import reconciler.cli as cli
import reconciler.cli_common as cli_common
from reconciler.core.observed import ConnState, DiskState, Role
from reconciler.core.plan import BlockKind
from tests.vm.cluster import (
    BLOCK,
    NODES,
    RESOURCE,
    TIMINGS,
    VmCluster,
    resource,
    serving,
    standing_by,
    timeline,
    vm_adapters,
)

pytestmark = pytest.mark.vm

now = time.monotonic


def reconcile(c: VmCluster, node: str, *args: str) -> Result:
    """The ``reconcile`` operator CLI for ``node``, in-process, on fresh VM adapters (as a new
    ``reconcile`` process would build them). The node's agent loop is paused meanwhile: two
    actors on one node at once race (see the report to the lead)."""

    def build(spec: object, n: str, sdir: object, *, dry_run: bool = False) -> object:
        # A one-shot command polls (streams would outlive it in the VM).
        return vm_adapters(c.spec, n, c.runners[n], c.state_dir, streams=False)

    argv = [*args, "-f", str(c.spec_path), "--node", node, "--state-dir", str(c.state_dir)]
    with c.agents_paused(node), pytest.MonkeyPatch.context() as mp:
        # The commands build their adapters through reconciler.cli_common (the operator
        # commands) and reconciler.cli (--once): both get the VM's.
        mp.setattr(cli_common, "_adapters", build)
        mp.setattr(cli, "_adapters", build)
        return CliRunner().invoke(cli.main, argv, catch_exceptions=False)


def no_split_brain_seen(c: VmCluster, since: float) -> None:
    for n in NODES:
        flagged = [r for r in c.agents[n].reports if r.started >= since and resource(r).split_brain]
        assert not flagged, f"{n} reported split brain: {flagged[0].to_json()}"
        assert not c.agents[n].crashes, c.agents[n].crashes


def block_md5(pattern: int) -> str:
    return hashlib.md5(bytes([pattern]) * BLOCK).hexdigest()


# ---------------------------------------------------------------------------------- scenarios


def test_fresh_bring_up(vm_cluster: VmCluster) -> None:
    """Metadata created, DRBD up, initial sync skipped on the blank disks, node1 promoted with
    the VIP and the target; the client writes and reads a pattern through the VIP."""
    c = vm_cluster
    for n in NODES:
        c.provision(n, create_md=True)
    c.set_master("node1")

    # floor: the same steps by hand
    started = now()
    for n in NODES:
        c.runners[n].run(["modprobe", "drbd"])
        c.runners[n].run(["drbdadm", "adjust", RESOURCE])
    c.wait_drbd("node1", lambda r: r.conn is ConnState.CONNECTED, 60, "Connected")
    c.skip_initial_sync("node1")
    c.wait_drbd("node1", lambda r: r.peer_disk is DiskState.UPTODATE, 30, "UpToDate/UpToDate")
    c.promote_by_hand("node1")
    w = c.client_write()
    assert w is not None and c.client_verify([w]), "client I/O after the hand-made bring-up"
    floor = now() - started
    # back to blank disks (and no tgtd: the agents start their own)
    c.demote_by_hand("node1")
    c.stop_tgtd_by_hand("node1")
    for n in NODES:
        c.runners[n].run(["drbdadm", "down", RESOURCE])
        c.provision(n, create_md=True)
    c.reap_floor_processes()

    # the agents
    started = now()
    c.start_agents()
    c.wait_drbd(
        "node1",
        lambda r: r.conn is ConnState.CONNECTED and r.disk is DiskState.INCONSISTENT,
        60,
        "agents brought DRBD up (Connected, Inconsistent/Inconsistent)",
    )
    blocked = c.agents["node1"].wait(
        lambda r: any(b.what == "promote" for b in r.plan.blocked), 30, "promotion blocked"
    )
    assert any(b.kind is BlockKind.STALE_DATA for b in blocked.plan.blocked), blocked.to_json()
    assert any("Inconsistent" in b.reason for b in blocked.plan.blocked), blocked.to_json()
    c.skip_initial_sync("node1")  # the one step an administrator does on blank disks
    c.agents["node1"].wait(serving, 60, "node1 serving")
    w = c.client_write()
    assert w is not None and c.client_verify([w]), "client I/O through the VIP"
    agent = now() - started
    c.wait_roles("node1")
    no_split_brain_seen(c, 0)
    TIMINGS.row("fresh bring-up (up .. client I/O)").set(
        agent=agent, floor=floor, note="incl. DRBD connect + sync skip"
    )


def test_planned_swap(vm_cluster: VmCluster) -> None:
    """pool.conf flipped: the old primary demotes, the new one promotes; the client reads the
    data through the VIP from the new primary."""
    c = vm_cluster
    c.wait_roles("node1")
    TIMINGS.notes.append(c.idle_cost(3.0))  # a figure, not a check: printed with the table
    w = c.client_write()
    assert w is not None

    started, wall = now(), time.time()
    c.set_master("node2")  # what HA-Lizard does when the pool master moves
    agent = (now() - started) + c.wait_client_read(w, via="node2")
    TIMINGS.timelines["the planned swap"] = timeline(c.agents, wall, wall + agent)
    c.wait_roles("node2")
    w2 = c.client_write()
    assert w2 is not None and c.client_verify([w, w2])

    with c.agents_paused():
        started = now()
        c.demote_by_hand("node2")
        c.promote_by_hand("node1")
        floor = (now() - started) + c.wait_client_read(w2, via="node1")
        c.set_master("node1")
    c.wait_roles("node1")
    c.reap_floor_processes()
    assert c.client_verify(c.writes)
    TIMINGS.row("planned swap (flip .. verified read)").set(agent=agent, floor=floor)


def test_primary_crash_failover(vm_cluster: VmCluster) -> None:
    """node1 (primary) is killed while the client writes; node2 is made pool master (as
    HA-Lizard would): node2 promotes, and the client reads every acknowledged write."""
    c = vm_cluster
    c.wait_roles("node1")
    since = time.time()
    writer = c.writer()
    writer.wait_acked(3)
    started, wall = now(), time.time()
    c.lab["node1"].kill()
    c.agents["node1"].request_stop()  # the agent dies with its node
    c.set_master("node2")
    writer.stop()
    last = writer.acked[-1]
    agent = (now() - started) + c.wait_client_read(last, via="node2")
    TIMINGS.timelines["the crash failover"] = timeline(
        {"node2": c.agents["node2"]}, wall, wall + agent
    )
    writer.join()
    c.agents["node1"].stop()
    acked = list(writer.acked)
    assert c.client_verify(acked, timeout=30), f"acknowledged writes lost: {acked}"
    report = c.agents["node2"].wait(serving, 30, "node2 serving")
    assert resource(report).conn is not ConnState.CONNECTED
    no_split_brain_seen(c, since)
    TIMINGS.row("crash failover (kill .. verified read)").set(
        agent=agent, note=f"{len(acked)} acked writes verified"
    )


def test_crashed_node_rejoins(vm_cluster: VmCluster) -> None:
    """The crashed node boots again: its agent brings DRBD up, it resyncs from node2 and stays
    secondary; no split brain."""
    c = vm_cluster
    since = time.time()
    boot = c.lab.restart("node1")
    c.provision("node1")
    started = now()
    c.fresh_agent("node1").start()
    c.agents["node1"].wait(standing_by, 120, "node1 resynced and standing by")
    agent = now() - started
    c.wait_roles("node2")
    no_split_brain_seen(c, since)
    for w in c.writes:
        assert c.disk_md5("node1", w.offset) == block_md5(w.pattern), f"block {w} differs"
    TIMINGS.row("rejoin (agent start .. UpToDate secondary)").set(
        agent=agent, note=f"+ boot {boot:.1f}s"
    )


def test_crash_floor_and_hand_rejoin(vm_cluster: VmCluster) -> None:
    """The floors of the crash and the rejoin: node2 (primary) killed, node1 promoted by hand
    as soon as DRBD notices; node2 restarted and brought back by hand."""
    c = vm_cluster
    c.wait_roles("node2")
    writer = c.writer()
    writer.wait_acked(3)
    with c.agents_paused():
        started = now()
        c.lab["node2"].kill()
        writer.stop()
        c.wait_drbd("node1", lambda r: not r.conn.is_connected, 30, "peer loss noticed")
        c.promote_by_hand("node1")
        floor = (now() - started) + c.wait_client_read(writer.acked[-1], via="node1")
        writer.join()
        assert c.client_verify(list(writer.acked), timeout=30)
        TIMINGS.row("crash failover (kill .. verified read)").set(floor=floor)

        boot = c.lab.restart("node2")
        c.provision("node2")
        started = now()
        c.runners["node2"].run(["modprobe", "drbd"])
        c.runners["node2"].run(["drbdadm", "adjust", RESOURCE])
        c.wait_drbd(
            "node2",
            lambda r: r.conn is ConnState.CONNECTED and r.disk is DiskState.UPTODATE,
            120,
            "resynced",
        )
        TIMINGS.row("rejoin (agent start .. UpToDate secondary)").set(
            floor=now() - started, note=f"+ boot {boot:.1f}s"
        )
        c.set_master("node1")
        c.fresh_agent("node2")
    c.reap_floor_processes()
    c.wait_roles("node1")


def test_split_brain_detected_then_recovered(vm_cluster: VmCluster) -> None:
    """Replication link cut; the operator moves storage to node2 with manual overrides while
    node1 had written: both were Primary while disconnected. When the link returns DRBD refuses
    to connect: the agents detect and alert, discard nothing, and the guided recovery (survivor
    node2) resolves it."""
    c = vm_cluster
    c.wait_roles("node1")
    assert c.lab.repl is not None
    c.lab.repl.cut()
    for n in NODES:
        c.wait_drbd(n, lambda r: not r.conn.is_connected, 30, "replication link down")
    a2 = c.client_write()  # node1 Primary, disconnected: only node1 has it
    assert a2 is not None

    for n in NODES:
        res = reconcile(c, n, "manual-mode", "enable")
        assert res.exit_code == 0, res.output
    res = reconcile(c, "node1", "become-secondary")
    assert res.exit_code == 0, res.output
    res = reconcile(c, "node2", "become-primary")
    assert res.exit_code != 0 and "blocked" in res.output, res.output  # policy refuses
    res = reconcile(c, "node2", "become-primary", "--force")
    assert res.exit_code == 0, res.output
    b = c.client_write()  # node2 Primary, disconnected: only node2 has it
    assert b is not None

    c.lab.repl.mend()
    detected = now()
    for n in NODES:
        c.agents[n].wait(lambda r: resource(r).split_brain, 60, "split brain detected")
    detected = now() - detected
    alerts = {n: [a for a in c.agents[n].alerts if "split-brain" in a.key] for n in NODES}
    assert all(alerts.values()), f"no split-brain alert: {alerts}"
    assert all(a.severity == "critical" for v in alerts.values() for a in v)

    # The agents keep ticking: nothing may be resolved behind the operator. Three more ticks
    # of each agent (a fixed 2 s held anywhere from one to four of them, with the load).
    for n in NODES:
        for _ in range(3):
            c.agents[n].wait(lambda r: True, 30, "another tick")
    for n in NODES:
        assert c.drbd(n).conn is ConnState.STANDALONE, f"{n} reconnected by itself"
    assert c.drbd("node2").role is Role.PRIMARY and c.drbd("node1").role is Role.SECONDARY
    assert c.disk_md5("node1", a2.offset) == block_md5(a2.pattern), "node1's write discarded"
    assert c.disk_md5("node2", b.offset) == block_md5(b.pattern), "node2's write discarded"
    assert c.disk_md5("node2", a2.offset) != block_md5(a2.pattern)

    started = now()
    res = reconcile(c, "node1", "split-brain", RESOURCE, "--survivor", "node2", "--yes")
    assert res.exit_code == 0 and "VICTIM" in res.output, res.output
    res = reconcile(c, "node2", "split-brain", RESOURCE, "--survivor", "node2", "--yes")
    assert res.exit_code == 0, res.output
    c.wait_drbd(
        "node1",
        lambda r: r.conn is ConnState.CONNECTED and r.disk is DiskState.UPTODATE,
        120,
        "victim resynced",
    )
    recovery = now() - started
    assert c.disk_md5("node1", a2.offset) == c.disk_md5("node2", a2.offset)
    assert c.disk_md5("node1", b.offset) == block_md5(b.pattern)
    for n in NODES:
        c.agents[n].wait(lambda r: not resource(r).split_brain, 30, "split brain cleared")

    c.set_master("node2")  # make the roles native again, then leave manual mode
    for n in NODES:
        res = reconcile(c, n, "manual-mode", "disable")
        assert res.exit_code == 0, res.output
    c.wait_roles("node2")
    assert c.client_verify([b])
    TIMINGS.row("split brain: link back .. detected").set(agent=detected)
    TIMINGS.row("split brain: guided recovery .. resynced").set(agent=recovery)
    no_split_brain_seen(c, time.time())
