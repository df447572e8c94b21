"""Decision-table tests of plan() over the phases (cephadm style).

Every combination of (role-source verdict, local DRBD phase, peer situation) must have a row in
TABLE. A missing row fails the test and prints the row to paste, with what plan() does now, so a
person reviews the behaviour before it becomes the expectation.
Expected values: the action kinds in order, then "!" and the refusals as ``what:BlockKind``
("-" for none).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from reconciler.core.observed import (
    ConnState,
    DiskState,
    HypervisorObs,
    Liveness,
    ObservedState,
    PbdObs,
    ResourceObs,
    Role,
    RoleVerdict,
    TargetObs,
    VipObs,
)
from reconciler.core.plan import WarningKind
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


# --- PBDs (issue 12): this host's SR attachment, per serving situation ----------------------
# Expected: the action kinds, "!" the refusals, "?" the warning kinds. A PBD is plugged (or
# re-plugged) only while the storage is served: here after the plan's target steps, or from
# the peer; an unreadable hypervisor changes nothing else in the plan.

SITUATIONS = (
    "serving-here",  # Primary, VIP here, target running, LUN exported
    "bringing-up",  # the role source says primary: the plan brings the target up
    "peer-serves",  # Secondary, the VIP answers from the peer, which DRBD says is Primary
    "stranger-on-vip",  # Secondary, the VIP answers elsewhere but the peer is Secondary
    "nobody-serves",  # both Secondary, nobody answers on the VIP
    "tearing-down",  # the role source says secondary: the plan stops the target
    "target-unknown",  # Primary with the VIP, the target's state unreadable
)
PBD_STATES = ("attached", "unplugged", "unusable", "usable-unknown", "pbd-unknown", "xapi-down")
PBD = "pbd-1"

PBD_TABLE: dict[tuple[str, str], str] = {
    ("serving-here", "attached"): "! - ? -",
    ("serving-here", "unplugged"): "plug-pbd ! - ? -",
    ("serving-here", "unusable"): "replug-pbd ! - ? -",
    ("serving-here", "usable-unknown"): "! - ? -",
    ("serving-here", "pbd-unknown"): "! - ? hypervisor-unreadable",
    ("serving-here", "xapi-down"): "! - ? hypervisor-unreadable",
    ("bringing-up", "attached"): "promote add-vip announce-vip start-target export-lun ! - ? -",
    (
        "bringing-up",
        "unplugged",
    ): "promote add-vip announce-vip start-target export-lun plug-pbd ! - ? -",
    (
        "bringing-up",
        "unusable",
    ): "promote add-vip announce-vip start-target export-lun replug-pbd ! - ? -",
    (
        "bringing-up",
        "usable-unknown",
    ): "promote add-vip announce-vip start-target export-lun ! - ? -",
    (
        "bringing-up",
        "pbd-unknown",
    ): "promote add-vip announce-vip start-target export-lun ! - ? hypervisor-unreadable",
    (
        "bringing-up",
        "xapi-down",
    ): "promote add-vip announce-vip start-target export-lun ! - ? hypervisor-unreadable",
    ("peer-serves", "attached"): "! - ? -",
    ("peer-serves", "unplugged"): "plug-pbd ! - ? -",
    ("peer-serves", "unusable"): "replug-pbd ! - ? -",
    ("peer-serves", "usable-unknown"): "! - ? -",
    ("peer-serves", "pbd-unknown"): "! - ? hypervisor-unreadable",
    ("peer-serves", "xapi-down"): "! - ? hypervisor-unreadable",
    ("stranger-on-vip", "attached"): "! - ? -",
    ("stranger-on-vip", "unplugged"): "! plug-pbd:storage-not-served ? -",
    ("stranger-on-vip", "unusable"): "! replug-pbd:storage-not-served ? -",
    ("stranger-on-vip", "usable-unknown"): "! - ? -",
    ("stranger-on-vip", "pbd-unknown"): "! - ? hypervisor-unreadable",
    ("stranger-on-vip", "xapi-down"): "! - ? hypervisor-unreadable",
    ("nobody-serves", "attached"): "! - ? -",
    ("nobody-serves", "unplugged"): "! plug-pbd:storage-not-served ? -",
    ("nobody-serves", "unusable"): "! replug-pbd:storage-not-served ? -",
    ("nobody-serves", "usable-unknown"): "! - ? -",
    ("nobody-serves", "pbd-unknown"): "! - ? hypervisor-unreadable",
    ("nobody-serves", "xapi-down"): "! - ? hypervisor-unreadable",
    ("tearing-down", "attached"): "stop-target remove-vip demote ! - ? -",
    (
        "tearing-down",
        "unplugged",
    ): "stop-target remove-vip demote ! plug-pbd:storage-not-served ? -",
    (
        "tearing-down",
        "unusable",
    ): "stop-target remove-vip demote ! replug-pbd:storage-not-served ? -",
    ("tearing-down", "usable-unknown"): "stop-target remove-vip demote ! - ? -",
    ("tearing-down", "pbd-unknown"): "stop-target remove-vip demote ! - ? hypervisor-unreadable",
    ("tearing-down", "xapi-down"): "stop-target remove-vip demote ! - ? hypervisor-unreadable",
    ("target-unknown", "attached"): "! start-target:target-unknown ? -",
    (
        "target-unknown",
        "unplugged",
    ): "! start-target:target-unknown plug-pbd:storage-not-served ? -",
    (
        "target-unknown",
        "unusable",
    ): "! start-target:target-unknown replug-pbd:storage-not-served ? -",
    ("target-unknown", "usable-unknown"): "! start-target:target-unknown ? -",
    ("target-unknown", "pbd-unknown"): "! start-target:target-unknown ? hypervisor-unreadable",
    ("target-unknown", "xapi-down"): "! start-target:target-unknown ? hypervisor-unreadable",
}


def pbd_observation(situation: str, pbd: str) -> ObservedState:
    verdict = {"bringing-up": "primary", "tearing-down": "secondary"}.get(situation, "unknown")
    if situation in ("serving-here", "target-unknown", "tearing-down"):
        base = observation(verdict, "primary", "peer-secondary")
    elif situation == "peer-serves":
        base = observation(verdict, "secondary", "peer-primary")
    else:
        base = observation(verdict, "secondary", "peer-secondary")
    vips = base.vips
    if situation in ("peer-serves", "stranger-on-vip"):
        vips = (VipObs(VIP, local=False, answered_elsewhere=True),)
    target = base.target
    if situation == "target-unknown":
        target = TargetObs(running=None, error="garbage from tgtadm")
    if pbd == "xapi-down":
        hyp = HypervisorObs(enabled=True, error="XAPI unreachable", source="table")
    else:
        attached, usable = {
            "attached": (True, True),
            "unplugged": (False, None),
            "unusable": (True, False),
            "usable-unknown": (True, None),
            "pbd-unknown": (None, None),
        }[pbd]
        obs = PbdObs(PBD, sr_uuid="sr-1", sr_name="sr", attached=attached, usable=usable)
        hyp = HypervisorObs(enabled=True, pbds=(obs,), source="table")
    return replace(base, vips=vips, target=target, hypervisor=hyp)


def pbd_render(situation: str, pbd: str) -> str:
    p = plan(SPEC, pbd_observation(situation, pbd))
    acts = " ".join(a.kind.value for a in p.actions)
    blocked = " ".join(f"{b.what}:{b.kind.value}" for b in p.blocked) or "-"
    warned = " ".join(w.kind.value for w in p.warnings) or "-"
    return f"{acts} ! {blocked} ? {warned}".strip()


PBD_CASES = list(itertools.product(SITUATIONS, PBD_STATES))


def test_every_pbd_case_has_a_row() -> None:
    missing = [c for c in PBD_CASES if c not in PBD_TABLE]
    if missing:
        rows = "\n".join(f"    {c!r}: {pbd_render(*c)!r}," for c in missing)
        pytest.fail(f"PBD table is missing {len(missing)} row(s); review and paste:\n{rows}")
    stale = [c for c in PBD_TABLE if c not in PBD_CASES]
    assert not stale, f"rows for cases that no longer exist: {stale}"


@pytest.mark.parametrize("case", PBD_CASES, ids=lambda c: "/".join(c))
def test_pbd_row(case: tuple[str, str]) -> None:
    if case not in PBD_TABLE:
        pytest.skip("missing row: see test_every_pbd_case_has_a_row")
    got = pbd_render(*case)
    assert got == PBD_TABLE[case], f"row {case!r}: plan() now gives {got!r}"


@pytest.mark.parametrize("situation", SITUATIONS)
def test_an_unreadable_hypervisor_changes_nothing_but_pbds(situation: str) -> None:
    """XAPI down: the DRBD, VIP and target decisions are those of a node without a
    hypervisor adapter, plus one warning."""
    down = plan(SPEC, pbd_observation(situation, "xapi-down"))
    without = plan(
        SPEC, replace(pbd_observation(situation, "xapi-down"), hypervisor=HypervisorObs())
    )
    assert down.actions == without.actions and down.blocked == without.blocked
    assert (
        [w for w in down.warnings if w not in without.warnings]
        == [w for w in down.warnings if w.kind is WarningKind.HYPERVISOR_UNREADABLE]
        != []
    )
