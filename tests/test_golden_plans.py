"""Golden plans for the stories users live through, each checked for idempotency: apply the
plan to the simulated world, re-plan, and nothing may be left (pyinfra's "second run is a
no-op" rule)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.sim.world import Fault, World
from reconciler.agent import EXIT_BLOCKED, EXIT_DEGRADED, EXIT_OK
from reconciler.core.observed import DiskState, Role
from reconciler.core.plan import BlockKind, PlanWarning, WarningKind
from reconciler.core.safety import invariant_violations
from tests.simcluster import SimCluster, demo_spec, witness_spec

# Connected, with a peer that is not Primary: planned before the VIP's probe answered, the VIP
# after the target steps (the probe's wait overlaps them; add-vip checks its answer).
BRING_UP = [
    "promote iscsi1",
    "start-target",
    "export-lun LUN 1 (iscsi1)",
    "add-vip 198.51.100.3",
    "announce-vip 198.51.100.3",
]
# Disconnected (a takeover after a crash): the probe's answer is in the plan, the VIP first, so
# initiators whose ARP caches still point at the dead node are told as early as possible.
TAKE_OVER = [
    "promote iscsi1",
    "add-vip 198.51.100.3",
    "announce-vip 198.51.100.3",
    "start-target",
    "export-lun LUN 1 (iscsi1)",
]
TEAR_DOWN = ["stop-target", "remove-vip 198.51.100.3", "demote iscsi1"]


def steps(report) -> list[str]:  # type: ignore[no-untyped-def]
    return [a.describe() for a in report.plan.actions]


def plug(c: SimCluster, node: str, kind: str = "plug-pbd") -> str:
    """The step that plugs ``node``'s host's PBD of the demo's one SR."""
    (sr,) = c.world.srs
    return f"{kind} PBD {sr.pbds[node].uuid}"


@pytest.fixture
def cluster(tmp_path: Path) -> SimCluster:
    return SimCluster.create(demo_spec(), tmp_path)


def serving(tmp_path: Path) -> SimCluster:
    c = SimCluster.create(demo_spec(), tmp_path)
    c.converge()
    assert c.world.serving_node("iscsi1") == "node1"
    return c


def assert_idempotent(c: SimCluster) -> None:
    for node in c.spec.node_names:
        again = c.tick(node)
        assert again.plan.actions == (), f"{node} still has work: {steps(again)}"
    assert invariant_violations(c.world.facts()) == []


def test_fresh_cluster_brings_node1_up_in_order(cluster: SimCluster) -> None:
    # A fresh pool booted before anything served: both hosts' PBDs are unplugged. node1 plugs
    # its own last, once its target serves; node2 once the VIP answers from node1.
    r1 = cluster.tick("node1")
    assert steps(r1) == [*BRING_UP, plug(cluster, "node1")]
    assert r1.exit_code == EXIT_OK and r1.result is not None and r1.result.failed is None
    r2 = cluster.tick("node2")
    # The secondary starts its resident tgtd with no target defined (a takeover then only
    # defines the target); the daemon serves nothing, so it does not hold the plug back.
    assert steps(r2) == ["start-daemon", plug(cluster, "node2")]
    assert r2.plan.desired_role is Role.SECONDARY and not r2.plan.serving
    assert r2.plan.actions[0].after == ()
    assert cluster.world.nodes["node2"].target_daemon
    assert not cluster.world.nodes["node2"].target_running
    assert "VIP answers from another host" in r2.plan.actions[1].reason
    assert cluster.world.pbds_attached("node1") and cluster.world.pbds_attached("node2")
    assert cluster.world.serving_node("iscsi1") == "node1"
    assert_idempotent(cluster)


