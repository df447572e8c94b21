"""Decision tables of the operator rules (reconciler.core.operator): every verdict branch of
manual-mode, become-primary/-secondary and split-brain, and the recovery plans.

Each table covers every combination of its inputs; a missing combination fails and prints the
row to paste with what the rule says now, so a person reviews it before it becomes the
expectation (cephadm style, like tests/test_decision_table.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest

from reconciler.core import operator as rules
from reconciler.core.observed import (
    ConnState,
    ObservedState,
    OperatorState,
    ResourceObs,
    Role,
    RoleVerdict,
    TargetObs,
    VipObs,
)
from reconciler.core.operator import Refusal
from reconciler.core.plan import ActionKind
from tests.simcluster import demo_spec

SPEC = demo_spec()
VIP = "198.51.100.3"
RES = "iscsi1"


def observed(
    *,
    role: Role = Role.SECONDARY,
    peer_role: Role = Role.SECONDARY,
    conn: ConnState = ConnState.CONNECTED,
    known: bool = True,
    native: Role = Role.SECONDARY,
    vip_local: bool | None = False,
    vip_elsewhere: bool | None = None,
    target_running: bool | None = False,
) -> ObservedState:
    res = (
        ResourceObs(name=RES, up=True, role=role, conn=conn, peer_role=peer_role)
        if known
        else ResourceObs.unknown(RES, "drbdsetup timed out")
    )
    return ObservedState(
        node="node2",
        resources=(res,),
        vips=(VipObs(address=VIP, local=vip_local, answered_elsewhere=vip_elsewhere),),
        target=TargetObs(running=target_running),
        role_source=RoleVerdict(native, f"role source says {native.value}"),
    )


def _check_table(
    table: dict[tuple[object, ...], str],
    combos: Sequence[tuple[object, ...]],
    verdict: Callable[..., str],
) -> None:
    missing = [c for c in combos if c not in table]
    assert not missing, "rows to review and paste:\n" + "\n".join(
        f"    {c!r}: {verdict(*c)!r}," for c in missing
    )
    assert set(table) == set(combos), "rows for combinations that do not exist"


def _short(v: rules.Verdict) -> str:
    return "accepted" if v.accepted else str(v.refusal)


# --- manual-mode disable: (native role, holding role) ------------------------------------------

DISABLE: dict[tuple[object, ...], str] = {
    (Role.PRIMARY, Role.PRIMARY): "accepted",
    (Role.PRIMARY, Role.SECONDARY): "not-in-native-role",
    (Role.SECONDARY, Role.PRIMARY): "not-in-native-role",
    (Role.SECONDARY, Role.SECONDARY): "accepted",
    (Role.UNKNOWN, Role.PRIMARY): "no-role-verdict",
    (Role.UNKNOWN, Role.SECONDARY): "no-role-verdict",
}


def _disable(native: Role, holding: Role) -> str:
    obs = observed(native=native, role=holding)
    return _short(rules.manual_mode_disable("node2", OperatorState(manual_mode=True), obs))


def test_disable_table_is_complete() -> None:
    combos = list(itertools.product(list(Role), [Role.PRIMARY, Role.SECONDARY]))
    _check_table(DISABLE, combos, _disable)


@pytest.mark.parametrize(("native", "holding"), list(DISABLE))
def test_manual_mode_disable(native: Role, holding: Role) -> None:
    assert _disable(native, holding) == DISABLE[(native, holding)]


def test_disable_messages_say_what_to_do() -> None:
    current = OperatorState(manual_mode=True, chosen_role=Role.PRIMARY)
    swap = rules.manual_mode_disable("node2", current, observed(role=Role.PRIMARY))
    assert not swap and swap.new_state is None
    assert swap.message == (
        "refused: node2 is Primary but its native role is Secondary (role source says "
        "Secondary); swap roles back first so leaving manual mode does not move storage"
    )
    blind = rules.manual_mode_disable("node2", current, observed(native=Role.UNKNOWN))
    assert "has no verdict (role source says Unknown)" in blind.message
    assert "could move storage unpredictably" in blind.message
    ok = rules.manual_mode_disable("node2", current, observed())
    assert ok.new_state == OperatorState()
    assert ok.message == "node2: manual mode disabled; following the role source again"


@pytest.mark.parametrize("chosen", [None, Role.PRIMARY, Role.SECONDARY])
def test_manual_mode_enable_keeps_the_chosen_role_but_not_force(chosen: Role | None) -> None:
    v = rules.manual_mode_enable("node1", OperatorState(chosen_role=chosen, force=True))
    assert v.accepted and v.refusal is None
    assert v.new_state == OperatorState(manual_mode=True, chosen_role=chosen, force=False)
    assert v.message == "node1: manual mode enabled; roles are held until you choose one"


# --- become-primary: (manual mode, peer role, VIP answered elsewhere, force) --------------------

BECOME_PRIMARY: dict[tuple[object, ...], str] = {}
for _force in (False, True):
    for _peer in (Role.PRIMARY, Role.SECONDARY, Role.UNKNOWN):
        for _elsewhere in (None, False, True):
            BECOME_PRIMARY[(False, _peer, _elsewhere, _force)] = "not-in-manual-mode"
            BECOME_PRIMARY[(True, _peer, _elsewhere, _force)] = (
                "peer-primary"
                if _peer is Role.PRIMARY
                else "vip-answers-elsewhere"
                if _elsewhere
                else "accepted"
            )


def _become_primary(manual: bool, peer: Role, elsewhere: bool | None, force: bool) -> str:
    obs = observed(peer_role=peer, vip_elsewhere=elsewhere)
    v = rules.become_primary("node2", OperatorState(manual_mode=manual), obs, force=force)
    if v.accepted:
        assert v.new_state == OperatorState(manual_mode=True, chosen_role=Role.PRIMARY, force=force)
    else:
        assert v.new_state is None
    return _short(v)


def test_become_primary_table_is_complete() -> None:
    combos = list(itertools.product((False, True), list(Role), (None, False, True), (False, True)))
    _check_table(BECOME_PRIMARY, combos, _become_primary)


@pytest.mark.parametrize(("manual", "peer", "elsewhere", "force"), list(BECOME_PRIMARY))
def test_become_primary(manual: bool, peer: Role, elsewhere: bool | None, force: bool) -> None:
    assert (
        _become_primary(manual, peer, elsewhere, force)
        == BECOME_PRIMARY[(manual, peer, elsewhere, force)]
    )


def test_become_primary_messages() -> None:
    manual = OperatorState(manual_mode=True)
    off = rules.become_primary("node2", OperatorState(), observed(), force=False)
    assert off.message == (
        "refused: node2 is not in manual mode (run `reconcile manual-mode enable`)"
    )
    peer = rules.become_primary("node2", manual, observed(peer_role=Role.PRIMARY), force=True)
    assert peer.message == (
        "refused: the peer is Primary for iscsi1; run `reconcile become-secondary` on the peer "
        "first"
    )
    vip = rules.become_primary("node2", manual, observed(vip_elsewhere=True), force=False)
    assert vip.message == (
        "refused: VIP 198.51.100.3 answers from another host; release it there first"
    )


@pytest.mark.parametrize("manual", [False, True])
def test_become_secondary(manual: bool) -> None:
    v = rules.become_secondary("node2", OperatorState(manual_mode=manual, force=True))
    assert v.accepted is manual
    if manual:
        assert v.new_state == OperatorState(manual_mode=True, chosen_role=Role.SECONDARY)
    else:
        assert v.refusal is Refusal.NOT_IN_MANUAL_MODE and v.new_state is None


def test_refusal_kinds_map_to_exit_codes() -> None:
    usage = {r for r in Refusal if r.is_usage}
    assert usage == {Refusal.UNKNOWN_SURVIVOR, Refusal.UNKNOWN_RESOURCE, Refusal.NOT_CONFIRMED}


# --- split-brain verdict ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "kw", "expected"),
    [
        ("unknown survivor", {"survivor": "node9"}, Refusal.UNKNOWN_SURVIVOR),
        ("unknown resource", {"resource": "nope"}, Refusal.UNKNOWN_RESOURCE),
        ("connected", {"obs": observed(conn=ConnState.CONNECTED)}, Refusal.NOT_IN_SPLIT_BRAIN),
        ("syncing", {"obs": observed(conn=ConnState.SYNC_TARGET)}, Refusal.NOT_IN_SPLIT_BRAIN),
        ("unreadable", {"obs": observed(known=False)}, Refusal.NOT_IN_SPLIT_BRAIN),
        ("no --yes", {"confirmed": False}, Refusal.NOT_CONFIRMED),
        ("agent runs", {"holder": "4242"}, Refusal.AGENT_RUNNING),
        ("no --yes and agent runs", {"confirmed": False, "holder": "1"}, Refusal.NOT_CONFIRMED),
        ("dry run needs no --yes", {"confirmed": False, "dry_run": True}, None),
        ("dry run ignores the lock", {"holder": "4242", "dry_run": True}, None),
        ("StandAlone victim", {}, None),
        ("WFConnection survivor", {"obs": observed(conn=ConnState.WF_CONNECTION)}, None),
        ("Connecting", {"obs": observed(conn=ConnState.CONNECTING)}, None),
    ],
)
def test_split_brain_verdict(case: str, kw: dict[str, object], expected: Refusal | None) -> None:
    obs = kw.get("obs", observed(conn=ConnState.STANDALONE))
    assert isinstance(obs, ObservedState)
    v = rules.split_brain_recovery(
        SPEC,
        "node2",
        obs,
        resource=str(kw.get("resource", RES)),
        survivor=str(kw.get("survivor", "node1")),
        confirmed=bool(kw.get("confirmed", True)),
        dry_run=bool(kw.get("dry_run", False)),
        agent_holder=str(kw["holder"]) if "holder" in kw else None,
    )
    assert v.refusal is expected, case
    assert v.accepted is (expected is None)


def test_split_brain_messages_and_state() -> None:
    sb = observed(conn=ConnState.STANDALONE)
    victim = rules.split_brain_recovery(
        SPEC, "node2", sb, resource=RES, survivor="node1", confirmed=True
    )
    assert victim.new_state == OperatorState(manual_mode=True, chosen_role=Role.SECONDARY)
    assert victim.message.startswith("node2 is the VICTIM: its writes to iscsi1")
    assert victim.message.endswith("Done on node2. Now run it on the survivor.")
    survivor = rules.split_brain_recovery(
        SPEC, "node2", sb, resource=RES, survivor="node2", confirmed=True
    )
    assert survivor.new_state is None  # the survivor keeps its operator state
    assert "survivor: its data of iscsi1 is kept" in survivor.message
    ask = rules.split_brain_recovery(
        SPEC, "node2", sb, resource=RES, survivor="node1", confirmed=False
    )
    assert "VICTIM" in ask.message and "Re-run with --yes" in ask.message
    connected = rules.split_brain_recovery(
        SPEC, "node2", observed(), resource=RES, survivor="node1", confirmed=True
    )
    assert connected.message == (
        "refused: iscsi1 on node2 is Connected, not in split brain; nothing to recover"
    )
    unreadable = rules.split_brain_recovery(
        SPEC, "node2", observed(known=False), resource=RES, survivor="node1", confirmed=True
    )
    assert "is unknown (drbdsetup timed out)" in unreadable.message
    locked = rules.split_brain_recovery(
        SPEC, "node2", sb, resource=RES, survivor="node1", confirmed=True, agent_holder="77"
    )
    assert "agent (pid 77) is acting for node2" in locked.message
    dry = rules.split_brain_recovery(
        SPEC, "node2", sb, resource=RES, survivor="node1", confirmed=False, dry_run=True
    )
    assert "Dry run: nothing was changed" in dry.message
    assert "put in manual mode as Secondary" in dry.message


# --- recovery plans ------------------------------------------------------------------------------

CONNECT_DISCARD = ActionKind.CONNECT_DISCARD.value


def _plan_kinds(node: str, obs: ObservedState, survivor: str = "node1") -> list[str]:
    p = rules.recovery_plan(SPEC, node, obs, resource=RES, survivor=survivor)
    assert all(a.reason for a in p.actions)
    return [a.kind.value for a in p.actions]


@pytest.mark.parametrize(
    ("case", "obs", "kinds"),
    [
        (
            "serving Primary, StandAlone",
            observed(
                role=Role.PRIMARY,
                conn=ConnState.STANDALONE,
                vip_local=True,
                target_running=True,
            ),
            ["stop-target", "remove-vip", "demote", CONNECT_DISCARD],
        ),
        (
            "serving Primary, still trying to connect",
            observed(
                role=Role.PRIMARY,
                conn=ConnState.WF_CONNECTION,
                vip_local=True,
                target_running=True,
            ),
            ["stop-target", "remove-vip", "demote", "disconnect", CONNECT_DISCARD],
        ),
        (
            "Secondary, not serving, StandAlone",
            observed(conn=ConnState.STANDALONE),
            [CONNECT_DISCARD],
        ),
        (
            "facets unknown: planned",
            observed(
                role=Role.UNKNOWN, conn=ConnState.UNKNOWN, vip_local=None, target_running=None
            ),
            ["stop-target", "remove-vip", "demote", "disconnect", CONNECT_DISCARD],
        ),
    ],
)
def test_victim_plan(case: str, obs: ObservedState, kinds: list[str]) -> None:
    assert _plan_kinds("node2", obs) == kinds, case


def test_victim_plan_shape() -> None:
    obs = observed(role=Role.PRIMARY, conn=ConnState.STANDALONE, vip_local=True)
    p = rules.recovery_plan(SPEC, "node2", obs, resource=RES, survivor="node1")
    assert p.node == "node2" and p.desired_role == "Secondary" and not p.blocked
    assert "VICTIM" in p.role_reason
    assert [a.describe() for a in p.actions] == [
        "remove-vip 198.51.100.3",
        "demote iscsi1",
        "connect-discard-my-data iscsi1",
    ]


@pytest.mark.parametrize("role", [Role.PRIMARY, Role.SECONDARY])
@pytest.mark.parametrize("conn", [ConnState.STANDALONE, ConnState.WF_CONNECTION])
def test_survivor_plan_only_connects(role: Role, conn: ConnState) -> None:
    obs = observed(role=role, conn=conn, vip_local=role is Role.PRIMARY, target_running=True)
    p = rules.recovery_plan(SPEC, "node2", obs, resource=RES, survivor="node2")
    assert [a.describe() for a in p.actions] == ["connect iscsi1"]
    assert p.desired_role == role.value and "survivor" in p.role_reason


def test_describe_state() -> None:
    assert rules.describe_state("node1", OperatorState()) == (
        "node1: manual mode off; chosen role: none"
    )
    on = OperatorState(manual_mode=True, chosen_role=Role.PRIMARY)
    assert rules.describe_state("node1", on) == "node1: manual mode on; chosen role: Primary"
