"""The plan: a typed value listing the actions one tick will run, each with a reason for people.

Invariants: a Plan is immutable; actions are in execution order; ``blocked`` entries are refusals
by a safety rule and are never executed; reasons never drive decisions.

Dependency chains. Each action says what it needs (``Action.after``: indices of earlier actions
of the same plan that must all have succeeded; ``after_any``: at least one of them must have).
``after=None`` (the default, for hand-built plans such as the guided recovery) means "after every
earlier action": the whole plan is one chain, stopped at its first failure. The planner sets
explicit chains so that one failing resource does not hold back the others (docs/architecture.md,
"Dependency chains"); the executor skips, and never runs, an action whose dependency failed.

Everything a decision reads is typed: the desired role is a ``Role``, a refusal carries a
``BlockKind`` and a warning a ``WarningKind`` (plus the resource it is about). ``what``,
``reason`` and ``message`` are text for people; code that reacts to a plan (alerts, the watch
loop's back-off, the status record) reads the kinds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler.core.observed import Role


class ActionKind(StrEnum):
    START_DRBD = "start-drbd"
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    # Reconnect as the split-brain victim: this node's writes since the split are discarded
    # and it resyncs from the peer. Only the guided recovery (core.operator) plans it.
    CONNECT_DISCARD = "connect-discard-my-data"
    PROMOTE = "promote"
    DEMOTE = "demote"
    ADD_VIP = "add-vip"
    ANNOUNCE_VIP = "announce-vip"
    REMOVE_VIP = "remove-vip"
    START_TARGET = "start-target"
    # The resident target daemon (tgtd), with no target defined, on a node whose daemon is
    # down and that plans no start-target (which starts it too): a later takeover then only
    # defines the target. Never serves anything by itself.
    START_DAEMON = "start-daemon"
    EXPORT_LUN = "export-lun"
    UNEXPORT_LUN = "unexport-lun"
    STOP_TARGET = "stop-target"
    # Tear-down of what this agent created and the spec no longer declares (its inventory):
    # in this order, on any node. Never planned for anything outside the inventory.
    UNEXPORT_OLD_LUN = "unexport-old-lun"
    DELETE_OLD_TARGET = "delete-old-target"
    REMOVE_OLD_VIP = "remove-old-vip"
    # This host's attachment (PBD) of an SR served through the VIP: plugged only once the
    # target serves (on this node, or the VIP answers from the peer).
    PLUG_PBD = "plug-pbd"
    REPLUG_PBD = "replug-pbd"
    # The quorum witness (promotion.whenDisconnected 'witness'): create the cluster's key with
    # a lease of this node, or refresh this node's lease; revoke it after a step-down.
    CLAIM_WITNESS = "claim-witness"
    RELEASE_WITNESS = "release-witness"


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    reason: str
    resource: str | None = None
    vip: str | None = None
    lun: int | None = None
    force: bool = False
    # What a leftover action removes (``ActionKind.*_OLD_*``): the IQN of the old target (its
    # tid is ``lun``'s tid or ``tid``), the interface of the old address (``vip``).
    tid: int | None = None
    iqn: str | None = None
    interface: str | None = None
    # Watchdog repair work: this restores a part that was already meant to be serving here
    # (tgtd restarted on a serving primary, a VIP re-added, DRBD restarted or reconnected),
    # as opposed to a bring-up. Decided by the planner from the observation; the alert gate
    # counts repairs over time (reconciler.alerts).
    repair: bool = False
    # Indices (into the plan's actions, all earlier) that must all have succeeded; None: every
    # earlier action (one chain). ``after_any``: at least one of these must have succeeded.
    after: tuple[int, ...] | None = None
    after_any: tuple[int, ...] = ()
    pbd: str | None = None  # the PBD uuid (plug-pbd / replug-pbd)
    # add-vip only: the observation's ARP probe of this VIP was still running (``VipObs.
    # probe_pending``), so the action itself checks that nobody else answers before it adds
    # the address, and fails (terminal, never retried blind) when someone does.
    probe: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "reason": self.reason}
        if self.resource is not None:
            out["resource"] = self.resource
        if self.vip is not None:
            out["vip"] = self.vip
        if self.lun is not None:
            out["lun"] = self.lun
        if self.force:
            out["force"] = True
        for key in ("tid", "iqn", "interface"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.repair:
            out["repair"] = True
        if self.probe:
            out["probe"] = True
        if self.after is not None:
            out["after"] = list(self.after)
        if self.after_any:
            out["afterAny"] = list(self.after_any)
        if self.pbd is not None:
            out["pbd"] = self.pbd
        return out

    def waits_for(
        self, index: int, *, failed: set[int] | frozenset[int], done: set[int] | frozenset[int]
    ) -> int | None:
        """For this action at position ``index`` of its plan: the earlier action whose failure
        (or skip) holds it back, or None when it may run. ``failed``: indices that failed or
        were skipped; ``done``: indices that succeeded."""
        needs = range(index) if self.after is None else self.after
        for i in needs:
            if i in failed:
                return i
        if self.after_any and not any(i in done for i in self.after_any):
            return self.after_any[0]
        return None

    def describe(self) -> str:
        if self.lun is not None:
            subject = f"LUN {self.lun}" + (f" ({self.resource})" if self.resource else "")
        elif self.iqn is not None:
            subject = f"{self.iqn} (tid {self.tid})"
        elif self.pbd is not None:
            subject = f"PBD {self.pbd}"
        else:
            subject = self.resource or self.vip or ""
        return f"{self.kind.value} {subject}".rstrip()


class BlockKind(StrEnum):
    """Why a safety rule refused a change (one member per distinct refusal of the planner)."""

    DRBD_UNKNOWN = "drbd-unknown"  # DRBD state unreadable: nothing is judged blind
    NOT_UP = "not-up"  # the resource is not running
    SPLIT_BRAIN = "split-brain"  # never promoted automatically
    PEER_PRIMARY = "peer-primary"  # the peer must demote first (a planned swap's wait)
    RESYNCING = "resyncing"  # local data is still being synced from the peer
    STALE_DATA = "stale-data"  # local disk not UpToDate: the peer may have newer data
    VIP_ANSWERS_ELSEWHERE = "vip-answers-elsewhere"  # another host answers on a VIP
    DISCONNECTED_POLICY = "disconnected-policy"  # promotion.whenDisconnected forbids it
    NO_QUORUM = "no-quorum"  # disconnected and the quorum policy's evidence is missing
    NOT_PRIMARY_HERE = "not-primary-here"  # a VIP or LUN needs a Primary resource here
    VIP_UNKNOWN = "vip-unknown"  # the VIP's state (or who else answers) is unreadable
    TARGET_UNKNOWN = "target-unknown"  # the target's state is unreadable
    # The role source moved the primary role away, but the peer cannot take over (disconnected,
    # its disk not UpToDate, a SyncTarget, unreachable): this node keeps serving.
    HOLDING = "holding"
    STORAGE_NOT_SERVED = "storage-not-served"  # a PBD plug needs the target serving the LUN
    # The policy 'witness' (promotion.whenDisconnected): the witness (etcd) gives no majority
    # answer; its key is held by the other node; the key is free (claimed first in this plan);
    # this node claimed it less than the settle time ago.
    WITNESS_UNREACHABLE = "witness-unreachable"
    WITNESS_HELD = "witness-held"
    WITNESS_CLAIM = "witness-claim"
    WITNESS_SETTLING = "witness-settling"


@dataclass(frozen=True, slots=True)
class Blocked:
    """A change the planner wanted but a safety rule refused. ``kind`` says why (for code);
    ``what`` names the refused change and ``reason`` explains it (for people)."""

    kind: BlockKind
    what: str
    reason: str
    resource: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "what": self.what, "reason": self.reason}
        if self.resource is not None:
            out["resource"] = self.resource
        return out


class WarningKind(StrEnum):
    DEGRADED = "degraded"  # replication of a resource is degraded
    SPLIT_BRAIN = "split-brain"  # a resource is split-brained; only the operator resolves it
    DRBD_UNREADABLE = "drbd-unreadable"  # DRBD unreadable: holding the VIP and the target
    HYPERVISOR_UNREADABLE = "hypervisor-unreadable"  # XAPI unreadable: no PBD is touched
    # The witness: unreachable or held elsewhere while DRBD is connected (serving on, but no
    # promotion would happen if the link were cut); the lease ran out on a disconnected
    # serving node, which stops serving before the other side may take over.
    WITNESS_UNREACHABLE = "witness-unreachable"
    WITNESS_STEP_DOWN = "witness-step-down"


@dataclass(frozen=True, slots=True)
class PlanWarning:
    """Something the operator should know that is not a refusal. ``resource`` is the DRBD
    resource it is about (None: the node as a whole); ``message`` is for people."""

    kind: WarningKind
    message: str
    resource: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "resource": self.resource, "message": self.message}

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Plan:
    """``serving``: whether this node should serve (VIP + target) once the plan has run; the
    status record keeps it as the expectation it compares the observation with."""

    node: str
    desired_role: Role
    role_reason: str
    actions: tuple[Action, ...] = ()
    blocked: tuple[Blocked, ...] = ()
    warnings: tuple[PlanWarning, ...] = field(default=())
    serving: bool = False

    @property
    def converged(self) -> bool:
        return not self.actions and not self.blocked