def test_cold_cluster_starts_drbd_then_waits_for_the_connection(tmp_path: Path) -> None:
    spec = demo_spec()
    c = SimCluster.create(spec, tmp_path, world=World.fresh(spec, drbd_up=False))
    assert steps(c.tick("node1")) == ["start-drbd iscsi1", "start-daemon"]
    # Alone and not connected, node1 must not promote: the peer may hold newer data.
    lonely = c.tick("node1")
    assert steps(lonely) == [] and lonely.exit_code == EXIT_BLOCKED
    # Nothing serves yet: the unplugged PBD waits (a plug would fail with 141).
    assert [b.kind for b in lonely.plan.blocked] == [
        BlockKind.NO_QUORUM,
        BlockKind.STORAGE_NOT_SERVED,
    ]
    assert "may still be Primary" in lonely.plan.blocked[0].reason
    assert "SR_BACKEND_FAILURE_141" in lonely.plan.blocked[1].reason
    assert steps(c.tick("node2")) == ["start-drbd iscsi1", "start-daemon"]
    # node1's daemon runs since its first tick: the bring-up only defines the target.
    assert c.world.nodes["node1"].target_daemon and not c.world.nodes["node1"].target_running
    assert steps(c.tick("node1")) == [*BRING_UP, plug(c, "node1")]
    assert steps(c.tick("node2")) == [plug(c, "node2")]
    assert_idempotent(c)


def test_role_swap_demotes_before_the_peer_promotes(tmp_path: Path) -> None:
    c = serving(tmp_path)
    c.world.pool_master = "node2"
    early = c.tick("node2")
    assert steps(early) == [] and early.exit_code == EXIT_BLOCKED
    assert [(b.kind, b.what) for b in early.plan.blocked] == [(BlockKind.PEER_PRIMARY, "promote")]
    assert "peer is still Primary" in early.plan.blocked[0].reason
    assert steps(c.tick("node1")) == TEAR_DOWN
    assert steps(c.tick("node2")) == BRING_UP
    assert c.world.serving_node("iscsi1") == "node2"
    assert c.world.arp_owner["198.51.100.3"] == "node2"
    assert_idempotent(c)


def test_peer_crashed_survivor_takes_over_with_quorum(tmp_path: Path) -> None:
    c = serving(tmp_path)
    gen = c.world.client_write("iscsi1")
    c.world.crash("node1")
    c.world.pool_master = "node2"  # HA-Lizard makes the survivor pool master
    r = c.tick("node2")
    assert steps(r) == TAKE_OVER
    assert "quorum" in r.plan.actions[0].reason
    assert gen in c.world.nodes["node2"].resources["iscsi1"].history
    assert steps(c.tick("node2")) == []
    # The crashed node comes back: starts DRBD, resyncs, stays secondary.
    c.world.boot("node1")
    assert steps(c.tick("node1")) == ["start-drbd iscsi1", "start-daemon"]
    c.converge()
    r1 = c.world.nodes["node1"].resources["iscsi1"]
    assert r1.role is Role.SECONDARY and r1.disk is DiskState.UPTODATE and not r1.split_brain
    assert_idempotent(c)


def test_vip_held_by_a_stranger_is_never_taken_over(cluster: SimCluster) -> None:
    cluster.world.strangers.append("198.51.100.3")
    r = cluster.tick("node1")
    # Connected, with a peer that is not Primary: the plan is made while the VIP's probe still
    # listens (it overlaps the target steps) and add-vip checks its answer itself: it refuses,
    # and nothing that needs the VIP runs. The target is defined, unreachable on the VIP.
    assert steps(r) == [*BRING_UP, plug(cluster, "node1")]
    assert r.plan.actions[3].probe
    assert r.result is not None and r.result.failed is not None
    assert r.result.failed.action.kind.value == "add-vip"
    assert "answered by another host" in (r.result.failed.error or "")
    assert {s.action.kind.value for s in r.result.skipped} == {"announce-vip", "plug-pbd"}
    # The next tick (the target defined: nothing to overlap) waits for the probe and refuses
    # the VIP in the plan, as it does from then on.
    again = cluster.tick("node1")
    assert steps(again) == [] and again.exit_code == EXIT_BLOCKED
    assert [(b.kind, b.what) for b in again.plan.blocked] == [
        (BlockKind.VIP_ANSWERS_ELSEWHERE, "add-vip"),
        (BlockKind.STORAGE_NOT_SERVED, "plug-pbd"),  # a stranger serves none of our LUNs
    ]
    assert "answered by another host" in again.plan.blocked[0].reason
    assert "198.51.100.3" not in cluster.world.nodes["node1"].vips
    assert invariant_violations(cluster.world.facts()) == []


