"""Peer liveness and quorum heuristics from a resident in-process pinger (ICMP echo).

One thread per agent sends an ICMP echo request to every address (the peer's management and
replication addresses, the heuristic addresses) each ``interval`` over one socket (raw ICMP
as root, else an unprivileged ICMP "ping" socket): no process per probe, and a socket is not a
command, so the ``sh`` command seam is untouched. ``observe`` reads what the replies said; it
never waits for the network, except the first time: until every address is known (answered,
or missed ``misses`` rounds), at most one detection time, so a ``--once`` run sees a dead peer
as dead.

Invariants:

- Building a ``Pinger`` starts nothing; the thread starts on the first ``observe`` (or
  ``answers``) and stops on ``close`` (idempotent; a closed pinger is never restarted).
- A reply counts for its round when it comes within ``timeout`` of the probe (``timeout <=
  interval``, so rounds never overlap), or is already queued on the socket when the thread
  looks at the deadline (the thread being late must not look like a silent peer); replies are
  matched by source address and sequence number, so a late reply never counts for a later
  round. The replies are read once per round, at its deadline (``timeout`` after the probe),
  not as they come: one thread wake per round (two when ``timeout < interval``), and each
  round's verdict, answered or not, is taken at its deadline.
- Each address is ``None`` (unknown) until it answered once or missed ``misses`` rounds in a
  row; then True after any answered round, False after ``misses`` consecutive rounds without a
  reply (a send refused with "network/host unreachable" or "network down" is no reply, as
  iputils ``ping`` says "unreachable").
- ``observe`` keeps ``PingLiveness``' semantics (adapters/liveness.py): ``peer_reachable``
  True when any peer address answers, False when every peer address is dead, None otherwise;
  and None (with no heuristic counted) when the thread died, the socket failed, or no round
  completed for longer than ``interval + timeout + STALE_AFTER``: "not probed" never looks
  like "peer dead".
- When an address's state changes, the thread calls ``wakeup.notify("peer liveness")``, so
  the watch loop ticks at once (the next tick's observation reads the new state); the same
  change moves ``fingerprint``, so a loop that polls its wake sources sees it too.
- Transport ``netns`` (the agent outside the node's namespace): the thread enters the
  namespace (``setns`` on ``/run/netns/NAME``, which moves only the calling thread) before it
  opens the socket, so the probes leave from the node's own links; if it cannot, the pinger
  reports unknown with the reason (``error``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from adapters.liveness import liveness_from
from adapters.wake import Wakeup
from reconciler.core.observed import Liveness

log = logging.getLogger(__name__)

STALE_AFTER = 1.0  # seconds beyond one round after which a silent pinger thread is "unknown"
FIRST_ROUND_WAIT = 0.5  # slack on the first observe's wait (see _states)
CLONE_NEWNET = 0x40000000
_NO_ANSWER = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}
ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


class ReplyTracker:
    """Per-address reachability from a sequence of probe rounds (pure bookkeeping: no clock,
    no socket). See the module docstring for the rule."""

    def __init__(self, addresses: Iterable[str], *, misses: int) -> None:
        if misses < 1:
            raise ValueError("misses must be at least 1")
        self.misses = misses
        self.states: dict[str, bool | None] = dict.fromkeys(addresses)
        self._missed: dict[str, int] = dict.fromkeys(self.states, 0)

    def round(self, answered: Iterable[str]) -> bool:
        """Record one round (``answered``: the addresses that replied in time); True when
        some address changed state."""
        got = set(answered)
        changed = False
        for address, before in self.states.items():
            if address in got:
                self._missed[address] = 0
                now: bool | None = True
            else:
                self._missed[address] += 1
                now = False if self._missed[address] >= self.misses else before
            if now is not before:
                self.states[address] = now
                changed = True
        return changed


def icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = b"tandem-liveness") -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    checksum = icmp_checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, checksum, ident, seq) + payload


def parse_echo_reply(packet: bytes, *, raw: bool) -> tuple[int, int] | None:
    """(identifier, sequence) of an ICMP echo reply, or None for anything else. ``raw``: the
    packet starts with the IPv4 header (raw sockets), else with the ICMP header (ping
    sockets)."""
    if raw:
        if len(packet) < 20:
            return None
        packet = packet[(packet[0] & 0x0F) * 4 :]
    if len(packet) < 8:
        return None
    kind, _code, _sum, ident, seq = struct.unpack("!BBHHH", packet[:8])
    if kind != ICMP_ECHO_REPLY:
        return None
    return ident, seq


def enter_netns(name: str) -> None:
    """Move the *calling thread* into network namespace ``name`` (``ip netns`` naming)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


