"""The fake XAPI pool over a real target: ``PBD.plug`` succeeds only when tgtd really serves
the LUN on the VIP as seen from the host's namespace (``iscsi-inq`` through the lab helper);
tandem's ``XapiHypervisor`` drives it through the real ``XenAPI`` SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.tgt import TgtAdapter
from adapters.xapi import XapiClient, XapiHypervisor
from adapters.xapi.session import Credentials
from reconciler.core.errors import TransientError
from reconciler.core.spec import Lun, Resource, Target, Vip
from tests.fakes.lvm import FakeLvmRunner
from tests.fakes.xapi import FakeXapiPool
from tests.lab.netns import VIP, VIP_IP, Lab
from tests.lab.xapi import iscsi_probe

pytestmark = pytest.mark.lab

IQN = "iqn.2024-01.test.lab:xapi"
LUN1 = Lun(lun=1, resource="r0", scsi_id="tandem-r0", scsi_sn="SN0001")
TARGET = Target(iqn=IQN, luns=(LUN1,))
R0 = Resource(name="r0", minor=0, disk="/dev/sdb")
SPEC_VIP = Vip.model_validate({"address": VIP, "interface": "eth0"})


@pytest.fixture
def fake(lab: Lab) -> Iterator[FakeXapiPool]:
    pool = FakeXapiPool.start()
    pool.pool.probe = iscsi_probe(lab)
    try:
        yield pool
    finally:
        pool.stop()


def hypervisor(fake: FakeXapiPool, node: str) -> XapiHypervisor:
    client = XapiClient(url=fake.url(node), credentials=Credentials("root", "secret"), timeout=10)
    return XapiHypervisor(client, host_name=node, runner=FakeLvmRunner())


def serve(lab: Lab, tmp_path: Path) -> TgtAdapter:
    backing = tmp_path / "r0.img"
    with open(backing, "wb") as fh:
        fh.truncate(16 << 20)
    tgt = TgtAdapter(
        lab.runner("node1"),
        control_dir=str(tmp_path / "tgt"),
        portal=VIP_IP,
        backing_for=lambda _r: str(backing),
    )
    tgt.start(TARGET)
    tgt.export_lun(TARGET, LUN1, R0)
    lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])
    return tgt


def test_pbd_plug_waits_for_the_real_target(lab: Lab, fake: FakeXapiPool, tmp_path: Path) -> None:
    sr = fake.pool.add_iscsi_sr("tandem", target=VIP_IP, iqn=IQN)
    node2 = hypervisor(fake, "node2")
    (pbd2,) = node2.observe(TARGET, [SPEC_VIP]).pbds
    with pytest.raises(TransientError, match="SR_BACKEND_FAILURE_141"):
        node2.plug(pbd2.uuid)  # nothing serves on the VIP yet
    assert not fake.pool.pbd_of("node2", sr).currently_attached

    tgt = serve(lab, tmp_path)
    try:
        for node in ("node1", "node2"):
            adapter = hypervisor(fake, node)
            (pbd,) = adapter.observe(TARGET, [SPEC_VIP]).pbds
            adapter.plug(pbd.uuid)
            assert adapter.observe(TARGET, [SPEC_VIP]).pbds[0].attached is True
    finally:
        tgt.stop(TARGET)

    # The target is gone: a re-plug unplugs, then cannot plug again.
    with pytest.raises(TransientError, match="SR_BACKEND_FAILURE_141"):
        node2.replug(pbd2.uuid)
    assert not fake.pool.pbd_of("node2", sr).currently_attached