def test_target_died_on_primary_is_restarted(tmp_path: Path) -> None:
    c = serving(tmp_path)
    c.world.target_stop("node1")
    assert steps(c.tick("node1")) == ["start-target", "export-lun LUN 1 (iscsi1)"]
    assert_idempotent(c)


def test_vip_deleted_on_primary_and_added_on_secondary(tmp_path: Path) -> None:
    c = serving(tmp_path)
    c.world.vip_remove("node1", "198.51.100.3")
    assert steps(c.tick("node1")) == ["add-vip 198.51.100.3", "announce-vip 198.51.100.3"]
    c.world.nodes["node2"].vips.append("198.51.100.3")
    assert steps(c.tick("node2")) == ["remove-vip 198.51.100.3"]
    assert_idempotent(c)


def test_vip_added_but_never_announced_is_announced(tmp_path: Path) -> None:
    """The agent was stopped between add-vip and announce-vip (its record says the VIP was
    added and not announced since): the client's ARP cache still points at the old holder,
    so the restarted agent announces it, and only that."""
    c = serving(tmp_path)
    c.world.arp_owner["198.51.100.3"] = "node2"  # the client's cache before the last swap
    c.world.nodes["node1"].announced.clear()
    r = c.tick("node1")
    assert steps(r) == ["announce-vip 198.51.100.3"]
    assert "not announced" in r.plan.actions[0].reason
    assert c.world.arp_owner["198.51.100.3"] == "node1"
    assert_idempotent(c)


def test_failed_announcement_is_retried_next_tick(tmp_path: Path) -> None:
    cluster = SimCluster.create(demo_spec(), tmp_path)
    cluster.world.faults.append(Fault(node="node1", op="vip-announce", kind="terminal", count=1))
    first = cluster.tick("node1")
    assert first.result is not None and first.result.failed is not None
    assert first.result.failed.action.kind.value == "announce-vip"
    assert steps(cluster.tick("node1")) == [*BRING_UP[4:], plug(cluster, "node1")]
    assert cluster.world.serving_node("iscsi1") == "node1"
    assert steps(cluster.tick("node2")) == ["start-daemon", plug(cluster, "node2")]
    assert_idempotent(cluster)


def test_vip_local_on_the_secondary_is_removed_not_announced(tmp_path: Path) -> None:
    c = serving(tmp_path)
    c.world.nodes["node2"].vips.append("198.51.100.3")  # unannounced, on the wrong node
    assert steps(c.tick("node2")) == ["remove-vip 198.51.100.3"]
    assert_idempotent(c)


