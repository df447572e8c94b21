"""Environments of the adapter contract suite: each concern once simulated, once real.

A test receives an *environment* fixture (``vip_env``, ``target_env``, ``role_env``,
``drbd_env``) parametrised over ``sim`` and ``real``. Both variants build equivalent worlds and
expose the same small vocabulary: ``adapter(node)`` gives the implementation under test; the
other methods change the world *behind the adapter's back* (an operator adding an address by
hand, HA-Lizard moving the pool master, tgtd dying) or look at it from outside (which MAC the
client's ARP cache holds). The test functions are written once against that vocabulary, so a
simulator that drifts from the real tools fails the same assertion the real tool passes.

Real variants: VIP and target run in the namespace lab (marked ``lab``; skipped like the lab,
with the reason, when not root or a package is missing); pool.conf needs only files. Real DRBD
cannot run on this kernel: here its parameter is present and skipped; the VM tier runs the same
DRBD test functions with ``RealDrbdEnv`` on its VMs' runners
(``tests/vm/test_drbd_contract_vm.py``). A third DRBD variant, ``fake-events2``, runs the
event-fed adapter over the fake DRBD tools (``tests/fakes/drbd.py``) in tier 1.
The fixtures that pick the variant are in ``conftest.py``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import pytest

from adapters.base import DrbdAdapter, RoleSourceAdapter, TargetAdapter, VipAdapter
from adapters.drbd import EventFedDrbd, RealDrbd
from adapters.poolconf import PoolConfRoleSource
from adapters.runner import Runner
from adapters.sim.adapters import SimDrbd, SimPoolMaster, SimTarget, SimVip
from adapters.sim.world import Fault, World, WorldStore
from adapters.wake import Wakeup
from reconciler.core.spec import Lun, Resource, StorageCluster, Target, Vip
from tests.fakes.drbd import FakeDrbd
from tests.lab.netns import MACS, Lab
from tests.lab.specs import NODES, LabCluster
from tests.waiting import wait_for

SIM = "sim"
REAL = "real"
FAKE_EVENTS2 = "fake-events2"
REAL_LAB = pytest.param(REAL, marks=pytest.mark.lab)
NETLINK_NETNS = pytest.param("netlink-netns", marks=pytest.mark.lab)
NETLINK_LOCAL = pytest.param("netlink-local", marks=pytest.mark.lab)
REAL_DRBD = pytest.param(
    REAL,
    marks=pytest.mark.skip(
        reason="real DRBD cannot run on this kernel (tier 1: DRBD is the simulator); the VM "
        "tier runs this contract against drbd.ko 8.4 in qemu: "
        "pytest -m vm tests/vm/test_drbd_contract_vm.py"
    ),
)

VIP = Vip.model_validate({"address": "198.51.100.3/24", "interface": "eth0"})
OTHER_VIP = Vip.model_validate({"address": "198.51.100.4/24", "interface": "eth0"})


# ----------------------------------------------------------------------------------- VIP
class VipEnv(Protocol):
    kind: str
    settle: float  # seconds a change on the wire may take to show (ARP frames in flight)

    def adapter(self, node: str) -> VipAdapter: ...

    def add_by_hand(self, node: str, vip: Vip) -> None: ...

    def client_contacts(self, vip: Vip) -> None:
        """The client talks to the VIP (so its ARP cache holds an entry for it)."""
        ...

    def client_sees(self, vip: Vip) -> str | None:
        """Which node the client's ARP entry for the VIP points to."""
        ...

    def client_learns(self, vip: Vip, node: str) -> None:
        """The client's ARP entry for the VIP is set to ``node`` (as by that node's
        announcement)."""
        ...

    def announcements_over(self, node: str) -> None:
        """Return once every announcement ``node``'s adapter made has run its course: its
        last round is due and passed, whether sent or cancelled."""
        ...


