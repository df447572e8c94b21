"""Decision-table tests of plan() over the phases (cephadm style).

Every combination of (role-source verdict, local DRBD phase, peer situation) must have a row in
TABLE. A missing row fails the test and prints the row to paste, with what plan() does now, so a
person reviews the behaviour before it becomes the expectation.
Expected values: the action kinds in order, then "!" and the refusals as ``what:BlockKind``
("-" for none).
"""

from __future__ import annotations

import itertools

import pytest

from reconciler.core.observed import (
    ConnState,
    DiskState,
    Liveness,
    ObservedState,
    ResourceObs,
    Role,
    RoleVerdict,
    TargetObs,
    VipObs,
)
from reconciler.core.planner import plan
from tests.simcluster import demo_spec

SPEC = demo_spec()
VIP = "198.51.100.3"
VERDICTS = ("primary", "secondary", "unknown")
LOCAL = ("down", "secondary", "primary", "unreadable")
PEER = ("peer-secondary", "peer-primary", "peer-dead", "peer-alive-disconnected")

UP = "promote add-vip announce-vip start-target export-lun"
DOWN = "stop-target remove-vip demote"

# (verdict, local, peer): "actions ! blocked"
TABLE: dict[tuple[str, str, str], str] = {
    ("primary", "down", "peer-secondary"): "start-drbd ! -",
    ("primary", "down", "peer-primary"): "start-drbd ! -",
    ("primary", "down", "peer-dead"): "start-drbd ! -",
    ("primary", "down", "peer-alive-disconnected"): "start-drbd ! -",
    ("primary", "secondary", "peer-secondary"): f"{UP} ! -",
    ("primary", "secondary", "peer-primary"): "! promote:peer-primary",
    ("primary", "secondary", "peer-dead"): f"{UP} ! -",
    ("primary", "secondary", "peer-alive-disconnected"): "! promote:no-quorum",
    ("primary", "primary", "peer-secondary"): "! -",
    ("primary", "primary", "peer-primary"): "! -",
    ("primary", "primary", "peer-dead"): "! -",
    ("primary", "primary", "peer-alive-disconnected"): "! -",
    ("primary", "unreadable", "peer-secondary"): "! observe:drbd-unknown",
    ("primary", "unreadable", "peer-primary"): "! observe:drbd-unknown",
    ("primary", "unreadable", "peer-dead"): "! observe:drbd-unknown",
    ("primary", "unreadable", "peer-alive-disconnected"): "! observe:drbd-unknown",
    ("secondary", "down", "peer-secondary"): "start-drbd ! -",
    ("secondary", "down", "peer-primary"): "start-drbd ! -",
    ("secondary", "down", "peer-dead"): "start-drbd ! -",
    ("secondary", "down", "peer-alive-disconnected"): "start-drbd ! -",
    ("secondary", "secondary", "peer-secondary"): "! -",
    ("secondary", "secondary", "peer-primary"): "! -",
    ("secondary", "secondary", "peer-dead"): "! -",
    ("secondary", "secondary", "peer-alive-disconnected"): "! -",
    ("secondary", "primary", "peer-secondary"): f"{DOWN} ! -",
    ("secondary", "primary", "peer-primary"): f"{DOWN} ! -",
    # Never demote into an outage: a disconnected peer cannot take over, so the primary holds.
    ("secondary", "primary", "peer-dead"): "! step-down:holding",
    ("secondary", "primary", "peer-alive-disconnected"): "! step-down:holding",
    ("secondary", "unreadable", "peer-secondary"): "! observe:drbd-unknown",
    ("secondary", "unreadable", "peer-primary"): "! observe:drbd-unknown",
    ("secondary", "unreadable", "peer-dead"): "! observe:drbd-unknown",
    ("secondary", "unreadable", "peer-alive-disconnected"): "! observe:drbd-unknown",
    # No verdict: hold the current role (a Primary keeps serving, a Secondary stays put).
    ("unknown", "down", "peer-secondary"): "start-drbd ! -",
    ("unknown", "down", "peer-primary"): "start-drbd ! -",
    ("unknown", "down", "peer-dead"): "start-drbd ! -",
    ("unknown", "down", "peer-alive-disconnected"): "start-drbd ! -",
    ("unknown", "secondary", "peer-secondary"): "! -",
    ("unknown", "secondary", "peer-primary"): "! -",
    ("unknown", "secondary", "peer-dead"): "! -",
    ("unknown", "secondary", "peer-alive-disconnected"): "! -",
    ("unknown", "primary", "peer-secondary"): "! -",
    ("unknown", "primary", "peer-primary"): "! -",
    ("unknown", "primary", "peer-dead"): "! -",
    ("unknown", "primary", "peer-alive-disconnected"): "! -",
    ("unknown", "unreadable", "peer-secondary"): "! observe:drbd-unknown",
    ("unknown", "unreadable", "peer-primary"): "! observe:drbd-unknown",
    ("unknown", "unreadable", "peer-dead"): "! observe:drbd-unknown",
    ("unknown", "unreadable", "peer-alive-disconnected"): "! observe:drbd-unknown",
}


def observation(verdict: str, local: str, peer: str) -> ObservedState:
    connected = peer in ("peer-secondary", "peer-primary")
    if local == "down":
        res = ResourceObs.down("iscsi1")
    elif local == "unreadable":
        res = ResourceObs.unknown("iscsi1", "garbage from drbdsetup")
    else:
        res = ResourceObs(
            name="iscsi1",
            up=True,
            role=Role.PRIMARY if local == "primary" else Role.SECONDARY,
            conn=ConnState.CONNECTED if connected else ConnState.WF_CONNECTION,
            disk=DiskState.UPTODATE,
            peer_role=(Role.PRIMARY if peer == "peer-primary" else Role.SECONDARY)
            if connected
            else Role.UNKNOWN,
            peer_disk=DiskState.UPTODATE if connected else DiskState.DUNKNOWN,
        )
    serving = local == "primary"
    return ObservedState(
        node="node1",
        resources=(res,),
        vips=(VipObs(VIP, local=serving, answered_elsewhere=None if serving else False),),
        target=TargetObs(running=serving, exported_luns=frozenset({1}) if serving else frozenset()),
        role_source=RoleVerdict(
            {"primary": Role.PRIMARY, "secondary": Role.SECONDARY}.get(verdict, Role.UNKNOWN),
            f"table verdict {verdict}",
        ),
        liveness=Liveness(peer_reachable=peer != "peer-dead", heuristics_ok=1, heuristics_total=1),
    )


def render(verdict: str, local: str, peer: str) -> str:
    p = plan(SPEC, observation(verdict, local, peer))
    acts = " ".join(a.kind.value for a in p.actions)
    blocked = " ".join(f"{b.what}:{b.kind.value}" for b in p.blocked) or "-"
    return f"{acts} ! {blocked}".strip()


CASES = list(itertools.product(VERDICTS, LOCAL, PEER))


def test_every_case_has_a_row() -> None:
    missing = [c for c in CASES if c not in TABLE]
    if missing:
        rows = "\n".join(f"    {c!r}: {render(*c)!r}," for c in missing)
        pytest.fail(f"decision table is missing {len(missing)} row(s); review and paste:\n{rows}")
    stale = [c for c in TABLE if c not in CASES]
    assert not stale, f"rows for cases that no longer exist: {stale}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: "/".join(c))
def test_row(case: tuple[str, str, str]) -> None:
    if case not in TABLE:
        pytest.skip("missing row: see test_every_case_has_a_row")
    assert render(*case) == TABLE[case], f"row {case!r}: plan() now gives {render(*case)!r}"
