"""A decision table for ``reconciler.core.safety.may_promote`` (cephadm style).

Every input of ``may_promote`` is enumerated: the resource's own gates (observation known, up,
local role, split brain), local disk x connection x peer role x peer disk (every member of the
enums), the ``whenDisconnected`` policy, the operator override, "the VIP answers from another
host", and the peer/heuristics liveness. The expected verdict of each case comes from RULES
below, an ordered rule table written by hand from the safety rules (docs/architecture.md
"Safety rules", the invariants in safety.py's docstring, the policy descriptions in
docs/spec-reference.md): the first rule whose every column matches decides. It never calls
``may_promote``.

A case no rule matches (a new enum member, a new input) fails the test and prints the exact
rule to paste, with what ``may_promote`` answers now, so a person reviews it before it becomes
the expectation. A rule that matches no case is dead and fails too.

The full product of all twelve columns has ~13.6 million cases, too many for a fast test. It
is split into three slices, each a full cross product (~150,000 cases in all, about a second):

- DATA: every local disk x connection x peer role x peer disk x policy x override x VIP,
  for an up, known, Secondary, not split-brained resource, with a liveness that grants
  quorum (peer unreachable, 2/3 heuristics answer).
- QUORUM: every liveness class x policy x connection x peer disk x override x VIP, with the
  local disk UpToDate and the peer's role Unknown (what DRBD reports while disconnected).
- GATES: every known x up x local role x split brain x connection x peer role x policy x
  override x VIP, with the local disk UpToDate, the peer's disk Outdated (the one peer disk
  that grants a disconnected promotion) and quorum liveness.

Why the values a slice fixes lose nothing: each fixed value is the *permissive* one (the one
under which a wrong grant would show), and the columns a slice fixes are read by may_promote
only behind the checks the slice varies (read from its code: liveness only in ``_quorum``, i.e.
for a known, up, non-Primary, not split-brained resource with UpToDate data, a peer not
Primary and not Outdated, no VIP answer and no override; the gates before anything else).
If may_promote ever reads a column earlier, widen the slice.

Liveness is not an enum: its five classes are the boundaries of the quorum rule (not probed;
peer reachable; no heuristic addresses; exactly half answer, which is not a majority; a
majority answers).

The witness (policy 'witness') is not an enum either: its seven classes are the boundaries of
the witness rule (none configured; unreachable; the key held by the peer; the key free; held
by this node with a lease of unknown age; held by this node less than the settle time; held
at least the settle time). QUORUM varies it; DATA and GATES fix it at "settled", the
permissive class (the witness is read only where liveness is: in the last, per-policy step).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import pytest

from reconciler.core.observed import (
    ConnState,
    DiskState,
    Liveness,
    ResourceObs,
    Role,
    WitnessObs,
)
from reconciler.core.safety import Verdict, WitnessTiming, may_promote
from reconciler.core.spec import DisconnectedPolicy

P = DisconnectedPolicy
PROMOTE, OVERRIDE, REFUSE = "promote", "promote-by-override", "refuse"
CLAIM = "promote-after-claim"
CONSTANT = {PROMOTE: "PROMOTE", OVERRIDE: "OVERRIDE", REFUSE: "REFUSE", CLAIM: "CLAIM"}

LIVENESS: Mapping[str, Liveness] = {
    "not-probed": Liveness(peer_reachable=None, heuristics_ok=0, heuristics_total=0),
    "peer-alive": Liveness(peer_reachable=True, heuristics_ok=3, heuristics_total=3),
    "no-heuristics": Liveness(peer_reachable=False, heuristics_ok=0, heuristics_total=0),
    "half-answer": Liveness(peer_reachable=False, heuristics_ok=1, heuristics_total=2),
    "majority": Liveness(peer_reachable=False, heuristics_ok=2, heuristics_total=3),
}

ME, PEER = "node2", "node1"
TIMING = WitnessTiming(ttl=10.0, settle=7.0, step_down=1.1, refresh=7.1)
WITNESS: Mapping[str, WitnessObs] = {
    "none": WitnessObs(),
    "unreachable": WitnessObs(enabled=True, reachable=False, error="no etcd majority"),
    "held-by-peer": WitnessObs(enabled=True, reachable=True, holder=PEER),
    "free": WitnessObs(enabled=True, reachable=True),
    "mine-age-unknown": WitnessObs(enabled=True, reachable=True, holder=ME),
    "mine-fresh": WitnessObs(enabled=True, reachable=True, holder=ME, lease_left=3.01),
    "settled": WitnessObs(enabled=True, reachable=True, holder=ME, lease_left=3.0),
}

# Written out by hand from DRBD's connection states (drbdsetup(8)), not taken from
# ConnState.is_connected: the peers exchange data (replicating, resyncing, verifying,
# congested), so DRBD knows the peer's role and would itself refuse a second Primary.
TALKING = frozenset(
    {
        ConnState.CONNECTED,
        ConnState.STARTING_SYNC_S,
        ConnState.STARTING_SYNC_T,
        ConnState.WF_BITMAP_S,
        ConnState.WF_BITMAP_T,
        ConnState.WF_SYNC_UUID,
        ConnState.SYNC_SOURCE,
        ConnState.SYNC_TARGET,
        ConnState.PAUSED_SYNC_S,
        ConnState.PAUSED_SYNC_T,
        ConnState.VERIFY_S,
        ConnState.VERIFY_T,
        ConnState.AHEAD,
        ConnState.BEHIND,
    }
)
# No replication session: the peer's role and data are unknown to DRBD (and to us).
# WFReportParams has a TCP connection but no handshake yet; Unknown is an unreadable field.
CUT_OFF = frozenset(
    {
        ConnState.STANDALONE,
        ConnState.DISCONNECTING,
        ConnState.UNCONNECTED,
        ConnState.TIMEOUT,
        ConnState.BROKEN_PIPE,
        ConnState.NETWORK_FAILURE,
        ConnState.PROTOCOL_ERROR,
        ConnState.TEAR_DOWN,
        ConnState.CONNECTING,
        ConnState.WF_CONNECTION,
        ConnState.WF_REPORT_PARAMS,
        ConnState.UNKNOWN,
    }
)
NOT_UPTODATE = frozenset(set(DiskState) - {DiskState.UPTODATE})
NOT_PRIMARY = frozenset({Role.SECONDARY, Role.UNKNOWN})
NOT_OUTDATED = frozenset(set(DiskState) - {DiskState.OUTDATED})


class Case(NamedTuple):
    known: bool
    up: bool
    role: Role
    split_brain: bool
    disk: DiskState
    conn: ConnState
    peer_role: Role
    peer_disk: DiskState
    policy: DisconnectedPolicy
    override: bool
    vip_answered: bool
    liveness: str
    witness: str


COLUMNS = Case._fields


@dataclass(frozen=True)
class Rule:
    """``verdict`` when every named column's value is in its set (a column not named: any)."""

    verdict: str
    why: str
    when: tuple[tuple[int, frozenset[object]], ...]

    def matches(self, case: Case) -> bool:
        return all(case[i] in allowed for i, allowed in self.when)


