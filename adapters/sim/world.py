"""A simulated two-node cluster that keeps the real systems' rules.

It is the ground truth behind every simulated adapter, the embedded default of the CLI (the
world persists as a JSON file in the state directory so successive ``reconcile --once --node X``
runs act on one cluster), and the model of the property-based failover tests and of
``reconcile simulate``.

Networks. Each node has a direct replication link to its peer (``replication_link``), a
management path to its peer (``management_link``: used to ping it and to outdate it), and a port
on the switch where everything else lives: the iSCSI clients, the heuristic addresses
(``promotion.heuristics``) and the nodes' BMCs (for STONITH). ``SimNode.isolated`` cuts one
node's switch port, which also cuts its management path. So "the peer is unreachable while the
heuristics answer" happens either to the node that stayed on the switch while its peer is
isolated (the case the quorum policy is built for) or when only the management path between the
nodes is cut (both still see the heuristics: the quorum policy's assumption is broken, and only
fencing keeps the data safe). docs/simulation.md walks through both. In the namespace lab
(real addresses, simulated DRBD) the links follow what each node's pinger sees of its peer's
real addresses (``follow_links``): a crashed peer's silent replication address drops the
connection, as real DRBD's ping timeout does.

DRBD rules kept (8.4 semantics, protocol C, single-primary):
- promote is refused while the connected peer is Primary ("Multiple primaries not allowed"), and
  refused when the local disk is not UpToDate unless forced;
- demote is refused while the target holds the device open (a LUN is exported from it);
- connection needs both nodes alive, the replication link up, both resources up and neither side
  StandAlone; on (re)connect the data decides: an Inconsistent side resyncs from a side with
  data; equal generation histories -> both UpToDate; one history a prefix of the other -> the
  older side becomes SyncTarget (Inconsistent) for ``resync_steps`` steps, then UpToDate; if the
  older side is Primary DRBD refuses ("I shall become SyncTarget, but I am primary!") and both
  go StandAlone without a split brain; diverged histories -> split brain: both StandAlone, never
  resolved automatically;
- a node promoted while disconnected starts a new data generation (DRBD's new current UUID), so
  two sides promoted apart always count as diverged;
- a node that crashes comes back with its disk ``Consistent`` (DRBD cannot know it is still up
  to date) unless it had itself outdated its peer (DRBD's "peer outdated" metadata flag), so a
  rebooted node never promotes on its own without the peer;
- disks: ``detach`` leaves a resource Diskless with the data intact on the disk; ``fail``
  destroys the disk (Failed): acknowledged writes that no other disk holds are recorded in
  ``destroyed`` (lost to hardware, not by the agents); ``replace`` attaches a blank disk
  (Inconsistent) that resyncs from the peer.

Fencing (``fencing``, DRBD's ``fencing`` option plus its fence-peer handler), run when a Primary
loses its peer and when a disconnected node promotes. Every branch follows DRBD 8.4's kernel code
(``drbd_nl.c``: ``highest_fencing_policy``, ``conn_try_outdate_peer``, ``drbd_set_role``;
``drbd_receiver.c``: ``conn_disconnect``), cited at each branch in ``_fence_peer``:
- a node whose own disk is not at least Consistent (Diskless, Failed, Inconsistent, Outdated)
  never runs the handler: "Not fencing peer, I'm not even Consistent myself." It neither
  outdates nor powers off its peer, and its I/O is not frozen by fencing;
- ``none`` (``dont-care``): nothing is fenced; a lone Primary keeps writing.
- ``resource-only``: the handler outdates the peer over the management network when it can;
  when it cannot reach the peer it reports "peer unreachable, assumed dead" and DRBD carries on
  (the peer is then *believed* Outdated). This is the common setup and it is unsafe under a
  full partition followed by a crash: the simulator shows the sequence (docs/simulation.md).
- ``resource-and-stonith``: I/O is frozen (``SimResource.frozen``: writes are not acknowledged)
  until the handler succeeds: outdate the peer over the management network (refused if the peer
  is Primary), or else power the peer off through its BMC, which needs this node on the switch.
  A handler that cannot succeed leaves I/O frozen until the connection returns or the handler
  succeeds later (re-run on every change). A promotion while disconnected needs the handler to
  succeed, or ``--force`` ("Forced into split brain situation!", recorded as an event).

Data is modelled as a history of write generations per node and resource. A client on the
switch writes through the VIP to the node its ARP cache points at (the last gratuitous ARP that
reached the switch); the node must really serve (VIP, target, LUN, Primary, I/O not frozen).
With protocol C a write is acknowledged once every connected replica with a disk has it.
``acked`` remembers acknowledged writes so the invariants can check that none is ever lost.

Hypervisor storage (``srs``, when the spec says ``adapters.hypervisor: sim``): one SR per LUN of
the target, served through the first VIP, with one PBD per host (``SimPbd``: attached, usable).
The rules XAPI keeps:
- ``PBD.plug`` fails with SR_BACKEND_FAILURE_141 ("Unable to connect to ISCSI service on
  target", a ``TransientError``) unless some node this host reaches holds the VIP with its
  target running and the SR's LUN exported; plug and unplug are no-ops when already so;
- a PBD stays attached when the target goes away (a planned swap, a crash of the primary):
  XAPI keeps it and I/O stalls, nothing unplugs it;
- a host boots with its PBDs plugged only if the storage is served at that moment (XAPI plugs
  at boot and gives up otherwise); a fresh world is a pool whose hosts booted before anything
  served, so every PBD starts unplugged;
- an SR can be broken on a host (``break_sr``: attached while the volume group is missing, the
  SR_BACKEND_FAILURE_40/46 story after a failover): only an unplug and a plug (a re-plug)
  make it usable again;
- XAPI can be unreachable on a host (``SimNode.xapi_reachable``): observations come back with
  an error, plugs fail transient.

The quorum witness (``witness``, for ``promotion.whenDisconnected: witness``): an etcd of three
members (``SimWitness.members``) that answers while a majority is up, one leader key per
cluster holding the node name of its lease holder, and leases that expire on the witness's
clock (``World.now``, simulated seconds moved only by the simulation's time steps). Each node
has its own monotonic clock running at ``SimNode.clock_rate`` against the witness's, and the
agent's memory of when it *sent* its last successful claim (``lease_sent``), from which it
reports ``lease_left`` (never later than the witness's expiry when its clock is right; a slow
clock over-estimates by up to ``clockDrift``, which the core's margins absorb). A node cut from
its switch port (``isolate``) is cut from etcd too; ``etcd_cut`` cuts only that path. The agent
pets its watchdog at each observation (``last_pet``); a paused agent (``agent_paused``: a long
GC pause, SIGSTOP) pets nothing, and the simulation resets the node when its watchdog expires.

Invariants: every mutation goes through a method here and ends with ``settle()``, which
re-derives connections and retries fencing; the world never raises on observation, only on
refused actions (``TransientError``/``TerminalError`` as the real tools would fail).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from adapters.wake import DerivedFileWake
from reconciler.core.errors import TerminalError, TransientError
from reconciler.core.observed import ConnState, DiskState, Role
from reconciler.core.safety import DataFacts, NodeFacts
from reconciler.core.spec import StorageCluster

FaultKind = Literal["transient", "terminal", "timeout", "garbage", "hang"]
Fencing = Literal["none", "resource-only", "resource-and-stonith"]

NO_DATA = (DiskState.DISKLESS, DiskState.FAILED)
# Disk states whose generation history is real, readable data (Inconsistent is half-synced).
HOLDS_DATA = (DiskState.UPTODATE, DiskState.CONSISTENT, DiskState.OUTDATED)
MAX_EVENTS = 200


class SimResource(BaseModel):
    up: bool = False
    role: Role = Role.SECONDARY
    disk: DiskState = DiskState.UPTODATE
    history: list[int] = Field(default_factory=list)
    standalone: bool = False
    split_brain: bool = False
    discard_my_data: bool = False
    sync_left: int = 0
    connected: bool = False
    frozen: bool = False  # I/O suspended by fencing: writes are not acknowledged
    peer_outdated: bool = False  # this side fenced/outdated its peer (DRBD metadata flag)
    conflict: str | None = None  # why the last connection attempt was dropped
    detached_from: DiskState | None = None  # the disk state when it was detached (data kept)
    exposed: list[int] = Field(default_factory=list)  # while Primary: the data it serves
    disk_broken: bool = False  # this resource's backing disk failed and was not replaced
    # World time since which this side has been continuously not connected (None while
    # connected): set by ``settle`` when it finds the connection gone, cleared when it is back.
    disconnected_since: float | None = None


class SimPbd(BaseModel):
    """One host's attachment of an SR. ``usable``: the SR's volume group exists on the host."""

    uuid: str
    attached: bool = False
    usable: bool = True


class SimSr(BaseModel):
    """An lvmoiscsi SR on one LUN of the target (device-config ``target``/``targetIQN``)."""

    uuid: str
    name: str
    target: str  # the VIP address in the SR's device-config
    iqn: str
    lun: int
    pbds: dict[str, SimPbd] = Field(default_factory=dict)  # host -> its PBD


class SimNode(BaseModel):
    alive: bool = True
    resources: dict[str, SimResource] = Field(default_factory=dict)
    vips: list[str] = Field(default_factory=list)
    # The agent's record of the VIPs it announced since it last added them (a file in the real
    # state directory, see adapters.vip.AnnounceRecord): kept by SimVip, not by the world's
    # own operations, so an address added by hand is not "announced".
    announced: list[str] = Field(default_factory=list)
    # The agent's inventory of what it created (adapters.inventory.InventoryData's JSON; a
    # file in the real state directory): kept by SimVip/SimTarget, survives a crash.
    inventory: dict[str, Any] = Field(default_factory=dict)
    # The resident tgtd runs (``target_daemon``) and the spec's target is defined in it
    # (``target_running``: what serves); a target needs the daemon, the daemon no target.
    target_daemon: bool = False
    target_running: bool = False
    target_accounts: list[str] = Field(default_factory=list)  # CHAP user names bound (tgtadm)
    exported: dict[int, str] = Field(default_factory=dict)
    heuristics_reachable: bool = True
    isolated: bool = False  # this node's port on the management/client switch is cut
    # Some resource's backing disk failed and was not replaced (each resource says which:
    # ``SimResource.disk_broken``); kept on the node too so the node's agent wakes on it.
    disk_broken: bool = False
    manual_mode: bool = False  # the operator's state (kept in the world by SimOperatorStore)
    chosen_role: Role | None = None
    force: bool = False
    xapi_reachable: bool = True  # XAPI answers on this host (local socket / URL)
    # The witness as this node lives it (see the module docstring).
    etcd_cut: bool = False  # this node cannot reach any etcd member
    agent_paused: bool = False  # the agent process is stopped (GC pause, SIGSTOP)
    clock_rate: float = 1.0  # this node's monotonic clock against the witness's
    lease_sent: float | None = None  # witness time the last successful claim was sent
    last_observed: float = 0.0  # witness time of the agent's last observation (its pet)


class SimWitness(BaseModel):
    """A 3-member etcd with one leader key (``holder`` until ``expires``, witness clock)."""

    members: list[bool] = Field(default_factory=lambda: [True, True, True])
    holder: str | None = None
    expires: float = 0.0


class Fault(BaseModel):
    """An injected failure: the next ``count`` calls of ``op`` on ``node`` fail (-1: forever).

    ``resource``: only the calls about that DRBD resource fail (``drbd-*`` operations, a LUN
    export of it, its part of a DRBD observation); None: every call of ``op``, as before.

    ``hang``: each such call blocks (a command that never returns) until the fault is removed
    from the world (released) or for ``seconds``, then goes on normally; what it then does
    depends on the world as it is then (level-based, like a real command that came back late).
    """

    node: str
    op: str
    kind: FaultKind = "transient"
    count: int = 1
    seconds: float = 30.0  # hang only
    resource: str | None = None


class World(BaseModel):
    nodes: dict[str, SimNode]
    replication_link: bool = True
    management_link: bool = True
    pool_master: str | None = None
    # A node's own idea of the pool master when the pool is split (HA-Lizard promoted the slave
    # while the old master still believes it is master). Absent: the agreed ``pool_master``.
    pool_views: dict[str, str | None] = Field(default_factory=dict)
    strangers: list[str] = Field(default_factory=list)
    arp_owner: dict[str, str] = Field(default_factory=dict)
    fencing: Fencing = "resource-only"
    resync_steps: int = 2
    next_gen: int = 1
    acked: dict[str, list[int]] = Field(default_factory=dict)
    destroyed: dict[str, list[int]] = Field(default_factory=dict)
    faults: list[Fault] = Field(default_factory=list)
    step_count: int = 0
    events: list[str] = Field(default_factory=list)
    # The events above that report a split brain (a typed mark for the simulator's report).
    split_brain_events: list[str] = Field(default_factory=list)
    srs: list[SimSr] = Field(default_factory=list)  # hypervisor storage (adapters.hypervisor)
    witness_on: bool = False  # the spec names a witness (adapters.witness)
    now: float = 0.0  # the witness's clock (simulated seconds)
    witness: SimWitness = Field(default_factory=SimWitness)

    @field_validator("fencing", mode="before")
    @classmethod
    def _legacy_fencing(cls, value: object) -> object:
        # World files written before fencing modes existed hold a boolean.
        if isinstance(value, bool):
            return "resource-only" if value else "none"
        return value

    # --- construction -----------------------------------------------------------------

    @classmethod
    def fresh(
        cls,
        spec: StorageCluster,
        *,
        pool_master: str | None = None,
        drbd_up: bool = True,
        fencing: Fencing = "resource-only",
    ) -> World:
        """Two freshly installed nodes: DRBD metadata created and the initial sync skipped
        (blank disks). With ``drbd_up`` (the demo's default) DRBD is already running and
        connected on both, both Secondary, nothing served; without it, nothing is started (a
        cold cluster after a first install). The pool master defaults to the first node."""
        names = spec.node_names
        nodes = {
            n: SimNode(resources={r.name: SimResource(up=drbd_up) for r in spec.spec.resources})
            for n in names
        }
        world = cls(
            nodes=nodes,
            pool_master=pool_master if pool_master is not None else names[0],
            acked={r.name: [] for r in spec.spec.resources},
            fencing=fencing,
            srs=_srs(spec) if spec.spec.adapters.hypervisor != "none" else [],
            witness_on=spec.spec.adapters.witness != "none",
        )
        world.settle()
        return world

    def peer(self, node: str) -> str:
        for name in self.nodes:
            if name != node:
                return name
        raise KeyError(node)

    def res(self, node: str, resource: str) -> SimResource:
        try:
            return self.nodes[node].resources[resource]
        except KeyError:
            raise TerminalError(f"{resource}: no such resource configured on {node}") from None

    def event(self, text: str, *, split_brain: bool = False) -> None:
        """Something a person must hear about (split brain, STONITH, forced promotion)."""
        line = f"[{self.step_count}] {text}"
        self.events.append(line)
        if len(self.events) > MAX_EVENTS:
            del self.events[: len(self.events) - MAX_EVENTS]
        if split_brain:
            self.split_brain_events.append(line)
            if len(self.split_brain_events) > MAX_EVENTS:
                del self.split_brain_events[: len(self.split_brain_events) - MAX_EVENTS]

    # --- faults -------------------------------------------------------------------------

    def check_fault(self, node: str, op: str, resource: str | None = None) -> FaultKind | None:
        """Consume a matching injected fault; raise for action faults, return observe faults.
        A fault scoped to a resource matches only a call about that resource; an unscoped one
        matches every call of ``op``."""
        if not self.faults:
            return None
        for fault in self.faults:
            if fault.kind == "hang":
                continue  # taken before the call (take_hang), never raised
            if fault.resource is not None and fault.resource != resource:
                continue
            if fault.node == node and fault.op == op and fault.count != 0:
                if fault.count > 0:
                    fault.count -= 1
                if fault.kind == "garbage":
                    return "garbage"
                what = f"{op} {resource}" if resource else op
                if fault.kind == "terminal":
                    raise TerminalError(f"{what} on {node} failed (injected terminal fault)")
                text = "timed out" if fault.kind == "timeout" else "failed"
                raise TransientError(f"{what} on {node} {text} (injected transient fault)")
        self.faults = [f for f in self.faults if f.count != 0]
        return None

    def take_hang(self, node: str, op: str) -> float | None:
        """Consume one call of a ``hang`` fault on ``op``: the seconds to block, or None."""
        for fault in self.faults:
            if fault.kind == "hang" and fault.node == node and fault.op == op and fault.count:
                if fault.count > 0:
                    fault.count -= 1
                return fault.seconds
        return None

    def hang_held(self, node: str, op: str) -> bool:
        """A ``hang`` fault on ``op`` is still in the world (not released)."""
        return any(f.kind == "hang" and f.node == node and f.op == op for f in self.faults)

    def _require_alive(self, node: str, op: str) -> None:
        if not self.nodes[node].alive:
            raise TransientError(f"{op}: node {node} is down (no answer)")

    # --- networks -----------------------------------------------------------------------

    def link_up(self) -> bool:
        a, b = self.nodes.values()
        return a.alive and b.alive and self.replication_link

    def on_switch(self, node: str) -> bool:
        """The node is up and plugged into the switch (clients, heuristics, BMCs)."""
        nd = self.nodes[node]
        return nd.alive and not nd.isolated

    def management_path(self, a: str, b: str) -> bool:
        return self.management_link and self.on_switch(a) and self.on_switch(b)

    def peer_reachable(self, node: str) -> bool:
        """What a ping of the peer's addresses (management and replication) would say."""
        peer = self.peer(node)
        if not self.nodes[peer].alive:
            return False
        return self.link_up() or self.management_path(node, peer)

    def heuristics_ok(self, node: str) -> bool:
        return self.on_switch(node) and self.nodes[node].heuristics_reachable

    def pool_view(self, node: str) -> str | None:
        """Who ``node`` believes the pool master is."""
        return self.pool_views.get(node, self.pool_master)

    # --- derived connection state -------------------------------------------------------

    def settle(self) -> None:
        """Re-derive every resource's connection after a change (connect/disconnect events),
        then retry the fence-peer handler of every Primary whose I/O is frozen. A STONITH
        powers a node off, which changes connections again: repeat until nothing moves."""
        for _ in range(4):
            alive = [nd.alive for nd in self.nodes.values()]
            self._settle_once()
            if alive == [nd.alive for nd in self.nodes.values()]:
                return

    def _settle_once(self) -> None:
        names = list(self.nodes)
        resources = list(self.nodes[names[0]].resources)
        for r in resources:
            a, b = (self.nodes[n].resources[r] for n in names)
            can = self.link_up() and a.up and b.up and not a.standalone and not b.standalone
            if can and not (a.connected and b.connected):
                self._on_connect(names, r)
            elif not can and (a.connected or b.connected):
                self._on_disconnect(names, r)
            for n in names:
                me = self.nodes[n].resources[r]
                # Ground truth of the connection's continuity (what an events2 stream sees):
                # every change goes through here, so a heal, however short, clears it.
                if me.connected:
                    me.disconnected_since = None
                elif me.disconnected_since is None:
                    me.disconnected_since = self.now
                if not me.frozen:
                    continue
                if me.connected or me.role is not Role.PRIMARY or not me.up:
                    me.frozen = False
                elif not _may_fence(me):
                    # The disk dropped below Consistent while frozen: conn_try_outdate_peer()
                    # takes its FP_NOT_AVAIL branch, which clears susp_fen (drbd_nl.c).
                    me.frozen = False
                elif self.nodes[n].alive and self._fence_peer(n, r):
                    me.frozen = False
                    self.event(f"{n}/{r}: fence-peer succeeded; I/O resumes")

    def _on_connect(self, names: list[str], r: str) -> None:
        a, b = (self.nodes[n].resources[r] for n in names)
        for x in (a, b):
            x.conflict = None
        if a.disk in NO_DATA or b.disk in NO_DATA:
            # A diskless side connects but neither syncs nor votes on data; a diskless Primary
            # only to the very data it exposes ("Can only connect to data with current UUID").
            for x, y in ((a, b), (b, a)):
                if x.role is Role.PRIMARY and x.disk in NO_DATA and y.history != x.exposed:
                    for z in (a, b):
                        z.standalone = True
                        z.connected = False
                        z.conflict = "Can only connect to data with current UUID"
                    self.event(f"{r}: connection refused: the diskless Primary's data differs")
                    return
            self._connected(a, b)
            return
        if a.discard_my_data or b.discard_my_data:
            victim, survivor = (a, b) if a.discard_my_data else (b, a)
            if victim.role is Role.PRIMARY:
                # DRBD refuses to discard the data of a Primary.
                victim.standalone = True
                victim.conflict = "refused to discard the data of a Primary"
                return
            for x in (a, b):
                x.split_brain = False
                x.discard_my_data = False
            self._start_resync(source=survivor, target=victim)
            self._connected(a, b)
            return
        if a.disk is DiskState.INCONSISTENT or b.disk is DiskState.INCONSISTENT:
            if a.disk is DiskState.INCONSISTENT and b.disk is DiskState.INCONSISTENT:
                self._connected(a, b)  # nobody has data: connected, nothing to sync
                return
            target, source = (a, b) if a.disk is DiskState.INCONSISTENT else (b, a)
            self._start_resync(source=source, target=target)
            self._connected(a, b)
            return
        ha, hb = a.history, b.history
        if ha == hb:
            self._connected(a, b)  # the same data on both sides: nothing to sync
            return
        older = a if _is_prefix(ha, hb) else b if _is_prefix(hb, ha) else None
        if older is None:
            # Divergent data: DRBD drops the connection and both sides stay StandAlone until an
            # operator decides who survives.
            for x in (a, b):
                x.standalone = True
                x.split_brain = True
                x.connected = False
            self.event(
                f"{r}: split brain detected on connect (both sides wrote while apart)",
                split_brain=True,
            )
            return
        newer = b if older is a else a
        if older.role is Role.PRIMARY:
            for x in (a, b):
                x.standalone = True
                x.connected = False
                x.conflict = "I shall become SyncTarget, but I am primary!"
            self.event(f"{r}: connection dropped: the older side is Primary (rr-conflict)")
            return
        self._start_resync(source=newer, target=older)
        self._connected(a, b)

    @staticmethod
    def _connected(a: SimResource, b: SimResource) -> None:
        for x in (a, b):
            x.connected = True
            x.frozen = False
            x.peer_outdated = False
            if x.disk in (DiskState.CONSISTENT, DiskState.OUTDATED):
                # "D_CONSISTENT and D_OUTDATED vanish when we get connected": the handshake
                # has decided the sync direction, so a side that is not SyncTarget is UpToDate.
                x.disk = DiskState.UPTODATE

    def _start_resync(self, *, source: SimResource, target: SimResource) -> None:
        target.disk = DiskState.INCONSISTENT
        target.sync_left = max(1, self.resync_steps)
        target.history = list(source.history)  # what it will hold once the resync completes
        if target.role is Role.PRIMARY:
            target.exposed = list(source.history)
        target.split_brain = source.split_brain = False

    def _on_disconnect(self, names: list[str], r: str) -> None:
        a, b = (self.nodes[n].resources[r] for n in names)
        for x in (a, b):
            x.connected = False
            if x.sync_left:
                # An interrupted resync leaves the target Inconsistent (the bitmap survives).
                x.sync_left = 0
                x.disk = DiskState.INCONSISTENT
        for n in names:
            me = self.nodes[n].resources[r]
            # drbd_receiver.c conn_disconnect(): only a Primary whose peer disk is not already
            # known Outdated (pdsk >= D_UNKNOWN) calls the fence-peer handler on a lost link.
            if not (self.nodes[n].alive and me.up and me.role is Role.PRIMARY):
                continue
            if not _may_fence(me):
                # drbd_nl.c highest_fencing_policy(): only a disk >= D_CONSISTENT counts, so
                # FP_NOT_AVAIL: "Not fencing peer, I'm not even Consistent myself." No
                # freeze either: the policy comes from a disk this node does not have, and
                # conn_try_outdate_peer() clears susp_fen on that branch.
                if self.fencing != "none" and not me.peer_outdated:
                    self.event(f"{n}/{r}: not fencing peer, I'm not even Consistent myself")
                continue
            if self.fencing == "resource-and-stonith":
                me.frozen = True
                if self._fence_peer(n, r):
                    me.frozen = False
                else:
                    self.event(f"{n}/{r}: lost the peer and cannot fence it; I/O frozen")
            elif self.fencing == "resource-only":
                self._fence_peer(n, r)

    def _fence_peer(self, node: str, r: str) -> bool:
        """DRBD's fence-peer handler for ``node``'s resource ``r``. True when the peer is known
        not to promote with newer-looking data: outdated, or (stonith) powered off."""
        me = self.nodes[node].resources[r]
        if me.peer_outdated:
            # conn_try_outdate_peer() returns conn_highest_pdsk() <= D_OUTDATED: known already.
            return True
        if self.fencing == "none":
            return True  # FP_DONT_CARE: conn_try_outdate_peer() returns true, no handler
        if not _may_fence(me):
            # drbd_nl.c highest_fencing_policy() -> FP_NOT_AVAIL ("Not fencing peer, I'm not
            # even Consistent myself."): no handler runs; the peer is not known Outdated.
            return False
        peer = self.peer(node)
        pr = self.nodes[peer].resources[r]
        if self.nodes[peer].alive and self.management_path(node, peer):
            if pr.up and pr.role is Role.PRIMARY:
                # Handler exit 6, "peer is active": conn_try_outdate_peer() outdates THIS
                # node's disk ("Peer is primary, outdating myself."), for the unconnected
                # Secondary asked to promote; a Primary cannot be Outdated (its state change
                # is refused), so a frozen Primary just stays frozen.
                if me.role is not Role.PRIMARY and me.disk in (
                    DiskState.UPTODATE,
                    DiskState.CONSISTENT,
                ):
                    me.disk = DiskState.OUTDATED
                return False
            # Exit 4, "peer was fenced" (outdated, or already Outdated); exit 3 "peer is
            # inconsistent or worse" for a peer without good data: both leave pdsk <=
            # D_OUTDATED, so the handler succeeded.
            if pr.disk in (DiskState.UPTODATE, DiskState.CONSISTENT):
                pr.disk = DiskState.OUTDATED
            me.peer_outdated = True
            return True
        if self.fencing == "resource-only":
            # Exit 5, "peer was down": only when conn_highest_disk() == D_UP_TO_DATE is it
            # "peer is unreachable, assumed to be dead" (pdsk Outdated); a Consistent node
            # gets "peer unreachable, doing nothing since disk != UpToDate".
            if me.disk is not DiskState.UPTODATE:
                return False
            me.peer_outdated = True
            return True
        # resource-and-stonith, peer unreachable: the handler powers it off through its BMC
        # (exit 7, "peer was stonithed": pdsk Outdated); a node cut off from the switch cannot
        # reach the BMC, the handler fails and I/O stays frozen ("Eventually leave IO frozen").
        if self.fencing == "resource-and-stonith" and self.on_switch(node):
            if self.nodes[peer].alive:
                self.event(f"{node}/{r}: STONITH: powered {peer} off through its BMC")
                self._power_off(peer)
            me.peer_outdated = True
            return True
        return False

    def step(self) -> None:
        """Time passes by one observation: resyncs progress."""
        self.step_count += 1
        for node in self.nodes.values():
            for res in node.resources.values():
                if res.sync_left and res.connected:
                    res.sync_left -= 1
                    if res.sync_left == 0:
                        res.disk = DiskState.UPTODATE

    # --- DRBD as one node sees it -------------------------------------------------------

    def drbd_view(self, node: str, resource: str) -> dict[str, object]:
        me = self.res(node, resource)
        other = self.nodes[self.peer(node)].resources[resource]
        if not me.up or not self.nodes[node].alive:
            return {"up": False}
        if me.connected:
            if me.sync_left:
                conn = ConnState.SYNC_TARGET
            elif other.sync_left:
                conn = ConnState.SYNC_SOURCE
            else:
                conn = ConnState.CONNECTED
            peer_role, peer_disk = other.role, other.disk
        else:
            conn = ConnState.STANDALONE if me.standalone else ConnState.WF_CONNECTION
            peer_role = Role.UNKNOWN
            peer_disk = DiskState.OUTDATED if me.peer_outdated else DiskState.DUNKNOWN
        syncing = me.sync_left or other.sync_left
        percent = None
        if me.connected and syncing:
            left = me.sync_left or other.sync_left
            percent = round(100.0 * (self.resync_steps - left) / max(1, self.resync_steps), 1)
        return {
            "up": True,
            "role": me.role,
            "conn": conn,
            "disk": me.disk,
            "peer_role": peer_role,
            "peer_disk": peer_disk,
            "split_brain": me.split_brain,
            "sync_percent": percent,
            "suspended": me.frozen,
            "disconnected_for": (
                None
                if me.connected or me.disconnected_since is None
                else max(0.0, self.now - me.disconnected_since)
            ),
        }

    # --- DRBD actions -------------------------------------------------------------------

    def drbd_up(self, node: str, resource: str) -> None:
        self._require_alive(node, "drbdadm up")
        me = self.res(node, resource)
        if not me.up:
            me.up = True
            me.role = Role.SECONDARY
            me.standalone = False
            me.frozen = False
            if me.disk_broken:
                me.disk = DiskState.DISKLESS
        self.settle()

    def drbd_primary(self, node: str, resource: str, *, force: bool = False) -> None:
        self._require_alive(node, "drbdadm primary")
        me = self.res(node, resource)
        other = self.nodes[self.peer(node)].resources[resource]
        if not me.up:
            raise TerminalError(f"{resource}: not configured on {node} (drbdadm up first)")
        if me.role is Role.PRIMARY:
            return
        if me.connected and other.role is Role.PRIMARY:
            raise TerminalError(
                f"{resource}: State change failed: (-1) Multiple primaries not allowed by config"
            )
        if me.disk is not DiskState.UPTODATE and not (
            force and me.disk in (DiskState.OUTDATED, DiskState.CONSISTENT)
        ):
            raise TerminalError(
                f"{resource}: State change failed: (-2) Need access to UpToDate data"
            )
        if not me.connected and self.fencing != "none" and not self._fence_peer(node, resource):
            if not force:
                raise TerminalError(
                    f"{resource}: State change failed: (-7) Refusing to be Primary while peer "
                    "is not outdated"
                )
            self.event(
                f"{node}/{resource}: Forced into split brain situation! (--force)",
                split_brain=True,
            )
        if force and me.disk is not DiskState.UPTODATE:
            me.disk = DiskState.UPTODATE
        if not me.connected:
            # DRBD starts a new data generation (new current UUID) when promoted alone.
            me.history.append(-self.next_gen)
            self.next_gen += 1
        me.role = Role.PRIMARY
        me.exposed = list(me.history)
        self.settle()  # a STONITH by the fence-peer handler changes the cluster

    def drbd_secondary(self, node: str, resource: str) -> None:
        self._require_alive(node, "drbdadm secondary")
        me = self.res(node, resource)
        if not me.up or me.role is Role.SECONDARY:
            return
        nd = self.nodes[node]
        if nd.target_running and resource in nd.exported.values():
            raise TransientError(
                f"{resource}: State change failed: (-12) Device is held open by someone"
            )
        me.role = Role.SECONDARY
        me.frozen = False
        me.exposed = []
        self.settle()

    def drbd_connect(self, node: str, resource: str, *, discard_my_data: bool = False) -> None:
        self._require_alive(node, "drbdadm connect")
        me = self.res(node, resource)
        if not me.up:
            raise TerminalError(f"{resource}: not configured on {node}")
        me.standalone = False
        if discard_my_data:
            me.discard_my_data = True
        self.settle()

    def drbd_disconnect(self, node: str, resource: str) -> None:
        self._require_alive(node, "drbdadm disconnect")
        me = self.res(node, resource)
        me.standalone = True
        self.settle()

    # --- VIP, ARP ------------------------------------------------------------------------

    def vip_answered_elsewhere(self, node: str, ip: str) -> bool:
        """An ARP probe on the client network: answered by a stranger or by the peer."""
        if not self.on_switch(node):
            return False
        if ip in self.strangers:
            return True
        peer = self.peer(node)
        return self.on_switch(peer) and ip in self.nodes[peer].vips

    def vip_add(self, node: str, ip: str) -> None:
        self._require_alive(node, "ip addr add")
        vips = self.nodes[node].vips
        if ip not in vips:
            vips.append(ip)

    def vip_remove(self, node: str, ip: str) -> None:
        self._require_alive(node, "ip addr del")
        vips = self.nodes[node].vips
        if ip in vips:
            vips.remove(ip)

    def vip_announce(self, node: str, ip: str) -> None:
        """A gratuitous ARP for ``ip`` from ``node``: the clients it reaches now send the
        address's traffic to ``node``, *whether or not* ``node`` holds the address. That is
        what the wire does (``IpVip.announce`` sends the frames without looking at the local
        addresses; the contract suite checks it in the lab): an announcement of an address
        that is not local moves the clients to a node that drops the traffic, until their
        entry goes stale and they ask again (``_client_rearp``)."""
        self._require_alive(node, "arping")
        if self.on_switch(node):
            self.arp_owner[ip] = node  # a gratuitous ARP only moves clients it reaches

    # --- target --------------------------------------------------------------------------

    def target_start(self, node: str, *, accounts: list[str] | None = None) -> None:
        """``accounts``: the CHAP user names to bind (None: leave them as they are)."""
        self._require_alive(node, "tgtd")
        self.nodes[node].target_daemon = True
        self.nodes[node].target_running = True
        if accounts is not None:
            self.nodes[node].target_accounts = list(accounts)

    def target_export(self, node: str, lun: int, resource: str) -> None:
        self._require_alive(node, "tgtadm")
        nd = self.nodes[node]
        if not nd.target_running:
            raise TransientError("tgtadm: can't send the request to the tgt daemon")
        if self.res(node, resource).role is not Role.PRIMARY:
            # A DRBD 8.4 Secondary cannot be opened: tgtd fails to add the backing store.
            raise TerminalError(f"tgtadm: can't open /dev/drbd for {resource}: Wrong medium type")
        nd.exported[lun] = resource

    def target_unexport(self, node: str, lun: int) -> None:
        self._require_alive(node, "tgtadm")
        self.nodes[node].exported.pop(lun, None)

    def target_daemon_start(self, node: str) -> None:
        """The resident tgtd starts (with no target defined when it was down)."""
        self._require_alive(node, "tgtd")
        self.nodes[node].target_daemon = True

    def target_stop(self, node: str) -> None:
        """The target is deleted (``--force``: its sessions and LUNs go); tgtd stays."""
        self._require_alive(node, "tgtadm")
        nd = self.nodes[node]
        nd.target_running = False
        nd.target_accounts = []
        nd.exported = {}

    def target_daemon_dies(self, node: str) -> None:
        """tgtd dies (killed from outside): its target, sessions and LUNs go with it."""
        self.target_stop(node)
        self.nodes[node].target_daemon = False

    # --- hypervisor storage (XAPI's PBDs) ----------------------------------------------

    def ensure_srs(self, spec: StorageCluster) -> None:
        """A spec that (now) names a hypervisor gets the pool's SRs, every PBD unplugged (the
        hosts booted before anything served); a world that has them keeps them."""
        if spec.spec.adapters.hypervisor != "none" and not self.srs:
            self.srs = _srs(spec)

    def lun_served(self, node: str, lun: int) -> bool:
        """What an iSCSI login from ``node``'s host through the VIP finds: a node it reaches
        holds the VIP, its target runs and exports ``lun`` (a stranger on the VIP serves
        nothing of ours)."""
        for n, nd in self.nodes.items():
            reaches = n == node or (self.on_switch(node) and self.on_switch(n))
            vip = any(sr.target in nd.vips for sr in self.srs if sr.lun == lun)
            if nd.alive and reaches and vip and nd.target_running and lun in nd.exported:
                return True
        return False

    def pbd(self, node: str, pbd_uuid: str) -> tuple[SimSr, SimPbd]:
        for sr in self.srs:
            pbd = sr.pbds.get(node)
            if pbd is not None and pbd.uuid == pbd_uuid:
                return sr, pbd
        raise TerminalError(f"UUID_INVALID: no PBD {pbd_uuid} on host {node}")

    def _require_xapi(self, node: str, op: str) -> None:
        self._require_alive(node, op)
        if not self.nodes[node].xapi_reachable:
            raise TransientError(f"{op}: XAPI unreachable on {node} (connection refused)")

    def pbd_plug(self, node: str, pbd_uuid: str) -> None:
        """``PBD.plug``: a no-op when attached; else it needs the LUN served on the VIP."""
        self._require_xapi(node, "PBD.plug")
        sr, pbd = self.pbd(node, pbd_uuid)
        if pbd.attached:
            return
        if not self.lun_served(node, sr.lun):
            raise TransientError(
                f"SR_BACKEND_FAILURE_141: Unable to connect to ISCSI service on target "
                f"{sr.target} ({sr.iqn}, SR {sr.name})"
            )
        pbd.attached = True
        pbd.usable = True

    def pbd_unplug(self, node: str, pbd_uuid: str) -> None:
        """``PBD.unplug``: a no-op when not attached."""
        self._require_xapi(node, "PBD.unplug")
        _, pbd = self.pbd(node, pbd_uuid)
        pbd.attached = False

    def unplug_pbds(self, node: str) -> None:
        """Every PBD of ``node``'s host unplugged (by hand, or a host booted too early)."""
        for sr in self.srs:
            if node in sr.pbds:
                sr.pbds[node].attached = False

    def break_sr(self, node: str) -> None:
        """The SR's volume group disappears on ``node``'s host while XAPI keeps the PBD
        attached (SR_BACKEND_FAILURE_40/46 after a failover)."""
        for sr in self.srs:
            pbd = sr.pbds.get(node)
            if pbd is not None and pbd.attached:
                pbd.usable = False

    def _boot_pbds(self, node: str) -> None:
        """XAPI plugs a booting host's PBDs and gives up on those whose LUN is not served."""
        for sr in self.srs:
            pbd = sr.pbds.get(node)
            if pbd is not None:
                pbd.attached = self.lun_served(node, sr.lun)
                pbd.usable = True

    def pbds_attached(self, node: str) -> bool | None:
        """Every PBD of ``node``'s host attached (None: no SR is modelled)."""
        pbds = [sr.pbds[node] for sr in self.srs if node in sr.pbds]
        return all(p.attached for p in pbds) if pbds else None

    def srs_usable(self, node: str) -> bool | None:
        """Every PBD of ``node``'s host attached and its SR usable (None: no SR modelled)."""
        pbds = [sr.pbds[node] for sr in self.srs if node in sr.pbds]
        return all(p.attached and p.usable for p in pbds) if pbds else None

    def storage_served(self, node: str) -> tuple[bool, bool]:
        """Ground truth for the PBD plug invariant (``safety.may_plug_pbd``): (``node`` serves
        every LUN on every VIP itself; every VIP answers ``node``'s ARP from another host and
        the peer is Primary)."""
        nd = self.nodes[node]
        vips = sorted({sr.target for sr in self.srs})
        luns = {sr.lun for sr in self.srs}
        here = (
            nd.alive
            and nd.target_running
            and all(ip in nd.vips for ip in vips)
            and luns <= set(nd.exported)
        )
        peer = self.peer(node)
        pd = self.nodes[peer]
        # What the node's ARP probe says (a stranger on the VIP answers too: the node cannot
        # tell it from the peer, and its plug then fails with 141) and DRBD's peer role.
        elsewhere = (
            bool(vips)
            and pd.alive
            and all(self.vip_answered_elsewhere(node, ip) for ip in vips)
            and all(r.up and r.role is Role.PRIMARY for r in pd.resources.values())
        )
        return here, elsewhere

    # --- the witness ----------------------------------------------------------------------

    def witness_majority(self) -> bool:
        return sum(self.witness.members) * 2 > len(self.witness.members)

    def witness_reachable(self, node: str) -> bool:
        """``node`` gets a linearizable answer: it reaches etcd and a majority is up."""
        nd = self.nodes[node]
        return nd.alive and not nd.etcd_cut and not nd.isolated and self.witness_majority()

    def witness_holder(self) -> str | None:
        """The key's holder now (a lease past its expiry on the witness's clock is gone)."""
        w = self.witness
        if w.holder is not None and self.now >= w.expires:
            w.holder = None
        return w.holder

    def lease_left(self, node: str, ttl: float) -> float | None:
        """What ``node``'s agent computes: ttl minus the time since it sent its last
        successful claim, on its own clock."""
        nd = self.nodes[node]
        if nd.lease_sent is None:
            return None
        return ttl - (self.now - nd.lease_sent) * nd.clock_rate

    def witness_observe(self, node: str, ttl: float) -> tuple[bool, str | None, float | None]:
        """(reachable, holder, lease_left) as ``node`` observes them; the observation is
        also the agent's watchdog pet."""
        nd = self.nodes[node]
        nd.last_observed = self.now
        if not self.witness_reachable(node):
            return False, None, self.lease_left(node, ttl)
        holder = self.witness_holder()
        if holder != node:
            nd.lease_sent = None  # the agent learns it holds nothing
        return True, holder, self.lease_left(node, ttl)

    def witness_claim(self, node: str, ttl: float) -> None:
        self._require_alive(node, "witness-claim")
        self.check_fault(node, "witness-claim")
        if not self.witness_reachable(node):
            raise TransientError(f"witness claim by {node}: no etcd majority answers")
        holder = self.witness_holder()
        if holder is not None and holder != node:
            raise TransientError(f"witness claim by {node}: the key is held by {holder}")
        self.witness.holder = node
        self.witness.expires = self.now + ttl
        self.nodes[node].lease_sent = self.now

    def witness_release(self, node: str) -> None:
        self._require_alive(node, "witness-release")
        self.check_fault(node, "witness-release")
        if not self.witness_reachable(node):
            raise TransientError(f"witness release by {node}: no etcd majority answers")
        if self.witness_holder() == node:
            self.witness.holder = None
        self.nodes[node].lease_sent = None

    # --- faults of the environment ------------------------------------------------------

    def _power_off(self, node: str) -> None:
        nd = self.nodes[node]
        nd.alive = False
        nd.agent_paused = False  # a new agent starts at boot, with no memory of a lease
        nd.lease_sent = None
        for res in nd.resources.values():
            res.up = False
            res.role = Role.SECONDARY
            res.connected = False
            res.standalone = False
            res.sync_left = 0
            res.frozen = False
            res.conflict = None
            res.exposed = []
            if res.disk is DiskState.UPTODATE and not res.peer_outdated:
                # After an unclean restart DRBD cannot know the disk is still the newest.
                res.disk = DiskState.CONSISTENT
        nd.vips = []
        nd.target_daemon = False
        nd.target_running = False
        nd.target_accounts = []
        nd.exported = {}
        for sr in self.srs:
            if node in sr.pbds:
                sr.pbds[node].attached = False  # the host is down: nothing is attached

    def crash(self, node: str) -> None:
        self._power_off(node)
        self.settle()

    def boot(self, node: str) -> None:
        self.nodes[node].alive = True
        self.nodes[node].last_observed = self.now  # its agent starts (and pets) at boot
        self.settle()
        self._boot_pbds(node)

    def set_links(self, *, replication: bool | None = None, management: bool | None = None) -> None:
        if replication is not None:
            self.replication_link = replication
        if management is not None:
            self.management_link = management
        self.settle()

    def drbd_relist(self, node: str) -> None:
        """A full re-list by ``node``'s events2 adapter after a stream gap (a stream that
        ended, stalled or lied, or the periodic one): it knows its disconnected resources
        continuously disconnected only since now (``adapters.drbd.stream``), whatever the
        world's truth; the simulator's way to attack the witness's count from the disconnect."""
        for res in self.nodes[node].resources.values():
            if not res.connected:
                res.disconnected_since = self.now
        self.settle()

    def follow_links(self, node: str, *, replication: bool | None, management: bool | None) -> None:
        """What ``node`` saw of its peer's real addresses (the namespace lab: a resident pinger
        on the node's real links), applied to the simulated links as real DRBD would notice
        it: the replication link is down once the peer's replication address stopped
        answering, up once it answers again; likewise the management path. None (not known)
        changes nothing. The world cannot tell a crashed peer from a cut-off one (neither can
        DRBD): the peer's simulated DRBD stays as it was, only disconnected."""
        changed: dict[str, bool] = {}
        if replication is not None and replication != self.replication_link:
            changed["replication"] = replication
        if management is not None and management != self.management_link:
            changed["management"] = management
        if not changed:
            return
        peer = self.peer(node)
        for link, up in changed.items():
            how = "answers again" if up else "stopped answering"
            self.event(
                f"{node}: {peer}'s {link} address {how}: {link} link {'up' if up else 'down'}"
            )
        # Both at once, so a lost connection never runs the fence handler over a management
        # path that is already known dead.
        self.set_links(replication=changed.get("replication"), management=changed.get("management"))

    def isolate(self, node: str, isolated: bool = True) -> None:
        """Cut (or restore) ``node``'s port on the management/client switch."""
        self.nodes[node].isolated = isolated
        self.settle()

    def detach_disk(self, node: str, resource: str) -> None:
        """The backing disk is detached (I/O error policy 'detach'); its data stays on it."""
        me = self.res(node, resource)
        if me.disk not in NO_DATA:
            me.detached_from = DiskState.INCONSISTENT if me.sync_left else me.disk
            me.disk = DiskState.DISKLESS
            me.sync_left = 0
        self.settle()

    def fail_disk(self, node: str, resource: str) -> None:
        """The backing disk dies: its data is gone (Failed while up, Diskless after)."""
        me = self.res(node, resource)
        lost = set(me.history)
        me.disk = DiskState.FAILED if me.up else DiskState.DISKLESS
        me.history = []
        me.sync_left = 0
        me.detached_from = None
        me.disk_broken = True
        self.nodes[node].disk_broken = True
        gone = [
            g for g in self.acked.get(resource, []) if g in lost and not self._held(resource, g)
        ]
        if gone:
            self.destroyed.setdefault(resource, []).extend(gone)
            self.event(f"{node}/{resource}: disk failed with {len(gone)} write(s) on no other disk")
        self.settle()

    def _held(self, resource: str, gen: int) -> bool:
        return any(
            gen in nd.resources[resource].history
            for nd in self.nodes.values()
            if _holds_data(nd.resources[resource])
        )

    def replace_disk(self, node: str, resource: str) -> None:
        """The operator attaches a new blank disk, or the detached one again."""
        nd = self.nodes[node]
        me = self.res(node, resource)
        other = self.nodes[self.peer(node)].resources[resource]
        if me.disk_broken or me.disk is DiskState.FAILED:
            me.disk_broken = False
            nd.disk_broken = any(x.disk_broken for x in nd.resources.values())
            me.history = []
            me.disk = DiskState.INCONSISTENT
        elif me.disk is DiskState.DISKLESS:
            kept = me.detached_from in HOLDS_DATA
            if me.role is Role.PRIMARY and not me.connected:
                # Under a running Primary DRBD attaches only the very data it exposes.
                if kept and me.history == me.exposed and me.up:
                    me.disk = DiskState.UPTODATE
                    me.detached_from = None
                    self.settle()
                return
            # The detached disk's data is back, but DRBD cannot tell whether it is the newest.
            was = me.detached_from
            me.disk = (
                DiskState.INCONSISTENT
                if not kept
                else DiskState.OUTDATED
                if was is DiskState.OUTDATED
                else DiskState.CONSISTENT
            )
        else:
            return
        me.detached_from = None
        if me.connected and me.up:
            # Attaching while connected starts a new handshake on the data.
            if me.role is Role.PRIMARY and other.disk is DiskState.UPTODATE:
                self._start_resync(source=other, target=me)  # allowed under a Primary
            else:
                me.connected = other.connected = False
                self._on_connect(list(self.nodes), resource)
        self.settle()

    # --- the client ----------------------------------------------------------------------

    def serving_node(self, resource: str) -> str | None:
        """Where a write through the VIP lands: the ARP owner, if it really serves."""
        for ip, owner in sorted(self.arp_owner.items()):
            nd = self.nodes[owner]
            if (
                self.on_switch(owner)
                and ip in nd.vips
                and nd.target_running
                and resource in nd.exported.values()
                and nd.resources[resource].role is Role.PRIMARY
            ):
                return owner
        return None

    def _client_rearp(self) -> None:
        """A write timed out: the client's ARP entry for a VIP nobody answers at goes stale
        and it asks again (8-45 s in the lab without a gratuitous ARP; one write here)."""
        ips = set(self.arp_owner) | {ip for nd in self.nodes.values() for ip in nd.vips}
        for ip in sorted(ips):
            owner = self.arp_owner.get(ip)
            if owner is not None and self.on_switch(owner) and ip in self.nodes[owner].vips:
                continue
            holders = [n for n in self.nodes if self.on_switch(n) and ip in self.nodes[n].vips]
            if len(holders) == 1:
                self.arp_owner[ip] = holders[0]

    def client_write(self, resource: str) -> int | None:
        """One write through the VIP; returns its generation when acknowledged (None: not
        served, I/O frozen by fencing, or no disk to write to)."""
        node = self.serving_node(resource)
        if node is None:
            self._client_rearp()
            return None
        me = self.nodes[node].resources[resource]
        if me.frozen:
            return None
        other = self.nodes[self.peer(node)].resources[resource]
        local_ok = me.disk is DiskState.UPTODATE or (me.sync_left > 0 and me.connected)
        if not (local_ok or (me.connected and other.disk is DiskState.UPTODATE)):
            return None  # no UpToDate data reachable (diskless or blank disk, no peer): I/O error
        replicas = [me] if me.disk not in NO_DATA else []
        if me.connected and other.disk not in NO_DATA:
            replicas.append(other)  # protocol C: acked once the peer has it
        gen = self.next_gen
        self.next_gen += 1
        for x in replicas:
            x.history.append(gen)
        me.exposed.append(gen)
        self.acked.setdefault(resource, []).append(gen)
        return gen

    # --- ground truth for invariants ------------------------------------------------------

    def facts(self) -> list[NodeFacts]:
        return [
            NodeFacts(
                name=name,
                roles={
                    r: (res.role if (nd.alive and res.up) else Role.SECONDARY)
                    for r, res in nd.resources.items()
                },
                vips=frozenset(nd.vips) if nd.alive else frozenset(),
                target_running=nd.target_running and nd.alive,
                exported=dict(nd.exported) if nd.alive else {},
                frozen=frozenset(r for r, res in nd.resources.items() if res.frozen),
                on_network=self.on_switch(name),
            )
            for name, nd in self.nodes.items()
        ]

    def data_facts(self, resource: str) -> DataFacts:
        """What each node could serve of ``resource`` right now, and on-disk copies."""
        serves: dict[str, frozenset[int] | None] = {}
        disks: dict[str, frozenset[int]] = {}
        for name, nd in self.nodes.items():
            me = nd.resources[resource]
            if _holds_data(me):
                disks[name] = frozenset(me.history)
            if not (nd.alive and me.up and me.role is Role.PRIMARY) or me.frozen:
                continue
            other = self.nodes[self.peer(name)].resources[resource]
            if me.disk is DiskState.UPTODATE or (
                me.disk is DiskState.INCONSISTENT and me.sync_left
            ):
                serves[name] = frozenset(me.history)
            elif me.connected and other.disk is DiskState.UPTODATE:
                serves[name] = frozenset(other.history)  # a diskless Primary reads the peer
            else:
                serves[name] = None  # Primary, but I/O errors: serves nothing
        return DataFacts(
            resource=resource,
            acked=tuple(self.acked.get(resource, ())),
            destroyed=frozenset(self.destroyed.get(resource, ())),
            serves=serves,
            disks=disks,
        )


def _may_fence(res: SimResource) -> bool:
    """drbd_nl.c highest_fencing_policy(): the fencing policy is read only from a local disk in
    state >= D_CONSISTENT (``get_ldev_if_state(device, D_CONSISTENT)``); below that DRBD takes
    the FP_NOT_AVAIL branch and never fences. (Outdated sorts below Consistent in DRBD's
    ``enum drbd_disk_state``, so an Outdated node does not fence either.)"""
    return res.disk in (DiskState.UPTODATE, DiskState.CONSISTENT)


_SR_NAMESPACE = uuid.UUID("7a9f3c1e-2b4d-4e6f-8a1b-3c5d7e9f0a2b")


def _srs(spec: StorageCluster) -> list[SimSr]:
    """One SR per LUN, served through the first VIP; uuids derived from the names, so a world
    is the same every time it is built from the same spec."""
    vip = spec.spec.vips[0].ip
    iqn = spec.spec.target.iqn
    out = []
    for lun in spec.spec.target.luns:
        sr = uuid.uuid5(_SR_NAMESPACE, f"{spec.metadata.name}/{iqn}/{lun.lun}")
        pbds = {
            n: SimPbd(uuid=str(uuid.uuid5(_SR_NAMESPACE, f"{sr}/{n}")), attached=False)
            for n in spec.node_names
        }
        name = f"tandem {lun.resource} (LUN {lun.lun})"
        out.append(SimSr(uuid=str(sr), name=name, target=vip, iqn=iqn, lun=lun.lun, pbds=pbds))
    return out


def _holds_data(res: SimResource) -> bool:
    """The resource's disk really holds its history (a detached disk keeps its data)."""
    if res.disk in HOLDS_DATA or res.sync_left:
        return True
    return res.disk is DiskState.DISKLESS and res.detached_from in HOLDS_DATA


def _is_prefix(short: list[int], long: list[int]) -> bool:
    return len(short) <= len(long) and long[: len(short)] == short


# --- where the world lives -------------------------------------------------------------------


class _Held:
    """A context manager that hands out one in-memory world (no generator frame per call:
    every adapter call is a transaction, so this is on the hot path of every tick)."""

    __slots__ = ("world",)

    def __init__(self, world: World) -> None:
        self.world = world

    def __enter__(self) -> World:
        return self.world

    def __exit__(self, *exc: object) -> None:
        return None


class WorldStore:
    """Holds a world in memory (property tests, ``reconcile simulate``)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def transaction(self) -> contextlib.AbstractContextManager[World]:
        return _Held(self.world)

    def may_hang(self) -> bool:
        """Cheap: could a ``hang`` fault be in the world? (False: surely not.)"""
        return any(f.kind == "hang" for f in self.world.faults)


class FileWorldStore(WorldStore):
    """A world persisted as JSON; every transaction is load -> change -> atomic save under an
    exclusive lock, so two agent processes can share one simulated cluster. A transaction
    that changed nothing but the step counter saves nothing (that step is not counted: the
    counter, which only numbers the event log, counts the observations that changed
    something)."""

    def __init__(self, path: Path, *, spec: StorageCluster, read_only: bool = False) -> None:
        self.path = path
        self.spec = spec
        self.read_only = read_only  # --dry-run: observe (time may pass in memory), never save
        self.lock_path = path.with_suffix(path.suffix + ".lock")

    def transaction(self) -> contextlib.AbstractContextManager[World]:
        return self._transaction()

    def may_hang(self) -> bool:
        # The file is replaced atomically: reading it without the lock sees a whole world.
        try:
            return b'"hang"' in self.path.read_bytes()
        except FileNotFoundError:
            return False

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[World]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Opened read-only: closing a file opened for writing is an inotify CLOSE_WRITE in
        # the state directory, which would wake every agent's file watcher per transaction.
        with open(os.open(self.lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                existed = self.path.exists()
                world = self._load()
                before = world.model_dump_json(exclude=_CLOCK)
                yield world
                # Time alone passing (an observation's step, nothing else changed) is not
                # saved: an idle agent would rewrite the file every tick, and every write
                # wakes both agents' file watchers (the step counter is not a wake anyway).
                # A fresh world is saved by its first transaction, as before.
                changed = not existed or world.model_dump_json(exclude=_CLOCK) != before
                if not self.read_only and changed:
                    self._save(world)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def wake_source(self, node: str | None = None) -> DerivedFileWake:
        """Changes when anything in the world changes but the step counter, which every
        observation advances (a wake on it would keep two agents waking each other).

        For ``node``'s agent it also ignores what that node's own actions change: its own
        DRBD resources, VIPs and target (``_OWN``), the faults aimed at it (consumed by its
        own commands) and the world's bookkeeping (event log, acknowledged writes, generation
        counter, the client's ARP cache). The peer's promote/demote, the links, the pool
        master and strangers still wake it. Without this an agent woke itself right after
        every change it made and observed again at once, in the middle of the peer's
        critical moment in a swap (the peer taking over while this node had just stepped
        down); its own changes are checked by the verify tick instead
        (``timings.verifyAfter``). DRBD's connection states are symmetric, so a change the
        peer causes on this node's resources shows on the peer's entry too."""
        digest = functools.partial(_world_digest, node=node)
        return DerivedFileWake(self.path, digest, name="simulated world")

    def _load(self) -> World:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return World.fresh(self.spec)
        try:
            world = World.model_validate_json(text)
        except ValueError as exc:
            raise TerminalError(
                f"simulated world file {self.path} is unreadable ({exc.__class__.__name__}); "
                "delete it to start a fresh simulated cluster"
            ) from exc
        names = set(self.spec.node_names)
        if set(world.nodes) != names:
            raise TerminalError(
                f"simulated world {self.path} has nodes {sorted(world.nodes)}, the spec has "
                f"{sorted(names)}; use another --state-dir or delete the file"
            )
        world.ensure_srs(self.spec)  # a world file from before the spec named a hypervisor
        return world

    def _save(self, world: World) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".world-")
        with os.fdopen(fd, "w") as fh:
            json.dump(world.model_dump(mode="json"), fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


_CLOCK = {"step_count", "now"}
"""The simulated clock: never a reason to save on its own (``FileWorldStore._transaction``)."""

_BOOKKEEPING = (
    "step_count",
    "now",
    "events",
    "split_brain_events",
    "acked",
    "destroyed",
    "next_gen",
    "arp_owner",
)
"""World fields a node's own actions change that never concern its agent's next decision."""
_OWN = (
    "resources",
    "vips",
    "announced",
    "inventory",
    "target_daemon",
    "target_running",
    "target_accounts",
    "exported",
)
"""A node's own fields that only its own actions change (or the peer's together with the
peer's fields); the rest of its entry (alive, isolated, disk_broken, operator state) is
changed from outside and still wakes it."""


def _world_digest(content: bytes, *, node: str | None = None) -> object:
    """The world without its step counter; for ``node``, also without what that node's agent
    changed itself (see ``wake_source``)."""
    data = json.loads(content)
    if isinstance(data, dict) and node is None:
        data.pop("step_count", None)
        data.pop("now", None)  # the clock, which agents following a real one move each tick
    elif isinstance(data, dict):
        for key in _BOOKKEEPING:
            data.pop(key, None)
        nodes = data.get("nodes")
        mine = nodes.get(node) if isinstance(nodes, dict) else None
        if isinstance(mine, dict):
            for key in _OWN:
                mine.pop(key, None)
        faults = data.get("faults")
        if isinstance(faults, list):
            data["faults"] = [
                f for f in faults if not (isinstance(f, dict) and f.get("node") == node)
            ]
    return json.dumps(data, sort_keys=True)
