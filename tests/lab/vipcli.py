"""Lab CLI: ``python -m tests.lab.vipcli probe|announce|observe ...`` runs the VIP adapter's ARP
tools from a shell inside a namespace (``ip netns exec NODE python -m tests.lab.vipcli probe eth0
198.51.100.3``) and prints JSON with the measured times; the lab tests use it. Test-only: it
is not part of the wheel."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from collections.abc import Sequence

from adapters.runner import Runner
from adapters.vip import (
    ANNOUNCE_COUNT,
    ANNOUNCE_INTERVAL,
    DEFAULT_PROBE_TIMEOUT,
    InProcessArp,
    IpVip,
)
from reconciler.core.errors import AdapterError
from reconciler.core.spec import Vip


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.lab.vipcli probe|announce|observe``: run the ARP tools in the current
    network namespace and print one JSON object (times in ms; ``t_started`` is on the monotonic
    clock, which all namespaces share). ``--netns NAME`` refuses to act outside that namespace.
    Exit status 0, or 1 when the announcement could not be sent."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--netns", help="refuse to run unless inside this named namespace")
    parser = argparse.ArgumentParser(prog="python -m tests.lab.vipcli", description=main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_probe = sub.add_parser("probe", parents=[common], help="does another host answer ARP?")
    p_probe.add_argument("interface")
    p_probe.add_argument("ip", type=ipaddress.IPv4Address)
    p_probe.add_argument("--timeout-ms", type=float, default=DEFAULT_PROBE_TIMEOUT * 1000)
    p_ann = sub.add_parser("announce", parents=[common], help="gratuitous ARP (all rounds)")
    p_ann.add_argument("interface")
    p_ann.add_argument("ip", type=ipaddress.IPv4Address)
    p_ann.add_argument("--count", type=int, default=ANNOUNCE_COUNT)
    p_ann.add_argument("--interval-ms", type=float, default=ANNOUNCE_INTERVAL * 1000)
    p_obs = sub.add_parser("observe", parents=[common], help="IpVip.observe (IF=ADDR/PREFIX)")
    p_obs.add_argument("vips", nargs="+", metavar="IF=ADDR/PREFIX")
    p_obs.add_argument("--timeout-ms", type=float, default=DEFAULT_PROBE_TIMEOUT * 1000)
    args = parser.parse_args(argv)

    if args.cmd == "probe":
        tool = InProcessArp(netns=args.netns)
        result = tool.probe(args.interface, str(args.ip), timeout=args.timeout_ms / 1000)
        _print(
            answered=result.answered,
            mac=result.mac,
            detail=result.detail,
            ms=round(result.seconds * 1000, 3),
        )
        return 0
    if args.cmd == "announce":
        tool = InProcessArp(count=args.count, interval=args.interval_ms / 1000, netns=args.netns)
        started = time.monotonic()
        try:
            tool.announce(args.interface, str(args.ip))
        except AdapterError as exc:
            _print(error=str(exc), kind=type(exc).__name__)
            return 1
        returned = time.monotonic()
        tool.drain()
        _print(
            t_started=started,
            ms=round((returned - started) * 1000, 3),
            total_ms=round((time.monotonic() - started) * 1000, 3),
        )
        return 0
    vips = []
    for item in args.vips:
        interface, _, address = item.partition("=")
        vips.append(Vip(address=ipaddress.IPv4Interface(address), interface=interface))
    arp = InProcessArp(netns=args.netns)
    adapter = IpVip(Runner(), arp=arp, probe_timeout=args.timeout_ms / 1000)
    started = time.monotonic()
    observed = adapter.observe(vips)
    took = time.monotonic() - started
    _print(
        ms=round(took * 1000, 3),
        vips=[
            {
                "address": o.address,
                "local": o.local,
                "answered_elsewhere": o.answered_elsewhere,
                "error": o.error,
                "holder": o.holder,
            }
            for o in observed
        ],
    )
    return 0


def _print(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