def rule(verdict: str, why: str, **when: Iterable[object]) -> Rule:
    unknown = set(when) - set(COLUMNS)
    assert not unknown, f"not a column: {unknown}"
    return Rule(verdict, why, tuple((COLUMNS.index(k), frozenset(v)) for k, v in when.items()))


T, F = {True}, {False}

# First match wins. Read top to bottom: the gates, then the peer, then the data, then the link.
RULES: tuple[Rule, ...] = (
    rule(REFUSE, "an unreadable DRBD state is never promoted blind", known=F),
    rule(REFUSE, "a resource that is not up cannot be promoted", up=F),
    rule(PROMOTE, "already Primary: nothing to do, nothing to refuse", role={Role.PRIMARY}),
    rule(REFUSE, "split brain: never promoted automatically, not even by override", split_brain=T),
    rule(REFUSE, "never two Primaries: the peer must demote first", peer_role={Role.PRIMARY}),
    rule(REFUSE, "never promote data that may be older than the peer's", disk=NOT_UPTODATE),
    rule(PROMOTE, "talking to a non-Primary peer with UpToDate data", conn=TALKING),
    # From here on DRBD is cut off from the peer, and the peer's role is unknowable.
    rule(
        REFUSE,
        "another host answers on the VIP: someone still serves (may_promote's docstring: no "
        "disconnected promotion then, whatever the policy says); not even an override, and not "
        "on a peer disk known Outdated either: that is what DRBD last knew, and a peer forced "
        "up since (become-primary --force over there) still shows Outdated here",
        conn=CUT_OFF,
        vip_answered=T,
    ),
    rule(
        PROMOTE,
        "DRBD reports the peer's disk Outdated: an Outdated peer is not Primary and holds no "
        "newer data. Under every policy, 'refuse' included (the spec's description of 'refuse' "
        "says 'never'; reported with issue 9). Not under 'witness': the witness decides (fencing "
        "resource-only only *believes* an unreachable peer Outdated, and that peer may have "
        "taken over on the witness since)",
        conn=CUT_OFF,
        peer_disk={DiskState.OUTDATED},
        policy=set(P) - {P.WITNESS},
    ),
    rule(OVERRIDE, "the operator's explicit override", conn=CUT_OFF, vip_answered=F, override=T),
    rule(REFUSE, "policy 'refuse'", conn=CUT_OFF, override=F, policy={P.REFUSE}),
    rule(
        REFUSE,
        "policy 'outdated-peer' and the peer is not known Outdated",
        conn=CUT_OFF,
        peer_disk=NOT_OUTDATED,
        override=F,
        policy={P.OUTDATED_PEER},
    ),
    rule(
        PROMOTE,
        "policy 'quorum': the peer is unreachable and a majority of heuristics answer",
        conn=CUT_OFF,
        override=F,
        vip_answered=F,
        policy={P.QUORUM},
        liveness={"majority"},
    ),
    rule(
        REFUSE,
        "policy 'quorum' without quorum (not probed, peer alive, no heuristics, only half)",
        conn=CUT_OFF,
        override=F,
        policy={P.QUORUM},
        liveness={"not-probed", "peer-alive", "no-heuristics", "half-answer"},
    ),
    rule(
        CLAIM,
        "policy 'witness': this node holds the key (a majority says so) and has held it for "
        "the settle time; the plan refreshes the lease right before promoting",
        conn=CUT_OFF,
        override=F,
        vip_answered=F,
        policy={P.WITNESS},
        witness={"settled"},
    ),
    rule(
        REFUSE,
        "policy 'witness' without the settled key: no witness, unreachable, held by the peer, "
        "free (claimed first), held for less than the settle time or for an unknown time",
        conn=CUT_OFF,
        override=F,
        policy={P.WITNESS},
        witness={"none", "unreachable", "held-by-peer", "free", "mine-age-unknown", "mine-fresh"},
    ),
)

