"""ARP tools: how probes and gratuitous ARP get onto the VIP's segment (``ArpTool``).

``InProcessArp`` uses an ``AF_PACKET`` socket of this process, with the later announcement
rounds and socket closes on one background thread; ``CommandArp`` runs iputils ``arping``
through the runner. Both are bounded: a probe waits about its timeout, an announcement returns
after its first frame(s).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import heapq
import itertools
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from adapters.runner import Process, Runner
from adapters.vip.arp import (
    ETH_P_ARP,
    announce_packets,
    arp_frame,
    conflict_in,
    format_mac,
    parse_arp_frame,
    probe_packet,
)
from adapters.vip.parse import ArpingReport, clip, parse_arping
from reconciler.core.errors import AdapterError, TerminalError, TransientError

log = logging.getLogger(__name__)

DEFAULT_PROBE_TIMEOUT = 0.030
"""Seconds an ARP probe waits for an answer (a LAN answers in well under 1 ms)."""

ANNOUNCE_COUNT = 3
ANNOUNCE_INTERVAL = 0.2
"""Gratuitous ARP rounds and their spacing (Pacemaker's IPaddr2 sends 5 at 200 ms)."""

NETNS_RUN_DIR = "/run/netns"
_NETNS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


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


STARTUP_MIN = 0.02
"""Seconds: the least start-up allowance ``CommandArp`` adds to a probe's wait."""
STARTUP_MAX = 1.0
"""Seconds: the most; beyond it the node is too slow to start arping and a probe is unknown."""


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
        self._procs: list[Process] = []
        self._announcing: list[tuple[Process, tuple[str, str]]] = []  # (handle, (if, ip))
        # The start-up allowance and whether `timeout` works are measurements of the node's
        # tools and speed, kept across probes like a connection's RTT estimate; they bound how
        # long a probe waits and never make "nobody answered" out of an unanswered question.
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
            text = clip((res.stdout + res.stderr).strip(), 200)
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
                "waits whole seconds", res.rc, clip(res.stderr.strip(), 200)
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
        text = clip((res.stdout + res.stderr).strip(), 200)
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
