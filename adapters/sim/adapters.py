"""Simulated implementations of every adapter Protocol, backed by one ``World``.

Each call is one transaction on the world store, so two agents (two processes with a
``FileWorldStore``, or one process with a shared in-memory ``WorldStore``) act on one cluster.
Injected faults (``World.faults``) make actions raise the errors the real tools would cause, and
make observations come back as UNKNOWN data, exactly like unparseable command output.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar

from adapters.base import PENDING_MAX_AGE, NodeAdapters
from adapters.inventory import InventoryData
from adapters.tgt.chap import ChapSecrets
from reconciler.core.errors import AdapterError, TerminalError
from reconciler.core.observed import (
    ConnState,
    DiskState,
    HypervisorObs,
    Leftovers,
    Liveness,
    OperatorState,
    PbdObs,
    ResourceObs,
    Role,
    RoleVerdict,
    TargetObs,
    VipObs,
    WitnessObs,
)
from reconciler.core.spec import Lun, Resource, StorageCluster, Target, Vip

from .world import World, WorldStore

HANG_POLL = 0.05  # how often a hung call checks whether it was released
_E = TypeVar("_E", bound=StrEnum)


@dataclass
class _SimBase:
    store: WorldStore
    node: str

    def _hang(self, op: str) -> None:
        """Block while a ``hang`` fault holds ``op`` on this node (see ``World.take_hang``):
        outside any world transaction, so the peer's agent and the test harness go on."""
        if not self.store.may_hang():  # the common case: no world load, no lock
            return
        with self.store.transaction() as world:
            seconds = world.take_hang(self.node, op)
        if seconds is None:
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(HANG_POLL, left))
            with self.store.transaction() as world:
                if not world.hang_held(self.node, op):
                    return  # released


def _inventory(world: World, node: str) -> InventoryData:
    return InventoryData.from_json(world.nodes[node].inventory)


def _record(world: World, node: str, how: str, *args: object) -> None:
    """Change the node's inventory (kept in the world, like the real agent's state file)."""
    data = _inventory(world, node)
    getattr(data, how)(*args)
    world.nodes[node].inventory = data.to_json()


class LinkProbe(Protocol):
    """What a node sees of its peer's real addresses (``adapters.pinger.Pinger``)."""

    def answers(self, addresses: Sequence[str]) -> tuple[bool | None, ...]: ...


