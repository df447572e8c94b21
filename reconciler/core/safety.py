"""Safety predicates: the one place that says what is allowed.

Used twice, on purpose: the planner's state machine takes them as transition *conditions*
(so a refused change becomes a ``Blocked`` entry, never an action), and the property tests
check the cluster-wide invariants below after every executed action.

Invariants stated here:
1. Never two primaries: a node promotes only when its DRBD peer is not Primary; while DRBD is
   disconnected the peer's role is unknowable, so promotion then needs the declared
   ``promotion.whenDisconnected`` policy (peer known Outdated, quorum, or the witness) or an
   operator override. With the witness (``may_promote``'s ``witness``): only while this node
   holds the cluster's etcd key, reached through a majority, and the settle time
   (``WitnessTiming.settle``: the old primary's longest observation gap plus its step-down)
   has passed since the resource was (continuously) disconnected, with the key held for
   ``WitnessTiming.hold``, or, where the DRBD adapter cannot know the continuity, since the
   key was claimed (``_witness`` says why), claimed again in the same plan right before the
   promotion.
2. Never promote data that may be older than the peer's: local disk must be UpToDate, and a
   split-brained resource is never promoted automatically.
3. The VIP and the target only on the primary: a VIP is added only where at least one resource is
   (or is about to be, in this plan) Primary and nobody else answers on it; a LUN is exported
   only from a Primary device.
4. No acknowledged write is lost: whichever node serves a resource holds every acknowledged
   write (so no promotion ever exposed older data), and every acknowledged write stays on some
   disk (nothing is overwritten or discarded behind the operator's back). Writes destroyed with
   a failed disk that was their only copy are hardware loss, reported separately.
5. No PBD plug while the target is not served: a node plugs (or re-plugs) its host's PBD of an
   SR only when the storage is served, by its own target (running, every LUN exported and every
   VIP here once the plan's earlier steps ran) or by the peer (every VIP answers from another
   host, and DRBD says the peer is Primary). A plug against a dead target fails
   (SR_BACKEND_FAILURE_141) at best and, retried in a loop, keeps XAPI busy in the middle of a
   failover. A PBD that *stays* attached through a
   planned swap is normal (XAPI keeps it; I/O stalls): the invariant is about the plug action.

Cluster-wide checks (``invariant_violations``, ``data_violations``) take ground-truth facts from
the simulator and return typed ``Violation`` values (a ``ViolationKind`` and the nodes, resource,
VIP or LUN involved; the message is for people); the property tests and ``reconcile simulate``
run them after every executed action. A promotion granted only by the operator's override is
marked (``Verdict.override``) so the executor forces it past DRBD's fencing and the simulator
knows a split brain may follow.

Every function here is pure and total: it returns a ``Verdict``, it never raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from reconciler.core.observed import (
    ConnState,
    DiskState,
    Liveness,
    ObservedState,
    ResourceObs,
    Role,
    TargetObs,
    VipObs,
    WitnessObs,
)
from reconciler.core.plan import BlockKind
from reconciler.core.spec import ClusterSpec, DisconnectedPolicy


@dataclass(frozen=True, slots=True)
class WitnessTiming:
    """The witness thresholds derived from the spec (docs/operations.md, "The witness").

    ``ttl``: the lease's time-to-live; ``settle``: how long the other node may still serve
    after the cut (its longest observation gap plus its step-down), which a node disconnected
    from it lets pass before it promotes: counted from its claim of the key (lease_left <=
    ttl - settle) or from the disconnect itself (``ResourceObs.disconnected_for``); ``hold``:
    the least the key must have been held before a promotion counted from the disconnect (the
    watchdog's window, ``spec.Witness.hold``); ``step_down``: a serving, disconnected node
    with less lease left stops serving; ``refresh``: the serving node refreshes its lease once
    lease_left is at or below this (not at every tick). The default ``hold`` equals
    ``settle``: without a spec the disconnect rule grants nothing the claim rule does not."""

    ttl: float = 10.0
    settle: float = 4.04
    step_down: float = 4.1
    refresh: float = 7.1
    hold: float = 4.04

    @classmethod
    def from_spec(cls, spec: ClusterSpec) -> WitnessTiming:
        w, tick = spec.witness, spec.timings.tick_interval
        return cls(
            ttl=w.ttl,
            settle=w.settle(tick),
            step_down=w.step_down_below(tick),
            refresh=w.refresh_below(tick),
            hold=w.hold(),
        )


NO_WITNESS = WitnessObs()
DEFAULT_WITNESS_TIMING = WitnessTiming()


@dataclass(frozen=True, slots=True)
class Verdict:
    """``refusal``: why a refused verdict refused (the planner's ``Blocked.kind``); None when
    ``ok``. ``reason`` is for people only."""

    ok: bool
    reason: str
    override: bool = False  # allowed only because the operator overrode a safety rule
    refusal: BlockKind | None = None
    # Allowed only while this node holds the witness key: the plan claims it (refreshes the
    # lease) first and the promotion runs only once that claim succeeded.
    claim: bool = False

    def __post_init__(self) -> None:
        if self.ok == (self.refusal is not None):  # a programming error, not a world state
            raise ValueError("a refused Verdict needs its refusal kind, an allowed one none")

    def __bool__(self) -> bool:
        return self.ok


def may_promote(
    res: ResourceObs,
    *,
    policy: DisconnectedPolicy,
    liveness: Liveness,
    override: bool = False,
    vip_answered_elsewhere: bool = False,
    vip_probe_pending: bool = False,
    witness: WitnessObs = NO_WITNESS,
    node: str = "",
    witness_timing: WitnessTiming = DEFAULT_WITNESS_TIMING,
) -> Verdict:
    """May this node promote ``res`` now? (invariants 1 and 2)

    ``vip_answered_elsewhere``: another host answers on one of the spec's VIPs. While DRBD is
    disconnected that is positive evidence that someone still serves (the old primary, cut
    off only from us), so no disconnected promotion happens then, whatever the policy says.
    ``vip_probe_pending``: a VIP's probe had not answered when the plan was made; while
    disconnected that answer is needed first (``probes_can_wait`` never lets it happen then).
    ``witness``/``node``/``witness_timing``: the witness as ``node`` (this node) sees it, for
    the policy 'witness' (read by nothing else).
    """
    name = res.name
    if not res.known:
        return _no(
            BlockKind.DRBD_UNKNOWN,
            f"DRBD state of {name} is unknown ({res.error}); not promoting blind",
        )
    if not res.up:
        return _no(BlockKind.NOT_UP, f"{name} is not up")
    if res.role is Role.PRIMARY:
        return Verdict(True, f"{name} is already Primary")
    if res.split_brain:
        return _no(
            BlockKind.SPLIT_BRAIN,
            f"split brain on {name}: both sides wrote while disconnected; nothing is promoted "
            "or discarded automatically (see `reconcile split-brain --help`)",
        )
    if res.peer_role is Role.PRIMARY:
        return _no(
            BlockKind.PEER_PRIMARY,
            f"the peer is still Primary for {name}; it must demote first "
            "(dual-primary is never allowed)",
        )
    if res.disk is not DiskState.UPTODATE:
        if res.conn in (ConnState.SYNC_TARGET, ConnState.PAUSED_SYNC_T):
            done = f" ({res.sync_percent:.1f}% done)" if res.sync_percent is not None else ""
            return _no(BlockKind.RESYNCING, f"{name} is still resyncing from the peer{done}")
        return _no(
            BlockKind.STALE_DATA,
            f"local data of {name} is {res.disk.value}, not UpToDate: the peer may have newer data",
        )
    if res.conn.is_connected:
        return Verdict(True, f"{name}: connected, local data UpToDate, peer not Primary")
    # Disconnected: the peer may be Primary and writing right now. DRBD itself would let us
    # promote (8.4 without fencing), so this is where we must be stricter than the tool.
    if vip_probe_pending:
        return _no(
            BlockKind.VIP_UNKNOWN,
            f"{name} is {res.conn.value}, and the VIP's ARP probe is not in yet: not promoting "
            "while disconnected without knowing whether another host still serves it",
        )
    if vip_answered_elsewhere:
        # The heuristics-quorum assumption ("only the healthy side sees the outside world")
        # is visibly broken: the peer is cut off from us, not from the clients. This comes
        # before the Outdated-peer shortcut: a disconnected peer disk state is what DRBD last
        # knew, and a peer forced up since (an override over there) still shows Outdated here.
        return _no(
            BlockKind.VIP_ANSWERS_ELSEWHERE,
            f"{name} is {res.conn.value}, and the VIP still answers from another host: the "
            "peer (or someone) is serving; not promoting while disconnected",
        )
    if res.peer_disk is DiskState.OUTDATED and policy is not DisconnectedPolicy.WITNESS:
        # Not under the witness: the witness is the authority there, and a peer "known
        # Outdated" may only be *believed* so (fencing resource-only assumes an unreachable
        # peer dead), then take over on the witness while this node stepped down.
        return Verdict(True, f"{name}: disconnected, but the peer's disk is known Outdated")
    if override:
        return Verdict(
            True,
            f"{name}: disconnected; promoted on the operator's explicit override "
            "(may cause split brain if the peer is Primary)",
            override=True,
        )
    where = f"{name} is {res.conn.value} (the peer's role and data are unknown)"
    if policy is DisconnectedPolicy.REFUSE:
        return _no(
            BlockKind.DISCONNECTED_POLICY,
            f"{where}; policy 'refuse' promotes only on an operator override",
        )
    if policy is DisconnectedPolicy.OUTDATED_PEER:
        return _no(
            BlockKind.DISCONNECTED_POLICY,
            f"{where}; policy 'outdated-peer' needs the peer known Outdated",
        )
    if policy is DisconnectedPolicy.WITNESS:
        return _witness(where, res, witness, node, witness_timing)
    return _quorum(where, liveness)


def _witness(
    where: str, res: ResourceObs, w: WitnessObs, node: str, timing: WitnessTiming
) -> Verdict:
    """The policy 'witness': promote while disconnected only holding the cluster's key, reached
    through an etcd majority, and only once the other node, if it still served, has stopped.

    It may serve after the cut in one way only: unleased while it still saw DRBD connected (a
    connected cluster serves on when etcd is down or its lease lapsed); a leased one stops
    before its lease can expire on etcd, so before this node can claim. The unleased one steps
    down once it sees the disconnect, within the settle time (its observation gap plus its
    step-down). How this node knows that time has passed depends on what its DRBD adapter
    knows:

    - ``res.disconnected_for`` known (an adapter that sees every change: an events2 stream,
      the simulated world): ``res`` has been *continuously* disconnected for the settle time,
      and the key held for ``timing.hold`` (or the settle time, if shorter). The other node
      sees the cut about when this one does, and stops within its gap once it does: counted
      from the disconnect, the settle time is as safe as counted from the claim. Continuity is
      the point: a heal in between would let it see DRBD connected again and serve on
      unleased, so a heal or a re-list restarts the count. It is required even once the key
      has been held for the settle time: a heal and a re-cut *after the claim*, between two
      ticks of this node, void the claim's argument below (the other node ticked while
      connected and served on), so where continuity is known the claim alone never suffices;
    - not known (the polling adapter: a heal between two polls is invisible): the key has been
      held for the settle time (it was free at the claim, so the other node served unleased if
      at all, and saw the cut by then at the latest, unless the link healed and was cut again
      between two of this node's polls, which no poll can see).

    The one assumption, which the claim rule makes too (with the claim's delay as margin):
    both DRBD sides detect the cut within about the same time (ping-int/ping-timeout on both).
    The hold covers the watchdog's window: a node paused right after planning its step-down is
    reset by its watchdog, and the hold keeps this node from promoting before that
    (``spec.Witness.hold``; 0 without a watchdog)."""
    if not w.enabled:
        return _no(
            BlockKind.WITNESS_UNREACHABLE,
            f"{where}; policy 'witness' but no witness is configured on this node",
        )
    if not w.reachable:
        why = f" ({w.error})" if w.error else ""
        return _no(
            BlockKind.WITNESS_UNREACHABLE,
            f"{where}; witness unreachable{why}: no promotion while disconnected",
        )
    if w.holder is not None and w.holder != node:
        return _no(
            BlockKind.WITNESS_HELD,
            f"{where}; the witness key is held by {w.holder} (its lease has not expired): no "
            "promotion while disconnected",
        )
    gone = res.disconnected_for
    if w.holder is None and gone is not None and gone >= timing.settle and timing.hold <= 0:
        # Nothing is left to wait for once the key is ours: the other node saw the cut over a
        # settle time ago (stopped, if it served unleased; a leased one stopped before its
        # lease could expire, which freed the key), and no watchdog window needs holding. The
        # claim (etcd's create-if-absent: one claimant wins) runs first in the same plan and
        # the promotion only after it succeeded: what the next tick would do, one tick sooner.
        return Verdict(
            True,
            f"{where}, but the witness key is free and is claimed in this plan right before the "
            f"promotion (reached through an etcd majority), and {res.name} has been "
            f"disconnected for {gone:.1f} s >= settle {timing.settle:.1f} s: the other node "
            "saw the same cut and has stopped serving",
            claim=True,
        )
    if w.holder is None:
        return _no(
            BlockKind.WITNESS_CLAIM,
            f"{where}; the witness key is free: claiming it first, then waiting until the "
            f"other node has had {timing.settle:.1f} s since the cut to notice and stop serving",
        )
    held = None if w.lease_left is None else timing.ttl - w.lease_left
    tail = "reached through an etcd majority); the lease is refreshed right before the promotion"
    if held is not None and gone is None and held >= timing.settle:
        return Verdict(
            True,
            f"{where}, but this node holds the witness key (claimed {held:.1f} s ago >= settle "
            f"{timing.settle:.1f} s, {tail}",
            claim=True,
        )
    if (
        held is not None
        and gone is not None
        and gone >= timing.settle
        and held >= min(timing.hold, timing.settle)
    ):
        return Verdict(
            True,
            f"{where}, but this node holds the witness key (claimed {held:.1f} s ago, "
            f"{tail}, and {res.name} has been disconnected for {gone:.1f} s >= settle "
            f"{timing.settle:.1f} s: the other node saw the same cut and has stopped serving",
            claim=True,
        )
    claimed = "" if held is None else f" {held:.1f} s ago"
    if gone is None:
        return _no(
            BlockKind.WITNESS_SETTLING,
            f"{where}; this node claimed the witness key{claimed} and {res.name} is not known "
            "to have been continuously disconnected: waiting until it has held the key "
            f"{timing.settle:.1f} s (the other node's longest tick gap plus its step-down)",
        )
    return _no(
        BlockKind.WITNESS_SETTLING,
        f"{where}; this node claimed the witness key{claimed} and {res.name} is disconnected "
        f"for {gone:.1f} s: waiting until it has been disconnected {timing.settle:.1f} s (the "
        "other node's longest tick gap plus its step-down) with the key held "
        f"{min(timing.hold, timing.settle):.1f} s",
    )


def _quorum(where: str, liveness: Liveness) -> Verdict:
    if liveness.peer_reachable is None:
        return _no(BlockKind.NO_QUORUM, f"{where}; peer liveness was not probed, so no quorum")
    if liveness.peer_reachable:
        return _no(
            BlockKind.NO_QUORUM,
            f"{where}; the peer is alive on another path and may still be Primary "
            "(replication link down?)",
        )
    if liveness.heuristics_total == 0:
        return _no(
            BlockKind.NO_QUORUM,
            f"{where}; no heuristic addresses are configured, so no quorum is possible",
        )
    if liveness.heuristics_ok * 2 <= liveness.heuristics_total:
        return _no(
            BlockKind.NO_QUORUM,
            f"{where}; only {liveness.heuristics_ok}/{liveness.heuristics_total} heuristic "
            "addresses answer: this node may be the isolated one",
        )
    return Verdict(
        True,
        f"{where}, but the peer is unreachable and {liveness.heuristics_ok}/"
        f"{liveness.heuristics_total} heuristic addresses answer (quorum)",
    )


def peer_can_take_over(observed: ObservedState, *, peer: str = "the peer") -> Verdict:
    """Could the peer promote every resource that is Primary here, once this node demoted?

    The rule "never demote into an outage": when the role source moves the primary role to the
    peer, this node steps down only when the answer is yes. DRBD itself would refuse the peer's
    promotion otherwise (no UpToDate data over there, or a disconnected peer that cannot know
    it has our last writes), so stepping down would gain no safety and stop all service.
    Judged from this node's view: the connection, the peer's disk as we see it
    (``peer_disk``), a resync towards the peer, and peer liveness. A resource this node cannot
    serve itself (disconnected, its own disk not UpToDate: reads fail) gives no reason to hold.
    """
    node_peer = peer
    for res in observed.resources:
        if not (res.known and res.up and res.role is Role.PRIMARY):
            continue
        name = res.name
        if not res.conn.is_connected and res.disk is not DiskState.UPTODATE:
            continue  # this node serves nothing of it (I/O errors): holding it gains nothing
        if not res.conn.is_connected:
            return _no(
                BlockKind.HOLDING,
                f"{node_peer} cannot take over: {name} is {res.conn.value} (replication to "
                "the peer is cut, so it does not have our last writes)",
            )
        if res.conn in (ConnState.SYNC_SOURCE, ConnState.PAUSED_SYNC_S):
            done = f", {res.sync_percent:.1f}% done" if res.sync_percent is not None else ""
            return _no(
                BlockKind.HOLDING,
                f"{node_peer} cannot take over: its disk of {name} is still a SyncTarget "
                f"(resyncing from this node{done})",
            )
        if res.peer_disk is not DiskState.UPTODATE:
            return _no(
                BlockKind.HOLDING,
                f"{node_peer} cannot take over: its disk of {name} is {res.peer_disk.value}",
            )
    if observed.liveness.peer_reachable is False:
        return _no(BlockKind.HOLDING, f"{node_peer} cannot take over: it is unreachable")
    return Verdict(True, "the peer holds UpToDate data of every resource and can take over")


def may_add_vip(vip: VipObs, *, serving_resources: Iterable[str]) -> Verdict:
    """May this node configure ``vip``? (invariant 3)"""
    if not any(True for _ in serving_resources):
        return _no(BlockKind.NOT_PRIMARY_HERE, f"VIP {vip.address}: no resource is Primary here")
    if vip.local is None:
        return _no(BlockKind.VIP_UNKNOWN, f"VIP {vip.address}: local state unknown ({vip.error})")
    if vip.probe_pending:
        return Verdict(
            True,
            f"VIP {vip.address}: its ARP probe is still running; add-vip waits for it and adds "
            "the address only if nobody else answers",
        )
    if vip.answered_elsewhere is None:
        return _no(
            BlockKind.VIP_UNKNOWN,
            f"VIP {vip.address}: could not check whether another host answers ({vip.error})",
        )
    if vip.answered_elsewhere:
        return _no(
            BlockKind.VIP_ANSWERS_ELSEWHERE,
            f"VIP {vip.address} is answered by another host; not taking it over "
            "(a stale holder or an address conflict)",
        )
    return Verdict(True, f"VIP {vip.address}: nobody else answers")


def probes_can_wait(resources: Sequence[ResourceObs], target: TargetObs) -> bool:
    """May this tick be planned before the ARP probes of the VIPs not here have answered?

    Only when every resource is known, up and connected, with a peer that is not Primary, and
    the target is known not to be defined here yet. Then nothing but adding a VIP reads a
    probe's answer (``may_add_vip``, and the add-vip action checks it again itself:
    ``Action.probe``): a connected promotion does not (``may_promote`` reads it only while
    disconnected), a PBD plug for storage served by the peer needs the peer Primary, and a
    stand-by node with a Primary peer waits for it as before. This lets the node taking over in
    a planned swap promote and define its target while its probe still listens (the wait
    overlaps those steps; the VIP is added after them). With the target already defined there is
    nothing to overlap: a VIP missing from a serving node (or refused by add-vip's own check in
    an earlier tick) waits for its probe and is planned, or refused, on its answer."""
    return (
        bool(resources)
        and target.running is False
        and all(
            r.known and r.up and r.conn.is_connected and r.peer_role is not Role.PRIMARY
            for r in resources
        )
    )


def may_export(resource: str, *, primary: Mapping[str, bool]) -> Verdict:
    """A LUN is exported only from a Primary device (invariant 3)."""
    if primary.get(resource, False):
        return Verdict(True, f"{resource} is Primary here")
    return _no(
        BlockKind.NOT_PRIMARY_HERE, f"{resource} is not Primary here; its LUN is not exported"
    )


def may_plug_pbd(*, served_here: bool, served_elsewhere: bool) -> Verdict:
    """May this node plug (or re-plug) a PBD of an SR served through the VIP? (invariant 5)

    ``served_here``: this node's target serves every LUN on every VIP once the plan's earlier
    steps ran; ``served_elsewhere``: every VIP answers from another host and that host is the
    peer, Primary for every exported resource (the peer serves)."""
    if served_here:
        return Verdict(True, "the target serves the LUNs on the VIP here")
    if served_elsewhere:
        return Verdict(True, "the VIP answers from another host (the peer serves)")
    return _no(
        BlockKind.STORAGE_NOT_SERVED,
        "the target does not serve the LUNs on the VIP (not here, and the VIP does not answer "
        "from the peer); a plug would fail with SR_BACKEND_FAILURE_141",
    )


def _no(refusal: BlockKind, reason: str) -> Verdict:
    return Verdict(False, reason, refusal=refusal)


# --- cluster-wide invariants (checked by the property tests and `reconcile simulate`) --------


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What is true on one node at one instant (from the simulator's ground truth)."""

    name: str
    roles: Mapping[str, Role]
    vips: frozenset[str]
    target_running: bool
    exported: Mapping[int, str]  # LUN -> resource
    frozen: frozenset[str] = frozenset()  # resources whose I/O fencing has suspended
    on_network: bool = True  # plugged into the client network (where a VIP means something)


class ViolationKind(StrEnum):
    """What broke: invariants 1 and 3 (structural), 4 (data) and 5 (a PBD plug action)."""

    TWO_PRIMARIES = "two-primaries"
    VIP_ON_TWO_NODES = "vip-on-two-nodes"
    VIP_NOT_ON_PRIMARY = "vip-not-on-primary"
    LUN_NOT_ON_PRIMARY = "lun-not-on-primary"
    SERVES_STALE_DATA = "serves-stale-data"  # a serving node lacks acknowledged writes
    WRITES_ON_NO_DISK = "writes-on-no-disk"  # acknowledged writes are on no disk any more
    PBD_PLUG_NOT_SERVED = "pbd-plug-not-served"  # a PBD plugged while the target served nowhere


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant. Decisions read ``kind`` and the fields; ``message`` (and
    ``str()``) is for people."""

    kind: ViolationKind
    message: str
    nodes: tuple[str, ...] = ()  # the node(s) involved, in the order the message names them
    resource: str | None = None
    vip: str | None = None
    lun: int | None = None

    def __str__(self) -> str:
        return self.message


def invariant_violations(nodes: Iterable[NodeFacts]) -> list[Violation]:
    """Violations of invariants 1 and 3 across the cluster (empty when safe): two Primaries for
    a resource; a VIP on two nodes of the client network; a VIP on a node that is not Primary;
    a LUN exported from a device that is not Primary."""
    facts = list(nodes)
    problems: list[Violation] = []
    resources = sorted({r for n in facts for r in n.roles})
    for res in resources:
        primaries = tuple(n.name for n in facts if n.roles.get(res) is Role.PRIMARY)
        if len(primaries) > 1:
            problems.append(
                Violation(
                    ViolationKind.TWO_PRIMARIES,
                    f"two primaries for {res}: {', '.join(primaries)}",
                    nodes=primaries,
                    resource=res,
                )
            )
    vips = sorted({v for n in facts for v in n.vips})
    for vip in vips:
        # A VIP is an address on the client network: configured on a node cut off from that
        # network it answers nobody (the conflict starts when the node rejoins).
        holders = tuple(n.name for n in facts if vip in n.vips and n.on_network)
        if len(holders) > 1:
            problems.append(
                Violation(
                    ViolationKind.VIP_ON_TWO_NODES,
                    f"VIP {vip} on two nodes: {', '.join(holders)}",
                    nodes=holders,
                    vip=vip,
                )
            )
    for n in facts:
        is_primary = any(role is Role.PRIMARY for role in n.roles.values())
        if n.vips and not is_primary:
            problems.append(
                Violation(
                    ViolationKind.VIP_NOT_ON_PRIMARY,
                    f"VIP on {n.name}, which is not Primary",
                    nodes=(n.name,),
                )
            )
        for lun, res in sorted(n.exported.items()):
            if n.roles.get(res) is not Role.PRIMARY:
                problems.append(
                    Violation(
                        ViolationKind.LUN_NOT_ON_PRIMARY,
                        f"{n.name} exports LUN {lun} from {res}, which is not Primary",
                        nodes=(n.name,),
                        resource=res,
                        lun=lun,
                    )
                )
    return problems


@dataclass(frozen=True, slots=True)
class DataFacts:
    """The data of one resource at one instant (from the simulator's ground truth).

    ``serves``: for each node that is Primary with I/O not frozen, the write generations a
    client reading through it sees (None: it is Primary but has no readable data: I/O errors).
    ``disks``: for each node, the generations on its disk when the disk holds readable data.
    """

    resource: str
    acked: tuple[int, ...]
    destroyed: frozenset[int]
    serves: Mapping[str, frozenset[int] | None]
    disks: Mapping[str, frozenset[int]]


def data_violations(facts: DataFacts) -> list[Violation]:
    """Violations of invariant 4 for one resource (empty when safe)."""
    live = set(facts.acked) - facts.destroyed
    if not live:
        return []
    problems: list[Violation] = []
    for node, data in sorted(facts.serves.items()):
        if data is None:
            continue
        missing = live - data
        if missing:
            problems.append(
                Violation(
                    ViolationKind.SERVES_STALE_DATA,
                    f"{node} serves {facts.resource} without {len(missing)} acknowledged "
                    f"write(s) (e.g. #{min(missing)}): stale data was promoted or acknowledged "
                    "writes are lost",
                    nodes=(node,),
                    resource=facts.resource,
                )
            )
    on_disk: set[int] = set()
    for data in facts.disks.values():
        on_disk |= data
    gone = live - on_disk
    if gone:
        problems.append(
            Violation(
                ViolationKind.WRITES_ON_NO_DISK,
                f"{len(gone)} acknowledged write(s) of {facts.resource} (e.g. #{min(gone)}) are "
                "on no disk any more: overwritten or discarded",
                resource=facts.resource,
            )
        )
    return problems