def test_split_brain_is_reported_and_nothing_is_discarded(tmp_path: Path) -> None:
    c = serving(tmp_path)
    # Both sides wrote while apart: node1 as Primary, node2 forced Primary by an operator.
    c.world.set_links(replication=False, management=False)
    c.world.client_write("iscsi1")
    c.world.drbd_primary("node2", "iscsi1")
    c.world.nodes["node2"].resources["iscsi1"].history.append(999)
    c.world.drbd_secondary("node2", "iscsi1")
    c.world.set_links(replication=True, management=True)
    n1 = c.world.nodes["node1"].resources["iscsi1"]
    assert n1.split_brain and n1.standalone
    histories = {n: list(c.world.nodes[n].resources["iscsi1"].history) for n in ("node1", "node2")}
    c.world.pool_master = "node2"
    r1 = c.tick("node1")
    # node2 could not promote split-brained data: node1 holds (never demote into an outage).
    assert steps(r1) == [] and r1.exit_code == EXIT_BLOCKED
    assert [(b.kind, b.what) for b in r1.plan.blocked] == [(BlockKind.HOLDING, "step-down")]
    assert "holding: node2 cannot take over: iscsi1 is StandAlone" in r1.plan.blocked[0].reason
    assert c.world.serving_node("iscsi1") == "node1"
    assert [(w.kind, w.resource) for w in r1.plan.warnings] == [(WarningKind.SPLIT_BRAIN, "iscsi1")]
    assert "split brain" in r1.plan.warnings[0].message
    r2 = c.tick("node2")
    assert steps(r2) == [] and r2.exit_code == EXIT_BLOCKED
    assert [b.kind for b in r2.plan.blocked] == [BlockKind.SPLIT_BRAIN]
    assert "split brain" in r2.plan.blocked[0].reason
    assert "connect" not in [a.kind.value for a in r2.plan.actions]
    after = {n: list(c.world.nodes[n].resources["iscsi1"].history) for n in ("node1", "node2")}
    assert after == histories, "split brain must never discard data automatically"
    assert_idempotent(c)


def test_standalone_without_split_brain_reconnects(tmp_path: Path) -> None:
    c = serving(tmp_path)
    c.world.drbd_disconnect("node2", "iscsi1")
    assert steps(c.tick("node2")) == ["connect iscsi1"]
    assert_idempotent(c)


def test_one_unreadable_drbd_status_does_not_tear_down_the_primary(tmp_path: Path) -> None:
    from adapters.sim.world import Fault

    c = serving(tmp_path)
    c.world.faults.append(Fault(node="node1", op="drbd-observe", kind="garbage", count=1))
    r = c.tick("node1")
    assert steps(r) == [] and [(b.kind, b.what) for b in r.plan.blocked] == [
        (BlockKind.DRBD_UNKNOWN, "observe")
    ]
    held = [w for w in r.plan.warnings if w.kind is WarningKind.DRBD_UNREADABLE]
    assert held == [
        PlanWarning(
            WarningKind.DRBD_UNREADABLE,
            "DRBD state unreadable: holding the VIP and the target as they are",
        )
    ]
    assert r.plan.serving, "the hold keeps serving: the recorded expectation says so"
    assert c.world.serving_node("iscsi1") == "node1"
    assert_idempotent(c)


def test_bring_up_and_tear_down_plans_carry_their_dependency_chains(tmp_path: Path) -> None:
    """Golden chains (``Action.after``/``after_any``): each resource's promote is its own chain;
    the target needs one of them; target -> VIP -> announce in one chain (the VIP last, so the
    first connection to it finds the LUNs, and a probe still running overlaps the target
    steps); each LUN needs the target and its own resource. On the way down: target -> VIP ->
    each demote."""
    from tests.simcluster import two_resource_spec

    c = SimCluster.create(two_resource_spec(), tmp_path)
    up = c.tick("node1", dry_run=True).plan
    shown = [(a.kind.value if a.pbd else a.describe(), a.after, a.after_any) for a in up.actions]
    assert shown == [
        ("promote iscsi1", (), ()),
        ("promote iscsi2", (), ()),
        ("start-target", (), (0, 1)),
        ("export-lun LUN 1 (iscsi1)", (2, 0), ()),
        ("export-lun LUN 2 (iscsi2)", (2, 1), ()),
        ("add-vip 198.51.100.3", (2,), ()),
        ("announce-vip 198.51.100.3", (5,), ()),
    ]
    assert up.actions[2].to_json()["afterAny"] == [0, 1]
    c.converge()
    c.world.pool_master = "node2"
    down = c.tick("node1", dry_run=True).plan
    assert [(a.describe(), a.after) for a in down.actions] == [
        ("stop-target", ()),
        ("remove-vip 198.51.100.3", (0,)),
        ("demote iscsi1", (1,)),
        ("demote iscsi2", (1,)),
    ]


