"""The VIP's ARP probe left pending while the node taking over defines its target (issue 14).

``safety.probes_can_wait`` says when a tick may be planned before the probes of the VIPs not here
have answered; the planner then puts add-vip last with ``Action.probe`` (the action checks the
answer itself); ``reconciler.observe`` waits for the probes in every other case. Over the
simulator (``SimVip`` keeps the answer at observation time, as the real adapter's probe).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.core.observed import (
    ConnState,
    DiskState,
    Liveness,
    ObservedState,
    ResourceObs,
    Role,
    TargetObs,
    VipObs,
)
from reconciler.core.plan import ActionKind, BlockKind
from reconciler.core.planner import plan as make_plan
from reconciler.core.safety import (
    invariant_violations,
    may_add_vip,
    may_promote,
    probes_can_wait,
)
from reconciler.core.spec import DisconnectedPolicy
from tests.simcluster import SimCluster, demo_spec

VIP = "198.51.100.3"


def res(
    conn: ConnState = ConnState.CONNECTED,
    peer_role: Role = Role.SECONDARY,
    *,
    known: bool = True,
    up: bool = True,
) -> ResourceObs:
    return ResourceObs(
        name="iscsi1",
        up=up,
        known=known,
        role=Role.SECONDARY,
        conn=conn,
        disk=DiskState.UPTODATE,
        peer_role=peer_role,
        peer_disk=DiskState.UPTODATE,
    )


IDLE = TargetObs(running=False, daemon=True)
SERVING = TargetObs(running=True, exported_luns=frozenset({1}), daemon=True)


# --- when may the plan go on without the probes' answers ------------------------------------
def test_probes_can_wait_only_connected_with_a_peer_not_primary_and_no_target_here() -> None:
    assert probes_can_wait([res()], IDLE)
    assert probes_can_wait([res(peer_role=Role.UNKNOWN)], IDLE)
    assert probes_can_wait([res(ConnState.SYNC_SOURCE)], IDLE)
    # Any other case needs the answers before planning.
    assert not probes_can_wait([res(peer_role=Role.PRIMARY)], IDLE)  # PBD plug, stand-by
    assert not probes_can_wait([res(ConnState.CONNECTING, Role.UNKNOWN)], IDLE)  # promotion
    assert not probes_can_wait([res(ConnState.STANDALONE, Role.UNKNOWN)], IDLE)
    assert not probes_can_wait([res(known=False)], IDLE)
    assert not probes_can_wait([res(up=False)], IDLE)
    assert not probes_can_wait([res(), res(ConnState.CONNECTING)], IDLE)  # every resource
    assert not probes_can_wait([], IDLE)
    assert not probes_can_wait([res()], SERVING)  # nothing to overlap
    assert not probes_can_wait([res()], TargetObs(running=None, error="tgtadm: garbage"))


def test_a_pending_probe_blocks_a_disconnected_promotion_whatever_the_policy() -> None:
    cut = replace(res(ConnState.CONNECTING, Role.UNKNOWN), peer_disk=DiskState.OUTDATED)
    quorum = Liveness(peer_reachable=False, heuristics_ok=2, heuristics_total=2)
    for policy in DisconnectedPolicy:
        verdict = may_promote(cut, policy=policy, liveness=quorum, vip_probe_pending=True)
        assert not verdict.ok and verdict.refusal is BlockKind.VIP_UNKNOWN, policy
        verdict = may_promote(
            cut, policy=policy, liveness=quorum, vip_probe_pending=True, override=True
        )
        assert not verdict.ok, f"{policy}: the override does not promote blind either"
    # Connected, the probe is not read by the promotion.
    assert may_promote(res(), policy=DisconnectedPolicy.QUORUM, liveness=quorum,
                       vip_probe_pending=True).ok  # fmt: skip


def test_a_pending_probe_lets_add_vip_be_planned_with_its_own_check() -> None:
    pending = VipObs(address=VIP, local=False, probe_pending=True)
    assert may_add_vip(pending, serving_resources=["iscsi1"]).ok
    assert not may_add_vip(pending, serving_resources=[]).ok  # still only on a primary


# --- the plan -------------------------------------------------------------------------------
def _taking_over(tmp_path: Path) -> tuple[SimCluster, ObservedState]:
    """node1 serves; the pool master moves to node2; node1 steps down: node2's observation
    before its takeover tick, as the simulator gives it (with probes left pending)."""
    c = SimCluster.create(demo_spec(), tmp_path)
    c.converge()
    c.world.pool_master = "node2"
    c.tick("node1")
    assert c.world.serving_node("iscsi1") is None
    return c, c.tick("node2", dry_run=True).observed


def test_the_takeover_is_planned_before_the_probe_answers_with_the_vip_last(
    tmp_path: Path,
) -> None:
    c, seen = _taking_over(tmp_path)
    (vip,) = seen.vips
    assert vip.probe_pending and vip.answered_elsewhere is None
    plan = make_plan(c.spec, seen)
    kinds = [a.kind for a in plan.actions]
    assert kinds[:5] == [
        ActionKind.PROMOTE,
        ActionKind.START_TARGET,
        ActionKind.EXPORT_LUN,
        ActionKind.ADD_VIP,
        ActionKind.ANNOUNCE_VIP,
    ]
    add = plan.actions[3]
    assert add.probe and add.to_json()["probe"] is True
    assert not any(a.probe for a in plan.actions if a.kind is not ActionKind.ADD_VIP)
    # Applied: node2 serves, with one VIP in the world.
    report = c.tick("node2")
    assert report.result is not None and all(s.ok for s in report.result.steps)
    assert c.world.serving_node("iscsi1") == "node2"
    assert invariant_violations(c.world.facts()) == []


def test_a_complete_observation_plans_add_vip_without_its_own_check(tmp_path: Path) -> None:
    c, seen = _taking_over(tmp_path)
    answered = replace(seen, vips=(VipObs(address=VIP, local=False, answered_elsewhere=False),))
    add = next(a for a in make_plan(c.spec, answered).actions if a.kind is ActionKind.ADD_VIP)
    assert add.probe is False


def test_a_stranger_on_the_vip_found_by_add_vips_check_keeps_the_vip_off(tmp_path: Path) -> None:
    """Someone else answers on the VIP during the takeover: the pending probe says so, add-vip
    refuses (terminal: never retried blind), the announcement does not run; the next tick
    (target defined: nothing to overlap) waits for the probe and blocks the VIP as before."""
    c, _ = _taking_over(tmp_path)
    c.world.strangers.append(VIP)
    report = c.tick("node2")
    assert report.result is not None
    steps = {s.action.kind: s for s in report.result.steps}
    add = steps[ActionKind.ADD_VIP]
    assert add.error is not None and "answered by another host" in add.error
    assert steps[ActionKind.ANNOUNCE_VIP].skipped
    assert VIP not in c.world.nodes["node2"].vips
    again = c.tick("node2")
    (vip,) = again.observed.vips
    assert not vip.probe_pending and vip.answered_elsewhere is True
    assert any(b.kind is BlockKind.VIP_ANSWERS_ELSEWHERE for b in again.plan.blocked)
    assert invariant_violations(c.world.facts()) == []


@pytest.mark.parametrize("peer_primary", [True, False])
def test_the_stand_by_node_waits_for_its_probe(tmp_path: Path, peer_primary: bool) -> None:
    """With the peer Primary (the everyday stand-by) the probe's answer is in the observation
    (the PBD plug for storage the peer serves reads it); with the peer Secondary and nothing
    Primary it may be pending."""
    c = SimCluster.create(demo_spec(), tmp_path)
    c.converge()
    if not peer_primary:
        c.world.pool_master = "node2"
        c.tick("node1")
    (vip,) = c.tick("node2", dry_run=True).observed.vips
    assert vip.probe_pending is (not peer_primary)
    if peer_primary:
        assert vip.answered_elsewhere is True
