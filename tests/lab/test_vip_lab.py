"""The real VIP and liveness adapters in the namespace lab (iproute2, AF_PACKET, arping, ping).

Everything runs inside the lab's namespaces: commands through ``lab.runner(KEY)``, and the
in-process ARP tool through ``python -m tests.lab.vipcli ...`` started *inside* a node's namespace
(the production arrangement: the agent runs on the node). Nothing here opens a packet socket in
the test process itself, whose namespace is the machine's real one.

Measured times are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import adapters
from adapters.liveness import PingLiveness
from adapters.vip import CommandArp, IpVip, parse_ip_addr_json
from reconciler.core.spec import Vip
from tests.lab.netns import VIP, VIP_IP, Lab

pytestmark = pytest.mark.lab

REPO = Path(adapters.__file__).resolve().parent.parent
FREE_IP = "198.51.100.4"
UNUSED_IP = "198.51.100.77"
PROBE_MS = 30.0
# Slack for a loaded CI machine on top of the probe's own bound.
SLACK_MS = 40.0


def vip_cli(lab: Lab, key: str, cmd: str, *args: str, netns: str | None = None) -> dict[str, Any]:
    """Run ``python -m tests.lab.vipcli CMD ARGS`` inside ``key``'s namespace; its JSON output.
    ``--netns`` makes the tool itself check that it is where it should be."""
    argv = [sys.executable, "-m", "tests.lab.vipcli", cmd, "--netns", netns or lab.ns(key), *args]
    res = lab.run(key, argv, env={"PYTHONPATH": str(REPO)}, check=False)
    assert res.rc in (0, 1), res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def addresses(lab: Lab, key: str) -> dict[str, set[str]]:
    return parse_ip_addr_json(lab.run(key, ["ip", "-j", "addr", "show"]).stdout)


def the_vip(address: str = VIP) -> Vip:
    return Vip.model_validate({"address": address, "interface": "eth0"})


def adapter(lab: Lab, key: str) -> IpVip:
    """An IpVip acting in ``key``'s namespace; its ARP tool goes through the same runner."""
    runner = lab.runner(key)
    return IpVip(runner, arp=CommandArp(runner))


def summary(values: list[float]) -> str:
    return (
        f"min {min(values):.1f} / median {statistics.median(values):.1f} / max {max(values):.1f} ms"
    )


def test_add_and_remove_are_idempotent(lab: Lab) -> None:
    node1 = adapter(lab, "node1")
    node1.add(the_vip())
    node1.add(the_vip())
    assert VIP_IP in addresses(lab, "node1")["eth0"]
    observed = vip_cli(lab, "node1", "observe", f"eth0={VIP}")["vips"]
    assert observed == [
        {
            "address": VIP_IP,
            "local": True,
            "answered_elsewhere": None,
            "error": None,
            "holder": None,
        }
    ]

    node1.remove(the_vip())
    node1.remove(the_vip())
    assert VIP_IP not in addresses(lab, "node1")["eth0"]
    assert addresses(lab, "node1")["eth0"] == {lab.addr("node1")}
    observed = vip_cli(lab, "node1", "observe", f"eth0={VIP}")["vips"]
    assert observed == [
        {
            "address": VIP_IP,
            "local": False,
            "answered_elsewhere": False,
            "error": None,
            "holder": None,
        }
    ]


def test_observe_sees_the_vip_held_by_the_peer(lab: Lab) -> None:
    adapter(lab, "node1").add(the_vip())
    got = vip_cli(lab, "node2", "observe", f"eth0={VIP}", f"eth0={FREE_IP}/24")
    held, free = got["vips"]
    assert held["local"] is False and held["answered_elsewhere"] is True
    assert held["error"] is None
    assert lab.mac("node1") in held["holder"]
    assert free == {
        "address": FREE_IP,
        "local": False,
        "answered_elsewhere": False,
        "error": None,
        "holder": None,
    }
    # One `ip` call plus two concurrent 30 ms probes.
    print(f"\nIpVip.observe from node2 (2 VIPs, one held by node1): {got['ms']:.1f} ms")
    assert got["ms"] < 200


def test_probe_answered_and_free_within_the_bound(lab: Lab) -> None:
    adapter(lab, "node1").add(the_vip())
    answered: list[float] = []
    free: list[float] = []
    for _ in range(5):
        got = vip_cli(lab, "node2", "probe", "eth0", VIP_IP)
        assert got["answered"] is True, got
        assert got["mac"] == lab.mac("node1")
        answered.append(got["ms"])
        got = vip_cli(lab, "node2", "probe", "eth0", FREE_IP)
        assert got["answered"] is False, got
        free.append(got["ms"])
    print(f"\nARP probe, answered by node1: {summary(answered)}")
    print(f"ARP probe, free address (waits the full {PROBE_MS:g} ms): {summary(free)}")
    assert max(answered) < PROBE_MS, "an answer must end the wait early"
    assert min(free) >= PROBE_MS
    assert max(free) < PROBE_MS + SLACK_MS