@dataclass
class SimDrbd(_SimBase):
    """DRBD on a simulated node. With ``links`` (the namespace lab: real links, simulated
    DRBD) the simulated replication and management links follow what this node's pinger sees
    of the peer's real addresses (``World.follow_links``), before every observation and
    action: the connection drops, as real DRBD's does, once the peer's replication address
    stopped answering (``liveness.misses`` rounds without a reply: DRBD's ping-int /
    ping-timeout with the agent's liveness timings), and the peer's disk is then DUnknown,
    not its last written state.

    ``disconnected_for`` is the world's ground truth (``SimResource.disconnected_since``, on
    the world's clock, the instant the world dropped the connection: in the lab the instant
    this node's or the peer's pinger reported the peer's address silent), as an events2
    stream would see it; a heal clears it. ``clock``: the agents' clock for a world shared
    through a file (the lab, the CLI's embedded simulator): the world's clock follows it in
    every transaction here, so the instant is stamped on it; None: the simulation moves it."""

    links: LinkProbe | None = None
    peer_replication: str | None = None
    peer_management: str | None = None
    clock: Callable[[], float] | None = None

    def _sync(self, world: World) -> None:
        if self.clock is not None:
            world.now = max(world.now, self.clock())

    def _follow_links(self) -> None:
        if self.links is None:
            return
        wanted = [a for a in (self.peer_replication, self.peer_management) if a]
        seen = dict(zip(wanted, self.links.answers(wanted), strict=True))
        replication = seen.get(self.peer_replication) if self.peer_replication else None
        management = seen.get(self.peer_management) if self.peer_management else None
        if replication is None and management is None:
            return
        with self.store.transaction() as world:
            self._sync(world)
            if world.nodes[self.node].alive:
                world.follow_links(self.node, replication=replication, management=management)

    def observe(self, resources: Sequence[Resource]) -> tuple[ResourceObs, ...]:
        self._hang("drbd-observe")
        self._follow_links()
        with self.store.transaction() as world:
            self._sync(world)
            world.step()
            if not world.nodes[self.node].alive:
                return tuple(ResourceObs.unknown(r.name, "node is down") for r in resources)
            if world.check_fault(self.node, "drbd-observe") == "garbage":
                return tuple(
                    ResourceObs.unknown(r.name, "unparseable drbdsetup status output")
                    for r in resources
                )
            out = []
            for r in resources:
                if r.name not in world.nodes[self.node].resources:
                    out.append(ResourceObs.down(r.name))
                    continue
                if world.check_fault(self.node, "drbd-observe", r.name) == "garbage":
                    # A fault scoped to this resource: only its part of the output is garbage.
                    out.append(ResourceObs.unknown(r.name, "unparseable drbdsetup status output"))
                    continue
                view = world.drbd_view(self.node, r.name)
                if not view["up"]:
                    out.append(ResourceObs.down(r.name))
                    continue
                out.append(
                    ResourceObs(
                        name=r.name,
                        up=True,
                        role=_as(Role, view["role"]),
                        conn=_as(ConnState, view["conn"]),
                        disk=_as(DiskState, view["disk"]),
                        peer_role=_as(Role, view["peer_role"]),
                        peer_disk=_as(DiskState, view["peer_disk"]),
                        split_brain=bool(view["split_brain"]),
                        sync_percent=_float_or_none(view["sync_percent"]),
                        disconnected_for=_float_or_none(view["disconnected_for"]),
                    )
                )
            return tuple(out)

    def up(self, resource: Resource) -> None:
        self._hang("drbd-up")
        self._follow_links()
        with self.store.transaction() as world:
            self._sync(world)
            world.check_fault(self.node, "drbd-up", resource.name)
            world.drbd_up(self.node, resource.name)

    def primary(self, resource: Resource, *, force: bool = False) -> None:
        self._hang("drbd-primary")
        self._follow_links()
        with self.store.transaction() as world:
            self._sync(world)
            world.check_fault(self.node, "drbd-primary", resource.name)
            world.drbd_primary(self.node, resource.name, force=force)

    def secondary(self, resource: Resource) -> None:
        self._hang("drbd-secondary")
        self._follow_links()
        with self.store.transaction() as world:
            self._sync(world)
            world.check_fault(self.node, "drbd-secondary", resource.name)
            world.drbd_secondary(self.node, resource.name)

    def connect(self, resource: Resource, *, discard_my_data: bool = False) -> None:
        self._hang("drbd-connect")
        self._follow_links()
        with self.store.transaction() as world:
            self._sync(world)
            world.check_fault(self.node, "drbd-connect", resource.name)
            world.drbd_connect(self.node, resource.name, discard_my_data=discard_my_data)

    def disconnect(self, resource: Resource) -> None:
        self._hang("drbd-disconnect")
        self._follow_links()
        with self.store.transaction() as world:
            self._sync(world)
            world.check_fault(self.node, "drbd-disconnect", resource.name)
            world.drbd_disconnect(self.node, resource.name)