class SimVipEnv:
    kind = SIM
    settle = 0.1

    def __init__(self, spec: StorageCluster) -> None:
        self.store = WorldStore(World.fresh(spec))

    def adapter(self, node: str) -> VipAdapter:
        return SimVip(self.store, node)

    def add_by_hand(self, node: str, vip: Vip) -> None:
        with self.store.transaction() as world:
            world.vip_add(node, vip.ip)

    def client_contacts(self, vip: Vip) -> None:
        # ARP resolution: the client learns the MAC of whoever holds the address now.
        with self.store.transaction() as world:
            holders = [n for n, nd in world.nodes.items() if vip.ip in nd.vips]
            if holders:
                world.arp_owner[vip.ip] = holders[0]

    def client_sees(self, vip: Vip) -> str | None:
        with self.store.transaction() as world:
            return world.arp_owner.get(vip.ip)

    def client_learns(self, vip: Vip, node: str) -> None:
        with self.store.transaction() as world:
            world.arp_owner[vip.ip] = node

    def announcements_over(self, node: str) -> None:
        pass  # the simulated wire has no later rounds: an announcement ends when it returns


class RealVipEnv:
    """``IpVip`` running inside each node's namespace (``tests.lab.remote``)."""

    kind = REAL
    settle = 3.0

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._remotes: dict[str, Any] = {}

    adapter_kind = "ip"

    def adapter(self, node: str) -> VipAdapter:
        from tests.lab.remote import RemoteVip

        if node not in self._remotes:
            self._remotes[node] = RemoteVip.start(self.lab, node, adapter=self.adapter_kind)
        remote: VipAdapter = self._remotes[node]
        return remote

    def add_by_hand(self, node: str, vip: Vip) -> None:
        self.lab.run(node, ["ip", "addr", "add", str(vip.address), "dev", vip.interface])

    def client_contacts(self, vip: Vip) -> None:
        self.lab.run("client", ["ping", "-c", "1", "-W", "1", vip.ip])

    def client_sees(self, vip: Vip) -> str | None:
        mac = self.lab.neigh("client", vip.ip)
        return next((node for node, m in MACS.items() if m == mac), None)

    def client_learns(self, vip: Vip, node: str) -> None:
        self.lab.run(
            "client",
            ["ip", "neigh", "replace", vip.ip, "lladdr", MACS[node], "dev", "eth0", "nud", "stale"],
        )

    def announcements_over(self, node: str) -> None:
        # InProcessArp.drain in the node's server: its later rounds are background jobs at
        # their due times (ANNOUNCE_INTERVAL apart); a cancelled one still ends at its time.
        assert self._remotes[node].drain(), f"{node}'s announcements still running after 5 s"

    def close(self) -> None:
        for remote in self._remotes.values():
            remote.drain()
            remote.close()


class NetlinkVipEnv(RealVipEnv):
    """``NetlinkVip`` as the factory builds it for transport ``netns``: the test process opens
    one netlink handle inside each node's namespace (pyroute2 ``netns=``), ARP goes through
    ``arping`` run by the node's lab runner (``CommandArp``)."""

    kind = REAL

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab)
        self._netlink: dict[str, Any] = {}

    def adapter(self, node: str) -> VipAdapter:
        from adapters.vip import CommandArp
        from adapters.vip.netlink import NetlinkVip

        if node not in self._netlink:
            self._netlink[node] = NetlinkVip(
                namespace=self.lab.ns(node), arp=CommandArp(self.lab.runner(node))
            )
        adapter: VipAdapter = self._netlink[node]
        return adapter

    def announcements_over(self, node: str) -> None:
        # CommandArp.drain: a cancelled announcement's arping was killed; a running one ends.
        assert self._netlink[node].arp.drain(), f"{node}'s arping still running after 5 s"

    def close(self) -> None:
        for vip in self._netlink.values():
            vip.arp.drain()
            vip.close()


class LocalNetlinkVipEnv(RealVipEnv):
    """``NetlinkVip`` as the factory builds it for transport ``local`` (the lab's agents): run
    inside each node's namespace (``tests.lab.remote --adapter netlink``), with in-process
    ARP."""

    adapter_kind = "netlink"


# -------------------------------------------------------------------------------- target
RESOURCE_NAME = "iscsi1"
IQN = "iqn.2024-01.org.example.tandem:iscsi1"
LUN = Lun(lun=1, resource=RESOURCE_NAME, scsi_id="tandem-iscsi1", scsi_sn="TANDEM0001")
TARGET = Target(iqn=IQN, luns=(LUN,))


class TargetEnv(Protocol):
    kind: str
    target: Target
    lun: Lun
    resource: Resource

    def adapter(self, node: str) -> TargetAdapter: ...

    def daemon_dies(self, node: str) -> None:
        """The target daemon is killed (SIGKILL, OOM killer) behind the adapter's back."""
        ...


