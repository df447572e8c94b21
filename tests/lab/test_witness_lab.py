"""The etcd witness in the namespace lab (issue 15), with a real 3-member etcd.

Where etcd runs: three ``etcd`` processes in the lab's switch namespace (``sw``), each on its
own address on the bridge (198.51.100.21-.23), so the nodes reach them over their ``eth0``
like any host on the segment; children of the test (``lab.spawn``), SIGKILLed by PID, data on
``/dev/shm``. How links are cut: a node's two links down (``eth0`` to the switch, ``repl0`` to
the peer, as ``tests.lab.agents.links_down``) while its agent keeps running: the other node's
probes go unanswered (a partition, not a refused send), and the cut node loses etcd with the
switch. (Routes that drop in the node's own stack are no partition: its sends fail at once,
which a pinger must read as "unknown", never as "peer dead".)

1. Both links between node1 and node2 cut while node1 is also cut from etcd (node1 isolated,
   its agent running): node1 stops
   serving before node2 starts (from the agents' own tick reports: the end of node1's last
   step-down tick is before the start of node2's promoting tick), node2 takes over, and the
   client reads every acknowledged write through node2. The time from the cut to node2's
   promote is printed next to ``ttl + 2 ticks`` (figures are printed, never asserted:
   tests/bench/witness.py measures them).
2. etcd fully down: the connected cluster keeps serving past the lease and still swaps (the
   preferred node changed in the spec under ``--watch``); then, with the serving node2
   isolated, no disconnected promotion happens on node1.

The lab's backing file is shared by both nodes (it stands in for DRBD protocol C), so the
client's reads prove the path, not DRBD's data rules; those are the simulator's invariants.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_cluster import ETCD, SKIP_REASON
from tests.lab.agents import AgentCluster, links_down, reconcile_command
from tests.lab.netns import VIP_IP, Lab
from tests.lab.specs import CLIENT, IQN, LUN, LabCluster
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

MEMBERS = ("198.51.100.21", "198.51.100.22", "198.51.100.23")
INTERVAL = 0.2
TTL = 5.0
RETRY = 0.5
MARGIN = 1.0  # 2 x (0.2 + 2 x 0.5) + 1 = 3.4 <= 5 x 0.99: the timing rule holds
BLOCK = 64 << 10
URL = f"iscsi://{VIP_IP}:3260/{IQN}/{LUN}"
STEP_DOWN = ("remove-vip", "stop-target", "demote", "unexport-lun")


class LabEtcd:
    """Three etcd members in the switch namespace (see the module docstring)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.data = Path(tempfile.mkdtemp(prefix="tandem-lab-etcd-", dir=_shm()))
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(MEMBERS)
        self.started = [False] * len(MEMBERS)
        for ip in MEMBERS:
            lab.run("sw", ["ip", "addr", "add", f"{ip}/24", "dev", "br0"])

    @property
    def endpoints(self) -> list[str]:
        return [f"http://{ip}:2379" for ip in MEMBERS]

    def start(self, i: int) -> None:
        assert ETCD is not None
        initial = ",".join(f"e{j + 1}=http://{ip}:2380" for j, ip in enumerate(MEMBERS))
        ip = MEMBERS[i]
        argv = [
            ETCD,
            "--name",
            f"e{i + 1}",
            "--data-dir",
            str(self.data / f"e{i + 1}"),
            "--listen-client-urls",
            f"http://{ip}:2379",
            "--advertise-client-urls",
            f"http://{ip}:2379",
            "--listen-peer-urls",
            f"http://{ip}:2380",
            "--initial-advertise-peer-urls",
            f"http://{ip}:2380",
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            "existing" if self.started[i] else "new",
            "--initial-cluster-token",
            "tandem-lab",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--log-level",
            "error",
            "--logger",
            "zap",
        ]
        self.procs[i] = self.lab.spawn("sw", argv, log_name=f"etcd-e{i + 1}.log")
        self.started[i] = True

    def start_all(self) -> None:
        for i in range(len(MEMBERS)):
            self.start(i)
        wait_for(
            "the lab's etcd to answer",
            lambda: self.get("/tandem-lab/health") is not None,
            timeout=30,
            interval=0.2,
        )

    def stop_all(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                self.procs[i] = None

    def get(self, key: str) -> str | None:
        """The key's value ("" when absent) through etcdctl in the switch namespace; None when
        no majority answered."""
        res = self.lab.run(
            "sw",
            [
                "etcdctl",
                "--endpoints",
                ",".join(self.endpoints),
                "--command-timeout=2s",
                "get",
                key,
                "--print-value-only",
            ],
            env={"ETCDCTL_API": "3"},
            check=False,
            timeout=10,
        )
        return res.stdout.strip() if res.ok else None

    def close(self) -> None:
        self.stop_all()
        shutil.rmtree(self.data, ignore_errors=True)


def _shm() -> str | None:
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def witness_files(root: Path, endpoints: list[str]) -> LabCluster:
    """The lab cluster (static role source, node1 preferred) with the witness policy."""
    files = LabCluster.create(root, static=True, interval=INTERVAL)
    text = files.spec_path.read_text()
    text = text.replace(
        f"    whenDisconnected: quorum\n    heuristics: [{CLIENT}]\n",
        "    whenDisconnected: witness\n",
    )
    urls = ", ".join(endpoints)
    text = text.replace(
        "  timings:\n",
        f"  witness:\n    endpoints: [{urls}]\n    ttl: {TTL}\n    retryTimeout: {RETRY}\n"
        f"    stepDownMargin: {MARGIN}\n  timings:\n",
    )
    assert "whenDisconnected: witness" in text and "witness:\n" in text
    files.spec_path.write_text(text)
    files.spec()  # the loader's message here if the edit is wrong
    return files


@pytest.fixture
def etcd_lab(lab: Lab) -> Iterator[tuple[LabEtcd, AgentCluster]]:
    if ETCD is None or shutil.which("etcdctl") is None:
        pytest.skip(SKIP_REASON + " (and etcd-client for etcdctl)")
    try:
        reconcile_command()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    etcd = LabEtcd(lab)
    root = Path(tempfile.mkdtemp(prefix="tdmwi"))  # short: tgtd's control socket path
    agents: AgentCluster | None = None
    try:
        etcd.start_all()
        agents = AgentCluster(lab, witness_files(root, etcd.endpoints), interval=INTERVAL)
        yield etcd, agents
    finally:
        try:
            if agents is not None:
                agents.close()
        finally:
            etcd.close()
            shutil.rmtree(root, ignore_errors=True)


def pattern(i: int) -> str:
    return f"0x{i % 254 + 1:02x}"


def client_write(lab: Lab, i: int) -> bool:
    argv = ["qemu-io", "-f", "raw", URL, "-c", f"write -P {pattern(i)} {i * BLOCK} {BLOCK}"]
    try:
        res = lab.run("client", argv, check=False, timeout=5)
    except Exception:
        return False
    text = (res.stdout + res.stderr).lower()
    return res.ok and "failed" not in text and "error" not in text


def serves(agents: AgentCluster, node: str) -> bool:
    view = agents.view(node)
    return view.primary and view.vip and view.serving


def ticks_after(agents: AgentCluster, node: str, since: float) -> list[dict[str, Any]]:
    return [r for r in agents.reports(node) if (r.get("time") or 0) >= since]


def tick_end(report: dict[str, Any]) -> float:
    """When the tick's last step ended at the latest (its start plus every step's time)."""
    steps = sum(float(s["ms"]) for s in report["steps"])
    return float(report["time"]) + steps / 1000 + 0.001


def test_node1_cut_from_node2_and_from_etcd_stops_before_node2_takes_over(
    etcd_lab: tuple[LabEtcd, AgentCluster], lab: Lab
) -> None:
    etcd, agents = etcd_lab
    agents.start("node1")
    agents.start("node2")
    wait_for("node1 to serve (node1 preferred)", lambda: serves(agents, "node1"), timeout=30)
    wait_for(
        "node1 to hold the witness key",
        lambda: etcd.get("/tandem/lab/leader") == "node1",
        timeout=15,
        interval=0.1,
    )
    assert not serves(agents, "node2")

    acked: list[int] = []
    cut = threading.Event()

    def writer() -> None:
        i = 0
        while not cut.is_set():
            if client_write(lab, i):
                acked.append(i)
            i += 1

    thread = threading.Thread(target=writer, name="client-writer")
    thread.start()
    try:
        wait_for("the client to have written", lambda: len(acked) >= 5, timeout=15)
        cut.set()
        thread.join(timeout=10)
        cut_at = time.time()
        links_down(lab, "node1")  # from node2 on both links, and so from etcd and the client
    finally:
        cut.set()
        thread.join(timeout=10)

    try:
        wait_for(
            "node2 to take over",
            lambda: serves(agents, "node2"),
            timeout=TTL * 3 + 30,
            interval=0.05,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{agents.diagnosis()}") from None

    # node1 stopped serving before node2 started: from the agents' own reports.
    node1_down = [
        r
        for r in ticks_after(agents, "node1", cut_at)
        if any(a["kind"] in STEP_DOWN for a in r["applied"])
    ]
    assert node1_down, f"node1 never stepped down\n{agents.tails()}"
    promoted = [
        r
        for r in ticks_after(agents, "node2", cut_at)
        if any(a["kind"] == "promote" for a in r["applied"])
    ]
    assert promoted, f"node2 never promoted\n{agents.tails()}"
    assert max(tick_end(r) for r in node1_down) < float(promoted[0]["time"]), agents.tails()
    view1 = agents.view("node1")
    assert not (view1.vip or view1.serving or view1.primary), view1
    assert etcd.get("/tandem/lab/leader") == "node2"

    took = float(promoted[0]["time"]) - cut_at
    print(
        f"\ncut -> node2's promote: {took:.2f} s (ttl {TTL:g} s + 2 ticks = "
        f"{TTL + 2 * INTERVAL:g} s; settle counted from the disconnect, no watchdog: no hold)"
    )

    # The client reads every acknowledged write through node2 (its ARP entry moved there).
    reads = [f"read -P {pattern(i)} {i * BLOCK} {BLOCK}" for i in acked]
    wait_for(
        "a verified client read through node2",
        lambda: _reads_ok(agents, reads[-1:]),
        timeout=15,
        interval=0.1,
    )
    agents.client_io(*reads, timeout=30)
    assert lab.neigh("client", VIP_IP) == lab.mac("node2")


def last_ticks(agents: AgentCluster, n: int = 3) -> str:
    """The last ``n`` ticks of each agent, compact: role, plan, refusals, failed steps."""
    lines = []
    for node in ("node1", "node2"):
        for r in agents.reports(node)[-n:]:
            failed = [s for s in r.get("steps", []) if not s.get("ok")]
            lines.append(
                f"{node} {r.get('timestamp')} {r.get('desired_role')} ({r.get('role_reason')}) "
                f"actions={[a['kind'] for a in r['actions']]} blocked={r['blocked']} "
                f"failed={failed} errors={r.get('errors')}"
            )
    return "\n".join(lines)


def _reads_ok(agents: AgentCluster, reads: list[str]) -> bool:
    try:
        agents.client_io(*reads, timeout=5)
    except AssertionError:
        return False
    return True


def test_with_etcd_down_a_connected_cluster_swaps_and_no_disconnected_promotion_happens(
    etcd_lab: tuple[LabEtcd, AgentCluster], lab: Lab
) -> None:
    etcd, agents = etcd_lab
    agents.start("node1")
    agents.start("node2")
    wait_for("node1 to serve (node1 preferred)", lambda: serves(agents, "node1"), timeout=30)
    wait_for(
        "node1 to hold the witness key",
        lambda: etcd.get("/tandem/lab/leader") == "node1",
        timeout=15,
        interval=0.1,
    )
    etcd.stop_all()
    down_at = time.time()

    # Connected: node1 keeps serving past its lease (it would have expired on etcd by now).
    wait_for(
        "node1 ticking past the lease",
        lambda: any((r.get("time") or 0) > down_at + TTL + 2 for r in agents.reports("node1")),
        timeout=TTL + 30,
        interval=0.2,
    )
    assert agents.serves_alone("node1", strict=False), agents.tails()

    # ... and still swaps: the preferred node changed in the spec (reloaded under --watch).
    spec = agents.files.spec_path
    swapped = "preferred: node2\n    failback: true"  # failback: move to the preferred node
    spec.write_text(spec.read_text().replace("preferred: node1", swapped))
    try:
        agents.wait_serving("node2", timeout=30, strict=False)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{last_ticks(agents)}") from None

    # Disconnected with etcd down: no promotion on the side that lost its peer.
    cut_at = time.time()
    links_down(lab, "node2")  # node2 (serving) isolated: node1 keeps the switch, etcd is down
    wait_for(
        "node1 ticking disconnected past ttl + settle",
        lambda: any((r.get("time") or 0) > cut_at + 2 * TTL + 2 for r in agents.reports("node1")),
        timeout=2 * TTL + 40,
        interval=0.2,
    )
    promotes = [
        a
        for r in ticks_after(agents, "node1", cut_at)
        for a in r["applied"]
        if a["kind"] == "promote"
    ]
    assert not promotes, promotes
    assert not agents.primary("node1")
    view2 = agents.view("node2")
    print(f"\nnode2 after the cut with etcd down: {view2}")
