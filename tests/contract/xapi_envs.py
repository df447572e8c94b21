"""The XAPI environments of the contract suite: the real ``XenAPI`` SDK and tandem's XAPI
adapters against the protocol-level fake pool (``tests/fakes/xapi.py``), with each host's LVM
view answered by ``tests/fakes/lvm.py`` (an attached lvmoiscsi PBD has its volume group on the
host, unless the test broke it; an unplug clears the break, as a re-plug reactivates the
volume group)."""

from __future__ import annotations

from adapters.base import HypervisorAdapter, RoleSourceAdapter
from adapters.xapi import XapiClient, XapiHypervisor, XapiRoleSource
from adapters.xapi.lvm import VG_PREFIX
from adapters.xapi.session import Credentials
from reconciler.core.spec import Target, Vip
from tests.fakes.lvm import FakeLvmRunner
from tests.fakes.xapi import FakePool, FakeXapiPool, Pbd

XAPI = "xapi"
NODES = ("node1", "node2")
OTHER_TARGET = "198.51.100.77"  # an SR of some other storage box: never tandem's business


def _client(fake: FakeXapiPool, node: str) -> XapiClient:
    # Each agent talks to its own host's xapi (node2's is a slave: HOST_IS_SLAVE is followed).
    return XapiClient(
        url=fake.url(node),
        credentials=Credentials(fake.pool.username, fake.pool.password),
        timeout=5.0,
    )


class XapiHypervisorEnv:
    kind = XAPI

    def __init__(self, target: Target, vips: tuple[Vip, ...]) -> None:
        self.target = target
        self.vips = vips
        self.fake = FakeXapiPool.start(NODES)
        self.serving = False  # the hosts booted before anything served
        self.broken: set[str] = set()  # PBD uuids whose SR is unusable on their host
        self.fake.pool.probe = self._probe
        self.fake.pool.on_unplug = lambda pbd: self.broken.discard(pbd.uuid)
        self.sr = self.fake.pool.add_iscsi_sr(
            "tandem-iscsi1", target=vips[0].ip, iqn=target.iqn, attached=False
        )
        self._adapters: dict[str, HypervisorAdapter] = {}

    def _probe(self, pool: FakePool, pbd: Pbd) -> bool:
        return self.serving

    def _vg_exists(self, node: str, name: str) -> bool:
        pbd = self.fake.pool.pbd_of(node, self.sr)
        return (
            name == f"{VG_PREFIX}{self.sr.uuid}"
            and pbd.currently_attached
            and pbd.uuid not in self.broken
        )

    def adapter(self, node: str) -> HypervisorAdapter:
        if node not in self._adapters:
            lvm = FakeLvmRunner(lookup=lambda name: self._vg_exists(node, name))
            self._adapters[node] = XapiHypervisor(
                _client(self.fake, node), host_name=node, runner=lvm
            )
        return self._adapters[node]

    def target_serves(self, serving: bool) -> None:
        self.serving = serving

    # The contract suite's vocabulary (tests/contract/hypervisor_envs.py: HypervisorEnv).
    def serve(self, node: str) -> None:
        self.serving = True  # the fake's PBD.plug probe: the LUN answers on the VIP

    def stop_serving(self) -> None:
        self.serving = False

    def unplug_by_hand(self, node: str) -> None:
        pbd = self.fake.pool.pbd_of(node, self.sr)
        pbd.currently_attached = False
        self.broken.discard(pbd.uuid)

    def break_sr(self, node: str) -> None:
        self.sr_breaks(node)

    def add_other_sr(self) -> None:
        self.fake.pool.add_iscsi_sr(
            "someone-else", target=OTHER_TARGET, iqn=self.target.iqn, attached=False
        )

    def sr_breaks(self, node: str) -> None:
        pbd = self.fake.pool.pbd_of(node, self.sr)
        assert pbd.currently_attached, "only an attached SR can break"
        self.broken.add(pbd.uuid)

    def attached(self, node: str) -> bool:
        return self.fake.pool.pbd_of(node, self.sr).currently_attached

    def xapi_down(self, node: str | None = None) -> None:
        """``node``'s adapter can no longer reach XAPI (a port nothing listens on); None:
        every XAPI server answers HTTP errors."""
        if node is None:
            for server in self.fake.servers.values():
                server.set_mode("http-error")
            return
        lvm = FakeLvmRunner(lookup=lambda name: self._vg_exists(node, name))
        dead = XapiClient(
            url="http://127.0.0.1:9/",
            credentials=Credentials(self.fake.pool.username, self.fake.pool.password),
            timeout=2.0,
        )
        self._adapters[node] = XapiHypervisor(dead, host_name=node, runner=lvm)

    def close(self) -> None:
        self.fake.stop()


class XapiRoleEnv:
    """``XapiRoleSource`` on each host's xapi (no pool.conf fallback: XAPI alone decides)."""

    kind = XAPI

    def __init__(self) -> None:
        self.fake = FakeXapiPool.start(NODES)

    def adapter(self, node: str) -> RoleSourceAdapter:
        return XapiRoleSource(_client(self.fake, node), host_name=node, fallback=None)

    def make_master(self, node: str) -> None:
        self.fake.pool.set_master(node)

    def unreadable(self, node: str) -> None:
        # node's xapi answers garbage; a slave's view goes through its master's, so both.
        for server in self.fake.servers.values():
            server.set_mode("garbage")

    def no_view(self, node: str) -> None:
        self.fake.stop()

    def close(self) -> None:
        self.fake.stop()
