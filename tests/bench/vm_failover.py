#!/usr/bin/env python3
"""VM failover benchmark: planned swap and primary crash with real DRBD 8.4 in qemu (TCG),
agents vs. the hand-scripted floor, over several rounds.

    python tests/bench/vm_failover.py [--swaps 5] [--crashes 2] [--json results.json]

It uses the VM tier's lab and cluster (tests/vm/): three VMs, the real adapters on the
``VmConsole`` transport, one agent thread per node (``tickInterval`` 0.1 s). Each swap round
moves the primary with the agents (pool.conf flipped) and back by hand (agents paused); each
crash round kills the primary with the agents, restarts it, then kills the other one and fails
over by hand. A time ends when the client VM reads a block written before the event through
the VIP, served by the new primary (its ARP entry for the VIP is that node's MAC).

Not a test: pytest does not collect it (no ``test_`` names), nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.vm.cluster import NODES, RESOURCE, VmCluster, timeline
from tests.vm.image import build_image
from tests.vm.machine import VmLab

now = time.monotonic


def bring_up(c: VmCluster) -> None:
    for n in NODES:
        c.provision(n, create_md=True)
    c.set_master("node1")
    c.start_agents()
    c.wait_drbd("node1", lambda r: r.conn.value == "Connected", 90, "connected")
    c.skip_initial_sync("node1")
    c.wait_roles("node1", timeout=90)


def swap_round(c: VmCluster) -> tuple[float, float]:
    """Agents node1 -> node2, then by hand node2 -> node1."""
    w = c.client_write()
    assert w is not None
    started, wall = now(), time.time()
    c.set_master("node2")
    agent = (now() - started) + c.wait_client_read(w, via="node2")
    TIMELINES.append(("swap", agent, timeline(c.agents, wall, wall + agent)))
    c.wait_roles("node2")
    with c.agents_paused():
        started = now()
        c.demote_by_hand("node2")
        c.promote_by_hand("node1")
        floor = (now() - started) + c.wait_client_read(w, via="node1")
        c.set_master("node1")
    c.wait_roles("node1")
    c.reap_floor_processes()
    return agent, floor


def restart(c: VmCluster, node: str, by_hand: bool) -> None:
    c.lab.restart(node)
    c.provision(node)
    if by_hand:
        c.runners[node].run(["modprobe", "drbd"])
        c.runners[node].run(["drbdadm", "adjust", RESOURCE])
    else:
        c.fresh_agent(node).start()


def crash_round(c: VmCluster) -> tuple[float, float]:
    """Agents: kill node1, node2 takes over; node1 rejoins. Floor: kill node2, node1 by hand."""
    writer = c.writer()
    writer.wait_acked(2)
    started, wall = now(), time.time()
    c.lab["node1"].kill()
    c.agents["node1"].request_stop()
    c.set_master("node2")
    writer.stop()
    agent = (now() - started) + c.wait_client_read(writer.acked[-1], via="node2")
    survivor = {"node2": c.agents["node2"]}
    TIMELINES.append(("crash", agent, timeline(survivor, wall, wall + agent)))
    writer.join()
    c.agents["node1"].stop()
    restart(c, "node1", by_hand=False)
    c.wait_roles("node2", timeout=180)

    writer = c.writer()
    writer.wait_acked(2)
    with c.agents_paused():
        started = now()
        c.lab["node2"].kill()
        writer.stop()
        c.wait_drbd("node1", lambda r: not r.conn.is_connected, 30, "peer loss")
        c.promote_by_hand("node1")
        floor = (now() - started) + c.wait_client_read(writer.acked[-1], via="node1")
        writer.join()
        restart(c, "node2", by_hand=True)
        c.wait_drbd("node2", lambda r: r.disk.value == "UpToDate", 180, "resynced")
        c.set_master("node1")
        c.fresh_agent("node2")
    c.wait_roles("node1", timeout=180)
    c.reap_floor_processes()
    return agent, floor


TIMELINES: list[tuple[str, float, str]] = []  # (kind, agent seconds, the agents' ticks)


def summary(name: str, rounds: list[tuple[float, float]]) -> dict[str, object]:
    agents = [a for a, _ in rounds]
    floors = [f for _, f in rounds]
    ma, mf = statistics.median(agents), statistics.median(floors)
    print(f"{name:6s} agent " + " ".join(f"{a:5.2f}" for a in agents) + f"  median {ma:5.2f}s")
    print(f"{'':6s} floor " + " ".join(f"{f:5.2f}" for f in floors) + f"  median {mf:5.2f}s")
    print(f"{'':6s} ratio of medians {ma / mf:4.2f}x")
    return {"agent": agents, "floor": floors, "ratio": ma / mf}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument("--crashes", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--timelines", action="store_true", help="print each round's agent ticks (per step)"
    )
    args = parser.parse_args()
    lab = VmLab(build_image(log=True))
    results: dict[str, object] = {}
    try:
        lab.up()
        assert lab.directory is not None
        print("boot: " + ", ".join(f"{k} {v:.1f}s" for k, v in lab.boot_seconds.items()))
        c = VmCluster(lab, lab.directory)
        try:
            bring_up(c)
            idle = c.idle_cost(5.0)
            print(idle)
            results["idle"] = idle
            swaps = [swap_round(c) for _ in range(args.swaps)]
            results["swap"] = summary("swap", swaps)
            crashes = [crash_round(c) for _ in range(args.crashes)]
            if crashes:
                results["crash"] = summary("crash", crashes)
        finally:
            c.stop_agents()
    finally:
        lab.down()
    if args.timelines:
        for kind, seconds, text in TIMELINES:
            print(f"{kind} {seconds:.2f}s: agent ticks (start, node, tick length, actions):")
            print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
