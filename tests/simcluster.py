"""Test harness: two agents over one in-memory simulated world (no files, no sleeping)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters.base import NodeAdapters
from adapters.factory import build_adapters
from adapters.sim.world import World, WorldStore
from reconciler.agent import TickReport, tick
from reconciler.core.spec import StorageCluster
from reconciler.core.specload import load_spec
from reconciler.executor import RetryPolicy

ROOT = Path(__file__).resolve().parent.parent
DEMO_TEXT = (ROOT / "specs" / "demo.yaml").read_text()


def demo_spec(**_: object) -> StorageCluster:
    return load_spec(DEMO_TEXT, filename="specs/demo.yaml")


TWO_RESOURCE_TEXT = DEMO_TEXT.replace(
    """      disk: /dev/vdb
""",
    """      disk: /dev/vdb
    - name: iscsi2
      minor: 2
      disk: /dev/vdc
""",
).replace(
    """        scsiSn: TANDEM0001
""",
    """        scsiSn: TANDEM0001
      - lun: 2
        resource: iscsi2
        scsiId: tandem-iscsi2
        scsiSn: TANDEM0002
""",
)


WITNESS_TEXT = (ROOT / "specs" / "witness.yaml").read_text()


def witness_spec(*, watchdog: bool = True) -> StorageCluster:
    """specs/witness.yaml: the demo with the etcd witness (simulated), and with its watchdog
    (the fence against agent pauses) unless ``watchdog`` is False."""
    text = WITNESS_TEXT
    if not watchdog:
        dog = "    watchdog:\n      device: /dev/watchdog\n      timeout: 3.5\n"
        assert text.count(dog) == 1, "specs/witness.yaml changed shape"
        text = text.replace(dog, "")
    return load_spec(text, filename="specs/witness.yaml")


def two_resource_spec() -> StorageCluster:
    """The demo spec with a second resource (iscsi2, exported as LUN 2), without the simulated
    hypervisor: its tests are about the DRBD / VIP / target chains (the PBDs are covered on the
    one-resource demo)."""
    assert TWO_RESOURCE_TEXT.count("resource: iscsi2") == 1, "specs/demo.yaml changed shape"
    assert TWO_RESOURCE_TEXT.count("hypervisor: sim") == 1, "specs/demo.yaml changed shape"
    text = TWO_RESOURCE_TEXT.replace("hypervisor: sim", "hypervisor: none")
    return load_spec(text, filename="two-resources.yaml")


NO_SLEEP_RETRY = RetryPolicy(attempts=3, backoff=0.01, backoff_max=0.01)


@dataclass
class SimCluster:
    spec: StorageCluster
    world: World
    adapters: dict[str, NodeAdapters]
    sleeps: list[float]

    @classmethod
    def create(cls, spec: StorageCluster, tmp: Path, *, world: World | None = None) -> SimCluster:
        w = world or World.fresh(spec)
        store = WorldStore(w)
        adapters = {n: build_adapters(spec, n, tmp, store=store) for n in spec.node_names}
        return cls(spec, w, adapters, [])

    def tick(self, node: str, *, dry_run: bool = False) -> TickReport:
        return tick(
            self.spec,
            self.adapters[node],
            dry_run=dry_run,
            retry=NO_SLEEP_RETRY,
            sleep=self.sleeps.append,
        )

    def converge(self, rounds: int = 6) -> int:
        """Tick both nodes alternately until neither has work; returns the rounds used."""
        for i in range(1, rounds + 1):
            a, b = (self.tick(n) for n in self.spec.node_names)
            if not a.plan.actions and not b.plan.actions:
                return i
        raise AssertionError(f"not converged after {rounds} rounds")
