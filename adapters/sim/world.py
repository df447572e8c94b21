"""A simulated two-node cluster that keeps the real systems' rules.

It is the ground truth behind every simulated adapter, the embedded default of the CLI (the
world persists as a JSON file in the state directory so successive ``reconcile --once --node X``
runs act on one cluster), and the model of the property-based failover tests.

DRBD rules kept (8.4 semantics, protocol C, single-primary):
- promote is refused while the connected peer is Primary ("Multiple primaries not allowed"), and
  refused when the local disk is not UpToDate unless forced;
- demote is refused while the target holds the device open (a LUN is exported from it);
- connection needs both nodes alive, the replication link up, both resources up and neither side
  StandAlone; on (re)connect the data generations decide: equal -> UpToDate on both; one history a
  prefix of the other -> the older side becomes SyncTarget (Inconsistent) for ``resync_steps``
  steps, then UpToDate; diverged (both wrote while apart) -> split brain: both StandAlone, never
  resolved automatically;
- resource-level fencing: when a Primary loses the replication link but still reaches its peer
  over the management network, the peer's disk is marked Outdated (crm-fence-peer style);
- a crashed node loses its runtime state (DRBD down, VIP gone, target stopped) but keeps its disk.

Data is modelled as a history of write generations per node and resource. A client write goes
through the VIP to the node that holds it and exports the LUN; with protocol C it is
acknowledged once every connected replica has it. ``acked`` remembers acknowledged writes so
tests can check that none is ever lost.

Invariants: every mutation goes through a method here and ends with ``settle()``, which
re-derives connections; the world never raises on observation, only on refused actions
(``TransientError``/``TerminalError`` as the real tools would fail).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from reconciler.core.errors import TerminalError, TransientError
from reconciler.core.observed import ConnState, DiskState, Role
from reconciler.core.safety import NodeFacts
from reconciler.core.spec import StorageCluster

FaultKind = Literal["transient", "terminal", "timeout", "garbage"]


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


class SimNode(BaseModel):
    alive: bool = True
    resources: dict[str, SimResource] = Field(default_factory=dict)
    vips: list[str] = Field(default_factory=list)
    target_running: bool = False
    exported: dict[int, str] = Field(default_factory=dict)
    heuristics_reachable: bool = True


class Fault(BaseModel):
    """An injected failure: the next ``count`` calls of ``op`` on ``node`` fail (-1: forever)."""

    node: str
    op: str
    kind: FaultKind = "transient"
    count: int = 1


class World(BaseModel):
    nodes: dict[str, SimNode]
    replication_link: bool = True
    management_link: bool = True
    pool_master: str | None = None
    strangers: list[str] = Field(default_factory=list)
    arp_owner: dict[str, str] = Field(default_factory=dict)
    fencing: bool = True
    resync_steps: int = 2
    next_gen: int = 1
    acked: dict[str, list[int]] = Field(default_factory=dict)
    faults: list[Fault] = Field(default_factory=list)
    step_count: int = 0

    # --- construction -----------------------------------------------------------------

    @classmethod
    def fresh(
        cls, spec: StorageCluster, *, pool_master: str | None = None, drbd_up: bool = True
    ) -> World:
        """Two freshly installed nodes: DRBD metadata created and the initial sync skipped
        (blank disks). With ``drbd_up`` (the demo's default) DRBD is already running and
        connected on both, both Secondary, nothing served; without it, nothing is started (a
        cold cluster after a full power loss). The pool master defaults to the first node."""
        names = spec.node_names
        nodes = {
            n: SimNode(resources={r.name: SimResource(up=drbd_up) for r in spec.spec.resources})
            for n in names
        }
        world = cls(
            nodes=nodes,
            pool_master=pool_master if pool_master is not None else names[0],
            acked={r.name: [] for r in spec.spec.resources},
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

    # --- faults -------------------------------------------------------------------------

    def check_fault(self, node: str, op: str) -> FaultKind | None:
        """Consume a matching injected fault; raise for action faults, return observe faults."""
        for fault in self.faults:
            if fault.node == node and fault.op == op and fault.count != 0:
                if fault.count > 0:
                    fault.count -= 1
                if fault.kind == "garbage":
                    return "garbage"
                if fault.kind == "terminal":
                    raise TerminalError(f"{op} on {node} failed (injected terminal fault)")
                text = "timed out" if fault.kind == "timeout" else "failed"
                raise TransientError(f"{op} on {node} {text} (injected transient fault)")
        self.faults = [f for f in self.faults if f.count != 0]
        return None

    def _require_alive(self, node: str, op: str) -> None:
        if not self.nodes[node].alive:
            raise TransientError(f"{op}: node {node} is down (no answer)")

    # --- derived connection state -------------------------------------------------------

    def link_up(self) -> bool:
        a, b = self.nodes.values()
        return a.alive and b.alive and self.replication_link

    def settle(self) -> None:
        """Re-derive every resource's connection after a change (connect/disconnect events)."""
        names = list(self.nodes)
        resources = list(self.nodes[names[0]].resources)
        for r in resources:
            a, b = (self.nodes[n].resources[r] for n in names)
            can = self.link_up() and a.up and b.up and not a.standalone and not b.standalone
            if can and not (a.connected and b.connected):
                self._on_connect(names, r)
            elif not can and (a.connected or b.connected):
                self._on_disconnect(names, r)

    def _on_connect(self, names: list[str], r: str) -> None:
        a, b = (self.nodes[n].resources[r] for n in names)
        for x in (a, b):
            if x.disk in (DiskState.DISKLESS, DiskState.FAILED):
                # A diskless side connects but neither syncs nor votes on data.
                a.connected = b.connected = True
                return
        ha, hb = a.history, b.history
        if a.discard_my_data or b.discard_my_data:
            victim, survivor = (a, b) if a.discard_my_data else (b, a)
            if victim.role is Role.PRIMARY:
                # DRBD refuses to discard the data of a Primary.
                victim.standalone = True
                return
            for x in (a, b):
                x.split_brain = False
                x.discard_my_data = False
            self._start_resync(source=survivor, target=victim)
        elif ha == hb:
            for x in (a, b):
                if x.disk is DiskState.OUTDATED:
                    x.disk = DiskState.UPTODATE
        elif _is_prefix(ha, hb) and a.role is not Role.PRIMARY:
            self._start_resync(source=b, target=a)
        elif _is_prefix(hb, ha) and b.role is not Role.PRIMARY:
            self._start_resync(source=a, target=b)
        else:
            # Divergent data (or the older side is Primary): DRBD drops the connection and
            # both sides stay StandAlone until an operator decides who survives.
            for x in (a, b):
                x.standalone = True
                x.split_brain = True
                x.connected = False
            return
        a.connected = b.connected = True

    def _start_resync(self, *, source: SimResource, target: SimResource) -> None:
        target.disk = DiskState.INCONSISTENT
        target.sync_left = max(1, self.resync_steps)
        target.history = list(source.history)  # what it will hold once the resync completes
        target.split_brain = source.split_brain = False

    def _on_disconnect(self, names: list[str], r: str) -> None:
        a, b = (self.nodes[n].resources[r] for n in names)
        for me, other, other_name in ((a, b, names[1]), (b, a, names[0])):
            if (
                self.fencing
                and me.role is Role.PRIMARY
                and self.nodes[other_name].alive
                and self.management_link
                and other.up
                and other.disk is DiskState.UPTODATE
            ):
                other.disk = DiskState.OUTDATED
        for x in (a, b):
            x.connected = False
            if x.sync_left:
                # An interrupted resync leaves the target Inconsistent (the bitmap survives).
                x.sync_left = 0
                x.disk = DiskState.INCONSISTENT

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
            peer_role, peer_disk = Role.UNKNOWN, DiskState.DUNKNOWN
            if (
                other.disk is DiskState.OUTDATED
                and self.nodes[self.peer(node)].alive
                and me.role is Role.PRIMARY
            ):
                peer_disk = DiskState.OUTDATED  # we fenced it ourselves
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
        }

    # --- DRBD actions -------------------------------------------------------------------

    def drbd_up(self, node: str, resource: str) -> None:
        self._require_alive(node, "drbdadm up")
        me = self.res(node, resource)
        if not me.up:
            me.up = True
            me.role = Role.SECONDARY
            me.standalone = False
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
        if force and me.disk is not DiskState.UPTODATE:
            me.disk = DiskState.UPTODATE
        me.role = Role.PRIMARY

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
        if ip in self.strangers:
            return True
        peer = self.nodes[self.peer(node)]
        return peer.alive and self.management_link and ip in peer.vips

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
        self._require_alive(node, "arping")
        if ip in self.nodes[node].vips:
            self.arp_owner[ip] = node

    # --- target --------------------------------------------------------------------------

    def target_start(self, node: str) -> None:
        self._require_alive(node, "tgtd")
        self.nodes[node].target_running = True

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

    def target_stop(self, node: str) -> None:
        self._require_alive(node, "tgtd stop")
        nd = self.nodes[node]
        nd.target_running = False
        nd.exported = {}

    # --- faults of the environment ------------------------------------------------------

    def crash(self, node: str) -> None:
        nd = self.nodes[node]
        nd.alive = False
        for res in nd.resources.values():
            res.up = False
            res.role = Role.SECONDARY
            res.connected = False
            res.standalone = False
            res.sync_left = 0
        nd.vips = []
        nd.target_running = False
        nd.exported = {}
        self.settle()

    def boot(self, node: str) -> None:
        self.nodes[node].alive = True
        self.settle()

    def set_links(self, *, replication: bool | None = None, management: bool | None = None) -> None:
        if replication is not None:
            self.replication_link = replication
        if management is not None:
            self.management_link = management
        self.settle()

    def fail_disk(self, node: str, resource: str) -> None:
        me = self.res(node, resource)
        me.disk = DiskState.FAILED if me.up else DiskState.DISKLESS
        self.settle()

    # --- the client ----------------------------------------------------------------------

    def serving_node(self, resource: str) -> str | None:
        """Where a write through the VIP lands: the ARP owner, if it really serves."""
        for ip, owner in sorted(self.arp_owner.items()):
            nd = self.nodes[owner]
            if (
                nd.alive
                and ip in nd.vips
                and nd.target_running
                and resource in nd.exported.values()
                and nd.resources[resource].role is Role.PRIMARY
            ):
                return owner
        return None

    def client_write(self, resource: str) -> int | None:
        """One write through the VIP; returns its generation when acknowledged."""
        node = self.serving_node(resource)
        if node is None:
            return None
        gen = self.next_gen
        self.next_gen += 1
        me = self.nodes[node].resources[resource]
        me.history.append(gen)
        other = self.nodes[self.peer(node)].resources[resource]
        if me.connected and other.disk not in (DiskState.DISKLESS, DiskState.FAILED):
            other.history.append(gen)  # protocol C: acked once the peer has it
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
            )
            for name, nd in self.nodes.items()
        ]


def _is_prefix(short: list[int], long: list[int]) -> bool:
    return len(short) <= len(long) and long[: len(short)] == short


# --- where the world lives -------------------------------------------------------------------


class WorldStore:
    """Holds a world in memory (property tests, ``reconcile simulate``)."""

    def __init__(self, world: World) -> None:
        self.world = world

    @contextlib.contextmanager
    def transaction(self) -> Iterator[World]:
        yield self.world


class FileWorldStore(WorldStore):
    """A world persisted as JSON; every transaction is load -> change -> atomic save under an
    exclusive lock, so two agent processes can share one simulated cluster."""

    def __init__(self, path: Path, *, spec: StorageCluster, read_only: bool = False) -> None:
        self.path = path
        self.spec = spec
        self.read_only = read_only  # --dry-run: observe (time may pass in memory), never save
        self.lock_path = path.with_suffix(path.suffix + ".lock")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[World]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                world = self._load()
                before = world.model_dump_json()
                yield world
                if not self.read_only and world.model_dump_json() != before:
                    self._save(world)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

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
        return world

    def _save(self, world: World) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".world-")
        with os.fdopen(fd, "w") as fh:
            json.dump(world.model_dump(mode="json"), fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