# --- PBDs (issue 12) -------------------------------------------------------------------------


def test_host_booted_with_the_sr_unplugged_plugs_it_once_served(tmp_path: Path) -> None:
    c = serving(tmp_path)
    c.world.unplug_pbds("node2")
    r = c.tick("node2")
    assert steps(r) == [plug(c, "node2")] and r.result is not None and r.result.failed is None
    assert c.world.pbds_attached("node2")
    assert_idempotent(c)


def test_planned_swap_keeps_the_pbds_attached(tmp_path: Path) -> None:
    """XAPI keeps a PBD attached while its target moves (I/O stalls): no PBD step at all."""
    c = serving(tmp_path)
    c.world.pool_master = "node2"
    assert steps(c.tick("node1")) == TEAR_DOWN
    assert c.world.pbds_attached("node1") and c.world.pbds_attached("node2")
    assert steps(c.tick("node2")) == BRING_UP
    assert_idempotent(c)


def test_sr_broken_after_a_failover_is_replugged(tmp_path: Path) -> None:
    c = serving(tmp_path)
    c.world.pool_master = "node2"
    c.converge()
    c.world.break_sr("node1")  # attached, but VG_XenStorage-<sr> is gone on node1's host
    r = c.tick("node1")
    assert steps(r) == [plug(c, "node1", "replug-pbd")]
    assert "VG_XenStorage-" in r.plan.actions[0].reason
    assert c.world.srs_usable("node1")
    assert_idempotent(c)


def test_no_plug_while_the_target_is_down(tmp_path: Path) -> None:
    """node1 stays Primary but its VIP and target are gone (the pool has no master, so nobody
    moves): nothing serves, node2's unplugged PBD waits, refused."""
    c = serving(tmp_path)
    c.world.pool_master = None
    c.world.unplug_pbds("node2")
    c.world.target_stop("node1")
    c.world.vip_remove("node1", "198.51.100.3")
    r = c.tick("node2")
    assert steps(r) == [] and r.exit_code == EXIT_BLOCKED
    assert [b.kind for b in r.plan.blocked] == [BlockKind.STORAGE_NOT_SERVED]
    assert not c.world.pbds_attached("node2")


def test_xapi_unreachable_warns_and_keeps_serving(tmp_path: Path) -> None:
    c = serving(tmp_path)
    c.world.nodes["node1"].xapi_reachable = False
    c.world.unplug_pbds("node1")
    r = c.tick("node1")
    # Served as before, but not healthy: converged-but-degraded (exit 4), the reason a warning.
    assert steps(r) == [] and r.exit_code == EXIT_DEGRADED
    assert [w.kind for w in r.plan.warnings] == [WarningKind.HYPERVISOR_UNREADABLE]
    assert "XAPI unreachable" in r.plan.warnings[0].message
    assert c.world.serving_node("iscsi1") == "node1"
    c.world.nodes["node1"].xapi_reachable = True
    assert steps(c.tick("node1")) == [plug(c, "node1")]
    assert_idempotent(c)


# --- the witness (promotion.whenDisconnected: witness) ------------------------------------------


def witness_serving(tmp_path: Path) -> SimCluster:
    """specs/witness.yaml on an in-memory world whose witness clock the test moves."""
    c = SimCluster.create(witness_spec(), tmp_path)
    c.converge()
    assert c.world.serving_node("iscsi1") == "node1"
    assert c.world.witness_holder() == "node1"
    return c