@dataclass
class SimVip(_SimBase):
    """The VIPs in the world. ``observe(wait_probes=False)`` keeps, as the real adapter's
    pending probe would, the answer at observation time (with the world's clock) for
    ``complete`` and ``add(probe=True)``; an answer older than ``PENDING_MAX_AGE`` is asked
    again at the add, as the real adapter probes again."""

    _pending: dict[str, tuple[float, bool]] = field(default_factory=dict, init=False, repr=False)

    def observe(self, vips: Sequence[Vip], *, wait_probes: bool = True) -> tuple[VipObs, ...]:
        self._pending = {}
        self._hang("vip-observe")
        with self.store.transaction() as world:
            if not world.nodes[self.node].alive:
                return tuple(VipObs(address=v.ip, error="node is down") for v in vips)
            if world.check_fault(self.node, "vip-observe") == "garbage":
                return tuple(
                    VipObs(address=v.ip, error="unparseable `ip -j addr` output") for v in vips
                )
            out = []
            for v in vips:
                nd = world.nodes[self.node]
                local = v.ip in nd.vips
                if local:
                    out.append(VipObs(address=v.ip, local=True, announced=v.ip in nd.announced))
                    continue
                answered = world.vip_answered_elsewhere(self.node, v.ip)
                if wait_probes:
                    out.append(VipObs(address=v.ip, local=False, answered_elsewhere=answered))
                else:
                    self._pending[v.ip] = (world.now, answered)
                    out.append(VipObs(address=v.ip, local=False, probe_pending=True))
            return tuple(out)

    def complete(self, seen: tuple[VipObs, ...]) -> tuple[VipObs, ...]:
        out = []
        for obs in seen:
            pending = self._pending.pop(obs.address, None) if obs.probe_pending else None
            if pending is None:
                out.append(obs)
                continue
            out.append(VipObs(address=obs.address, local=False, answered_elsewhere=pending[1]))
        return tuple(out)

    def add(self, vip: Vip, *, probe: bool = False) -> None:
        self._hang("vip-add")
        with self.store.transaction() as world:
            if probe:
                pending = self._pending.pop(vip.ip, None)
                if pending is None or world.now - pending[0] > PENDING_MAX_AGE:
                    answered = world.vip_answered_elsewhere(self.node, vip.ip)
                else:
                    answered = pending[1]
                if answered:
                    raise TerminalError(
                        f"VIP {vip.ip} is answered by another host; not added, not taking it "
                        "over (a stale holder or an address conflict)"
                    )
            _discard(world.nodes[self.node].announced, vip.ip)  # as IpVip: before the add
            world.check_fault(self.node, "vip-add")
            created = vip.ip not in world.nodes[self.node].vips
            world.vip_add(self.node, vip.ip)
            if created:  # as IpVip: an address found already there is not ours
                _record(world, self.node, "add_vip", str(vip.address), vip.interface)

    def remove(self, vip: Vip) -> None:
        self._hang("vip-remove")
        with self.store.transaction() as world:
            world.check_fault(self.node, "vip-remove")
            world.vip_remove(self.node, vip.ip)
            _discard(world.nodes[self.node].announced, vip.ip)
            _record(world, self.node, "drop_vip", str(vip.address))

    def remove_old(self, address: str, interface: str) -> None:
        self._hang("vip-remove")
        ip = address.split("/", 1)[0]
        with self.store.transaction() as world:
            world.check_fault(self.node, "vip-remove")
            world.vip_remove(self.node, ip)
            _discard(world.nodes[self.node].announced, ip)
            _record(world, self.node, "drop_vip", address)

    def leftovers(self, vips: Sequence[Vip]) -> Leftovers:
        with self.store.transaction() as world:
            return Leftovers(vips=_inventory(world, self.node).vip_leftovers(vips))

    def announce(self, vip: Vip) -> None:
        self._hang("vip-announce")
        with self.store.transaction() as world:
            world.check_fault(self.node, "vip-announce")
            world.vip_announce(self.node, vip.ip)
            announced = world.nodes[self.node].announced
            if vip.ip not in announced:
                announced.append(vip.ip)


def _discard(items: list[str], item: str) -> None:
    if item in items:
        items.remove(item)


@dataclass
class SimTarget(_SimBase):
    """tgt on a simulated node. With ``chap`` (the secrets the factory read from the spec's
    secrets file) it models tgt's accounts as tgtadm shows them: the world records the user
    names bound to the target (never a password), and a target whose accounts differ from the
    spec's is not running as specified, as ``TgtAdapter`` reports it. Without ``chap`` (the
    simulation engine, which reads no files) accounts are not modelled."""

    chap: ChapSecrets | None = None

    def _accounts(self, target: Target) -> list[str] | None:
        """The user names to bind, as tgtadm shows them; None: not modelled (no secrets)."""
        if target.chap is None:
            return []
        if self.chap is None:
            return None
        return sorted(f"{u} (outgoing)" if out else u for u, out in self.chap.accounts)

    def observe(self, target: Target) -> TargetObs:
        self._hang("target-observe")
        with self.store.transaction() as world:
            nd = world.nodes[self.node]
            if not nd.alive:
                return TargetObs(running=None, error="node is down")
            if world.check_fault(self.node, "target-observe") == "garbage":
                return TargetObs(running=None, error="unparseable `tgtadm --op show` output")
            wanted = self._accounts(target)
            daemon = nd.target_daemon or nd.target_running
            if nd.target_running and wanted is not None and nd.target_accounts != wanted:
                have = ", ".join(nd.target_accounts) or "none"
                return TargetObs(
                    running=False,
                    daemon=daemon,
                    error=f"target {target.tid} has CHAP accounts {have}, the spec wants "
                    f"{', '.join(wanted) or 'none'}",
                )
            return TargetObs(
                running=nd.target_running, exported_luns=frozenset(nd.exported), daemon=daemon
            )

    def start_daemon(self) -> None:
        self._hang("target-start")
        with self.store.transaction() as world:
            world.check_fault(self.node, "target-start")
            world.target_daemon_start(self.node)

    def start(self, target: Target) -> None:
        self._hang("target-start")
        with self.store.transaction() as world:
            world.check_fault(self.node, "target-start")
            created = not world.nodes[self.node].target_running
            world.target_start(self.node, accounts=self._accounts(target))
            if created:
                _record(world, self.node, "drop_all_targets")
                _record(world, self.node, "add_target", target.tid, target.iqn)

    def export_lun(self, target: Target, lun: Lun, resource: Resource) -> None:
        self._hang("target-export")
        with self.store.transaction() as world:
            world.check_fault(self.node, "target-export", resource.name)
            world.target_export(self.node, lun.lun, resource.name)
            _record(world, self.node, "add_lun", target.tid, lun.lun)

    def unexport_lun(self, target: Target, lun: Lun) -> None:
        self._hang("target-unexport")
        with self.store.transaction() as world:
            world.check_fault(self.node, "target-unexport")
            world.target_unexport(self.node, lun.lun)
            _record(world, self.node, "drop_lun", target.tid, lun.lun)

    def unexport_old_lun(self, tid: int, iqn: str, lun: int) -> None:
        self._hang("target-unexport")
        with self.store.transaction() as world:
            world.check_fault(self.node, "target-unexport")
            world.target_unexport(self.node, lun)
            _record(world, self.node, "drop_lun", tid, lun)

    def delete_old_target(self, tid: int, iqn: str) -> None:
        """The simulated world models one target per node: deleting the old one (a changed
        IQN or tid) takes its LUNs with it and leaves no target defined, so the daemon counts
        as stopped until ``start`` defines the declared one."""
        self._hang("target-stop")
        with self.store.transaction() as world:
            world.check_fault(self.node, "target-stop")
            if tid in _inventory(world, self.node).targets:
                world.target_stop(self.node)
            _record(world, self.node, "drop_target", tid)

    def leftovers(self, target: Target) -> Leftovers:
        with self.store.transaction() as world:
            targets, luns = _inventory(world, self.node).target_leftovers(target)
            return Leftovers(targets=targets, luns=luns)

    def stop(self, target: Target) -> None:
        """The target deleted with its sessions and LUNs; the resident tgtd stays."""
        self._hang("target-stop")
        with self.store.transaction() as world:
            world.check_fault(self.node, "target-stop")
            world.target_stop(self.node)
            _record(world, self.node, "drop_all_targets")