class SimTargetEnv:
    kind = SIM
    target = TARGET
    lun = LUN

    def __init__(self, spec: StorageCluster) -> None:
        self.resource = spec.spec.resources[0]
        self.store = WorldStore(World.fresh(spec))
        # Equivalent of the real environment, where the backing device can be opened: the
        # simulator only exports a Primary DRBD device.
        with self.store.transaction() as world:
            world.drbd_primary("node1", self.resource.name)

    def adapter(self, node: str) -> TargetAdapter:
        return SimTarget(self.store, node)

    def daemon_dies(self, node: str) -> None:
        with self.store.transaction() as world:
            world.target_daemon_dies(node)


class RealTargetEnv:
    """``TgtAdapter`` with a real tgtd in node1's namespace, exporting a file."""

    kind = REAL
    target = TARGET
    lun = LUN

    def __init__(self, lab: Lab, spec: StorageCluster, control_root: Path) -> None:
        self.lab = lab
        self.resource = spec.spec.resources[0]  # devicePath: the cluster's backing file
        self.control_root = control_root
        self._adapters: dict[str, Any] = {}

    def adapter(self, node: str) -> TargetAdapter:
        from adapters.tgt import TgtAdapter

        if node not in self._adapters:
            self._adapters[node] = TgtAdapter(
                self.lab.runner(node),
                control_dir=str(self.control_root / f"tgt-{node}"),
                portal=VIP.ip,
            )
        adapter: TargetAdapter = self._adapters[node]
        return adapter

    def daemon_dies(self, node: str) -> None:
        tgt = self._adapters[node]
        pid = int(Path(tgt.pid_file).read_text())
        assert pid in {p.pid for p in self.lab.procs}, "only a tgtd this lab started is killed"
        os.kill(pid, signal.SIGKILL)
        wait_for("tgtd to die", lambda: not _alive(pid), timeout=5)

    def close(self) -> None:
        for tgt in self._adapters.values():
            tgt.stop_daemon(self.target)  # resident: stop() leaves it running


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


# --------------------------------------------------------------------------- role source
class RoleEnv(Protocol):
    kind: str

    def adapter(self, node: str) -> RoleSourceAdapter: ...

    def make_master(self, node: str) -> None:
        """The pool elects ``node`` master (HA-Lizard / xe pool-designate-new-master)."""
        ...

    def unreadable(self, node: str) -> None:
        """``node``'s view of the pool cannot be read (garbage in pool.conf)."""
        ...

    def no_view(self, node: str) -> None:
        """``node`` has no view of the pool at all (no master known / no pool.conf)."""
        ...


class SimRoleEnv:
    kind = SIM

    def __init__(self, spec: StorageCluster) -> None:
        self.store = WorldStore(World.fresh(spec))

    def adapter(self, node: str) -> RoleSourceAdapter:
        return SimPoolMaster(self.store, node)

    def make_master(self, node: str) -> None:
        with self.store.transaction() as world:
            world.pool_master = node

    def unreadable(self, node: str) -> None:
        with self.store.transaction() as world:
            world.faults.append(Fault(node=node, op="role-observe", kind="garbage", count=-1))

    def no_view(self, node: str) -> None:
        with self.store.transaction() as world:
            world.pool_master = None


class RealRoleEnv:
    """``PoolConfRoleSource`` over each node's pool.conf file, written as xapi writes it."""

    kind = REAL

    def __init__(self, root: Path) -> None:
        self.cluster = LabCluster.create(root)

    def adapter(self, node: str) -> RoleSourceAdapter:
        return PoolConfRoleSource(self.cluster.pool_conf[node])

    def make_master(self, node: str) -> None:
        self.cluster.set_master(node)

    def unreadable(self, node: str) -> None:
        self.cluster.pool_conf[node].write_text("\x00\x01 not a pool.conf\n")

    def no_view(self, node: str) -> None:
        for n in NODES:
            self.cluster.pool_conf[n].unlink()


# ---------------------------------------------------------------------------------- DRBD
class DrbdEnv(Protocol):
    """Two nodes, DRBD configured but down, their disks UpToDate and in sync (a cold cluster
    after a clean shutdown: brought up, the nodes connect without a resync)."""

    kind: str
    resource: Resource
    # Seconds a change may take to show: real DRBD connects in the background after ``up``
    # and ``connect``, and tells the peer about a demote after ``secondary`` returned. The
    # simulator applies every change at once, so its ``settle`` is 0: a state it does not
    # show right away is a drift.
    settle: float

    def adapter(self, node: str) -> DrbdAdapter: ...


