"""Floating addresses (VIPs): one job a module.

- ``parse``: pure parsers of ``ip -j addr show``, netlink address dumps and ``arping`` output.
- ``arp``: the ARP packet codec (pure).
- ``tools``: ``ArpTool`` implementations, ``InProcessArp`` (AF_PACKET, background rounds) and
  ``CommandArp`` (``arping`` through the runner).
- ``record``: ``AnnounceRecord``, which VIPs were announced since they were last added (on disk).
- ``adapter``: ``AddressVip`` (what the real adapters share) and ``IpVip`` on iproute2 (for
  executing transports, where netlink cannot reach).
- ``netlink``: ``NetlinkVip`` on rtnetlink (pyroute2) with address events, the real adapter
  for transports local and netns. Not imported here: pyroute2 takes ~0.4 s to import, so only
  the code that builds one pays for it (``from adapters.vip.netlink import NetlinkVip``).
"""

from adapters.vip.adapter import AddressVip, IpVip
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
from adapters.vip.parse import (
    AddressReadError,
    ArpingReport,
    IpAddrParseError,
    NetlinkReplyError,
    parse_arping,
    parse_ip_addr_json,
    parse_netlink_addrs,
)
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
    "AddressReadError",
    "AddressVip",
    "AnnounceRecord",
    "ArpPacket",
    "ArpTool",
    "ArpingReport",
    "CommandArp",
    "InProcessArp",
    "IpAddrParseError",
    "IpVip",
    "NetlinkReplyError",
    "ProbeResult",
    "announce_packets",
    "arp_frame",
    "conflict_in",
    "format_mac",
    "parse_arp_frame",
    "parse_arping",
    "parse_ip_addr_json",
    "parse_netlink_addrs",
    "probe_packet",
]