class SimPoolMaster(_SimBase):
    """The XenServer pool as this node sees it: one pool master (or none). After a pool split
    (HA-Lizard promoted the slave while the old master still runs) the two nodes' views differ:
    ``World.pool_views``."""

    def observe(self) -> RoleVerdict:
        self._hang("role-observe")
        with self.store.transaction() as world:
            if world.check_fault(self.node, "role-observe") == "garbage":
                return RoleVerdict(Role.UNKNOWN, "pool.conf is unreadable")
            master = world.pool_view(self.node)
            if master == self.node:
                return RoleVerdict(Role.PRIMARY, "this node is the pool master")
            if master is None:
                return RoleVerdict(Role.UNKNOWN, "the pool has no master")
            return RoleVerdict(Role.SECONDARY, f"pool slave of {master}")


class SimHypervisor(_SimBase):
    """The simulated pool's XAPI as this host sees it: its PBDs of the SRs served through the
    spec's VIPs and IQN, and ``PBD.plug``/``unplug`` with XAPI's rules (``World.pbd_plug``)."""

    SOURCE = "sim"

    def observe(self, target: Target, vips: Sequence[Vip]) -> HypervisorObs:
        self._hang("hypervisor-observe")
        try:
            with self.store.transaction() as world:
                nd = world.nodes[self.node]
                if not nd.alive:
                    return self._unknown("node is down")
                if not nd.xapi_reachable:
                    return self._unknown("XAPI unreachable (connection refused)")
                if world.check_fault(self.node, "hypervisor-observe") == "garbage":
                    return self._unknown("garbage answer from XAPI (unparseable XML-RPC)")
                ips = {v.ip for v in vips}
                pbds = tuple(
                    PbdObs(
                        uuid=pbd.uuid,
                        sr_uuid=sr.uuid,
                        sr_name=sr.name,
                        attached=pbd.attached,
                        usable=pbd.usable if pbd.attached else None,
                    )
                    for sr in world.srs
                    if sr.target in ips and sr.iqn == target.iqn
                    for host, pbd in sr.pbds.items()
                    if host == self.node
                )
                return HypervisorObs(enabled=True, pbds=pbds, source=self.SOURCE)
        except AdapterError as exc:  # an injected transient/terminal observe fault
            return self._unknown(str(exc))

    def _unknown(self, why: str) -> HypervisorObs:
        return HypervisorObs(enabled=True, error=why, source=self.SOURCE)

    def plug(self, pbd_uuid: str) -> None:
        self._hang("pbd-plug")
        with self.store.transaction() as world:
            world.check_fault(self.node, "pbd-plug")
            world.pbd_plug(self.node, pbd_uuid)

    def replug(self, pbd_uuid: str) -> None:
        self._hang("pbd-replug")
        with self.store.transaction() as world:
            world.check_fault(self.node, "pbd-replug")
            world.pbd_unplug(self.node, pbd_uuid)
        # Two XAPI calls, two transactions: a plug that fails leaves the PBD unplugged, as
        # on a real host (the next tick plans a plain plug).
        with self.store.transaction() as world:
            world.pbd_plug(self.node, pbd_uuid)