def test_probe_on_a_missing_interface_is_unknown(lab: Lab) -> None:
    got = vip_cli(lab, "node2", "probe", "nope0", VIP_IP)
    assert got["answered"] is None and "nope0" in got["detail"]


def test_announce_moves_the_client_and_does_not_block(lab: Lab) -> None:
    node1, node2 = adapter(lab, "node1"), adapter(lab, "node2")
    node1.add(the_vip())
    assert lab.run("client", ["ping", "-c", "1", "-W", "1", VIP_IP]).ok
    assert lab.neigh("client", VIP_IP) == lab.mac("node1")

    node1.remove(the_vip())
    node2.add(the_vip())
    # Control: moving the address alone leaves the client on the old MAC.
    assert lab.neigh("client", VIP_IP) == lab.mac("node1")

    proc = lab.spawn(
        "node2",
        [
            sys.executable,
            "-m",
            "tests.lab.vipcli",
            "announce",
            "--netns",
            lab.ns("node2"),
            "eth0",
            VIP_IP,
        ],
        env={"PYTHONPATH": str(REPO)},
        log_name="announce.json",
    )
    seen_at = None
    deadline = time.monotonic() + 5.0  # includes the interpreter's start-up
    while time.monotonic() < deadline:
        if lab.neigh("client", VIP_IP) == lab.mac("node2"):
            seen_at = time.monotonic()
            break
        time.sleep(0.002)
    assert proc.wait(timeout=10) == 0
    report = json.loads(lab.path("announce.json").read_text())
    assert seen_at is not None, "the client never learnt node2's MAC"
    switch_ms = (seen_at - report["t_started"]) * 1000
    print(
        f"\nannounce() returned after {report['ms']:.2f} ms (all 3 rounds: "
        f"{report['total_ms']:.0f} ms); client ARP entry -> node2 after {switch_ms:.1f} ms"
    )
    assert report["ms"] < 5, "announce must not block the tick"
    assert report["total_ms"] >= 2 * 200, "later rounds went out in the background"
    assert 0 <= switch_ms < 2000


def test_in_process_arp_refuses_outside_its_namespace(lab: Lab) -> None:
    # Run in node2 but told to belong to node1: no socket is opened, nothing is sent.
    adapter(lab, "node1").add(the_vip())
    got = vip_cli(lab, "node2", "probe", "eth0", VIP_IP, netns=lab.ns("node1"))
    assert got["answered"] is None and "refusing" in got["detail"]
    got = vip_cli(lab, "node2", "announce", "eth0", VIP_IP, netns=lab.ns("node1"))
    assert got["kind"] == "TerminalError" and "refusing" in got["error"]


def test_command_arp_through_the_runner(lab: Lab) -> None:
    adapter(lab, "node1").add(the_vip())
    arp = CommandArp(lab.runner("node2"))
    held = arp.probe("eth0", VIP_IP, timeout=0.03)
    assert held.answered is True and held.mac == lab.mac("node1")
    free = arp.probe("eth0", FREE_IP, timeout=0.03)
    # Stopped by `timeout -s INT` after 30 ms plus the measured start-up allowance, not after
    # arping's whole-second -w: it still said it sent a probe and nobody answered.
    assert free.answered is False and arp.startup is not None
    started = time.monotonic()
    arp.announce("eth0", VIP_IP)
    spawn_ms = (time.monotonic() - started) * 1000
    assert arp.pending() == 1
    print(
        f"\nCommandArp probe: answered {held.seconds * 1000:.1f} ms (with the start-up "
        f"measurement), free {free.seconds * 1000:.0f} ms (start-up allowance "
        f"{arp.startup * 1000:.0f} ms); announce spawn {spawn_ms:.1f} ms"
    )
    assert spawn_ms < 100
    assert arp.drain(timeout=6.0), "arping -U -c 3 should finish by itself"
    assert arp.pending() == 0


def test_ping_liveness(lab: Lab) -> None:
    live = PingLiveness(
        lab.runner("node1"),
        peer_addresses=[lab.addr("node2"), "198.51.100.130"],
        heuristics=[lab.addr("client"), UNUSED_IP],
        timeout=0.5,
    )
    started = time.monotonic()
    got = live.observe()
    took = (time.monotonic() - started) * 1000
    assert got.peer_reachable is True
    assert (got.heuristics_ok, got.heuristics_total) == (1, 2)

    dead = PingLiveness(lab.runner("node1"), peer_addresses=[UNUSED_IP], timeout=0.5)
    started = time.monotonic()
    gone = dead.observe()
    took_dead = (time.monotonic() - started) * 1000
    assert gone.peer_reachable is False
    print(f"\nPingLiveness: 4 addresses {took:.0f} ms; unused address alone {took_dead:.0f} ms")
    assert took < 1500 and took_dead < 1500, "pings run concurrently with a short deadline"
