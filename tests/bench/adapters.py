"""Benchmark: how long the VIP and liveness adapters' waits take, over the unit tests' fakes
(not collected by pytest: no test_ prefix; needs no root).

    python tests/bench/adapters.py [--rounds N]

The unit tests in tests/adapters/test_vip_parse.py and test_runner.py assert the behaviour
(probes and pings run concurrently, an answer ends an ARP wait, "free" only after the whole
window, announce returns after its first round, a timed-out command is killed); the figures
that used to be asserted there as time limits are printed here, min / median / max of N rounds:

- IpVip.observe of three VIPs whose fake probes take 50 ms each (concurrent: ~50 ms, one after
  another it would be ~150 ms);
- InProcessArp.probe answered at once (timeout 0.5 s) and free (timeout 40 ms, 2 frames);
- InProcessArp.announce: time until it returns (the first round only; 3 rounds, 50 ms apart);
- PingLiveness.observe of 5 addresses whose fake pings take 100 ms each;
- Runner.run of `sleep 30` with a 0.2 s timeout: time until the TransientError.

With ``--lab`` (root and the lab's packages; skipped with the reason otherwise) it also brings
up a namespace lab and measures the real VIP adapters in node1's namespace, as the factory
builds them for transport netns, side by side: ``IpVip`` (``ip`` through the runner) and
``NetlinkVip`` (one pyroute2 handle into the namespace) for observe (VIP held, so no ARP probe),
add and remove, with the processes each operation started (``Runner.spawned``) and, for
NetlinkVip, the one-off cost of opening its handle.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.liveness import PingLiveness
from adapters.runner import Runner
from adapters.vip import IpVip, ProbeResult, arp_frame, probe_packet
from reconciler.core.errors import TransientError
from tests.adapters.test_vip_parse import (
    DOWN,
    MAC1,
    MAC2,
    UP,
    VIP_IP,
    FakeArp,
    FakeSocket,
    FakeSocketArp,
    fixture,
    ip_addr_runner,
    ping_runner,
    reply_from,
    vip,
)


def _ms(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def vip_observe() -> float:
    arp = FakeArp(answers={"198.51.100.4": ProbeResult(True, detail="answered")}, delay=0.05)
    adapter = IpVip(ip_addr_runner(fixture("node-without-vip.json")), arp=arp, probe_timeout=0.02)  # type: ignore[arg-type]
    return _ms(lambda: adapter.observe([vip(), vip("198.51.100.4/24"), vip("198.51.100.5/24")]))


def probe_answered() -> float:
    own = arp_frame(MAC2, probe_packet(MAC2, VIP_IP))
    sock = FakeSocket([(own, socket.PACKET_OUTGOING), (reply_from(MAC1), socket.PACKET_HOST)])
    return FakeSocketArp(sock).probe("eth0", VIP_IP, timeout=0.5).seconds * 1000


def probe_free() -> float:
    sock = FakeSocket([(arp_frame(MAC2, probe_packet(MAC2, VIP_IP)), socket.PACKET_OUTGOING)])
    return _ms(lambda: FakeSocketArp(sock, probes=2).probe("eth0", VIP_IP, timeout=0.04))


def announce_returns() -> float:
    arp = FakeSocketArp(FakeSocket([]), count=3, interval=0.05)
    took = _ms(lambda: arp.announce("eth0", VIP_IP))
    arp.drain(timeout=2)
    return took


def ping_observe() -> float:
    table = {"10.0.0.2": DOWN, "10.0.9.1": UP, "10.0.9.2": DOWN, "10.0.9.3": UP, "10.0.9.4": UP}
    adapter = PingLiveness(
        ping_runner(table, delay=0.1),  # type: ignore[arg-type]
        peer_addresses=["10.0.0.2"],
        heuristics=["10.0.9.1", "10.0.9.2", "10.0.9.3", "10.0.9.4"],
    )
    return _ms(adapter.observe)


def runner_timeout() -> float:
    def run() -> None:
        try:
            Runner().run(["sleep", "30"], timeout=0.2)
        except TransientError:
            return
        raise AssertionError("sleep 30 was not stopped by its timeout")

    return _ms(run)


CASES: tuple[tuple[str, Callable[[], float]], ...] = (
    ("IpVip.observe, 3 VIPs x 50 ms probes", vip_observe),
    ("InProcessArp.probe answered (timeout 500 ms)", probe_answered),
    ("InProcessArp.probe free (timeout 40 ms)", probe_free),
    ("InProcessArp.announce returns (3 rounds)", announce_returns),
    ("PingLiveness.observe, 5 x 100 ms pings", ping_observe),
    ("Runner.run sleep 30, timeout 200 ms", runner_timeout),
)


def _report(name: str, values: list[float], extra: str = "") -> None:
    print(
        f"{name:<46} min {min(values):7.1f}  median {statistics.median(values):7.1f}  "
        f"max {max(values):7.1f} ms{extra}"
    )


def lab_vip(rounds: int) -> None:
    """IpVip and NetlinkVip in node1's namespace of a fresh lab (see the module docstring)."""
    from adapters.vip import CommandArp
    from adapters.vip.netlink import NetlinkVip
    from tests.lab.conftest import lab_unavailable, unique_prefix
    from tests.lab.netns import VIP, Lab

    if reason := lab_unavailable():
        print(f"lab figures skipped: {reason}")
        return
    the_vip = vip(VIP)
    with Lab(unique_prefix()) as lab:
        lab.up()
        ip_runner = lab.runner("node1")
        nl_runner = lab.runner("node1")
        adapters = {
            "IpVip": IpVip(ip_runner, arp=CommandArp(ip_runner)),
            "NetlinkVip": NetlinkVip(namespace=lab.ns("node1"), arp=CommandArp(nl_runner)),
        }
        runners = {"IpVip": ip_runner, "NetlinkVip": nl_runner}
        netlink = adapters["NetlinkVip"]
        assert isinstance(netlink, NetlinkVip)
        opened = _ms(lambda: netlink.observe([vip("198.51.100.99/24", "lo")]))
        print(f"{'NetlinkVip first request (opens the handle)':<46} {opened:7.1f} ms")
        for name, adapter in adapters.items():
            runner = runners[name]
            ops: dict[str, Callable[[], object]] = {
                "add": lambda a=adapter: a.add(the_vip),  # type: ignore[misc]
                "observe": lambda a=adapter: a.observe([the_vip]),  # type: ignore[misc]
                "remove": lambda a=adapter: a.remove(the_vip),  # type: ignore[misc]
            }
            times: dict[str, list[float]] = {op: [] for op in ops}
            spawns: dict[str, int] = dict.fromkeys(ops, 0)
            for _ in range(rounds):
                for op, call in ops.items():
                    before = runner.spawned
                    times[op].append(_ms(call))
                    spawns[op] += runner.spawned - before
            for op, values in times.items():
                _report(f"lab {name}.{op}", values, f"  {spawns[op] / rounds:g} processes/op")
        netlink.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--lab", action="store_true", help="also the real VIP adapters in a lab")
    args = parser.parse_args()
    for name, case in CASES:
        _report(name, [case() for _ in range(args.rounds)])
    if args.lab:
        lab_vip(args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
