"""Build one node's adapters from the spec's ``adapters`` section.

Each concern is 'sim' (the simulated cluster shared through the state directory) or a real
implementation; mixing is allowed (the namespace lab runs real VIP, tgt and pool.conf adapters
over simulated DRBD).

Invariants:

- Every real adapter gets the same ``Runner`` (the one command seam), built from the node's
  transport and the spec's ``timings.commandTimeout``.
- Per-node state lives in the state directory under per-node names (``tgt-<node>/``,
  ``operator-<node>.json``, ``vip-announced-<node>.json``, ``drbd-<node>.json``, the etcd
  witness's lease ``witness-<node>.json``); only the
  simulated world (``sim-world.json``) is shared, so two agents of one lab can use one state
  directory.
- Building adapters starts nothing and changes nothing on the node: daemons start in actions,
  event streams (real DRBD's ``events2``) at the first observe, the pinger's thread on its
  first observation. Event-fed adapters all get the one ``Wakeup`` that becomes
  ``NodeAdapters.wakeup``.
- Liveness (``adapters.liveness`` in the spec) is real (the in-process pinger) unless DRBD,
  VIP and target are all simulated, so the namespace lab (real addresses, simulated DRBD) sees
  a peer die; there the simulated DRBD's links follow the pinger (``SimDrbd.links``).
- Problems found while building (a control socket path too long for the OS, a netns transport
  without a namespace, a command the real adapters need missing on this host, with the Debian
  package that provides it) raise ``TerminalError``: the CLI reports them and exits 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from adapters.base import (
    DrbdAdapter,
    HypervisorAdapter,
    LivenessAdapter,
    NodeAdapters,
    OperatorStore,
    RoleSourceAdapter,
    TargetAdapter,
    VipAdapter,
    WakeSource,
    WitnessAdapter,
)
from adapters.pinger import Pinger
from adapters.poolconf import NoRoleSource, PoolConfRoleSource
from adapters.runner import Local, Netns, Runner
from adapters.runner import Transport as CommandTransport
from adapters.sim.adapters import (
    SimDrbd,
    SimPoolMaster,
    SimTarget,
    SimVip,
    sim_hypervisor,
    sim_liveness,
)
from adapters.sim.world import FileWorldStore, WorldStore
from adapters.state import FileOperatorStore
from adapters.tgt.chap import ChapSecrets, load_chap_secrets
from adapters.tools import describe as describe_missing
from adapters.tools import missing_tools
from adapters.wake import FileWake, Wakeup
from reconciler.core.errors import TerminalError
from reconciler.core.spec import StorageCluster, Transport

if TYPE_CHECKING:
    from adapters.witness.gateway import EtcdGateway
    from adapters.witness.status import EtcdStatusPublisher
    from adapters.xapi import XapiClient

WORLD_FILE = "sim-world.json"


def world_store(
    spec: StorageCluster, state_dir: Path, *, read_only: bool = False
) -> FileWorldStore:
    return FileWorldStore(state_dir / WORLD_FILE, spec=spec, read_only=read_only)


def operator_store(state_dir: Path, node: str) -> FileOperatorStore:
    return FileOperatorStore(state_dir / f"operator-{node}.json")


def tgt_control_dir(state_dir: Path, node: str) -> Path:
    """Where the tgt adapter of ``node`` keeps its tgtd control socket, PID file and log."""
    return state_dir / f"tgt-{node}"


def build_adapters(
    spec: StorageCluster,
    node: str,
    state_dir: Path,
    *,
    store: WorldStore | None = None,
    dry_run: bool = False,
) -> NodeAdapters:
    chosen = spec.spec.adapters
    world = store
    concerns = (
        chosen.drbd,
        chosen.vip,
        chosen.target,
        chosen.role_source,
        chosen.hypervisor,
        chosen.witness,
    )
    if world is None and "sim" in concerns:
        world = world_store(spec, state_dir, read_only=dry_run)
    runner = node_runner(spec, node)
    wakeup = Wakeup()  # event-fed adapters notify it; the same object goes to NodeAdapters
    if missing := missing_tools(tools_needed(spec, node)):
        raise TerminalError(describe_missing(missing, node))

    liveness = _liveness(spec, node, runner, world, wakeup)
    drbd: DrbdAdapter
    if chosen.drbd == "sim":
        import time

        assert world is not None
        peer = spec.peer_of(node)
        # With real liveness (the namespace lab) the simulated DRBD's links follow the
        # pinger's view of the peer's real addresses, so a crashed peer disconnects it. A
        # world shared through the state directory follows the agents' clock (the instant a
        # connection dropped is stamped on it); a caller's in-memory world keeps its own.
        drbd = SimDrbd(
            world,
            node,
            links=liveness if isinstance(liveness, Pinger) else None,
            peer_replication=str(peer.replication_address),
            peer_management=str(peer.management_address) if peer.management_address else None,
            clock=time.monotonic if store is None else None,
        )
    else:
        drbd = _real_drbd(spec, node, runner, state_dir, wakeup, dry_run=dry_run)

    vip: VipAdapter
    if chosen.vip == "sim":
        assert world is not None
        vip = SimVip(world, node)
    else:
        vip = _real_vip(spec, node, runner, state_dir, wakeup=wakeup)

    target: TargetAdapter
    chap = _chap_secrets(spec)
    if chosen.target == "sim":
        assert world is not None
        target = SimTarget(world, node, chap=chap)
    else:
        target = _real_target(spec, node, runner, state_dir, chap, wakeup)

    # One XAPI session per agent, shared by the role source and the hypervisor adapter.
    client = xapi_client(spec) if "xapi" in (chosen.role_source, chosen.hypervisor) else None

    role: RoleSourceAdapter
    if chosen.role_source == "sim":
        assert world is not None
        role = SimPoolMaster(world, node)
    elif chosen.role_source == "pool-conf":
        role = PoolConfRoleSource(Path(spec.node(node).pool_conf))
    elif chosen.role_source == "xapi":
        from adapters.xapi import XapiRoleSource

        assert client is not None
        role = XapiRoleSource(
            client,
            host_name=spec.spec.xapi.host_name(node),
            fallback=PoolConfRoleSource(Path(spec.node(node).pool_conf)),
        )
    else:
        role = NoRoleSource()

    hypervisor: HypervisorAdapter | None = None
    if chosen.hypervisor == "sim":
        assert world is not None
        hypervisor = sim_hypervisor(world, node, spec)
    elif chosen.hypervisor == "xapi":
        from adapters.xapi import XapiHypervisor

        assert client is not None
        hypervisor = XapiHypervisor(client, host_name=spec.spec.xapi.host_name(node), runner=runner)
    witness: WitnessAdapter | None = None
    if chosen.witness == "sim":
        import time

        from adapters.sim.adapters import SimWitness

        assert world is not None
        # A world shared through the state directory follows the agents' clock; an in-memory
        # world given by the caller (a simulation, a test) keeps the caller's clock.
        clock = time.monotonic if store is None else None
        witness = SimWitness(world, node, ttl=spec.spec.witness.ttl, clock=clock)
    elif chosen.witness == "etcd":
        witness = etcd_witness(spec, node, state_dir)
    dog = spec.spec.witness.watchdog
    if witness is not None and chosen.witness != "sim" and dog is not None:
        # The simulator models the watchdog itself; a real witness pets the real device.
        from adapters.watchdog import DeviceWatchdog, PettingWitness

        witness = PettingWitness(witness, DeviceWatchdog(dog.device, dog.timeout))
    local_operator = operator_store(state_dir, node)
    operator: OperatorStore = local_operator
    if client is not None:
        from adapters.xapi.pooldb import PoolDatabase, PoolOperatorStore

        operator = PoolOperatorStore(
            local_operator, PoolDatabase(client), host_name=spec.spec.xapi.host_name(node)
        )
    return NodeAdapters(
        node=node,
        drbd=drbd,
        vip=vip,
        target=target,
        role_source=role,
        liveness=liveness,
        operator=operator,
        wake=wake_sources(role, local_operator, world, node=node),
        hypervisor=hypervisor,
        witness=witness,
        wakeup=wakeup,
        runner=runner,
    )


def _real_drbd(
    spec: StorageCluster,
    node: str,
    runner: Runner,
    state_dir: Path,
    wakeup: Wakeup,
    *,
    dry_run: bool,
) -> DrbdAdapter:
    """Real DRBD observed through one ``drbdsetup events2`` stream (``EventFedDrbd``, re-listed
    at least every ``timings.resync``), or by one status command per tick (``RealDrbd``) where
    the transport cannot stream."""
    from adapters.drbd import EventFedDrbd, RealDrbd, SplitBrainRecord

    record = SplitBrainRecord(drbd_record_path(state_dir.absolute(), node), read_only=dry_run)
    real = RealDrbd(runner, record=record)
    if not runner.can_stream:
        return real
    timings = spec.spec.timings
    return EventFedDrbd(
        runner, real=real, wakeup=wakeup, resync=timings.resync, stall=timings.command_timeout
    )


def _liveness(
    spec: StorageCluster, node: str, runner: Runner, world: WorldStore | None, wakeup: Wakeup
) -> LivenessAdapter:
    """``adapters.liveness``: 'sim' answers from the simulated links (the all-sim demo);
    'ping' is the resident in-process pinger (``adapters.pinger``) over the peer's management
    and replication addresses and the heuristics, with ``spec.liveness``' timings, inside the
    node's namespace for transport 'netns'. (The VM tier builds its own adapters with
    ``StreamLiveness``: ``ping`` streams through its executing transport.)"""
    if spec.spec.adapters.liveness == "sim":
        assert world is not None  # the spec requires drbd 'sim' for it
        return sim_liveness(world, node, spec)
    peer = spec.peer_of(node)
    n = spec.node(node)
    timings = spec.spec.liveness
    return Pinger(
        peer_addresses=[str(a) for a in (peer.management_address, peer.replication_address) if a],
        heuristics=[str(h) for h in spec.spec.promotion.heuristics],
        interval=timings.interval,
        timeout=timings.timeout,
        misses=timings.misses,
        wakeup=wakeup,
        namespace=n.namespace if n.transport is Transport.NETNS else None,
    )


def xapi_client(spec: StorageCluster) -> XapiClient:
    """A client of the pool's XAPI from ``spec.xapi``; ``TerminalError`` when the credentials
    cannot be read or may be read by others."""
    from adapters.xapi import XapiClient, read_credentials

    cfg = spec.spec.xapi
    credentials = read_credentials(
        credentials_file=cfg.credentials_file,
        username_file=cfg.username_file,
        password_file=cfg.password_file,
    )
    return XapiClient(
        url=cfg.url, credentials=credentials, timeout=cfg.timeout, local_socket=cfg.local_socket
    )


def tools_needed(spec: StorageCluster, node: str) -> list[tuple[str, str]]:
    """The local commands the node's real adapters run, each with the concern that runs it
    (see ``adapters.tools``); empty when every concern is simulated."""
    chosen = spec.spec.adapters
    netns = spec.node(node).transport is Transport.NETNS
    needed: list[tuple[str, str]] = []
    if chosen.drbd != "sim":
        needed += [("drbdsetup", "drbd"), ("drbdadm", "drbd")]
    if chosen.vip != "sim" and netns:
        needed.append(("arping", "vip"))  # addresses go over netlink: no `ip` for the VIP
    if chosen.target != "sim":
        needed += [("tgtd", "target"), ("tgtadm", "target")]
    if netns and needed:
        needed.append(("ip", "transport netns"))  # ip netns exec runs every command
    return needed


def wake_sources(
    role: RoleSourceAdapter,
    operator: FileOperatorStore,
    world: WorldStore | None,
    *,
    node: str | None = None,
) -> tuple[WakeSource, ...]:
    """What the watch loop watches between ticks (``adapters.wake.FileWatch``: inotify):
    pool.conf (a pool-master change starts the swap at once), the operator's choices
    (``become-primary`` acts at once), and the simulated world (the peer's promote/demote; for
    ``node``, not what its own actions changed). Real DRBD, VIP and tgt changes are pushed by
    their event-fed adapters instead (``EventFedDrbd``'s events2 stream, ``NetlinkVip``'s
    address events notify the node's ``Wakeup``)."""
    sources: list[WakeSource] = [FileWake(operator.path, name="operator choices")]
    # The XAPI role source's fallback (read while XAPI is unreachable) is a pool.conf too.
    pool_conf = role if isinstance(role, PoolConfRoleSource) else getattr(role, "fallback", None)
    if isinstance(pool_conf, PoolConfRoleSource):
        sources.append(FileWake(pool_conf.path, name="pool.conf"))
    if isinstance(world, FileWorldStore):
        sources.append(world.wake_source(node))
    return tuple(sources)


def drbd_record_path(state_dir: Path, node: str) -> Path:
    """Where the DRBD adapter of ``node`` persists its split-brain inference
    (``SplitBrainRecord``: the suspicion, the last connection state, the action since)."""
    return state_dir / f"drbd-{node}.json"


def announce_record_path(state_dir: Path, node: str) -> Path:
    """Where the VIP adapter of ``node`` records which VIPs it announced (``AnnounceRecord``)."""
    return state_dir / f"vip-announced-{node}.json"


def inventory_path(state_dir: Path, node: str, concern: str) -> Path:
    """Where the ``concern`` ("vip" or "tgt") adapter of ``node`` keeps its inventory of what
    it created (``adapters.inventory``); one file per adapter, so neither overwrites the
    other's entries."""
    return state_dir / f"{concern}-inventory-{node}.json"


def _real_vip(
    spec: StorageCluster, node: str, runner: Runner, state_dir: Path, *, wakeup: Wakeup
) -> VipAdapter:
    """Netlink (``NetlinkVip``) for addresses and their events, in the node's namespace for
    transport 'netns'; ARP in-process when the agent runs on the node (transport 'local',
    which includes an agent started inside the node's namespace), else through ``arping`` run
    by the runner (transport 'netns': the agent is outside the namespace, and an in-process
    packet socket would probe and announce on the wrong network). ``IpVip`` (iproute2 through
    the runner) is for executing transports, where netlink cannot reach (the VM tier's
    console; ``tests/vm/cluster.py`` builds those adapters itself)."""
    from adapters.inventory import FileInventory
    from adapters.vip import AnnounceRecord, ArpTool, CommandArp, InProcessArp
    from adapters.vip.netlink import NetlinkVip

    n = spec.node(node)
    netns = n.transport is Transport.NETNS
    arp: ArpTool = CommandArp(runner) if netns else InProcessArp()
    return NetlinkVip(
        arp=arp,
        namespace=n.namespace if netns else None,
        wakeup=wakeup,
        request_timeout=spec.spec.timings.command_timeout,
        resync=spec.spec.timings.resync,
        record=AnnounceRecord(announce_record_path(state_dir.absolute(), node)),
        inventory=FileInventory(inventory_path(state_dir.absolute(), node, "vip")),
    )


def _chap_secrets(spec: StorageCluster) -> ChapSecrets | None:
    """The target's CHAP secrets, read (and registered for redaction) once per agent run: a
    changed file is used after a restart of the agent (``ChapFileError`` when unusable)."""
    chap = spec.spec.target.chap
    return None if chap is None else load_chap_secrets(chap)


def _real_target(
    spec: StorageCluster,
    node: str,
    runner: Runner,
    state_dir: Path,
    chap: ChapSecrets | None,
    wakeup: Wakeup,
) -> TargetAdapter:
    """One resident tgtd per node with its control socket in the state directory; its portal
    is the first VIP (tgtd binds it even before the VIP exists where ``ip_nonlocal_bind=1``;
    the planner adds the VIP before it starts the target anyway). Its target listing is
    re-listed at least every ``timings.resync``; its exit wakes the agent."""
    from adapters.inventory import FileInventory
    from adapters.tgt import TgtAdapter

    portal = spec.spec.vips[0].ip if spec.spec.vips else None
    control_dir = tgt_control_dir(state_dir.absolute(), node)
    try:
        return TgtAdapter(
            runner,
            control_dir=str(control_dir),
            portal=portal,
            chap=chap,
            inventory=FileInventory(inventory_path(state_dir.absolute(), node, "tgt")),
            resync=spec.spec.timings.resync,
            wakeup=wakeup,
        )
    except ValueError as exc:
        raise TerminalError(
            f"node {node}: cannot use {control_dir} for tgtd's control socket ({exc}); "
            "choose a shorter --state-dir"
        ) from exc


def node_runner(spec: StorageCluster, node: str) -> Runner:
    """The command runner of ``node``: local, or inside the node's network namespace."""
    n = spec.node(node)
    timeout = spec.spec.timings.command_timeout
    # cast: runner.Transport declares ``name`` as a settable attribute, the frozen dataclasses
    # provide a read-only one (structurally fine at run time).
    if n.transport is Transport.NETNS:
        if not n.namespace:
            raise TerminalError(f"node {node}: transport netns needs a namespace")
        return Runner(cast(CommandTransport, Netns(n.namespace)), timeout=timeout)
    return Runner(cast(CommandTransport, Local()), timeout=timeout)


def witness_gateway(
    spec: StorageCluster, *, endpoints: Sequence[str] = ()
) -> tuple[EtcdGateway | None, str]:
    """The etcd client of the spec's ``witness`` section (``endpoints`` given: those URLs
    instead) and its key prefix; None when no endpoint is known. ValueError for an endpoint
    that is not ``http(s)://HOST[:PORT]``. Opens nothing."""
    from adapters.witness.gateway import EtcdGateway

    w = spec.spec.witness
    urls = tuple(endpoints) or tuple(str(u) for u in w.endpoints)
    if not urls:
        return None, w.prefix
    gateway = EtcdGateway(
        urls,
        timeout=w.retry_timeout,
        ca_file=w.ca_file,
        cert_file=w.cert_file,
        key_file=w.key_file,
    )
    return gateway, w.prefix


def witness_record_path(state_dir: Path, node: str) -> Path:
    """Where the etcd witness of ``node`` persists its lease (``adapters.witness.etcd``)."""
    from adapters.witness.etcd import lease_record_path

    return lease_record_path(state_dir, node)


def etcd_witness(spec: StorageCluster, node: str, state_dir: Path) -> WitnessAdapter:
    """The witness on the spec's etcd: one lease-backed key ``<prefix><name>/leader``."""
    from adapters.witness.etcd import EtcdWitness

    try:
        gateway, prefix = witness_gateway(spec)
    except ValueError as exc:
        raise TerminalError(f"witness: {exc}") from exc
    if gateway is None:
        raise TerminalError("adapters.witness is 'etcd' but witness.endpoints is empty")
    return EtcdWitness(
        gateway,
        cluster=spec.metadata.name,
        node=node,
        prefix=prefix,
        ttl=spec.spec.witness.ttl,
        record_path=witness_record_path(state_dir.absolute(), node),
    )


def status_publisher(spec: StorageCluster, node: str) -> EtcdStatusPublisher | None:
    """Who publishes ``node``'s status records in etcd (``<prefix><name>/status/<node>``);
    None when the spec names no etcd (``witness.endpoints`` empty). Starts nothing."""
    from adapters.witness.status import EtcdStatusPublisher

    try:
        gateway, prefix = witness_gateway(spec)
    except ValueError as exc:
        raise TerminalError(f"witness: {exc}") from exc
    if gateway is None:
        return None
    return EtcdStatusPublisher(gateway, prefix=prefix, cluster=spec.metadata.name, node=node)
