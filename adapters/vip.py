"""Floating addresses with iproute2, plus ARP probing and gratuitous ARP.

``IpVip`` is the real ``VipAdapter``: ``observe`` reads ``ip -j addr show`` once per tick and,
for every VIP that is not local, asks an ``ArpTool`` whether another host answers ARP for it.

Invariants:

- ``observe`` never raises: unreadable ``ip`` output gives ``VipObs(local=None, error=...)``; a
  probe that cannot be made gives ``answered_elsewhere=None`` with the reason in ``error``.
- A VIP is ``local`` only when its address sits on the interface the spec names. Found on
  another interface it is ``local=None`` (a misconfiguration the agent must not paper over).
- Every probe is bounded: ``InProcessArp`` waits at most ``probe_timeout`` (default 30 ms, it
  sits inside the failover gap on the node being promoted); an answer ends the wait at once.
- ``add``/``remove`` are idempotent: "already assigned" / "not found" are success. They raise
  only ``TransientError``/``TerminalError`` (the runner's timeouts are transient).
- ``announce`` returns after the first frame(s): later frames go out from a background thread
  (``InProcessArp``) or a detached ``arping`` (``CommandArp``); it never sleeps in the tick.
- A local VIP is ``announced`` only when ``announce`` ran after the last ``add`` (see
  ``AnnounceRecord``): a VIP added but never announced is reported ``announced=False``.
- Commands go through ``adapters.runner.Runner`` only; the in-process ARP tool uses an
  ``AF_PACKET`` socket in the namespace of the process that calls it, so it is only correct when
  the agent runs on the node (or inside the node's network namespace, as in the lab).

``python -m adapters.vip probe|announce|observe ...`` runs the same code from a shell inside a
namespace (``ip netns exec NODE python -m adapters.vip probe eth0 198.51.100.3``) and prints
JSON with the measured times; the lab tests use it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import functools
import heapq
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from adapters.runner import Runner
from reconciler.core.errors import AdapterError, TerminalError, TransientError
from reconciler.core.observed import VipObs
from reconciler.core.spec import Vip

log = logging.getLogger(__name__)

DEFAULT_PROBE_TIMEOUT = 0.030
"""Seconds an ARP probe waits for an answer (a LAN answers in well under 1 ms)."""

ANNOUNCE_COUNT = 3
ANNOUNCE_INTERVAL = 0.2
"""Gratuitous ARP rounds and their spacing (Pacemaker's IPaddr2 sends 5 at 200 ms)."""


# --------------------------------------------------------------------------------- parsing
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
        raise IpAddrParseError(f"not JSON: {_clip(text)!r} ({exc})") from exc
    if not isinstance(data, list):
        raise IpAddrParseError(f"expected a JSON list of links, got {type(data).__name__}")
    result: dict[str, set[str]] = {}
    for link in data:
        if not isinstance(link, dict):
            raise IpAddrParseError(f"expected a link object, got {_clip(repr(link))}")
        if not link:
            continue
        name = link.get("ifname")
        if not isinstance(name, str) or not name:
            raise IpAddrParseError(f"link without a name: {_clip(repr(link))}")
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


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------------------ ARP frames
ETH_P_ARP = 0x0806
ARP_REQUEST = 1
ARP_REPLY = 2
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ZERO_IP = b"\x00" * 4
NETNS_RUN_DIR = "/run/netns"
_NETNS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
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


# ------------------------------------------------------------------------------- ARP tools
@dataclass(frozen=True, slots=True)
class ProbeResult:
    """``answered``: True another host answers, False nobody did within the wait, None the
    probe could not be made (``detail`` says why)."""

    answered: bool | None
    mac: str | None = None
    detail: str = ""
    seconds: float = 0.0


class ArpTool(Protocol):
    """How ARP frames get onto the VIP's segment."""

    def probe(self, interface: str, ip: str, *, timeout: float) -> ProbeResult:
        """Does another host answer ARP for ``ip``? Returns within about ``timeout`` seconds
        (``CommandArp``: whole seconds, see there). Never raises."""
        ...

    def announce(self, interface: str, ip: str) -> None:
        """Gratuitous ARP for ``ip``; returns after the first frame. Raises Transient/Terminal
        errors when even that cannot be sent."""
        ...

    def cancel(self, interface: str, ip: str) -> None:
        """End this tool's announcements of ``ip`` on ``interface``: once it returns, no
        later round of them goes out. Never raises."""
        ...


class InProcessArp:
    """ARP through an ``AF_PACKET`` socket of this process (needs CAP_NET_RAW).

    The socket lives in the calling process's network namespace: use it only when the agent runs
    on the node itself or inside the node's namespace (``ip netns exec NODE reconcile ...``).
    ``probes`` frames are sent spread over the wait, so one lost frame does not make a taken
    address look free. Announcements send one round (request + reply) before returning; the
    remaining ``count - 1`` rounds, ``interval`` apart, and every socket close are jobs of one
    long-lived background thread (``_Background``), so neither a probe nor an announcement
    starts a thread, sleeps, or waits for the kernel's socket teardown in the tick. ``drain``
    waits for this tool's announcements; at interpreter exit, pending jobs get up to
    ``ANNOUNCE_COUNT * ANNOUNCE_INTERVAL + 1`` seconds (an ``atexit`` wait) to finish.

    ``netns``: when set, no socket is opened unless the calling thread is inside the named
    namespace (``/run/netns/NAME``, as ``ip netns`` creates them). The agent's factory should
    pass it for nodes with transport ``netns``: an agent started outside the node's namespace
    would otherwise probe and announce on the host's own network.
    """

    def __init__(
        self,
        *,
        probes: int = 2,
        count: int = ANNOUNCE_COUNT,
        interval: float = ANNOUNCE_INTERVAL,
        netns: str | None = None,
    ) -> None:
        if probes < 1 or count < 1 or interval < 0:
            raise ValueError("probes and count must be >= 1 and interval >= 0")
        if netns is not None and not _NETNS_RE.match(netns):
            raise ValueError(f"not a network namespace name: {netns!r}")
        self.probes = probes
        self.count = count
        self.interval = interval
        self.netns = netns
        self._cond = threading.Condition()
        self._active = 0
        self._announcing: dict[tuple[str, str], list[_Rounds]] = {}
        self._background = _background()  # started here, outside any tick

    def check_netns(self) -> None:
        """Raise ``PermissionError`` unless this thread is in ``netns`` (no-op without one)."""
        if self.netns is None:
            return
        try:
            want = os.stat(f"{NETNS_RUN_DIR}/{self.netns}")
            have = os.stat("/proc/thread-self/ns/net")
        except OSError as exc:
            raise PermissionError(
                errno.EPERM, f"cannot check network namespace {self.netns}: {_os_text(exc)}"
            ) from exc
        if (want.st_dev, want.st_ino) != (have.st_dev, have.st_ino):
            raise PermissionError(
                errno.EPERM,
                f"this process is not inside network namespace {self.netns}; refusing to send "
                "ARP from here",
            )

    # Opening and closing are methods so that tests can substitute a fake socket.
    def _open(self, interface: str) -> Any:
        """A packet socket bound to ``interface`` for ARP.

        It is created with protocol 0 and given ETH_P_ARP only by ``bind``: created with a
        protocol, the kernel registers a receive hook at once, and ``bind`` then has to remove
        it with ``synchronize_net()`` (an RCU grace period, 4-16 ms measured here)."""
        self.check_netns()
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.bind((interface, ETH_P_ARP))
        except BaseException:
            self._close(sock)
            raise
        return sock

    def _close(self, sock: Any) -> None:
        """Close ``sock`` off the caller's path: closing a packet socket always waits for an
        RCU grace period (``synchronize_net()`` in ``packet_release``, 8-16 ms measured)."""
        self._background.submit(0.0, sock.close)

    def probe(
        self, interface: str, ip: str, *, timeout: float = DEFAULT_PROBE_TIMEOUT
    ) -> ProbeResult:
        started = time.monotonic()
        try:
            sock = self._open(interface)
        except OSError as exc:
            return ProbeResult(None, detail=f"cannot probe on {interface}: {_os_text(exc)}")
        try:
            return self._probe(sock, ip, started, timeout)
        except OSError as exc:
            return ProbeResult(
                None,
                detail=f"ARP probe on {interface} failed: {_os_text(exc)}",
                seconds=time.monotonic() - started,
            )
        finally:
            self._close(sock)

    def _probe(self, sock: Any, ip: str, started: float, timeout: float) -> ProbeResult:
        own_mac: bytes = sock.getsockname()[4]
        frame = arp_frame(own_mac, probe_packet(own_mac, ip))
        deadline = started + timeout
        spacing = timeout / self.probes
        sent = 0
        while True:
            now = time.monotonic()
            if sent < self.probes and now >= started + sent * spacing:
                sock.send(frame)
                sent += 1
                continue
            if now >= deadline:
                return ProbeResult(False, seconds=now - started)
            wake = deadline if sent >= self.probes else min(deadline, started + sent * spacing)
            sock.settimeout(max(wake - now, 0.0005))
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                continue
            if len(addr) > 2 and addr[2] == socket.PACKET_OUTGOING:
                continue
            packet = parse_arp_frame(data)
            why = None if packet is None else conflict_in(packet, own_mac=own_mac, ip=ip)
            if packet is not None and why is not None:
                took = time.monotonic() - started
                return ProbeResult(
                    True,
                    mac=format_mac(packet.sender_mac),
                    detail=f"{ip} {why} within {took * 1000:.1f} ms",
                    seconds=took,
                )

    def announce(self, interface: str, ip: str) -> None:
        try:
            sock = self._open(interface)
        except OSError as exc:
            raise _announce_error(interface, ip, exc) from exc
        try:
            mac: bytes = sock.getsockname()[4]
            frames = [arp_frame(mac, p) for p in announce_packets(mac, ip)]
            for frame in frames:
                sock.send(frame)
        except OSError as exc:
            self._close(sock)
            raise _announce_error(interface, ip, exc) from exc
        if self.count == 1:
            self._close(sock)
            return
        rounds = _Rounds(sock, frames)
        with self._cond:
            self._active += 1
            self._announcing.setdefault((interface, ip), []).append(rounds)
        first = time.monotonic()
        for n in range(1, self.count):
            last = n == self.count - 1
            self._background.submit(
                first + n * self.interval,
                functools.partial(self._round, rounds, interface, ip, last=last),
            )

    def cancel(self, interface: str, ip: str) -> None:
        """Stop the later rounds of this tool's announcements of ``ip`` (the VIP is being
        released): a round still due after the address moved to the peer would claim it back
        for this node in the initiators' ARP caches, after the new holder's announcement."""
        with self._cond:
            running = list(self._announcing.get((interface, ip), ()))
        for rounds in running:
            rounds.cancel()

    def _round(self, rounds: _Rounds, interface: str, ip: str, *, last: bool) -> None:
        """One later round of an announcement (a background job); the last one closes."""
        try:
            rounds.send()
        except OSError as exc:
            log.warning("gratuitous ARP for %s on %s failed: %s", ip, interface, _os_text(exc))
            rounds.cancel()  # the remaining rounds skip
        finally:
            if last:
                rounds.sock.close()
                with self._cond:
                    self._active -= 1
                    left = [r for r in self._announcing.get((interface, ip), ()) if r is not rounds]
                    if left:
                        self._announcing[(interface, ip)] = left
                    else:
                        self._announcing.pop((interface, ip), None)
                    self._cond.notify_all()

    def pending(self) -> int:
        """Announcements of this tool whose later rounds are not all sent yet."""
        with self._cond:
            return self._active

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for this tool's announcements to finish; True when none is left."""
        with self._cond:
            return self._cond.wait_for(lambda: self._active == 0, timeout)


class _Rounds:
    """The later rounds of one announcement: its socket and frames, and whether it was
    cancelled. The lock makes ``cancel`` final: no frame goes out after it returns."""

    def __init__(self, sock: Any, frames: list[bytes]) -> None:
        self.sock = sock
        self.frames = frames
        self._lock = threading.Lock()
        self._cancelled = False

    def send(self) -> None:
        with self._lock:
            if self._cancelled or self.sock.fileno() < 0:
                return
            for frame in self.frames:
                self.sock.send(frame)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True


class _Background:
    """One daemon thread running timed jobs in due order (later GARP rounds, socket closes).

    Submitting is a heap push under a lock: nothing on the caller's path starts a thread or
    waits for one (starting a thread measured 4-8 ms on a loaded 2-core machine). Jobs must
    not raise (exceptions are logged) and run one at a time, so a slow job (a socket close,
    up to ~16 ms) can delay the next by that much.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: list[tuple[float, int, Callable[[], object]]] = []
        self._seq = itertools.count()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="arp-background", daemon=True)
        self._thread.start()

    def submit(self, due: float, job: Callable[[], object]) -> None:
        with self._cond:
            heapq.heappush(self._jobs, (due, next(self._seq), job))
            self._cond.notify_all()

    def idle(self, timeout: float | None = None) -> bool:
        """Wait until no job is queued or running; True when idle."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._jobs:
                        self._cond.wait()
                        continue
                    wait = self._jobs[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                _, _, job = heapq.heappop(self._jobs)
                self._busy = True
            try:
                job()
            except Exception:
                log.exception("background ARP job failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


_BACKGROUND: _Background | None = None
_BACKGROUND_LOCK = threading.Lock()


def _background() -> _Background:
    """The process's one ``_Background`` (created on first use, drained at exit)."""
    global _BACKGROUND
    with _BACKGROUND_LOCK:
        if _BACKGROUND is None:
            _BACKGROUND = _Background()
            atexit.register(_BACKGROUND.idle, ANNOUNCE_COUNT * ANNOUNCE_INTERVAL + 1.0)
        return _BACKGROUND


class _Process(Protocol):
    """What ``CommandArp`` needs of a handle returned by ``Runner.spawn``."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...


_REPLY_RE = re.compile(r"reply from \S+ \[([0-9A-Fa-f:]{17})\]", re.IGNORECASE)
_SENT_RE = re.compile(r"^Sent (\d+) probes?\b", re.MULTILINE)
_RECEIVED_RE = re.compile(r"^Received (\d+) responses?\b", re.MULTILINE)
STARTUP_MIN = 0.02
"""Seconds: the least start-up allowance ``CommandArp`` adds to a probe's wait."""
STARTUP_MAX = 1.0
"""Seconds: the most; beyond it the node is too slow to start arping and a probe is unknown."""


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


class CommandArp:
    """ARP through iputils ``arping`` run by the runner (when the agent is not in the node's
    namespace, e.g. VMs reached over a console).

    Probe: ``timeout --preserve-status -s INT WAIT arping -D -c 1 -w N -I IF IP``. arping's own
    ``-w`` takes whole seconds, but it handles SIGINT: stopped by ``timeout`` it still prints
    its counts and exits 0 (nobody answered) or 1 (a reply). So a probe of a free address
    costs WAIT, and a taken one returns at the reply. WAIT is the probe timeout plus a
    start-up allowance for the two process starts on the node (``timeout``, then arping, which
    must be listening before the wait is over): measured once, as twice the time the runner
    takes for ``timeout ... true``, at least ``STARTUP_MIN``; doubled (up to ``STARTUP_MAX``)
    whenever arping was stopped before it sent its probe (the probe is then repeated at once),
    and brought back towards the measured value by 20 % after each probe that went out (a
    moment of load must not make every later probe slow). "Nobody answered" needs arping's
    word that it sent a probe and got no response; anything else is unknown. The listening
    window is WAIT minus arping's start-up: a node much slower than measured can shorten it
    (the cost of not having a sub-second arping). On a node without coreutils' ``timeout``
    (busybox's has whole-second steps and no ``--preserve-status``) the probe falls back to
    arping's ``-w`` in whole seconds (at least 1).

    Announcements spawn a detached ``arping -U -c COUNT`` (one round a second) and return at
    once; the handles are kept and reaped on later calls (``drain`` waits for them, killing
    what outlives it).
    """

    def __init__(
        self, runner: Runner, *, count: int = ANNOUNCE_COUNT, startup: float | None = None
    ) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        if startup is not None and not STARTUP_MIN <= startup <= STARTUP_MAX:
            raise ValueError(f"startup must be within {STARTUP_MIN}..{STARTUP_MAX} s")
        self.runner = runner
        self.count = count
        self._lock = threading.Lock()
        self._procs: list[_Process] = []
        self._announcing: list[tuple[_Process, tuple[str, str]]] = []  # (handle, (if, ip))
        self._startup = startup  # None: measured at the first probe
        self._base = startup  # what the allowance decays back to
        self._interruptible: bool | None = None if startup is None else True

    @property
    def startup(self) -> float | None:
        """The current start-up allowance (seconds); None before the first probe measured it
        or when the node has no usable ``timeout``."""
        return self._startup if self._interruptible else None

    def probe(
        self, interface: str, ip: str, *, timeout: float = DEFAULT_PROBE_TIMEOUT
    ) -> ProbeResult:
        started = time.monotonic()
        if self._interruptible is None:
            self._calibrate()
        for _ in range(3):
            if not self._interruptible:
                return self._probe_whole_seconds(interface, ip, timeout, started)
            assert self._startup is not None
            wait = timeout + self._startup
            deadline = max(1, math.ceil(wait) + 1)  # arping's own bound, never reached first
            argv = [
                "timeout", "--preserve-status", "-s", "INT", f"{wait:.3f}",
                "arping", "-D", "-c", "1", "-w", str(deadline), "-I", interface, ip,
            ]  # fmt: skip
            try:
                res = self.runner.run(argv, check=False, timeout=deadline + 2.0)
            except AdapterError as exc:
                return ProbeResult(None, detail=f"arping failed: {exc}")
            report = parse_arping(res.stdout)
            outcome = _probe_outcome(res.rc, report, ip, time.monotonic() - started)
            if outcome is not None:
                if report.sent and self._base is not None:
                    self._startup = max(self._base, self._startup * 0.8)
                return outcome
            text = _clip((res.stdout + res.stderr).strip(), 200)
            if report.sent is None and "timeout" in res.stderr and res.rc in (1, 125, 126, 127):
                log.warning(
                    "no usable `timeout` on the node (%s): arping waits whole seconds", text
                )
                self._interruptible = False
                continue
            if report.sent == 0 or (report.sent is None and res.rc == 128 + signal.SIGINT):
                # Stopped before its probe went out: the node starts processes more slowly
                # than measured. A longer allowance, and the probe again.
                if self._startup >= STARTUP_MAX:
                    break
                self._startup = min(STARTUP_MAX, self._startup * 2)
                log.info("arping stopped before it sent a probe; start-up allowance now %.3f s",
                         self._startup)  # fmt: skip
                continue
            return ProbeResult(None, detail=f"arping exited {res.rc}: {text}")
        return ProbeResult(
            None,
            detail=f"arping did not send its probe within {STARTUP_MAX:g} s of starting",
            seconds=time.monotonic() - started,
        )

    def _calibrate(self) -> None:
        """Measure how long the node takes to run ``timeout ... true`` (two process starts and
        the runner's round trip); decide whether ``timeout`` is usable at all."""
        argv = ["timeout", "--preserve-status", "-s", "INT", "5", "true"]
        began = time.monotonic()
        try:
            res = self.runner.run(argv, check=False, timeout=10.0)
        except AdapterError as exc:
            log.warning("cannot run `timeout` on the node (%s): arping waits whole seconds", exc)
            self._interruptible = False
            return
        took = time.monotonic() - began
        if res.rc != 0:
            log.warning(
                "`timeout --preserve-status` does not work on the node (exit %s: %s): arping "
                "waits whole seconds", res.rc, _clip(res.stderr.strip(), 200)
            )  # fmt: skip
            self._interruptible = False
            return
        self._startup = self._base = min(STARTUP_MAX, max(STARTUP_MIN, 2 * took))
        self._interruptible = True

    def _probe_whole_seconds(
        self, interface: str, ip: str, timeout: float, started: float
    ) -> ProbeResult:
        wait = max(1, math.ceil(timeout))
        argv = ["arping", "-D", "-c", "1", "-w", str(wait), "-I", interface, ip]
        try:
            res = self.runner.run(argv, check=False, timeout=wait + 2.0)
        except AdapterError as exc:
            return ProbeResult(None, detail=f"arping failed: {exc}")
        outcome = _probe_outcome(res.rc, parse_arping(res.stdout), ip, time.monotonic() - started)
        if outcome is not None:
            return outcome
        text = _clip((res.stdout + res.stderr).strip(), 200)
        return ProbeResult(None, detail=f"arping exited {res.rc}: {text}")

    def announce(self, interface: str, ip: str) -> None:
        self._reap()
        proc = self.runner.spawn(["arping", "-U", "-c", str(self.count), "-I", interface, ip])
        with self._lock:
            self._procs.append(proc)
            self._announcing.append((proc, (interface, ip)))

    def cancel(self, interface: str, ip: str) -> None:
        """Kill this tool's detached ``arping -U`` runs for ``ip`` (see ``InProcessArp``)."""
        with self._lock:
            doomed = [p for p, where in self._announcing if where == (interface, ip)]
        for proc in doomed:
            with contextlib.suppress(Exception):
                proc.kill()
        self._reap()

    def _reap(self) -> None:
        with self._lock:
            self._procs = [p for p in self._procs if p.poll() is None]
            live = {id(p) for p in self._procs}
            self._announcing = [(p, w) for p, w in self._announcing if id(p) in live]

    def pending(self) -> int:
        """Detached ``arping`` processes still running."""
        self._reap()
        with self._lock:
            return len(self._procs)

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` for the detached processes, then kill and reap the rest.
        True when all had finished by themselves."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        clean = self.pending() == 0
        with self._lock:
            for proc in self._procs:
                with contextlib.suppress(OSError):
                    proc.kill()
        end = time.monotonic() + 2.0
        while self.pending() and time.monotonic() < end:
            time.sleep(0.01)
        return clean


def _probe_outcome(rc: int, report: ArpingReport, ip: str, seconds: float) -> ProbeResult | None:
    """An ``arping -D`` run's answer, or None when it says nothing certain. A reply is a
    reply whatever the exit code; "free" needs exit 0 with at least one probe sent and no
    response."""
    if report.mac is not None and rc in (0, 1):
        detail = f"{ip} answered by {report.mac}"
        return ProbeResult(True, mac=report.mac, detail=detail, seconds=seconds)
    if rc == 0 and report.sent and report.received == 0:
        return ProbeResult(False, seconds=seconds)
    return None


def _os_text(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _announce_error(interface: str, ip: str, exc: OSError) -> AdapterError:
    text = f"gratuitous ARP for {ip} on {interface}: {_os_text(exc)}"
    if exc.errno in (errno.ENODEV, errno.ENXIO, errno.EPERM, errno.EACCES, errno.EINVAL):
        return TerminalError(text)
    return TransientError(text)


# --------------------------------------------------------------------------------- adapter
class AnnounceRecord:
    """Which VIPs this node's agent announced (gratuitous ARP) after it last added them.

    ``IpVip`` clears a VIP's entry *before* it adds the address and sets it once the first
    frames of an announcement went out, so a VIP that is local but not in the record was added
    and never announced: the agent was killed in between, or every attempt failed. The planner
    then announces it again; without that, initiators keep the old holder's MAC until their
    ARP entry expires (8-45 s on Linux).

    Kept in a small JSON file (``path``) so that it outlives the agent process: a restarted
    agent, or the next ``reconcile --once``, knows what was already announced. Without a path
    it lives in memory only. Persisting is best effort: a file that cannot be written is logged
    and the in-memory record still holds (the worst case is one extra announcement by the next
    process). Only this node's agent writes it, so the file is read once.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self._lock = threading.Lock()
        self._ips: set[str] | None = None if self.path else set()

    def __contains__(self, ip: object) -> bool:
        with self._lock:
            return ip in self._load()

    def remember(self, ip: str) -> None:
        self._change(ip, add=True)

    def forget(self, ip: str) -> None:
        self._change(ip, add=False)

    def _load(self) -> set[str]:
        if self._ips is None:
            assert self.path is not None
            self._ips = set()
            try:
                with open(self.path, encoding="utf-8") as fh:
                    data = json.load(fh)
                if isinstance(data, dict) and isinstance(data.get("announced"), list):
                    self._ips = {ip for ip in data["announced"] if isinstance(ip, str)}
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable announcement record %s: %s", self.path, exc)
        return self._ips

    def _change(self, ip: str, *, add: bool) -> None:
        with self._lock:
            ips = self._load()
            if (ip in ips) == add:
                return
            if add:
                ips.add(ip)
            else:
                ips.discard(ip)
            if self.path is None:
                return
            tmp = f"{self.path}.tmp{os.getpid()}"
            try:
                with open(tmp, "w", encoding="utf-8") as fh:
                    json.dump({"announced": sorted(ips)}, fh)
                os.replace(tmp, self.path)
            except OSError as exc:
                log.warning("cannot write the announcement record %s: %s", self.path, exc)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


_EXISTS_RE = re.compile(r"File exists|already assigned", re.IGNORECASE)
_ABSENT_RE = re.compile(
    r"Cannot assign requested address|Address not found|Cannot find device", re.IGNORECASE
)


class IpVip:
    """``VipAdapter`` on iproute2 (see the module docstring for the invariants).

    ``probe_timeout`` bounds each ARP probe; several VIPs that need probing are probed
    concurrently, so ``observe`` costs one ``ip`` call plus about one ``probe_timeout``.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        arp: ArpTool,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        command_timeout: float | None = None,
        record: AnnounceRecord | None = None,
    ) -> None:
        if probe_timeout <= 0:
            raise ValueError("probe_timeout must be positive")
        self.runner = runner
        self.arp = arp
        self.probe_timeout = probe_timeout
        self.command_timeout = command_timeout
        self.record = AnnounceRecord() if record is None else record
        # VIPs the last observation did not find here: their probes start together with the
        # `ip` call (a probe costs probe_timeout, the call a process start); a VIP found here
        # after all just has its probe result dropped.
        self._remote: set[str] = set()

    def observe(self, vips: Sequence[Vip]) -> tuple[VipObs, ...]:
        if not vips:
            return ()
        # Probes run on one pool: the early ones beside the `ip` call, the rest after it.
        with ThreadPoolExecutor(max_workers=len(vips), thread_name_prefix="arp-probe") as pool:
            probes = {
                vip.ip: pool.submit(self._probe_one, vip) for vip in vips if vip.ip in self._remote
            }
            return self._observe(vips, pool, probes)

    def _observe(
        self,
        vips: Sequence[Vip],
        pool: ThreadPoolExecutor,
        probes: dict[str, Future[ProbeResult]],
    ) -> tuple[VipObs, ...]:
        try:
            res = self.runner.run(["ip", "-j", "addr", "show"], timeout=self.command_timeout)
            links = parse_ip_addr_json(res.stdout)
        except (AdapterError, IpAddrParseError) as exc:
            why = f"cannot read local addresses: {exc}"
            return tuple(VipObs(address=v.ip, local=None, error=why) for v in vips)
        out: dict[int, VipObs] = {}
        to_probe: list[tuple[int, Vip]] = []
        for i, vip in enumerate(vips):
            holders = sorted(name for name, ips in links.items() if vip.ip in ips)
            if vip.interface in holders:
                out[i] = VipObs(address=vip.ip, local=True, announced=vip.ip in self.record)
            elif holders:
                out[i] = VipObs(
                    address=vip.ip,
                    local=None,
                    error=(
                        f"VIP {vip.ip} is configured on {', '.join(holders)}, not on "
                        f"{vip.interface} as the spec says; fix it by hand"
                    ),
                )
            elif vip.interface not in links:
                out[i] = VipObs(
                    address=vip.ip,
                    local=False,
                    error=f"interface {vip.interface} does not exist; cannot probe {vip.ip}",
                )
            else:
                to_probe.append((i, vip))
        for _, vip in to_probe:
            if vip.ip not in probes:
                probes[vip.ip] = pool.submit(self._probe_one, vip)
        self._remote = {vip.ip for _, vip in to_probe}
        for i, vip in to_probe:
            result = probes[vip.ip].result()
            out[i] = VipObs(
                address=vip.ip,
                local=False,
                answered_elsewhere=result.answered,
                # "answered by <MAC>" is information, not an observation failure: an error here
                # would raise a vip-unknown alert on every tick of a healthy secondary.
                error=(result.detail or None) if result.answered is None else None,
                holder=(result.detail or None) if result.answered else None,
            )
        return tuple(out[i] for i in range(len(vips)))

    def _probe_one(self, vip: Vip) -> ProbeResult:
        try:
            return self.arp.probe(vip.interface, vip.ip, timeout=self.probe_timeout)
        except Exception as exc:  # a probe failure is data, never an exception
            return ProbeResult(None, detail=f"ARP probe failed: {exc!r}")

    def add(self, vip: Vip) -> None:
        """``ip addr add ADDR/PREFIX dev IF``; an address already there is success. The VIP
        leaves the announcement record first: it counts as announced only once ``announce``
        ran after this."""
        self.record.forget(vip.ip)
        self._ip_addr("add", vip, already=_EXISTS_RE, what="add VIP {addr} on {dev}")

    def remove(self, vip: Vip) -> None:
        """``ip addr del ADDR/PREFIX dev IF``; an address (or interface) that is not there is
        success: the VIP is not configured on that interface either way. This node's own
        announcements of the VIP end first: a gratuitous ARP round still due after the peer
        took the address over would drag the initiators' ARP caches back here."""
        self.arp.cancel(vip.interface, vip.ip)
        self._ip_addr("del", vip, already=_ABSENT_RE, what="remove VIP {addr} from {dev}")
        self.record.forget(vip.ip)

    def _ip_addr(self, verb: str, vip: Vip, *, already: re.Pattern[str], what: str) -> None:
        argv = ["ip", "addr", verb, str(vip.address), "dev", vip.interface]
        res = self.runner.run(argv, check=False, timeout=self.command_timeout)
        if res.ok or already.search(res.stderr):
            return
        action = what.format(addr=vip.address, dev=vip.interface)
        raise TerminalError(
            f"cannot {action}: {res.stderr.strip()}", command=res.argv, output=res.stderr
        )

    def announce(self, vip: Vip) -> None:
        self.arp.announce(vip.interface, vip.ip)
        self.record.remember(vip.ip)


# ------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m adapters.vip probe|announce|observe``: run the ARP tools in the current
    network namespace and print one JSON object (times in ms; ``t_started`` is on the monotonic
    clock, which all namespaces share). ``--netns NAME`` refuses to act outside that namespace.
    Exit status 0, or 1 when the announcement could not be sent."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--netns", help="refuse to run unless inside this named namespace")
    parser = argparse.ArgumentParser(prog="python -m adapters.vip", description=main.__doc__)
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
