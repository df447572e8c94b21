"""The real VIP and liveness adapters in the namespace lab (iproute2, AF_PACKET, arping, ping).

Everything runs inside the lab's namespaces: commands through ``lab.runner(KEY)``, and the
in-process ARP tool through ``python -m tests.lab.vipcli ...`` started *inside* a node's namespace
(the production arrangement: the agent runs on the node). Nothing here opens a packet socket in
the test process itself, whose namespace is the machine's real one.

Measured times are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import adapters
from adapters.liveness import PingLiveness
from adapters.runner import CommandResult, Runner
from adapters.vip import CommandArp, IpVip, parse_ip_addr_json
from reconciler.core.spec import Vip
from tests.lab.netns import VIP, VIP_IP, Lab
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

REPO = Path(adapters.__file__).resolve().parent.parent
FREE_IP = "198.51.100.4"
UNUSED_IP = "198.51.100.77"
PROBE_MS = 30.0


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


@dataclass
class CountingRunner(Runner):
    """The real runner, recording each command and how many were in flight at once."""

    calls: list[list[str]] = field(default_factory=list)
    max_active: int = 0
    _active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, argv: Sequence[str], **kw: Any) -> CommandResult:
        with self._lock:
            self.calls.append(list(argv))
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        try:
            return super().run(argv, **kw)
        finally:
            with self._lock:
                self._active -= 1


def adapter(lab: Lab, key: str) -> IpVip:
    """An IpVip acting in ``key``'s namespace; its ARP tool goes through the same runner."""
    runner = lab.runner(key)
    return IpVip(runner, arp=CommandArp(runner))


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
    # One `ip` call plus two concurrent 30 ms probes: the figure is tests/bench/lab.py's.


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
    # Against the probe's own window (how long each took: tests/bench/lab.py).
    assert max(answered) < PROBE_MS, "an answer must end the wait early"
    assert min(free) >= PROBE_MS, "'free' only after the whole window"


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
    seen_at = wait_for(
        "the client to learn node2's MAC",
        lambda: time.monotonic() if lab.neigh("client", VIP_IP) == lab.mac("node2") else None,
        timeout=5.0,  # includes the interpreter's start-up
        interval=0.002,  # the time it happened is measured
    )
    assert proc.wait(timeout=10) == 0
    report = json.loads(lab.path("announce.json").read_text())
    assert seen_at is not None, "the client never learnt node2's MAC"
    # announce() returned before the later rounds (they went out in the background, 200 ms
    # apart, before the tool's drain ended); the figures: tests/bench/lab.py.
    assert report["total_ms"] - report["ms"] >= 2 * 200, "later rounds went out in the background"
    assert seen_at >= report["t_started"]


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
    arp.announce("eth0", VIP_IP)
    assert arp.pending() == 1  # returned with arping still running: it does not block the tick
    assert arp.drain(timeout=6.0), "arping -U -c 3 should finish by itself"
    assert arp.pending() == 0


def test_ping_liveness(lab: Lab) -> None:
    base = lab.runner("node1")
    runner = CountingRunner(transport=base.transport, timeout=base.timeout)
    live = PingLiveness(
        runner,
        peer_addresses=[lab.addr("node2"), "198.51.100.130"],
        heuristics=[lab.addr("client"), UNUSED_IP],
        timeout=0.5,
    )
    got = live.observe()
    assert got.peer_reachable is True
    assert (got.heuristics_ok, got.heuristics_total) == (1, 2)
    # The four pings were in flight together (each bounded by -W 0.5); durations:
    # tests/bench/lab.py.
    assert runner.max_active == 4, "pings run concurrently"
    assert all(c[:5] == ["ping", "-c", "1", "-W", "0.5"] for c in runner.calls)

    dead = PingLiveness(lab.runner("node1"), peer_addresses=[UNUSED_IP], timeout=0.5)
    assert dead.observe().peer_reachable is False
