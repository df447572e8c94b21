"""Environments of the ``WitnessAdapter`` contract: the real 3-member etcd (``EtcdWitness``
through node-side proxies, ``tests.etcd_cluster``) and the simulated witness (``SimWitness``
over ``World.witness``).

The vocabulary: ``adapter(node)`` is a *fresh* adapter of that node on its state directory,
the way a restarted agent or a ``reconcile --once`` builds it (so calling it twice is a
restart); ``expired()`` returns once the leases nobody refreshes ran out (real: etcd's clock,
awaited; simulated: the clock advanced); ``lose_majority``/``restore_majority`` stop and
start two of three members; ``cut``/``heal`` partition one node from every member;
``outage``/``recover`` stop and start all of them.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Protocol

from adapters.base import WitnessAdapter
from adapters.sim.adapters import SimWitness
from adapters.sim.world import World, WorldStore
from adapters.witness.etcd import EtcdWitness, lease_record_path
from adapters.witness.gateway import EtcdGateway
from reconciler.core.spec import StorageCluster
from tests.etcd_cluster import EtcdCluster, NodeLink
from tests.waiting import wait_for

NODES = ("node1", "node2")
TTL = 3.0  # long enough that "while the lease lives" holds on a loaded machine
TIMEOUT = 0.6  # witness.retryTimeout of the real environment

_clusters = itertools.count(1)


class WitnessEnv(Protocol):
    kind: str
    ttl: float

    def adapter(self, node: str) -> WitnessAdapter: ...

    def expired(self) -> None: ...

    def lose_majority(self) -> None: ...

    def restore_majority(self) -> None: ...

    def cut(self, node: str) -> None: ...

    def heal(self, node: str) -> None: ...

    def outage(self) -> None: ...

    def recover(self) -> None: ...

    def forget_lease(self, node: str) -> None:
        """The node's state directory loses its lease record (a wiped disk, a new host)."""
        ...


class SimWitnessEnv:
    """``SimWitness`` over the simulated 3-member etcd (``World.witness``): the simulation's
    clock (``World.now``) is moved by ``expired``; a node's memory of its lease is in the
    world (``SimNode.lease_sent``), as the real one is in the state directory."""

    kind = "sim"
    ttl = TTL

    def __init__(self, spec: StorageCluster) -> None:
        self.store = WorldStore(World.fresh(spec))

    def adapter(self, node: str) -> WitnessAdapter:
        return SimWitness(self.store, node, ttl=self.ttl)

    def expired(self) -> None:
        with self.store.transaction() as world:
            world.now += self.ttl + 0.5

    def _members(self, up: bool, which: tuple[int, ...]) -> None:
        with self.store.transaction() as world:
            for i in which:
                world.witness.members[i] = up

    def lose_majority(self) -> None:
        self._members(False, (0, 1))

    def restore_majority(self) -> None:
        self._members(True, (0, 1))

    def cut(self, node: str) -> None:
        with self.store.transaction() as world:
            world.nodes[node].etcd_cut = True

    def heal(self, node: str) -> None:
        with self.store.transaction() as world:
            world.nodes[node].etcd_cut = False

    def outage(self) -> None:
        self._members(False, (0, 1, 2))

    def recover(self) -> None:
        self._members(True, (0, 1, 2))

    def forget_lease(self, node: str) -> None:
        with self.store.transaction() as world:
            world.nodes[node].lease_sent = None


class RealWitnessEnv:
    kind = "real"
    ttl = TTL

    def __init__(self, etcd: EtcdCluster, state_dir: Path) -> None:
        self.etcd = etcd
        self.state_dir = state_dir
        self.cluster = f"contract{next(_clusters)}"
        self.links: dict[str, NodeLink] = {n: etcd.link() for n in NODES}
        self.made: list[EtcdWitness] = []
        self._probe_link = etcd.link()
        self._probe = self._witness("probe", self._probe_link)

    def _witness(self, node: str, link: NodeLink) -> EtcdWitness:
        witness = EtcdWitness(
            EtcdGateway(link.endpoints, timeout=TIMEOUT),
            cluster=self.cluster,
            node=node,
            prefix="/tandem-test/",
            ttl=self.ttl,
            record_path=lease_record_path(self.state_dir, node),
        )
        self.made.append(witness)
        return witness

    def adapter(self, node: str) -> WitnessAdapter:
        return self._witness(node, self.links[node])

    def expired(self) -> None:
        # etcd deletes the key when the lease's TTL ran out on its own clock.
        wait_for(
            "the leader key to expire",
            lambda: (o := self._probe.observe()).reachable and o.holder is None,
            timeout=self.ttl * 3 + 5,
            interval=0.1,
        )

    def lose_majority(self) -> None:
        self.etcd.stop(0)
        self.etcd.stop(1)

    def restore_majority(self) -> None:
        self.etcd.start_member(0)
        self.etcd.start_member(1)
        self.etcd.wait_healthy()

    def cut(self, node: str) -> None:
        self.links[node].cut()

    def heal(self, node: str) -> None:
        self.links[node].heal()

    def outage(self) -> None:
        for i in range(self.etcd.size):
            self.etcd.stop(i)

    def recover(self) -> None:
        for i in range(self.etcd.size):
            self.etcd.start_member(i)
        self.etcd.wait_healthy()

    def forget_lease(self, node: str) -> None:
        lease_record_path(self.state_dir, node).unlink(missing_ok=True)

    def close(self) -> None:
        for witness in self.made:
            witness.close()
        for link in (*self.links.values(), self._probe_link):
            link.close()
        self.recover()  # the cluster is shared by the session's tests