class SimDrbdEnv:
    """Two freshly installed nodes, DRBD configured but not started (a cold cluster)."""

    kind = SIM
    settle = 0.0

    def __init__(self, spec: StorageCluster) -> None:
        self.resource = spec.spec.resources[0]
        self.store = WorldStore(World.fresh(spec, drbd_up=False))

    def adapter(self, node: str) -> DrbdAdapter:
        return SimDrbd(self.store, node)


class RealDrbdEnv:
    """The real DRBD adapter on each node's command runner (the VM tier: drbd.ko 8.4 in qemu,
    reached through the VMs' console transport): ``RealDrbd`` (one status command per
    observe), or with ``event_fed`` the ``EventFedDrbd`` over one ``drbdsetup events2`` stream
    per node (which needs a transport that streams, ``Runner.can_stream``). Whoever builds it
    has configured ``resource`` on both nodes and left it down with in-sync metadata
    (``tests/vm/test_drbd_contract_vm.py``); ``reset`` brings it back there after a test, and
    ``close`` stops the event streams."""

    kind = REAL
    settle = 30.0  # TCG VMs: a connect takes 0.5-3 s; the bound is only reached on a failure

    def __init__(
        self, runners: Mapping[str, Runner], resource: Resource, *, event_fed: bool = False
    ) -> None:
        self.runners = runners
        self.resource = resource
        self.event_fed = event_fed
        self._adapters: dict[str, DrbdAdapter] = {}

    def adapter(self, node: str) -> DrbdAdapter:
        if node not in self._adapters:
            runner = self.runners[node]
            self._adapters[node] = (
                EventFedDrbd(runner, real=RealDrbd(runner), wakeup=Wakeup())
                if self.event_fed
                else RealDrbd(runner)
            )
        return self._adapters[node]

    def close(self) -> None:
        for adapter in self._adapters.values():
            if isinstance(adapter, EventFedDrbd):
                adapter.close()
        self._adapters.clear()

    def reset(self) -> None:
        """Both nodes down again, cleanly: every Primary demoted first (a Primary that loses
        its peer starts a new data generation, and the next ``up`` would resync), then down;
        each step on both nodes at once. Raises AssertionError when a node is not down."""
        name = self.resource.name
        with ThreadPoolExecutor(len(self.runners)) as pool:
            for step in ("secondary", "down"):
                runs = [
                    pool.submit(r.run, ["drbdadm", step, name], check=False)
                    for r in self.runners.values()
                ]
                for run in runs:
                    run.result()
        for node, runner in self.runners.items():
            (obs,) = RealDrbd(runner, status_format="text").observe([self.resource])
            assert obs.up is False, f"{name} is not down on {node} after the reset: {obs}"


class FakeDrbdEnv:
    """``EventFedDrbd`` (events2 stream, ``RealDrbd`` for listings and actions) over the fake
    ``drbdsetup``/``drbdadm`` of ``tests/fakes/drbd.py``, spawned by the real ``Runner`` from
    PATH: tier 1's check that the event-fed adapter keeps the contract (the real adapter's
    VM run is ``RealDrbdEnv(event_fed=True)``). The fake's stream shows a change within its
    10 ms poll, so ``settle`` bounds an asynchronous arrival, not DRBD's timing."""

    kind = FAKE_EVENTS2
    settle = 10.0

    def __init__(self, spec: StorageCluster, directory: Path) -> None:
        self.resource = spec.spec.resources[0]
        self.fake = FakeDrbd(directory, {self.resource.name: self.resource.minor}, up=False)
        self._adapters: dict[str, EventFedDrbd] = {}

    @property
    def path_entry(self) -> str:
        return str(self.fake.bin)

    def adapter(self, node: str) -> DrbdAdapter:
        if node not in self._adapters:
            runner = Runner(env=self.fake.env(node))
            self._adapters[node] = EventFedDrbd(runner, real=RealDrbd(runner), wakeup=Wakeup())
        return self._adapters[node]

    def close(self) -> None:
        for adapter in self._adapters.values():
            adapter.close()