@dataclass
class SimLiveness(_SimBase):
    heuristics_total: int = 0

    def observe(self) -> Liveness:
        with self.store.transaction() as world:
            ok = self.heuristics_total if world.heuristics_ok(self.node) else 0
            return Liveness(
                peer_reachable=world.peer_reachable(self.node),
                heuristics_ok=ok,
                heuristics_total=self.heuristics_total,
            )


class SimOperatorStore(_SimBase):
    """The operator's manual mode and chosen role, kept in the world (survives a crash, like
    the real agent's state file), for in-memory simulations without a state directory."""

    def load(self) -> OperatorState:
        with self.store.transaction() as world:
            nd = world.nodes[self.node]
            return OperatorState(
                manual_mode=nd.manual_mode, chosen_role=nd.chosen_role, force=nd.force
            )

    def save(self, state: OperatorState) -> None:
        with self.store.transaction() as world:
            nd = world.nodes[self.node]
            nd.manual_mode = state.manual_mode
            nd.chosen_role = state.chosen_role
            nd.force = state.force


@dataclass
class SimWitness(_SimBase):
    """The simulated 3-member etcd (``World.witness``): the cluster's leader key with leases
    on the witness's clock, this node's clock and its memory of its last claim."""

    ttl: float = 10.0
    # The agent's clock for a world shared through a file by agent processes (the CLI's
    # embedded simulator): the witness's clock follows it. None: the simulation moves it.
    clock: Callable[[], float] | None = None

    def _sync(self, world: World) -> None:
        if self.clock is not None:
            world.now = max(world.now, self.clock())

    def observe(self) -> WitnessObs:
        with self.store.transaction() as world:
            self._sync(world)
            if world.check_fault(self.node, "witness-observe") == "garbage":
                world.nodes[self.node].last_observed = world.now
                left = world.lease_left(self.node, self.ttl)
                return WitnessObs(
                    enabled=True, reachable=False, lease_left=left, error="unreadable answer"
                )
            reachable, holder, left = world.witness_observe(self.node, self.ttl)
            error = None if reachable else "no etcd majority answers"
            return WitnessObs(
                enabled=True, reachable=reachable, holder=holder, lease_left=left, error=error
            )

    def claim(self) -> None:
        with self.store.transaction() as world:
            self._sync(world)
            world.witness_claim(self.node, self.ttl)

    def release(self) -> None:
        with self.store.transaction() as world:
            self._sync(world)
            world.witness_release(self.node)


def sim_witness(store: WorldStore, node: str, spec: StorageCluster) -> SimWitness | None:
    """The simulated witness when the spec names one (in a simulation every concern is
    simulated: 'etcd' too)."""
    if spec.spec.adapters.witness == "none":
        return None
    return SimWitness(store=store, node=node, ttl=spec.spec.witness.ttl)


def _as(cls: type[_E], value: object) -> _E:
    return value if isinstance(value, cls) else cls(str(value))


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def sim_liveness(store: WorldStore, node: str, spec: StorageCluster) -> SimLiveness:
    return SimLiveness(store=store, node=node, heuristics_total=len(spec.spec.promotion.heuristics))


def sim_node_adapters(store: WorldStore, node: str, spec: StorageCluster) -> NodeAdapters:
    """Every concern simulated, operator state included: no file is touched."""
    return NodeAdapters(
        node=node,
        drbd=SimDrbd(store, node),
        vip=SimVip(store, node),
        target=SimTarget(store, node),
        role_source=SimPoolMaster(store, node),
        liveness=sim_liveness(store, node, spec),
        operator=SimOperatorStore(store, node),
        hypervisor=sim_hypervisor(store, node, spec),
        witness=sim_witness(store, node, spec),
    )


def sim_hypervisor(store: WorldStore, node: str, spec: StorageCluster) -> SimHypervisor | None:
    """The simulated pool's XAPI when the spec names a hypervisor (in a simulation every concern
    is simulated: 'xapi' too)."""
    return SimHypervisor(store, node) if spec.spec.adapters.hypervisor != "none" else None
