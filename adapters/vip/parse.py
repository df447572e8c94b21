"""Pure parsers for the VIP adapter: ``ip -j addr show`` and iputils ``arping`` output."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass


class IpAddrParseError(ValueError):
    """``ip -j addr show`` output that is not what iproute2 prints."""


def parse_ip_addr_json(text: str) -> dict[str, set[str]]:
    """Map interface name -> its IPv4 addresses (no prefix length) from ``ip -j addr show``.

    Pure. Every interface appears, with an empty set when it has no IPv4 address (down or not).
    Non-IPv4 entries are ignored, and so are the empty ``{}`` objects some iproute2 versions
    print for filtered-out links. Anything else unexpected raises ``IpAddrParseError``.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise IpAddrParseError(f"not JSON: {clip(text)!r} ({exc})") from exc
    if not isinstance(data, list):
        raise IpAddrParseError(f"expected a JSON list of links, got {type(data).__name__}")
    result: dict[str, set[str]] = {}
    for link in data:
        if not isinstance(link, dict):
            raise IpAddrParseError(f"expected a link object, got {clip(repr(link))}")
        if not link:
            continue
        name = link.get("ifname")
        if not isinstance(name, str) or not name:
            raise IpAddrParseError(f"link without a name: {clip(repr(link))}")
        infos = link.get("addr_info", [])
        if not isinstance(infos, list):
            raise IpAddrParseError(f"{name}: addr_info is not a list")
        addrs = result.setdefault(name, set())
        for info in infos:
            if not isinstance(info, dict):
                raise IpAddrParseError(f"{name}: address entry is not an object")
            if info.get("family") != "inet":
                continue
            local = info.get("local")
            if not isinstance(local, str):
                raise IpAddrParseError(f"{name}: inet entry without a 'local' address")
            try:
                addrs.add(str(ipaddress.IPv4Address(local)))
            except ValueError as exc:
                raise IpAddrParseError(f"{name}: bad IPv4 address {local!r}") from exc
    return result


def clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


_REPLY_RE = re.compile(r"reply from \S+ \[([0-9A-Fa-f:]{17})\]", re.IGNORECASE)
_SENT_RE = re.compile(r"^Sent (\d+) probes?\b", re.MULTILINE)
_RECEIVED_RE = re.compile(r"^Received (\d+) responses?\b", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class ArpingReport:
    """What iputils ``arping -D`` printed: its closing counts (None when it printed none, e.g.
    killed before its SIGINT handler was installed) and the MAC of the first reply."""

    sent: int | None
    received: int | None
    mac: str | None


def parse_arping(stdout: str) -> ArpingReport:
    """Pure: the counts and first replier of an ``arping`` run. arping prints its counts at
    exit, also when stopped by SIGINT (``Sent 1 probes (1 broadcast(s))`` / ``Received 0
    response(s)``)."""
    sent = _SENT_RE.search(stdout)
    received = _RECEIVED_RE.search(stdout)
    reply = _REPLY_RE.search(stdout)
    return ArpingReport(
        sent=int(sent.group(1)) if sent else None,
        received=int(received.group(1)) if received else None,
        mac=reply.group(1).lower() if reply else None,
    )