SOL_RAW = 255
ICMP_FILTER = 1  # linux/icmp.h: a raw ICMP socket drops the types whose bit is set


def open_icmp_socket() -> tuple[socket.socket, bool]:
    """A raw ICMP socket (root), else an unprivileged ping socket; (socket, raw). The raw
    socket is filtered to echo replies (``ICMP_FILTER``): the peer's own probes of this node
    and other ICMP are dropped by the kernel instead of queued for each round's drain (which
    ignores them anyway); where the filter cannot be set, the drain still ignores them."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    except PermissionError:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP), False
    with contextlib.suppress(OSError):
        blocked = ~(1 << ICMP_ECHO_REPLY) & 0xFFFFFFFF
        sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", blocked))
    return sock, True


class Pinger:
    """``LivenessAdapter`` fed by a resident ICMP pinger thread (see the module docstring)."""

    def __init__(
        self,
        *,
        peer_addresses: Sequence[str],
        heuristics: Sequence[str] = (),
        interval: float = 0.2,
        timeout: float = 0.2,
        misses: int = 4,
        wakeup: Wakeup | None = None,
        namespace: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < timeout <= interval:
            raise ValueError("timeout must be in (0, interval]")
        self.peer_addresses = [str(ipaddress.IPv4Address(a)) for a in peer_addresses]
        self.heuristics = [str(ipaddress.IPv4Address(a)) for a in heuristics]
        self.interval = interval
        self.timeout = timeout
        self.misses = misses
        self.wakeup = wakeup
        self.namespace = namespace
        self.clock = clock
        self.addresses = list(dict.fromkeys([*self.peer_addresses, *self.heuristics]))
        self.rounds = 0  # completed probe rounds (for tests and benchmarks)
        self._changes = 0  # address state changes so far (the wake fingerprint)
        self.error: str | None = None
        self._tracker = ReplyTracker(self.addresses, misses=misses)
        self._lock = threading.Lock()
        self._first_round = threading.Event()  # set once every address is known (or failed)
        self._waited = False  # the first observation waited for it (only that one waits)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_round: float | None = None
        self._ident = (os.getpid() ^ id(self)) & 0xFFFF

    # ------------------------------------------------------------------ LivenessAdapter
    def observe(self) -> Liveness:
        states = self._states()
        if states is None:
            return Liveness(
                peer_reachable=None, heuristics_ok=0, heuristics_total=len(self.heuristics)
            )
        return liveness_from(states, self.peer_addresses, self.heuristics)

    def answers(self, addresses: Sequence[str]) -> tuple[bool | None, ...]:
        """Whether each of ``addresses`` (probed ones) answers, from one snapshot: True, False
        (``misses`` rounds without a reply) or None (not known yet, not probed, or the pinger
        is not working). The simulated DRBD's links follow it (``SimDrbd``)."""
        states = self._states()
        return tuple(None if states is None else states.get(a) for a in addresses)

    @property
    def name(self) -> str:
        return "peer liveness"

    def fingerprint(self) -> object:
        """As a polled wake source (``adapters.base.WakeSource``): changes whenever an
        address's state changed or the pinger failed. Cheap (no I/O), starts nothing."""
        with self._lock:
            return (self._changes, self.error)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.interval + self.timeout + 1.0)

    # ------------------------------------------------------------------ internals
    def _states(self) -> dict[str, bool | None] | None:
        """A copy of the address states, or None when the pinger cannot vouch for them."""
        if not self.addresses:
            return {}
        self._ensure_started()
        if not self._waited and self._thread is not None:
            self._waited = True
            # The first observation (a `--once` run has no other) waits until every address
            # is known, at most one detection time: a dead peer is then "dead", not "unknown".
            self._first_round.wait(self.misses * self.interval + self.timeout + FIRST_ROUND_WAIT)
        with self._lock:
            if self.error is not None or self._thread is None or not self._thread.is_alive():
                return None
            last = self._last_round
            if last is None or self.clock() - last > self.interval + self.timeout + STALE_AFTER:
                return None
            return dict(self._tracker.states)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="pinger", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            if self.namespace is not None:
                enter_netns(self.namespace)
            sock, raw = open_icmp_socket()
        except OSError as exc:
            self._fail(f"cannot open an ICMP socket: {exc}")
            return
        with contextlib.closing(sock):
            try:
                self._loop(sock, raw)
            except Exception as exc:  # any failure is "unknown", never a crash of the agent
                self._fail(f"pinger stopped: {exc!r}")

    def _fail(self, why: str) -> None:
        log.warning("liveness: %s", why)
        with self._lock:
            self.error = why
        self._first_round.set()
        if self.wakeup is not None:
            self.wakeup.notify("peer liveness")

    def _loop(self, sock: socket.socket, raw: bool) -> None:
        sock.setblocking(False)
        seq = 0
        next_send = self.clock()
        while not self._stop.is_set():
            seq = (seq + 1) & 0xFFFF
            sent = self.clock()
            pending = self._send(sock, seq)
            # The replies are not read as they come (a thread wake each, most of an idle
            # agent's pinger cost): they queue on the socket, read once at the round's
            # deadline. A dead peer is seen at the same instant; an answering one is known at
            # the deadline instead of at its reply (at most ``timeout`` later).
            if pending and self._stop.wait(max(0.0, sent + self.timeout - self.clock())):
                return
            answered = self._drain(sock, raw, seq, pending)
            with self._lock:
                changed = self._tracker.round(answered)
                self._changes += changed
                self._last_round = self.clock()
                self.rounds += 1
            if None not in self._tracker.states.values():
                self._first_round.set()
            if changed and self.wakeup is not None:
                self.wakeup.notify("peer liveness")
            next_send += self.interval
            now = self.clock()
            if next_send < now:  # fell behind (a stalled machine): start afresh, no burst
                next_send = now
            if next_send > now:  # with timeout == interval the round's wait was this one
                self._stop.wait(next_send - now)

    def _send(self, sock: socket.socket, seq: int) -> set[str]:
        """An echo request to every address; the addresses it could be sent to."""
        packet = echo_request(self._ident, seq)
        pending: set[str] = set()
        for address in self.addresses:
            try:
                sock.sendto(packet, (address, 0))
            except OSError as exc:
                if exc.errno in _NO_ANSWER:
                    continue  # no route / link down: no reply this round
                raise
            pending.add(address)
        return pending

    def _drain(self, sock: socket.socket, raw: bool, seq: int, pending: set[str]) -> set[str]:
        """The addresses in ``pending`` whose reply to ``seq`` is queued on the (non-blocking)
        socket, reading everything queued: the replies that came within the round's
        ``timeout`` (the thread being late to read them must not look like a silent peer);
        a late reply to an earlier round does not count (matched by sequence number)."""
        answered: set[str] = set()
        while True:
            try:
                data, (source, _port) = sock.recvfrom(2048)
            except BlockingIOError:
                return answered
            except OSError as exc:
                if exc.errno in _NO_ANSWER or exc.errno == errno.ECONNREFUSED:
                    continue  # an ICMP error queued on a ping socket: no reply from there
                raise
            reply = parse_echo_reply(data, raw=raw)
            if reply is None or source not in pending:
                continue
            ident, got_seq = reply
            # A ping socket's kernel rewrites the identifier (its "port") and only hands this
            # socket its own replies; a raw socket sees every echo reply in the namespace.
            if got_seq == seq and (ident == self._ident or not raw):
                answered.add(source)
