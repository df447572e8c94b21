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

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from adapters.wake import Wakeup

if TYPE_CHECKING:
    from adapters.runner import Runner
from reconciler.core.observed import (
    HypervisorObs,
    Leftovers,
    Liveness,
    OperatorState,
    ResourceObs,
    RoleVerdict,
    TargetObs,
    VipObs,
    WitnessObs,
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


# How old a pending ARP probe's answer may be when ``VipAdapter.add(probe=True)`` uses it; an
# older one (an executor that retried and slept in between) is replaced by a new probe.
PENDING_MAX_AGE = 1.0


class VipAdapter(Protocol):
    def observe(self, vips: Sequence[Vip], *, wait_probes: bool = True) -> tuple[VipObs, ...]:
        """Local presence of each VIP; for the ones not local, whether another host answers.

        ``wait_probes=False``: return once the local addresses are read; a VIP whose ARP probe
        has not answered yet is ``probe_pending`` (its probe goes on: ``complete`` waits for
        it, ``add(vip, probe=True)`` checks it). Each call starts a new observation: what an
        earlier one left pending is dropped."""
        ...

    def complete(self, seen: tuple[VipObs, ...]) -> tuple[VipObs, ...]:
        """``seen`` (from ``observe(..., wait_probes=False)``) with every pending probe's
        answer filled in (waits for them: at most about one probe timeout)."""
        ...

    def add(self, vip: Vip, *, probe: bool = False) -> None:
        """Configure the VIP. ``probe``: the plan was made before this VIP's ARP probe answered
        (``Action.probe``): check first that nobody else answers (the pending probe's answer
        when it is recent, else a new probe) and raise ``TerminalError`` without adding it
        when someone does or the probe cannot be made."""
        ...

    def remove(self, vip: Vip) -> None: ...

    def announce(self, vip: Vip) -> None:
        """Gratuitous ARP for the VIP; must not block the tick."""
        ...

    def leftovers(self, vips: Sequence[Vip]) -> Leftovers:
        """Addresses this adapter added (its inventory) that ``vips`` no longer declares
        (``Leftovers.vips``); never one it did not add. Cheap, never raises."""
        ...

    def remove_old(self, address: str, interface: str) -> None:
        """Remove a leftover address (as added, ``A/P``) and drop it from the inventory."""
        ...


class TargetAdapter(Protocol):
    def observe(self, target: Target) -> TargetObs: ...

    def start(self, target: Target) -> None:
        """Daemon running (started if needed), target defined, initiator ACLs bound
        (idempotent)."""
        ...

    def start_daemon(self) -> None:
        """The resident target daemon running, with whatever targets it has (none on a node
        that does not serve); idempotent."""
        ...

    def export_lun(self, target: Target, lun: Lun, resource: Resource) -> None: ...

    def unexport_lun(self, target: Target, lun: Lun) -> None: ...

    def stop(self, target: Target) -> None:
        """Stop serving fast and surely: the target deleted with its sessions; the resident
        daemon stays (killed only when it cannot delete the target at once)."""
        ...

    def leftovers(self, target: Target) -> Leftovers:
        """Targets and LUNs this adapter created (its inventory) that ``target`` no longer
        declares (``Leftovers.targets``/``.luns``). Cheap, never raises."""
        ...

    def unexport_old_lun(self, tid: int, iqn: str, lun: int) -> None: ...

    def delete_old_target(self, tid: int, iqn: str) -> None: ...


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


class WitnessAdapter(Protocol):
    """The quorum witness (issue: etcd witness): one lease-backed key per cluster.

    ``observe`` is read-only and never raises: an unreachable witness is
    ``WitnessObs(reachable=False, error=...)``. ``claim`` creates the cluster's key with a
    fresh lease of this node (only while it is absent) or refreshes this node's own lease;
    it raises ``TransientError`` when the key is held by the other node or no majority
    answers. ``release`` revokes this node's lease (a planned step-down), idempotent."""

    def observe(self) -> WitnessObs: ...

    def claim(self) -> None: ...

    def release(self) -> None: ...


class OperatorStore(Protocol):
    """The only state an agent keeps: manual mode and the operator's chosen role."""

    def load(self) -> OperatorState: ...

    def save(self, state: OperatorState) -> None: ...


@dataclass(frozen=True, slots=True)
class Alert:
    """``refusal``: raised because a safety rule refused a change (the alert gate holds such
    alerts back for ``alerts.blockedGrace``); ``repair``: raised because the agent repaired a
    part that was serving (the gate counts them per key over ``alerts.repairWindow``); the
    key is for screening repeats only."""

    key: str
    severity: str
    message: str
    refusal: bool = False
    repair: bool = False


class Alerter(Protocol):
    def send(self, alert: Alert) -> None: ...


class WakeSource(Protocol):
    """Something whose change starts the next tick at once (pool.conf, the operator's choices,
    the simulated world). ``adapters.wake.FileWatch`` recomputes ``fingerprint`` on an inotify
    event in the directory of the source's ``path`` (a source with a ``path`` attribute), else
    polls it every ``timings.wakePoll``. ``fingerprint`` must be cheap (no process, a stat or
    a small read), must not raise for an unreadable source (return a value that says so), and
    must not change unless what the agent observes may have changed."""

    @property
    def name(self) -> str: ...

    def fingerprint(self) -> object: ...


@dataclass(slots=True)
class NodeAdapters:
    """Everything one agent needs to observe and act on its node.

    ``wakeup`` is what event-fed adapters notify when what they watch changed (see
    ``adapters.wake.Wakeup``); ``wake`` are the polled sources. ``close`` stops what the
    adapters started in the agent's own process (stream readers, netlink sockets, watcher
    threads), never a daemon on the node: the watch loop calls it when it rebuilds the
    adapters for a new spec and when it ends."""

    node: str
    drbd: DrbdAdapter
    vip: VipAdapter
    target: TargetAdapter
    role_source: RoleSourceAdapter
    liveness: LivenessAdapter
    operator: OperatorStore
    wake: tuple[WakeSource, ...] = ()
    hypervisor: HypervisorAdapter | None = None
    witness: WitnessAdapter | None = None
    wakeup: Wakeup = field(default_factory=Wakeup)
    # The one command seam the real adapters share (None: built without one): its
    # ``spawned`` counter feeds the tick report's ``spawns_total`` (figures, never decisions).
    runner: Runner | None = None

    def close(self) -> None:
        """Call ``close()`` on every adapter that has one (once each; errors are ignored:
        closing must not stop the agent from ending or rebuilding)."""
        seen: set[int] = set()
        for part in (
            self.drbd,
            self.vip,
            self.target,
            self.role_source,
            self.liveness,
            self.operator,
            self.hypervisor,
            self.witness,
            *self.wake,
        ):
            closer = getattr(part, "close", None)
            if part is None or id(part) in seen or not callable(closer):
                continue
            seen.add(id(part))
            with contextlib.suppress(Exception):
                closer()
