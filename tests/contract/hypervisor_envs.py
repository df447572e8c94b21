"""Environments of the hypervisor contract suite (``HypervisorAdapter``, issue 12).

Same idea as ``envs.py``: an environment builds a pool of two hosts with one lvmoiscsi SR served
through the spec's VIP and IQN (plus, on request, an SR of another target), hands out the
adapter under test with ``adapter(node)``, and changes the world behind the adapter's back:
the target starts or stops serving the SR's LUN on the VIP, an operator unplugs a PBD, the SR's
volume group disappears on a host, XAPI stops answering. ``SimHypervisorEnv`` is the simulated
pool (adapters/sim); an environment over the fake XAPI server (the XenAPI adapter's side of
issue 12) offers the same vocabulary and joins the suite with one parametrize entry in
``test_hypervisor_contract.py``.

Every environment starts from a pool whose hosts booted before anything served: every PBD of
the SR is unplugged.
"""

from __future__ import annotations

from typing import Protocol

from adapters.base import HypervisorAdapter
from adapters.sim.adapters import SimHypervisor
from adapters.sim.world import SimPbd, SimSr, World, WorldStore
from reconciler.core.spec import StorageCluster, Target, Vip
from tests.contract.envs import SIM, TARGET, VIP

OTHER_TARGET = "198.51.100.77"  # an SR of some other storage box: never tandem's business


class HypervisorEnv(Protocol):
    kind: str
    target: Target
    vips: tuple[Vip, ...]

    def adapter(self, node: str) -> HypervisorAdapter: ...

    def serve(self, node: str) -> None:
        """``node``'s target serves the SR's LUN on the VIP (VIP, target, LUN)."""
        ...

    def stop_serving(self) -> None:
        """Nothing serves the SR's LUN any more (the target and the VIP are gone)."""
        ...

    def unplug_by_hand(self, node: str) -> None:
        """An operator (or a host that booted too early) leaves ``node``'s PBD unplugged."""
        ...

    def break_sr(self, node: str) -> None:
        """The SR's volume group disappears on ``node``'s host; XAPI keeps the PBD attached."""
        ...

    def xapi_down(self, node: str) -> None:
        """XAPI stops answering ``node``'s adapter."""
        ...

    def add_other_sr(self) -> None:
        """An SR whose device-config names another target joins the pool."""
        ...


class SimHypervisorEnv:
    kind = SIM
    target = TARGET
    vips: tuple[Vip, ...] = (VIP,)

    def __init__(self, spec: StorageCluster) -> None:
        data = spec.model_dump(mode="json", by_alias=True)
        data["spec"]["adapters"]["hypervisor"] = "sim"
        data["spec"]["vips"] = [VIP.model_dump(mode="json", by_alias=True)]
        data["spec"]["target"] = {
            **data["spec"]["target"],
            **TARGET.model_dump(mode="json", by_alias=True),
        }
        self.spec = StorageCluster.model_validate(data)
        self.store = WorldStore(World.fresh(self.spec))
        self.resource = self.spec.spec.resources[0].name

    def adapter(self, node: str) -> HypervisorAdapter:
        return SimHypervisor(self.store, node)

    def serve(self, node: str) -> None:
        with self.store.transaction() as world:
            world.drbd_primary(node, self.resource)
            world.vip_add(node, VIP.ip)
            world.target_start(node)
            for lun in TARGET.luns:
                world.target_export(node, lun.lun, lun.resource)

    def stop_serving(self) -> None:
        with self.store.transaction() as world:
            for node in world.nodes:
                world.target_stop(node)
                world.vip_remove(node, VIP.ip)

    def unplug_by_hand(self, node: str) -> None:
        with self.store.transaction() as world:
            world.unplug_pbds(node)

    def break_sr(self, node: str) -> None:
        with self.store.transaction() as world:
            world.break_sr(node)

    def xapi_down(self, node: str) -> None:
        with self.store.transaction() as world:
            world.nodes[node].xapi_reachable = False

    def add_other_sr(self) -> None:
        with self.store.transaction() as world:
            pbds = {n: SimPbd(uuid=f"other-pbd-{n}") for n in world.nodes}
            world.srs.append(
                SimSr(
                    uuid="other-sr",
                    name="someone else's SR",
                    target=OTHER_TARGET,
                    iqn=TARGET.iqn,
                    lun=1,
                    pbds=pbds,
                )
            )
