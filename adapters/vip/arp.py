"""The Ethernet/IPv4 ARP packet codec (pure): frames for probes (RFC 5227) and gratuitous ARP,
and what a received packet says about an address."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

ETH_P_ARP = 0x0806
ARP_REQUEST = 1
ARP_REPLY = 2
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ZERO_IP = b"\x00" * 4
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_ETH_HEADER = 14


@dataclass(frozen=True, slots=True)
class ArpPacket:
    """The fields of an Ethernet/IPv4 ARP packet that matter here."""

    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


def arp_frame(src_mac: bytes, packet: ArpPacket, *, dst_mac: bytes = BROADCAST) -> bytes:
    """An Ethernet frame carrying ``packet`` (pure)."""
    fields = (packet.sender_mac, packet.sender_ip, packet.target_mac, packet.target_ip)
    body = _ARP.pack(1, 0x0800, 6, 4, packet.op, *fields)
    return dst_mac + src_mac + struct.pack("!H", ETH_P_ARP) + body


def parse_arp_frame(frame: bytes) -> ArpPacket | None:
    """The ARP packet in an Ethernet frame, or None for anything else (pure)."""
    if len(frame) < _ETH_HEADER + _ARP.size or frame[12:14] != b"\x08\x06":
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, _ETH_HEADER)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
        return None
    return ArpPacket(op, sha, spa, tha, tpa)


def probe_packet(mac: bytes, ip: str) -> ArpPacket:
    """RFC 5227 ARP probe: who has ``ip``? (sender IP 0.0.0.0, so nobody's cache changes)."""
    return ArpPacket(ARP_REQUEST, mac, ZERO_IP, ZERO_MAC, socket.inet_aton(ip))


def announce_packets(mac: bytes, ip: str) -> tuple[ArpPacket, ArpPacket]:
    """One round of gratuitous ARP: a request (like ``arping -U``, RFC 5227 announcement) and
    a reply (like ``arping -A``; Linux treats a reply as gratuitous only when target MAC ==
    sender MAC, so it is set that way). Sent as a pair because some stacks honour only one."""
    ipb = socket.inet_aton(ip)
    return (
        ArpPacket(ARP_REQUEST, mac, ipb, ZERO_MAC, ipb),
        ArpPacket(ARP_REPLY, mac, ipb, mac, ipb),
    )


def conflict_in(packet: ArpPacket, *, own_mac: bytes, ip: str) -> str | None:
    """Why ``packet`` shows that another host has (or claims) ``ip``; None if it does not.

    RFC 5227 2.1.1: any ARP packet whose sender IP is the address is a conflict. Unlike RFC
    5227 we do not count another host's *probe* for the address: the secondary probes the VIP
    every tick, and counting that made the new primary's takeover probe collide with it and
    lose a tick in about 1 swap in 5. A probe only asks; it never claims the address."""
    if packet.sender_mac == own_mac:
        return None
    ipb = socket.inet_aton(ip)
    who = format_mac(packet.sender_mac)
    if packet.sender_ip == ipb:
        kind = "reply" if packet.op == ARP_REPLY else "request"
        return f"answered by {who} (ARP {kind})"
    return None


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)
