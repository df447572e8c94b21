"""The resident target daemon in the pure planner: when ``start-daemon`` is planned, and that
the target (not the daemon) is what serving and stopping are about."""

from __future__ import annotations

import pytest

from reconciler.core.observed import (
    ConnState,
    DiskState,
    ObservedState,
    ResourceObs,
    Role,
    RoleVerdict,
    TargetObs,
    VipObs,
)
from reconciler.core.plan import ActionKind
from reconciler.core.planner import plan
from tests.simcluster import demo_spec

SPEC = demo_spec()
VIP = "198.51.100.3"
RES = "iscsi1"


def secondary(target: TargetObs, *, known: bool = True) -> ObservedState:
    """node2 as the pool's slave, Secondary and connected to node1, which serves."""
    res = (
        ResourceObs(
            name=RES,
            up=True,
            role=Role.SECONDARY,
            conn=ConnState.CONNECTED,
            disk=DiskState.UPTODATE,
            peer_role=Role.PRIMARY,
            peer_disk=DiskState.UPTODATE,
        )
        if known
        else ResourceObs.unknown(RES, "drbdsetup timed out")
    )
    return ObservedState(
        node="node2",
        resources=(res,),
        vips=(VipObs(address=VIP, local=False, answered_elsewhere=True),),
        target=target,
        role_source=RoleVerdict(Role.SECONDARY, "pool slave"),
    )


def kinds(observed: ObservedState) -> list[ActionKind]:
    return [a.kind for a in plan(SPEC, observed).actions]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # the daemon down on a node that does not serve: start it, nothing else
        (TargetObs(running=False, daemon=False), [ActionKind.START_DAEMON]),
        # the resident daemon without a target: converged
        (TargetObs(running=False, daemon=True), []),
        # an adapter that does not model the daemon: nothing planned for it
        (TargetObs(running=False), []),
        # unknown on a node that must not serve: stopped (the safe side), no start-daemon
        (TargetObs(running=None, daemon=None, error="tgtadm timed out"), [ActionKind.STOP_TARGET]),
        # the target defined here (a half-defined one too): deleted, the daemon stays
        (TargetObs(running=True, daemon=True), [ActionKind.STOP_TARGET]),
        (
            TargetObs(running=False, daemon=True, error="target 1 allows no initiator"),
            [ActionKind.STOP_TARGET],
        ),
        # listening elsewhere than the portal: restarted by start-daemon, no stop-target
        (
            TargetObs(running=False, daemon=False, error="tgtd listens on 0.0.0.0:3260"),
            [ActionKind.START_DAEMON],
        ),
    ],
)
def test_the_secondarys_daemon(target: TargetObs, expected: list[ActionKind]) -> None:
    assert kinds(secondary(target)) == expected


def test_start_daemon_is_a_chain_of_its_own_with_a_reason() -> None:
    (action,) = plan(SPEC, secondary(TargetObs(running=False, daemon=False))).actions
    assert action.after == () and not action.after_any
    assert "daemon" in action.reason and not action.repair


def test_no_start_daemon_while_drbd_is_unreadable() -> None:
    observed = secondary(TargetObs(running=False, daemon=False), known=False)
    assert ActionKind.START_DAEMON not in kinds(observed)


def test_the_primary_starts_the_target_which_starts_the_daemon() -> None:
    """A takeover with the daemon down: start-target alone (it starts tgtd when it must)."""
    res = ResourceObs(
        name=RES,
        up=True,
        role=Role.PRIMARY,
        conn=ConnState.CONNECTED,
        disk=DiskState.UPTODATE,
        peer_role=Role.SECONDARY,
        peer_disk=DiskState.UPTODATE,
    )
    observed = ObservedState(
        node="node1",
        resources=(res,),
        vips=(VipObs(address=VIP, local=True, announced=True),),
        target=TargetObs(running=False, daemon=False),
        role_source=RoleVerdict(Role.PRIMARY, "pool master"),
    )
    got = kinds(observed)
    assert ActionKind.START_TARGET in got and ActionKind.START_DAEMON not in got
