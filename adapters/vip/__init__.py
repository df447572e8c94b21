"""Floating addresses (VIPs): one job a module.

- ``parse``: pure parsers of ``ip -j addr show`` and ``arping`` output.
- ``arp``: the ARP packet codec (pure).
- ``tools``: ``ArpTool`` implementations, ``InProcessArp`` (AF_PACKET, background rounds) and
  ``CommandArp`` (``arping`` through the runner).
- ``record``: ``AnnounceRecord``, which VIPs were announced since they were last added (on disk).
- ``adapter``: ``IpVip``, the real ``VipAdapter`` on iproute2.
"""

from adapters.vip.adapter import IpVip
from adapters.vip.arp import (
    ARP_REPLY,
    ARP_REQUEST,
    ETH_P_ARP,
    ArpPacket,
    announce_packets,
    arp_frame,
    conflict_in,
    format_mac,
    parse_arp_frame,
    probe_packet,
)
from adapters.vip.parse import ArpingReport, IpAddrParseError, parse_arping, parse_ip_addr_json
from adapters.vip.record import AnnounceRecord
from adapters.vip.tools import (
    ANNOUNCE_COUNT,
    ANNOUNCE_INTERVAL,
    DEFAULT_PROBE_TIMEOUT,
    STARTUP_MAX,
    STARTUP_MIN,
    ArpTool,
    CommandArp,
    InProcessArp,
    ProbeResult,
)

__all__ = [
    "ANNOUNCE_COUNT",
    "ANNOUNCE_INTERVAL",
    "ARP_REPLY",
    "ARP_REQUEST",
    "DEFAULT_PROBE_TIMEOUT",
    "ETH_P_ARP",
    "STARTUP_MAX",
    "STARTUP_MIN",
    "AnnounceRecord",
    "ArpPacket",
    "ArpTool",
    "ArpingReport",
    "CommandArp",
    "InProcessArp",
    "IpAddrParseError",
    "IpVip",
    "ProbeResult",
    "announce_packets",
    "arp_frame",
    "conflict_in",
    "format_mac",
    "parse_arp_frame",
    "parse_arping",
    "parse_ip_addr_json",
    "probe_packet",
]
