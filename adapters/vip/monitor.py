"""Floating addresses observed from ``ip -o monitor address link`` instead of a process a tick.

``MonitoredVip`` is ``IpVip`` (same actions, same ARP probing, same classification of what it
finds) whose view of the node's addresses is a cache fed by one long-running
``ip -o monitor address link`` stream through the runner (``Runner.stream``: on the VM tier
the console agent's stream, so an idle observation starts no process in the VM). It is for
nodes the agent reaches through a command transport; a local or netns agent uses netlink
(``adapters.vip.netlink``).

Invariants:

- Nothing starts when it is built: the first ``observe`` starts the monitor, then re-lists
  (``ip -j addr show``, one process); events that arrive during the re-list are applied on top
  of it, in order (set operations, so an event the list already shows changes nothing).
- The cache is re-listed in full at start, whenever the monitor ended (it is started again
  first), when a line is not understood (a link event, a format surprise), and at least every
  ``resync`` seconds. A monitor that cannot start, or a re-list that fails, gives the base
  class's "cannot read local addresses" (``local=None``): never an answer from a cache that
  no stream keeps current.
- After this adapter's own ``add``/``remove`` the next observation waits (at most
  ``settle`` seconds) for the monitor to show the change, and re-lists when it does not come:
  the agent never acts twice on its own change not yet reported.
- Every change seen calls ``wakeup.notify`` (the watch loop looks at once).
- ``close`` kills the monitor (idempotent); an observation after it reads afresh each time.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from adapters.inventory import FileInventory
from adapters.linestream import LineStream
from adapters.runner import Runner
from adapters.vip.adapter import IpVip
from adapters.vip.record import AnnounceRecord
from adapters.vip.tools import DEFAULT_PROBE_TIMEOUT, ArpTool
from adapters.wake import Wakeup

__all__ = ["AddressEvent", "MonitoredVip", "parse_monitor_line"]

# "2: eth0    inet 198.51.100.3/24 scope global eth0\    valid_lft ..." (``Deleted `` first
# when removed; ``[ADDR]`` first when the monitor watches several object kinds with -ts).
_ADDR_RE = re.compile(
    r"^(?:\[ADDR\]\s*)?(?P<deleted>Deleted\s+)?\d+:\s+(?P<ifname>[^\s:]+)\s+"
    r"(?P<family>inet6?)\s+(?P<address>[0-9A-Fa-f.:]+)(?:/\d+)?(?:\s|$)"
)


@dataclass(frozen=True, slots=True)
class AddressEvent:
    deleted: bool
    interface: str
    address: str  # IPv4, no prefix length


def parse_monitor_line(line: str) -> AddressEvent | str | None:
    """An IPv4 address event; None for an event that cannot change an IPv4 view (IPv6);
    the line itself (a ``str``) for anything else (a link event, an unknown format)."""
    m = _ADDR_RE.match(line)
    if m is None:
        return line
    if m["family"] != "inet":
        return None
    return AddressEvent(bool(m["deleted"]), m["ifname"], m["address"])


class MonitoredVip(IpVip):
    """``IpVip`` with an event-fed address cache (see the module docstring)."""

    def __init__(
        self,
        runner: Runner,
        *,
        arp: ArpTool,
        wakeup: Wakeup | None = None,
        resync: float = 30.0,
        settle: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        command_timeout: float | None = None,
        record: AnnounceRecord | None = None,
        inventory: FileInventory | None = None,
    ) -> None:
        super().__init__(
            runner,
            arp=arp,
            probe_timeout=probe_timeout,
            command_timeout=command_timeout,
            record=record,
            inventory=inventory,
        )
        self.wakeup = wakeup or Wakeup()
        self.resync = resync
        self.settle = settle
        self._clock = clock
        self._cond = threading.Condition()
        self._links: dict[str, set[str]] | None = None  # None: must re-list
        self._listed_at = 0.0
        self._listing: list[AddressEvent] | None = None  # events seen during a re-list
        self._expect: list[AddressEvent] = []  # own changes not yet reported
        self.relists = 0  # full re-lists done (for figures and tests, never for decisions)
        self._stream = LineStream(
            runner,
            ["ip", "-o", "monitor", "address", "link"],
            on_line=self._on_line,
            on_end=self._on_end,
            clock=clock,
        )

    # ----------------------------------------------------------------- the stream's side
    def _on_line(self, line: str) -> None:
        event = parse_monitor_line(line)
        if event is None:
            return
        with self._cond:
            if isinstance(event, str):
                self._links = None  # not understood: the next observation re-lists
            else:
                if self._listing is not None:
                    self._listing.append(event)
                if self._links is not None:
                    _apply(self._links, event)
            self._cond.notify_all()
        self.wakeup.notify("address change" if not isinstance(event, str) else "link change")

    def _on_end(self, rc: int) -> None:
        with self._cond:
            self._links = None
            self._cond.notify_all()
        self.wakeup.notify(f"address monitor ended (rc {rc})")

    # ----------------------------------------------------------------- the agent's side
    def _read_addresses(self) -> dict[str, set[str]]:
        if not self._stream.ensure():
            # No monitor: a fresh read every time (never the cache no stream keeps current).
            with self._cond:
                self._links = None
            return super()._read_addresses()
        with self._cond:
            if self._expect:
                self._cond.wait_for(self._expected_seen, timeout=self.settle)
                if not self._expected_seen():
                    self._links = None
                self._expect = []
            stale = (
                self._links is None
                or self._clock() - self._listed_at >= self.resync
                or not self._stream.running
            )
            if not stale:
                assert self._links is not None
                return {name: set(ips) for name, ips in self._links.items()}
            self._listing = []
        try:
            listed = super()._read_addresses()
        except BaseException:
            with self._cond:
                self._listing = None
                self._links = None
            raise
        with self._cond:
            for event in self._listing or ():
                _apply(listed, event)
            self._listing = None
            self._links = listed if self._stream.running else None
            self._listed_at = self._clock()
            self.relists += 1
            return {name: set(ips) for name, ips in listed.items()}

    def _expected_seen(self) -> bool:
        links = self._links
        if links is None:
            return False
        return all((e.address in links.get(e.interface, set())) != e.deleted for e in self._expect)

    def _ip_addr(
        self, verb: str, address: str, dev: str, *, already: re.Pattern[str], what: str
    ) -> bool:
        changed = super()._ip_addr(verb, address, dev, already=already, what=what)
        if changed:
            with self._cond:
                self._expect.append(AddressEvent(verb == "del", dev, address.split("/", 1)[0]))
        return changed

    def close(self) -> None:
        self._stream.close()
        with self._cond:
            self._links = None


def _apply(links: dict[str, set[str]], event: AddressEvent) -> None:
    addresses = links.setdefault(event.interface, set())
    if event.deleted:
        addresses.discard(event.address)
    else:
        addresses.add(event.address)
