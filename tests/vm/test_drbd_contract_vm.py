"""The real half of the DRBD adapter contract: every test function of
``tests/contract/test_drbd_contract.py``, collected here as well, against real DRBD 8.4 in the
VM tier's node VMs, twice: ``RealDrbd`` on each node's console runner (as the scenarios'
one-shot ``reconcile`` commands use it, one status command per observe) and ``EventFedDrbd``
(as the scenarios' agents use it: one ``drbdsetup events2`` stream per node through the
console transport's ``stream``; skipped, with the reason, on a transport that cannot
stream).

The module borrows the session's VMs (``vm_cluster``) before the scenarios do, and hands them
back with DRBD down. Once per module the resource is configured on both nodes with fresh
metadata, brought up, the initial sync skipped (the disks are blank) and brought down again:
the contract's starting point, a cold cluster whose disks are UpToDate and in sync. After each
test ``RealDrbdEnv.reset`` demotes and downs both nodes.

    pytest -m vm tests/vm/test_drbd_contract_vm.py     # boots the lab (~10-15 s) on its own
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.core.observed import ConnState, DiskState
from tests.contract import test_drbd_contract as contract
from tests.contract.envs import RealDrbdEnv
from tests.vm.cluster import NODES, RESOURCE, VmCluster

pytestmark = pytest.mark.vm

CONTRACT_TESTS: dict[str, Any] = {
    name: test for name, test in vars(contract).items() if name.startswith("test_")
}
globals().update(CONTRACT_TESTS)  # pytest collects them here too, with this module's fixtures


def env_of(cluster: VmCluster, *, event_fed: bool = False) -> RealDrbdEnv:
    return RealDrbdEnv({n: cluster.runners[n] for n in NODES}, cluster.res, event_fed=event_fed)


@pytest.fixture(scope="module")
def cold_cluster(vm_cluster: VmCluster) -> Iterator[VmCluster]:
    """Both nodes configured, metadata in sync, DRBD down (see the module docstring)."""
    c = vm_cluster
    for n in NODES:
        c.provision(n, create_md=True)
    for n in NODES:
        c.runners[n].run(["modprobe", "drbd"])
        c.runners[n].run(["drbdadm", "adjust", RESOURCE])
    c.wait_drbd("node1", lambda r: r.conn is ConnState.CONNECTED, 60, "Connected")
    c.skip_initial_sync("node1")
    for n in NODES:
        c.wait_drbd(
            n,
            lambda r: r.disk is DiskState.UPTODATE and r.peer_disk is DiskState.UPTODATE,
            60,
            "UpToDate/UpToDate",
        )
    env_of(c).reset()
    try:
        yield c
    finally:
        env_of(c).reset()  # the next module gets the VMs with DRBD down


@pytest.fixture(params=["polling", "events2"])
def drbd_env(request: pytest.FixtureRequest, cold_cluster: VmCluster) -> Iterator[RealDrbdEnv]:
    event_fed = request.param == "events2"
    if event_fed and not all(cold_cluster.runners[n].can_stream for n in NODES):
        pytest.skip(
            "the VM console transport cannot stream: the event-fed "
            "DRBD adapter needs Runner.stream through it"
        )
    env = env_of(cold_cluster, event_fed=event_fed)
    try:
        yield env
    finally:
        env.close()
        env.reset()