BOOLS = (False, True)
# A case is (resource part, call part): the first eight columns make the ResourceObs, the last
# five are may_promote's other arguments. Each slice is a product of the two.
N_RES = 8
ResKey = tuple[bool, bool, Role, bool, DiskState, ConnState, Role, DiskState]
CallKey = tuple[DisconnectedPolicy, bool, bool, str, str]


@dataclass(frozen=True)
class Slice:
    name: str
    resources: tuple[ResKey, ...]
    calls: tuple[CallKey, ...]


def _slices() -> tuple[Slice, ...]:
    up_secondary = (True, True, Role.SECONDARY, False)
    data = Slice(
        "DATA",
        tuple(
            (*up_secondary, *rest)
            for rest in itertools.product(DiskState, ConnState, Role, DiskState)
        ),
        tuple(itertools.product(P, BOOLS, BOOLS, ("majority",), ("settled",))),
    )
    quorum = Slice(
        "QUORUM",
        tuple(
            (*up_secondary, DiskState.UPTODATE, conn, Role.UNKNOWN, peer_disk)
            for conn, peer_disk in itertools.product(ConnState, DiskState)
        ),
        tuple(itertools.product(P, BOOLS, BOOLS, LIVENESS, WITNESS)),
    )
    gates = Slice(
        "GATES",
        tuple(
            (known, up, role, split, DiskState.UPTODATE, conn, peer_role, DiskState.OUTDATED)
            for known, up, role, split, conn, peer_role in itertools.product(
                BOOLS, BOOLS, Role, BOOLS, ConnState, Role
            )
        ),
        tuple(itertools.product(P, BOOLS, BOOLS, ("majority",), ("settled",))),
    )
    return (data, quorum, gates)


SLICES = _slices()


def _resource(key: ResKey) -> ResourceObs:
    known, up, role, split_brain, disk, conn, peer_role, peer_disk = key
    return ResourceObs(
        name="r0",
        up=up,
        role=role,
        conn=conn,
        disk=disk,
        peer_role=peer_role,
        peer_disk=peer_disk,
        split_brain=split_brain,
        sync_percent=42.0 if conn.is_syncing else None,
        known=known,
        error=None if known else "garbage from drbdsetup",
    )


def label(verdict: Verdict) -> str:
    if not verdict.ok:
        return REFUSE
    if verdict.claim:
        return CLAIM
    return OVERRIDE if verdict.override else PROMOTE


def _literal(value: object) -> str:
    if isinstance(value, Enum):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)


def paste_row(case: Case, now: str) -> str:
    """The rule to paste for a case no rule covers (one row, every column named)."""
    cols = ", ".join(f"{name}={{{_literal(v)}}}" for name, v in zip(COLUMNS, case, strict=True))
    return f'    rule({CONSTANT[now]}, "TODO: why", {cols}),'


def first_rule(case: Case) -> Rule | None:
    return next((r for r in RULES if r.matches(case)), None)


