"""Issue 10, point 3 in the namespace lab: the VIP's address is changed in the spec under two
running ``reconcile --watch`` agents (real iproute2, ARP and tgt; simulated DRBD). The old
address leaves node1's namespace, the new one serves a real iSCSI client (tgtd restarted on
the new portal), and an address an operator added by hand stays: tandem never created it.

Before the change the old address stayed on node1 for good and tgtd kept listening on it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.vip.parse import parse_ip_addr_json
from tests.lab.agents import AgentCluster, reconcile_command
from tests.lab.netns import VIP_IP, Lab
from tests.lab.specs import IQN, LUN, LabCluster
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

NEW_IP = "198.51.100.5"
BY_HAND = "198.51.100.50/24"


@pytest.fixture
def agents(lab: Lab) -> Iterator[AgentCluster]:
    try:
        reconcile_command()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    root = Path(tempfile.mkdtemp(prefix="tdmvc"))  # short: tgtd's socket path (sun_path)
    cluster = AgentCluster(lab, LabCluster.create(root))
    try:
        yield cluster
    finally:
        try:
            cluster.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def addresses(lab: Lab, node: str) -> set[str]:
    out = lab.run(node, ["ip", "-j", "addr", "show", "dev", "eth0"]).stdout
    return set(parse_ip_addr_json(out).get("eth0", set()))


def client_io(lab: Lab, ip: str) -> bool:
    argv = ["qemu-io", "-f", "raw", f"iscsi://{ip}:3260/{IQN}/{LUN}"]
    argv += ["-c", "write -P 0xcd 0 64k", "-c", "read -P 0xcd 0 64k"]
    res = lab.run("client", argv, check=False, timeout=10)
    text = (res.stdout + res.stderr).lower()
    return res.ok and "failed" not in text and "error" not in text


def test_a_changed_vip_address_leaves_the_node_and_the_new_one_serves(
    agents: AgentCluster, lab: Lab
) -> None:
    agents.start("node1")
    agents.start("node2")
    agents.wait_serving("node1")
    assert client_io(lab, VIP_IP)
    lab.run("node1", ["ip", "addr", "add", BY_HAND, "dev", "eth0"])  # an operator's address

    spec = agents.files.spec_path
    edited = spec.read_text().replace(f"{VIP_IP}/24", f"{NEW_IP}/24")
    assert edited != spec.read_text()
    tmp = spec.with_name(".spec.yaml.tmp")
    tmp.write_text(edited)
    os.replace(tmp, spec)  # as an editor saves it

    wait_for(
        "node1 to hold the new address only",
        lambda: NEW_IP in addresses(lab, "node1") and VIP_IP not in addresses(lab, "node1"),
        timeout=15,
    )
    wait_for("the new address to serve iSCSI", lambda: client_io(lab, NEW_IP), timeout=15)
    assert BY_HAND.split("/")[0] in addresses(lab, "node1")  # never created by tandem: kept
    assert VIP_IP not in addresses(lab, "node2") and NEW_IP not in addresses(lab, "node2")
    applied = agents.applied("node1")
    assert "remove-old-vip" in applied, applied
    assert all(r["errors"] == [] for r in agents.reports("node1")[-3:])
