"""Pure parsers for the VIP adapters: ``ip -j addr show``, netlink address dumps and iputils
``arping`` output."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol


class AddressReadError(ValueError):
    """An address table that cannot be trusted (unparseable output, a garbage reply)."""


class IpAddrParseError(AddressReadError):
    """``ip -j addr show`` output that is not what iproute2 prints."""


class NetlinkReplyError(AddressReadError):
    """A netlink dump whose messages are not what the kernel sends (``RTM_NEWLINK`` /
    ``RTM_NEWADDR`` with an index, a name, an IPv4 address)."""


class NetlinkMessage(Protocol):
    """What the parser reads of a pyroute2 message: ``msg.get(field or attribute name)``."""

    def get(self, key: str, default: Any = None) -> Any: ...


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


def parse_netlink_addrs(
    links: Iterable[NetlinkMessage], addrs: Iterable[NetlinkMessage]
) -> dict[str, set[str]]:
    """Map interface name -> its IPv4 addresses from an ``RTM_GETLINK`` and an
    ``RTM_GETADDR`` dump (pyroute2 messages), the same table ``parse_ip_addr_json`` gives.

    Pure. Every link appears, with an empty set when it has no IPv4 address. Non-IPv4
    addresses are ignored. A message without an index, a link without a name, an address on an
    index the link dump did not list (the dumps are two requests: a link created in between),
    or a malformed address raise ``NetlinkReplyError``: the caller reports the observation as
    unknown rather than decide on half a table.
    """
    names: dict[int, str] = {}
    for link in links:
        index = _index(link, "link")
        name = link.get("IFLA_IFNAME")
        if not isinstance(name, str) or not name:
            raise NetlinkReplyError(f"link {index} without a name")
        names[index] = name
    result: dict[str, set[str]] = {name: set() for name in names.values()}
    for addr in addrs:
        family = addr.get("family")
        if family != 2:  # AF_INET
            if not isinstance(family, int):
                raise NetlinkReplyError(f"address message without a family: {clip(repr(addr))}")
            continue
        index = _index(addr, "address")
        if index not in names:
            raise NetlinkReplyError(f"address on interface index {index}, not in the link dump")
        # IFA_LOCAL is the interface's own address (IFA_ADDRESS the peer's on point-to-point
        # links); `ip addr` shows IFA_LOCAL as "local" too.
        local = addr.get("IFA_LOCAL") or addr.get("IFA_ADDRESS")
        if not isinstance(local, str):
            raise NetlinkReplyError(f"{names[index]}: inet address without IFA_LOCAL")
        try:
            result[names[index]].add(str(ipaddress.IPv4Address(local)))
        except ValueError as exc:
            raise NetlinkReplyError(f"{names[index]}: bad IPv4 address {local!r}") from exc
    return result


def _index(msg: NetlinkMessage, what: str) -> int:
    index = msg.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index <= 0:
        raise NetlinkReplyError(f"{what} message without an interface index: {clip(repr(msg))}")
    return index


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
