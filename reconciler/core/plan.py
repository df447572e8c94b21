"""The plan: a typed value listing the actions one tick will run, each with a reason for people.

Invariants: a Plan is immutable; actions are in execution order; ``blocked`` entries are refusals
by a safety rule and are never executed; reasons never drive decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


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
    EXPORT_LUN = "export-lun"
    UNEXPORT_LUN = "unexport-lun"
    STOP_TARGET = "stop-target"


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    reason: str
    resource: str | None = None
    vip: str | None = None
    lun: int | None = None
    force: bool = False

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
        return out

    def describe(self) -> str:
        if self.lun is not None:
            subject = f"LUN {self.lun}" + (f" ({self.resource})" if self.resource else "")
        else:
            subject = self.resource or self.vip or ""
        return f"{self.kind.value} {subject}".rstrip()


@dataclass(frozen=True, slots=True)
class Blocked:
    """A change the planner wanted but a safety rule refused."""

    what: str
    reason: str
    resource: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"what": self.what, "reason": self.reason}
        if self.resource is not None:
            out["resource"] = self.resource
        return out


@dataclass(frozen=True, slots=True)
class Plan:
    node: str
    desired_role: str
    role_reason: str
    actions: tuple[Action, ...] = ()
    blocked: tuple[Blocked, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def converged(self) -> bool:
        return not self.actions and not self.blocked
