"""Adapter interfaces: one per concern. Real and simulated implementations satisfy the same
Protocol and pass the same contract tests (tests/contract/).

Rules for every implementation:
- ``observe*`` never raises because the world is unreadable: it returns UNKNOWN data with an
  ``error`` text (see reconciler.core.observed).
- Actions raise ``TransientError`` or ``TerminalError`` (reconciler.core.errors) and nothing
  else; they do not retry (the executor does).
- Actions are idempotent where the real tool allows it (adding a VIP that is present succeeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from reconciler.core.observed import (
    HypervisorObs,
    Liveness,
    OperatorState,
    ResourceObs,
    RoleVerdict,
    TargetObs,
    VipObs,
)
from reconciler.core.spec import Lun, Resource, Target, Vip


class DrbdAdapter(Protocol):
    def observe(self, resources: Sequence[Resource]) -> tuple[ResourceObs, ...]:
        """All resources in one call per tick."""
        ...

    def up(self, resource: Resource) -> None:
        """Bring the resource up (attach + connect), or adjust it to its configuration."""
        ...

    def primary(self, resource: Resource, *, force: bool = False) -> None: ...

    def secondary(self, resource: Resource) -> None: ...

    def connect(self, resource: Resource, *, discard_my_data: bool = False) -> None: ...

    def disconnect(self, resource: Resource) -> None: ...


class VipAdapter(Protocol):
    def observe(self, vips: Sequence[Vip]) -> tuple[VipObs, ...]:
        """Local presence of each VIP; for the ones not local, whether another host answers."""
        ...

    def add(self, vip: Vip) -> None: ...

    def remove(self, vip: Vip) -> None: ...

    def announce(self, vip: Vip) -> None:
        """Gratuitous ARP for the VIP; must not block the tick."""
        ...


class TargetAdapter(Protocol):
    def observe(self, target: Target) -> TargetObs: ...

    def start(self, target: Target) -> None:
        """Daemon running, target defined, initiator ACLs bound (idempotent)."""
        ...

    def export_lun(self, target: Target, lun: Lun, resource: Resource) -> None: ...

    def unexport_lun(self, target: Target, lun: Lun) -> None: ...

    def stop(self, target: Target) -> None:
        """Stop fast and surely: sessions dropped, daemon gone."""
        ...


class RoleSourceAdapter(Protocol):
    def observe(self) -> RoleVerdict: ...


class HypervisorAdapter(Protocol):
    def observe(self, target: Target, vips: Sequence[Vip]) -> HypervisorObs:
        """This host's PBDs of the SRs served through one of ``vips`` and ``target.iqn``
        (SR device-config ``target`` / ``targetIQN``). Never raises."""
        ...

    def plug(self, pbd_uuid: str) -> None: ...

    def replug(self, pbd_uuid: str) -> None:
        """Unplug, then plug (an attached PBD whose SR is unusable on the host)."""
        ...


class LivenessAdapter(Protocol):
    def observe(self) -> Liveness: ...


class OperatorStore(Protocol):
    """The only state an agent keeps: manual mode and the operator's chosen role."""

    def load(self) -> OperatorState: ...

    def save(self, state: OperatorState) -> None: ...


@dataclass(frozen=True, slots=True)
class Alert:
    """``refusal``: raised because a safety rule refused a change (the alert gate holds such
    alerts back for ``alerts.blockedGrace``); the key is for screening repeats only."""

    key: str
    severity: str
    message: str
    refusal: bool = False


class Alerter(Protocol):
    def send(self, alert: Alert) -> None: ...


class WakeSource(Protocol):
    """Something the watch loop polls between ticks to start the next tick at once when it
    changes (pool.conf, the operator's choices, DRBD state). ``fingerprint`` must be cheap (no
    process, a stat or a small read), must not raise for an unreadable source (return a value
    that says so), and must not change unless what the agent observes may have changed."""

    @property
    def name(self) -> str: ...

    def fingerprint(self) -> object: ...


@dataclass(slots=True)
class NodeAdapters:
    """Everything one agent needs to observe and act on its node."""

    node: str
    drbd: DrbdAdapter
    vip: VipAdapter
    target: TargetAdapter
    role_source: RoleSourceAdapter
    liveness: LivenessAdapter
    operator: OperatorStore
    wake: tuple[WakeSource, ...] = ()
    hypervisor: HypervisorAdapter | None = None