def test_witness_the_serving_node_claims_the_key_and_refreshes_below_the_threshold(
    tmp_path: Path,
) -> None:
    c = witness_serving(tmp_path)
    assert steps(c.tick("node1")) == []  # lease fresh: an idle tick applies nothing
    c.world.now += 3.0  # 7.0 s left: at or below the refresh threshold (7.1 s)
    r = c.tick("node1")
    assert steps(r) == ["claim-witness"] and "refresh the witness lease" in r.plan.actions[0].reason
    assert c.world.lease_left("node1", 10.0) == 10.0
    assert_idempotent(c)


def test_witness_survivor_claims_waits_the_settle_time_then_promotes_after_the_claim(
    tmp_path: Path,
) -> None:
    c = witness_serving(tmp_path)
    c.world.crash("node1")
    c.world.pool_master = "node2"
    held = c.tick("node2")
    assert steps(held) == [] and held.exit_code == EXIT_BLOCKED
    assert [b.kind for b in held.plan.blocked] == [BlockKind.WITNESS_HELD]
    c.world.now += 10.0  # node1's lease expired on etcd
    claim = c.tick("node2")
    assert steps(claim) == ["claim-witness"]
    assert [b.kind for b in claim.plan.blocked] == [BlockKind.WITNESS_CLAIM]
    c.world.now += 2.0
    settling = c.tick("node2")
    assert steps(settling) == [] and "with the key held 2.6 s" in str(
        settling.plan.blocked[0].reason
    )
    c.world.now += 2.1  # held 4.1 s >= hold 2.56 s; disconnected 14.1 s >= settle 6.60 s
    r = c.tick("node2")
    assert steps(r) == ["claim-witness", *TAKE_OVER]
    assert r.plan.actions[1].after == (0,)  # promote only once the claim succeeded
    assert c.world.serving_node("iscsi1") == "node2"


def test_witness_survivor_disconnected_for_the_settle_time_promotes_after_the_watchdogs_hold(
    tmp_path: Path,
) -> None:
    """Counted from the disconnect: node2 lost the connection 10 s before it could claim, so it
    waits only the watchdog's hold after the claim (timeout 3.5: (3.5 / 0.99 - 1) x 1.01 =
    2.56 s), not the settle time."""
    c = witness_serving(tmp_path)
    c.world.crash("node1")
    c.world.pool_master = "node2"
    c.tick("node2")
    c.world.now += 10.0  # node1's lease expired on etcd
    assert steps(c.tick("node2")) == ["claim-witness"]
    c.world.now += 2.5
    holding = c.tick("node2")
    assert steps(holding) == [] and [b.kind for b in holding.plan.blocked] == [
        BlockKind.WITNESS_SETTLING
    ]
    assert "disconnected for 12.5 s" in holding.plan.blocked[0].reason
    c.world.now += 0.1  # held 2.6 s >= hold 2.56 s; disconnected 12.6 s >= settle 6.60 s
    r = c.tick("node2")
    assert steps(r) == ["claim-witness", *TAKE_OVER]
    assert r.plan.actions[1].after == (0,)
    assert "disconnected for 12.6 s >= settle 6.6 s" in r.plan.actions[1].reason
    assert c.world.serving_node("iscsi1") == "node2"


def test_witness_a_cut_off_primary_steps_down_and_releases_nothing_it_cannot_reach(
    tmp_path: Path,
) -> None:
    c = witness_serving(tmp_path)
    c.world.nodes["node1"].etcd_cut = True
    c.world.set_links(replication=False)
    c.world.now += 5.0  # 5.0 s left (unreachable): above the step-down threshold (4.1 s)
    r = c.tick("node1")
    assert steps(r) == []
    assert [w.kind for w in r.plan.warnings if w.kind is WarningKind.WITNESS_UNREACHABLE]
    c.world.now += 1.0  # 4.0 s left: stop serving before the lease can expire on etcd
    down = c.tick("node1")
    assert steps(down) == TEAR_DOWN
    assert WarningKind.WITNESS_STEP_DOWN in {w.kind for w in down.plan.warnings}
    assert c.world.witness_holder() == "node1"  # etcd unreachable: nothing to release