def _split(r: Rule) -> tuple[Rule, tuple[tuple[int, frozenset[object]], ...]]:
    """The rule and its conditions on the call part (columns renumbered from 0)."""
    return r, tuple((i - N_RES, allowed) for i, allowed in r.when if i >= N_RES)


def check_all() -> tuple[int, list[str], list[str], set[int]]:
    """Judge every case of every slice: (cases, rows to paste, disagreements, rules used).
    The rules' resource-part conditions are checked once per resource, not once per case."""
    count, missing, wrong, used = 0, [], [], set()
    for piece in SLICES:
        for res_key in piece.resources:
            res = _resource(res_key)
            candidates = [
                _split(r)
                for r in RULES
                if all(res_key[i] in allowed for i, allowed in r.when if i < N_RES)
            ]
            for call_key in piece.calls:
                count += 1
                policy, override, vip, liveness, witness = call_key
                got = may_promote(
                    res,
                    policy=policy,
                    liveness=LIVENESS[liveness],
                    override=override,
                    vip_answered_elsewhere=vip,
                    witness=WITNESS[witness],
                    node=ME,
                    witness_timing=TIMING,
                )
                assert got.reason, (res_key, call_key)
                found = next(
                    (r for r, conds in candidates if all(call_key[i] in a for i, a in conds)),
                    None,
                )
                if found is None:
                    missing.append(paste_row(Case(*res_key, *call_key), label(got)))
                    continue
                used.add(id(found))
                if label(got) != found.verdict:
                    wrong.append(
                        f"{piece.name} {Case(*res_key, *call_key)}\n"
                        f"      expected {found.verdict} ({found.why})\n"
                        f"      may_promote: {label(got)} ({got.reason})"
                    )
    return count, missing, wrong, used


def test_the_slices_cover_every_enum_member() -> None:
    """Each column takes every value it can: a new enum member shows up in the product."""
    seen: dict[str, set[object]] = {name: set() for name in COLUMNS}
    for piece in SLICES:
        for key in piece.resources:
            for name, value in zip(COLUMNS[:N_RES], key, strict=True):
                seen[name].add(value)
        for call in piece.calls:
            for name, value in zip(COLUMNS[N_RES:], call, strict=True):
                seen[name].add(value)
    expected: dict[str, set[object]] = {
        "disk": set(DiskState),
        "conn": set(ConnState),
        "role": set(Role),
        "peer_role": set(Role),
        "peer_disk": set(DiskState),
        "policy": set(P),
        "liveness": set(LIVENESS),
        "witness": set(WITNESS),
    }
    for name in COLUMNS:
        assert seen[name] == expected.get(name, {False, True}), name
    # DATA alone is the full product of the columns the planner's guard varies most.
    data = SLICES[0]
    assert len(data.resources) * len(data.calls) == 11 * 26 * 3 * 11 * 4 * 2 * 2


def test_may_promote_follows_the_rule_table() -> None:
    count, missing, wrong, used = check_all()
    assert count > 150_000
    if missing:
        shown = "\n".join(missing[:20])
        pytest.fail(
            f"no rule covers {len(missing)} case(s); review what may_promote does and paste "
            f"into RULES (first {min(20, len(missing))}):\n{shown}"
        )
    assert not wrong, f"{len(wrong)} case(s) disagree with RULES:\n" + "\n".join(wrong[:20])
    dead = [r.why for r in RULES if id(r) not in used]
    assert not dead, f"rules that decide no case (shadowed or impossible): {dead}"


def test_the_connection_sets_partition_conn_state() -> None:
    """TALKING and CUT_OFF are written by hand: together they name every ConnState once."""
    assert not TALKING & CUT_OFF
    assert set(ConnState) == TALKING | CUT_OFF


def test_a_missing_case_prints_a_row_to_paste() -> None:
    case = Case(
        True,
        True,
        Role.SECONDARY,
        False,
        DiskState.UPTODATE,
        ConnState.WF_CONNECTION,
        Role.UNKNOWN,
        DiskState.DUNKNOWN,
        P.QUORUM,
        False,
        False,
        "majority",
        "settled",
    )
    row = paste_row(case, OVERRIDE)
    assert row.startswith('    rule(OVERRIDE, "TODO: why", known={True}, up={True}, ')
    assert "conn={ConnState.WF_CONNECTION}" in row and "liveness={'majority'}" in row
    pasted = eval(row.strip().rstrip(","))  # the printed row is valid Python for RULES
    assert pasted.verdict == OVERRIDE and pasted.matches(case)
    assert first_rule(case) is not None and first_rule(case) is not pasted
