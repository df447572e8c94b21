"""Failover stories on the simulator, written in Python over ``Simulation`` where the scenario
format cannot say it yet (per-resource faults): each story runs both agents through the
production tick and checks every invariant after every action (``raise_on_violation``)."""

from __future__ import annotations

from reconciler.core.plan import BlockKind
from reconciler.simulation import Simulation, new_simulation
from tests.simcluster import two_resource_spec

SPEC = two_resource_spec()


def rounds(sim: Simulation, n: int) -> None:
    for _ in range(n):
        for node in sim.names:
            sim.tick(node)


def test_one_resource_fails_to_start_the_others_are_served_and_tgtd_is_restarted() -> None:
    sim = new_simulation(SPEC, drbd_up=False, raise_on_violation=True)
    w = sim.w
    # iscsi2 cannot start on node1 (say, not configured on that host): drbdadm up fails for good.
    sim.fault("inject", "node1", op="drbd-up", kind="terminal", count=-1, resource="iscsi2")
    rounds(sim, 3)
    n1 = w.nodes["node1"]
    assert n1.resources["iscsi1"].role.value == "Primary" and not n1.resources["iscsi2"].up
    assert n1.target_running and n1.exported == {1: "iscsi1"}
    assert w.serving_node("iscsi1") == "node1" and w.serving_node("iscsi2") is None
    assert w.client_write("iscsi1") is not None
    # The LUN that is not exported is reported, and so is the failing start.
    plan = sim.last_plans["node1"]
    assert [(b.kind, b.what, b.resource) for b in plan.blocked] == [
        (BlockKind.NOT_PRIMARY_HERE, "export-lun", "iscsi2")
    ]
    assert [a.describe() for a in plan.actions] == ["start-drbd iscsi2"]
    # tgtd dies: restarted on the next tick although iscsi2 still fails.
    sim.fault("killTarget", "node1")
    assert w.serving_node("iscsi1") is None
    sim.tick("node1")
    assert n1.target_running and n1.exported == {1: "iscsi1"}
    assert w.serving_node("iscsi1") == "node1"
    # The host is fixed: iscsi2 starts, is promoted and exported without touching LUN 1.
    sim.fault("clearFaults")
    rounds(sim, 3)
    assert n1.exported == {1: "iscsi1", 2: "iscsi2"}
    assert w.serving_node("iscsi2") == "node1"
    assert sim.violations == []


def test_a_disk_fault_of_one_resource_holds_the_primary_until_its_resync_ends() -> None:
    sim = new_simulation(SPEC, resync_steps=3, raise_on_violation=True)
    w = sim.w
    k, _ = sim.converge(max_rounds=3)
    assert k is not None and w.serving_node("iscsi1") == "node1"
    # Only iscsi2's disk on node2 fails and is replaced: iscsi1 stays UpToDate on both.
    sim.fault("failDisk", "node2", resource="iscsi2")
    sim.fault("replaceDisk", "node2", resource="iscsi2")
    n2 = w.nodes["node2"].resources
    assert n2["iscsi1"].disk.value == "UpToDate" and n2["iscsi2"].disk.value == "Inconsistent"
    sim.set_pool_master("node2")
    sim.tick("node1")
    held = sim.last_plans["node1"]
    assert [(b.kind, b.what) for b in held.blocked] == [(BlockKind.HOLDING, "step-down")]
    assert "holding: node2 cannot take over: its disk of iscsi2" in held.blocked[0].reason
    assert w.serving_node("iscsi1") == "node1" and w.serving_node("iscsi2") == "node1"
    # The resync ends: node1 steps down, node2 takes over in the same round.
    rounds(sim, 3)
    assert w.serving_node("iscsi1") == "node2" and w.serving_node("iscsi2") == "node2"
    assert sim.violations == []


def test_per_resource_faults_touch_only_their_resource() -> None:
    sim = new_simulation(SPEC, raise_on_violation=True)
    sim.converge(max_rounds=3)
    w = sim.w
    sim.fault("detachDisk", "node1", resource="iscsi2")
    r1 = w.nodes["node1"].resources
    assert r1["iscsi1"].disk.value == "UpToDate" and r1["iscsi2"].disk.value == "Diskless"
    sim.fault("disconnect", "node2", resource="iscsi1")
    assert w.nodes["node2"].resources["iscsi1"].standalone
    assert not w.nodes["node2"].resources["iscsi2"].standalone
    assert sim.counts["detachDisk (one resource)"] == 1
    assert sim.counts["disconnect (one resource)"] == 1
    sim.fault("inject", "node1", op="drbd-observe", kind="garbage", count=1, resource="iscsi2")
    sim.tick("node1")
    plan = sim.last_plans["node1"]
    assert [(b.kind, b.resource) for b in plan.blocked] == [(BlockKind.DRBD_UNKNOWN, "iscsi2")]
