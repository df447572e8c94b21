"""Build one node's adapters from the spec's ``adapters`` section.

Each concern is 'sim' (the simulated cluster shared through the state directory) or a real
implementation; mixing is allowed (a lab runs real VIP and tgt over simulated DRBD).
"""

from __future__ import annotations

from pathlib import Path

from adapters.base import NodeAdapters
from adapters.poolconf import NoRoleSource, PoolConfRoleSource
from adapters.sim.adapters import SimDrbd, SimPoolMaster, SimTarget, SimVip, sim_liveness
from adapters.sim.world import FileWorldStore, WorldStore
from adapters.state import FileOperatorStore
from reconciler.core.errors import TerminalError
from reconciler.core.spec import StorageCluster, Transport

WORLD_FILE = "sim-world.json"


def world_store(
    spec: StorageCluster, state_dir: Path, *, read_only: bool = False
) -> FileWorldStore:
    return FileWorldStore(state_dir / WORLD_FILE, spec=spec, read_only=read_only)


def operator_store(state_dir: Path, node: str) -> FileOperatorStore:
    return FileOperatorStore(state_dir / f"operator-{node}.json")


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
    if world is None and "sim" in (chosen.drbd, chosen.vip, chosen.target, chosen.role_source):
        world = world_store(spec, state_dir, read_only=dry_run)
    runner = _runner(spec, node)

    if chosen.drbd == "sim":
        assert world is not None
        drbd = SimDrbd(world, node)
    else:
        from adapters.drbd import RealDrbd

        drbd = RealDrbd(runner)  # type: ignore[assignment]

    if chosen.vip == "sim":
        assert world is not None
        vip = SimVip(world, node)
    else:
        from adapters.vip import InProcessArp, IpVip

        vip = IpVip(runner, arp=InProcessArp())  # type: ignore[assignment]

    if chosen.target == "sim":
        assert world is not None
        target = SimTarget(world, node)
    else:
        from adapters.tgt import TgtAdapter

        portal = spec.spec.vips[0].ip if spec.spec.vips else None
        target = TgtAdapter(  # type: ignore[assignment]
            runner, control_dir=str(state_dir / f"tgt-{node}"), portal=portal
        )

    if chosen.role_source == "sim":
        assert world is not None
        role = SimPoolMaster(world, node)
    elif chosen.role_source == "pool-conf":
        role = PoolConfRoleSource(Path(spec.node(node).pool_conf))  # type: ignore[assignment]
    else:
        role = NoRoleSource()  # type: ignore[assignment]

    if world is not None and chosen.drbd == "sim":
        liveness = sim_liveness(world, node, spec)
    else:
        from adapters.liveness import PingLiveness

        peer = spec.peer_of(node)
        addresses = [str(a) for a in (peer.management_address, peer.replication_address) if a]
        liveness = PingLiveness(  # type: ignore[assignment]
            runner,
            peer_addresses=addresses,
            heuristics=[str(h) for h in spec.spec.promotion.heuristics],
        )
    return NodeAdapters(
        node=node,
        drbd=drbd,
        vip=vip,
        target=target,
        role_source=role,
        liveness=liveness,
        operator=operator_store(state_dir, node),
    )


def _runner(spec: StorageCluster, node: str):  # type: ignore[no-untyped-def]
    from adapters.runner import Local, Netns, Runner

    n = spec.node(node)
    timeout = spec.spec.timings.command_timeout
    if n.transport is Transport.NETNS:
        if not n.namespace:
            raise TerminalError(f"node {node}: transport netns needs a namespace")
        return Runner(Netns(n.namespace), timeout=timeout)
    return Runner(Local(), timeout=timeout)
