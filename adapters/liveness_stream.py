"""Peer liveness and quorum heuristics from long-running ``ping`` streams (iputils).

``StreamLiveness`` is a ``LivenessAdapter`` for nodes the agent reaches through a command
transport (the VM tier's console): one ``ping -n -O -i INTERVAL ADDR`` per address runs on
the node through ``Runner.stream``, and ``observe`` reads what the streams said, so an
observation starts no process (a local agent pings in-process instead, ``adapters.liveness``).

Invariants:

- Nothing starts when it is built: ``observe`` starts the streams that do not run (a stream
  that ended is started again by the next ``observe``).
- Per address, from evidence only: True when the newest lines since the last reply are fewer
  than ``misses`` "no answer yet"/"Unreachable" lines; False when at least ``misses`` of them
  came in a row (the peer is silent ``misses`` x ``interval`` seconds: the detection time),
  or the ping's last word was its exit 2 (no route); None (not probed) when the
  stream does not run, has not said enough since it started, or said nothing for
  ``stall`` seconds (ping speaks every ``interval`` with ``-O``: silence means the stream,
  not the peer, is stuck). "Not probed" never looks like "peer dead" to the policy.
- The peer is reachable when any peer address is True, unreachable when every peer address is
  False, else None; heuristics count their True addresses (as ``PingLiveness``).
- A flip of an address's answer calls ``wakeup.notify``. ``close`` kills the streams.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections.abc import Callable, Sequence

from adapters.linestream import LineStream
from adapters.liveness import liveness_from
from adapters.runner import Runner
from adapters.wake import Wakeup
from reconciler.core.observed import Liveness

__all__ = ["StreamLiveness"]

_REPLY_RE = re.compile(r"^\d+ bytes from .*icmp_seq=\d+")
_MISS_RE = re.compile(r"^no answer yet for icmp_seq=|Unreachable|Time to live exceeded")
_NO_ROUTE = 2  # ping's exit code when it cannot send at all (e.g. network unreachable)


class _Pinger:
    def __init__(self, owner: StreamLiveness, address: str) -> None:
        self.owner = owner
        self.address = address
        self.misses = 0  # evidence lines since the last reply
        self.replied = False  # a reply came since this address was first pinged
        self.no_route = False
        self.lines_since_start = 0
        self.answer: bool | None = None
        argv = ["ping", "-n", "-O", "-i", f"{owner.interval:g}", address]
        self.stream = LineStream(
            owner.runner, argv, on_line=self._line, on_end=self._end, clock=owner.clock
        )

    def _line(self, line: str) -> None:
        with self.owner.lock:
            if _REPLY_RE.match(line):
                self.misses, self.replied, self.no_route = 0, True, False
            elif _MISS_RE.search(line):
                self.misses += 1
            else:
                return  # the banner, statistics
            self.lines_since_start += 1
            flipped = self._update()
        if flipped:
            self.owner.wakeup.notify(f"liveness of {self.address} changed")

    def _end(self, rc: int) -> None:
        with self.owner.lock:
            if rc == _NO_ROUTE:
                self.no_route = True
            self.lines_since_start = 0
            flipped = self._update()
        if flipped:
            self.owner.wakeup.notify(f"ping {self.address} ended")

    def _update(self) -> bool:
        """Recompute the answer (caller holds the lock); True when it changed."""
        before, self.answer = self.answer, self._judge()
        return before != self.answer

    def _judge(self) -> bool | None:
        owner = self.owner
        if self.no_route and self.lines_since_start == 0:
            return False  # its last word was "no route" (it may have been started again)
        if not self.stream.running:
            return None
        if owner.clock() - self.stream.last_line > owner.stall:
            return None  # the stream says nothing: it, not the peer, is stuck
        if self.misses >= owner.misses:
            return False
        if self.lines_since_start and self.replied and self.misses < owner.misses:
            return True
        return None


class StreamLiveness:
    """``LivenessAdapter`` over ping streams (see the module docstring)."""

    def __init__(
        self,
        runner: Runner,
        *,
        peer_addresses: Sequence[str],
        heuristics: Sequence[str] = (),
        interval: float = 0.2,
        misses: int = 3,
        stall: float | None = None,
        wakeup: Wakeup | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.01 <= interval <= 10:
            raise ValueError("interval must be in [0.01, 10] seconds")
        if misses < 1:
            raise ValueError("misses must be at least 1")
        self.runner = runner
        self.interval = interval
        self.misses = misses
        self.stall = 3 * interval + 1.0 if stall is None else stall
        self.wakeup = wakeup or Wakeup()
        self.clock = clock
        self.lock = threading.Lock()
        self.peer_addresses = [str(ipaddress.IPv4Address(a)) for a in peer_addresses]
        self.heuristics = [str(ipaddress.IPv4Address(a)) for a in heuristics]
        self._pingers = {
            a: _Pinger(self, a) for a in dict.fromkeys([*self.peer_addresses, *self.heuristics])
        }

    def observe(self) -> Liveness:
        with self.lock:
            answers = {a: p._judge() for a, p in self._pingers.items()}
        for pinger in self._pingers.values():  # after judging: a restart is not evidence
            if not pinger.stream.running:
                pinger.stream.ensure()
        return liveness_from(answers, self.peer_addresses, self.heuristics)

    def close(self) -> None:
        for pinger in self._pingers.values():
            pinger.stream.close()
