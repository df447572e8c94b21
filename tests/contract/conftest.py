"""Fixtures of the adapter contract suite: every environment is parametrised ``sim``/``real``
(see ``envs.py`` for what an environment offers and why)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.core.spec import StorageCluster
from tests.contract.envs import (
    FAKE_EVENTS2,
    NETLINK_LOCAL,
    NETLINK_NETNS,
    REAL,
    REAL_DRBD,
    REAL_LAB,
    SIM,
    DrbdEnv,
    FakeDrbdEnv,
    LocalNetlinkVipEnv,
    NetlinkVipEnv,
    RealRoleEnv,
    RealTargetEnv,
    RealVipEnv,
    RoleEnv,
    SimDrbdEnv,
    SimRoleEnv,
    SimTargetEnv,
    SimVipEnv,
    TargetEnv,
    VipEnv,
)
from tests.contract.witness_envs import RealWitnessEnv, SimWitnessEnv, WitnessEnv
from tests.contract.xapi_envs import XAPI, XapiRoleEnv
from tests.etcd_cluster import etcd  # noqa: F401  (the session's real etcd)
from tests.lab.conftest import (  # noqa: F401  (the lab fixtures and their failure hook)
    lab,
    lab_factory,
    pytest_runtest_makereport,
)
from tests.lab.specs import LabCluster


@pytest.fixture
def cluster(tmp_path: Path) -> StorageCluster:
    """The lab cluster's spec (node1/node2, resource iscsi1): the simulated world's shape."""
    return LabCluster.create(tmp_path / "cluster").spec()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory (tgtd's control socket path must fit in sun_path)."""
    path = Path(tempfile.mkdtemp(prefix="tdmct"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=[SIM, REAL_LAB, NETLINK_NETNS, NETLINK_LOCAL])
def vip_env(request: pytest.FixtureRequest, cluster: StorageCluster) -> Iterator[VipEnv]:
    """sim: SimVip; real: IpVip in the node's namespace; netlink-netns / netlink-local:
    NetlinkVip as built for transport netns (handle into the namespace, arping) and local
    (inside the namespace, in-process ARP)."""
    if request.param == SIM:
        yield SimVipEnv(cluster)
        return
    kinds = {REAL: RealVipEnv, "netlink-netns": NetlinkVipEnv, "netlink-local": LocalNetlinkVipEnv}
    env = kinds[request.param](request.getfixturevalue("lab"))
    try:
        yield env
    finally:
        env.close()


@pytest.fixture(params=[SIM, REAL_LAB])
def target_env(
    request: pytest.FixtureRequest, cluster: StorageCluster, short_tmp: Path
) -> Iterator[TargetEnv]:
    if request.param == SIM:
        yield SimTargetEnv(cluster)
        return
    env = RealTargetEnv(request.getfixturevalue("lab"), cluster, short_tmp)
    try:
        yield env
    finally:
        env.close()


@pytest.fixture(params=[SIM, REAL, XAPI])
def role_env(
    request: pytest.FixtureRequest, cluster: StorageCluster, tmp_path: Path
) -> Iterator[RoleEnv]:
    if request.param == SIM:
        yield SimRoleEnv(cluster)
    elif request.param == REAL:
        yield RealRoleEnv(tmp_path / "pool")
    else:
        env = XapiRoleEnv()
        try:
            yield env
        finally:
            env.close()


# The simulated hypervisor's environment joins this list with the simulated PBD model.
@pytest.fixture(params=[SIM, FAKE_EVENTS2, REAL_DRBD])
def drbd_env(
    request: pytest.FixtureRequest,
    cluster: StorageCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[DrbdEnv]:
    if request.param == SIM:
        yield SimDrbdEnv(cluster)
        return
    if request.param == FAKE_EVENTS2:
        env = FakeDrbdEnv(cluster, tmp_path)
        monkeypatch.setenv("PATH", f"{env.path_entry}{os.pathsep}{os.environ['PATH']}")
        try:
            yield env
        finally:
            env.close()
        return
    raise NotImplementedError("the VM tier provides real DRBD")  # pragma: no cover


@pytest.fixture(params=[SIM, REAL])
def witness_env(
    request: pytest.FixtureRequest, cluster: StorageCluster, tmp_path: Path
) -> Iterator[WitnessEnv]:
    if request.param == SIM:
        yield SimWitnessEnv(cluster)
        return
    env = RealWitnessEnv(request.getfixturevalue("etcd"), tmp_path / "state")
    try:
        yield env
    finally:
        env.close()
