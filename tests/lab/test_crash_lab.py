"""A real crash in the namespace lab: node1 serves with the static role source (node1
preferred) and the quorum policy (the client is the heuristic address); the client writes;
node1 crashes (links down, its agent and tgtd SIGKILLed by PID: nothing tells node2). node2
must notice by itself (its resident pinger: node1 silent on both links; its simulated DRBD:
the connection lost because node1's replication address went silent) and take over, and the
client must read every write it had acknowledged through node2.

Figures (crash to the first verified read, against keepalived) are printed by
tests/bench/failover.py, never asserted here. Cleanup (agents, tgtd, the lab) always runs.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.factory import world_store
from adapters.pinger import Pinger
from adapters.wake import Wakeup
from tests.lab.agents import AgentCluster, pids_in, reconcile_command
from tests.lab.agents import links_down as agents_links_down
from tests.lab.netns import VIP_IP, Lab
from tests.lab.specs import IQN, LUN, RESOURCE, LabCluster
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

BLOCK = 64 << 10
URL = f"iscsi://{VIP_IP}:3260/{IQN}/{LUN}"


@pytest.fixture
def static_agents(lab: Lab) -> Iterator[AgentCluster]:
    try:
        reconcile_command()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    root = Path(tempfile.mkdtemp(prefix="tdmcr"))  # short: tgtd's control socket path
    cluster = AgentCluster(lab, LabCluster.create(root, static=True))
    try:
        yield cluster
    finally:
        try:
            cluster.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def pattern(i: int) -> str:
    return f"0x{i % 254 + 1:02x}"


def client_write(lab: Lab, i: int) -> bool:
    """One write of block ``i`` with its own pattern; True when the target acknowledged it."""
    argv = ["qemu-io", "-f", "raw", URL, "-c", f"write -P {pattern(i)} {i * BLOCK} {BLOCK}"]
    try:
        res = lab.run("client", argv, check=False, timeout=5)
    except Exception:  # the command hung past its timeout: not acknowledged
        return False
    text = (res.stdout + res.stderr).lower()
    return res.ok and "failed" not in text and "error" not in text


def node2_serves(agents: AgentCluster) -> bool:
    view = agents.view("node2")
    return view.primary and view.vip and view.serving


def test_a_crashed_primary_is_detected_by_the_survivor_which_takes_over(
    static_agents: AgentCluster, lab: Lab
) -> None:
    agents = static_agents
    agents.start("node1")
    agents.start("node2")
    wait_for(
        "node1 to serve (static role source, preferred node)",
        lambda: (v := agents.view("node1")).primary and v.vip and v.serving,
        timeout=15,
    )
    assert not node2_serves(agents)

    # The client writes block after block until the crash; only acknowledged writes count.
    acked: list[int] = []
    crashed = threading.Event()

    def writer() -> None:
        i = 0
        while not crashed.is_set():
            if client_write(lab, i):
                acked.append(i)
            i += 1

    thread = threading.Thread(target=writer, name="client-writer")
    thread.start()
    try:
        wait_for("the client to have written", lambda: len(acked) >= 5, timeout=15)
        agents.crash("node1")
    finally:
        crashed.set()
        thread.join(timeout=10)
    assert not pids_in(lab, "node1"), "the crash left processes on node1"

    # node2 notices by itself and takes over.
    try:
        wait_for("node2 to take over", lambda: node2_serves(agents), timeout=20, interval=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{agents.diagnosis()}") from None

    # The client reads every acknowledged write through node2 (its ARP entry moved there).
    reads = [f"read -P {pattern(i)} {i * BLOCK} {BLOCK}" for i in acked]
    wait_for(
        "a verified client read through node2",
        lambda: client_write_read_ok(agents, reads[-1:]),
        timeout=15,
        interval=0.1,
    )
    agents.client_io(*reads, timeout=30)
    assert lab.neigh("client", VIP_IP) == lab.mac("node2")

    # How node2 knew: the simulated DRBD lost its connection because node1's replication
    # address went silent (seen by node2's pinger), and node2 promoted on the quorum policy.
    with world_store(agents.spec, agents.files.state_dir, read_only=True).transaction() as world:
        assert not world.replication_link
        assert any(
            "node2: node1's replication address stopped answering" in e for e in world.events
        )
        assert not world.nodes["node2"].resources[RESOURCE].connected
    applied = agents.applied("node2")
    assert "promote" in applied, applied
    promote = next(
        a for r in agents.reports("node2") for a in r["applied"] if a["kind"] == "promote"
    )
    assert "peer is unreachable" in promote["reason"], promote
    assert "(quorum)" in promote["reason"], promote


def client_write_read_ok(agents: AgentCluster, reads: list[str]) -> bool:
    try:
        agents.client_io(*reads, timeout=5)
    except AssertionError:
        return False
    return True


def test_the_pinger_from_outside_the_namespace_sees_the_peer_die(lab: Lab) -> None:
    """Transport netns: the agent runs outside the node's namespace, so the pinger's thread
    enters it (setns) before it opens its socket; probes leave from node2's own links."""
    wakeup = Wakeup()
    unused = "198.51.100.77"  # in the lab's range, nobody holds it
    pinger = Pinger(
        peer_addresses=["198.51.100.1", "198.51.100.129"],
        heuristics=["198.51.100.10", unused],
        interval=0.05,
        timeout=0.05,
        misses=3,
        wakeup=wakeup,
        namespace=lab.ns("node2"),
    )
    try:
        wait_for(
            "node1 and the client to answer node2's pinger",
            lambda: (x := pinger.observe()).peer_reachable is True and x.heuristics_ok == 1,
            timeout=5,
        )
        assert pinger.observe().heuristics_total == 2
        wait_for(  # unknown until it missed 3 rounds, then not answering
            "the unused address to count as silent",
            lambda: pinger.answers([unused, "198.51.100.129"]) == (False, True),
            timeout=5,
        )
        wakeup.clear()
        agents_links_down(lab, "node1")
        wait_for(
            "node2's pinger to find node1 dead",
            lambda: pinger.observe().peer_reachable is False,
            timeout=5,
        )
        assert wakeup.pending() == "peer liveness"
        assert pinger.observe().heuristics_ok == 1  # the client still answers node2
        assert pinger.error is None
        # A fresh pinger (a `reconcile --once` run): its first observation waits until every
        # address is known, so the dead peer is dead at once, not "unknown".
        once = Pinger(
            peer_addresses=["198.51.100.1"],
            interval=0.05,
            timeout=0.05,
            misses=3,
            namespace=lab.ns("node2"),
        )
        try:
            assert once.observe().peer_reachable is False
        finally:
            once.close()
    finally:
        pinger.close()
    assert pinger.observe().peer_reachable is None  # closed: unknown, never "dead"
