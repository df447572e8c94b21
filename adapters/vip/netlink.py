"""Floating addresses over netlink (pyroute2), with address events that wake the agent.

``NetlinkVip`` is the real ``VipAdapter`` for transports ``local`` and ``netns``: it reads,
adds and deletes addresses with rtnetlink requests instead of ``ip`` processes (0.3-0.5 ms a
request, against 7-11 ms for ``ip addr`` through the runner) and shares everything else with
``IpVip`` (``AddressVip``: ARP probes through the same ``ArpTool``, the announcement record,
the inventory, the same ``VipObs`` for the same address table).

**The command seam.** Netlink is not a command: no process runs a tool, so the rule that every
command goes through ``adapters.runner.Runner`` (and ``sh``) holds; what is a command (``arping``
for transport ``netns``) still goes through the runner. The one process this module causes is
pyroute2's own: a handle inside a named namespace (``namespace=...``) is a socket created by a
short-lived forked child that enters the namespace and passes the socket back (~7-15 ms). It
happens once per handle, not per request.

Invariants:

- ONE request handle per adapter, opened lazily on the first request, kept open, closed and
  re-opened on the next request after any failure of the handle itself (socket error, timeout,
  a reply pyroute2 or ``parse_netlink_addrs`` cannot read); a refusal by the kernel
  (``NetlinkError``) keeps it.
  ``opened`` counts the handles opened.
- pyroute2 keeps its sockets and event loops per thread, so the handle lives on a private
  event-loop thread (``netlink-vip``) and every request is handed to it (one at a time, under a
  lock); callers may be any thread (the watch loop observes on a pool). Every request is
  bounded by ``request_timeout`` (a hung netlink socket is a ``TransientError``).
- ``observe`` never raises: a netlink error, a timeout, a missing namespace or a garbage reply
  (``parse_netlink_addrs``) of the fresh dump gives ``VipObs(local=None, error=...)`` for
  every VIP.
- Observation is level-based: each ``observe`` returns the complete address table, read from
  the monitor's cache (below) while it can be trusted, else dumped afresh over the request
  handle (links and IPv4 addresses: two requests, no process).
- The cache (an informer, like ``EventFedDrbd``'s events2 state): with a ``wakeup``, the first
  request also starts a monitor: a second netlink socket bound to ``RTMGRP_LINK`` and
  ``RTMGRP_IPV4_IFADDR`` on its own event-loop thread (``netlink-vip-events``). Right after
  binding it dumps links and addresses *on that socket* and keeps the table from then on from
  ``RTM_NEWLINK``/``RTM_DELLINK``/``RTM_NEWADDR``/``RTM_DELADDR``, applied in the socket's
  order. The events the socket queued before the dump's reply are older than the dump; they
  are applied after it (each event sets one entry to what it says, so replaying them in order
  ends in the same table) and the cache is *settled* only once none is left queued: until
  then it is not read. ``observe`` reads the cache (no request, no thread hand-off) only when
  it is settled, its socket has failed in nothing since its dump, the dump is younger than
  ``resync`` seconds (the spec's ``timings.resync``), the table is consistent (no address on
  a link it does not know), and this adapter changed nothing since the last observe (its own
  ``add``/``remove``'s event may still be on its way: the verify tick must see the change).
  Otherwise the tick dumps afresh over the request handle, and that dump is the observation
  (``relists`` counts them); an old dump (``resync``) also asks the monitor to re-dump its
  socket, and a settled cache that disagrees with the fresh dump is logged and re-dumped.
  A monitor error is never old data: an overrun (``ENOBUFS``: events were lost) marks the
  cache untrusted and re-dumps on the same socket at once; any other failure of the socket,
  an unreadable event or a garbage dump closes it and opens a new one (which dumps again)
  after a pause (1 s, doubling up to 30 s while it cannot bind). If the fresh dump fails too,
  the observation is unknown (``VipObs(local=None, error=...)``).
- Address events wake the agent: an address added to or removed from an interface a VIP
  names (or such an interface appearing, disappearing or renamed) calls
  ``wakeup.notify("address")`` (someone else removed our VIP: a tick at once). This adapter's
  own ``add``/``remove`` are expected and do not wake (the verify tick after an acting tick
  checks them). A failed or overrun monitor socket notifies too (events may have been lost).
  A lost or spurious wake costs one tick, never a decision.
- ``close()`` (idempotent) stops the monitor and closes the handle and both threads; the
  adapter stays usable: the next request opens a new handle (and monitor, whose cache starts
  from a new dump).
- Error mapping, as ``IpVip``: "already assigned" (``EEXIST``) on add and "not there"
  (``EADDRNOTAVAIL``, a missing interface) on remove are success; a missing interface on add,
  a missing namespace and other kernel refusals are ``TerminalError``; timeouts, socket errors
  and ``ENOBUFS``/``EAGAIN``/``EBUSY``/``EINTR`` are ``TransientError``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import ipaddress
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_LINK

from adapters.inventory import FileInventory
from adapters.vip.adapter import AddressVip
from adapters.vip.parse import NetlinkReplyError, clip, parse_netlink_addrs
from adapters.vip.record import AnnounceRecord
from adapters.vip.tools import DEFAULT_PROBE_TIMEOUT, ArpTool
from adapters.wake import Wakeup
from reconciler.core.errors import AdapterError, TerminalError, TransientError
from reconciler.core.observed import VipObs
from reconciler.core.spec import Vip

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_REQUEST_TIMEOUT = 5.0
"""Seconds a netlink request (or opening a handle) may take before it is a ``TransientError``."""

MONITOR_RETRY = 1.0
MONITOR_RETRY_MAX = 30.0
"""Seconds the monitor waits before it opens a new socket after a failure (doubling from
``MONITOR_RETRY`` up to ``MONITOR_RETRY_MAX`` while it cannot even bind)."""

_TRANSIENT_CODES = frozenset({errno.ENOBUFS, errno.EAGAIN, errno.EBUSY, errno.EINTR})
_AF_INET = 2
_NEW, _DEL = "RTM_NEWADDR", "RTM_DELADDR"
_NEWLINK, _DELLINK = "RTM_NEWLINK", "RTM_DELLINK"
_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR
DEFAULT_RESYNC = 30.0
"""Seconds a cache dump is trusted for (the spec's ``timings.resync``)."""


class _LoopThread:
    """An asyncio event loop running on a daemon thread of its own (pyroute2's handles belong
    to the loop and thread that opened them)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop; wait at most ``timeout`` (``TimeoutError``)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel the loop's tasks and wait for them (their ``finally`` closes sockets), then
        stop the loop and its thread."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.call(_cancel_others(), timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_others() -> None:
    for _ in range(3):  # a cancelled task's finally may cancel tasks of its own
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


HandleFactory = Callable[[str | None], Any]
"""Opens an (unconnected) pyroute2 ``AsyncIPRoute``-like handle for a namespace (None: this
process's own); the default is ``open_handle``. Tests pass a fake netlink handle."""


def open_handle(namespace: str | None) -> AsyncIPRoute:
    """A pyroute2 handle in ``namespace`` (not connected until ``setup_endpoint``/``bind``)."""
    # flags=0: never create a missing namespace (pyroute2's default, O_CREAT, would).
    # groups=0: the request handle joins no multicast group (the monitor binds its own).
    if namespace is None:
        return AsyncIPRoute(groups=0)
    return AsyncIPRoute(netns=namespace, flags=0, groups=0)


async def _collect(result: Any) -> list[Any]:
    """pyroute2 answers a request with an async generator or a plain sequence of messages."""
    if hasattr(result, "__aiter__"):
        return [msg async for msg in result]
    return list(result)


class NetlinkVip(AddressVip):
    """``VipAdapter`` over rtnetlink (see the module docstring for the invariants).

    ``namespace``: the node's network namespace (transport ``netns``); None for the agent's
    own namespace (transport ``local``). ``wakeup``: what address events notify (None: no
    monitor). ``arp``: ``InProcessArp`` when the agent runs in the node's namespace,
    ``CommandArp`` through the node's runner otherwise (a packet socket of this process would
    probe the wrong network). ``handles`` opens the netlink handles (``open_handle``; tests
    pass a fake netlink). ``resync``: the longest time the monitor's cache answers from one
    dump (``timings.resync``); ``clock``: monotonic seconds (a test seam).
    """

    def __init__(
        self,
        *,
        arp: ArpTool,
        namespace: str | None = None,
        wakeup: Wakeup | None = None,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        record: AnnounceRecord | None = None,
        inventory: FileInventory | None = None,
        handles: HandleFactory = open_handle,
        resync: float = DEFAULT_RESYNC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(arp=arp, probe_timeout=probe_timeout, record=record, inventory=inventory)
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        self.resync = resync
        self.clock = clock
        self.relists = 0
        """Fresh dumps over the request handle (the observations the cache did not answer)."""
        self._cache = _AddressCache()
        self._acted = False  # an add/remove since the last observe: the next one dumps afresh
        self.namespace = namespace
        self.wakeup = wakeup
        self.request_timeout = request_timeout
        self.handles = handles
        self.opened = 0
        """Request handles opened so far (each is one fork when ``namespace`` is set)."""
        self._lock = threading.Lock()  # one request at a time; guards the fields below
        self._loop: _LoopThread | None = None
        self._ipr: AsyncIPRoute | None = None
        self._monitor: _AddressMonitor | None = None
        self._events = _EventFilter()

    # --- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Stop the monitor, close the handle and the threads (idempotent; a later request
        opens them again)."""
        with self._lock:
            monitor, self._monitor = self._monitor, None
            loop, self._loop = self._loop, None
            ipr, self._ipr = self._ipr, None
        if monitor is not None:
            monitor.stop()
        self._cache.invalidate("the adapter was closed")
        if loop is not None:
            if ipr is not None:
                with contextlib.suppress(Exception):
                    loop.call(_close_handle(ipr), timeout=self.request_timeout)
            loop.stop()

    @property
    def monitoring(self) -> bool:
        """True while the address monitor's socket is open and bound."""
        monitor = self._monitor
        return monitor is not None and monitor.bound.is_set()

    def _request(self, what: Callable[[AsyncIPRoute], Awaitable[T]]) -> T:
        """Run ``what(handle)`` on the handle's thread. Raises what ``what`` raised, or
        ``TimeoutError``; a failure other than ``NetlinkError`` drops the handle."""
        with self._lock:
            if self._loop is None:
                self._loop = _LoopThread("netlink-vip")
            if self._monitor is None and self.wakeup is not None:
                self._monitor = _AddressMonitor(
                    namespace=self.namespace,
                    wakeup=self.wakeup,
                    events=self._events,
                    handles=self.handles,
                    cache=self._cache,
                    clock=self.clock,
                    request_timeout=self.request_timeout,
                )
            try:
                # The outer bound only guards against a loop that does not run at all.
                return self._loop.call(self._run(what), timeout=self.request_timeout + 1.0)
            except TimeoutError:
                self._drop()
                raise

    async def _run(self, what: Callable[[AsyncIPRoute], Awaitable[T]]) -> T:
        try:
            if self._ipr is None:
                ipr = self.handles(self.namespace)
                try:
                    await asyncio.wait_for(ipr.setup_endpoint(), self.request_timeout)
                except BaseException:
                    _close_quietly(ipr)
                    raise
                self._ipr = ipr
                self.opened += 1
            return await asyncio.wait_for(what(self._ipr), self.request_timeout)
        except NetlinkError:
            raise  # the kernel answered: the handle is fine
        except BaseException:
            if self._ipr is not None:
                _close_quietly(self._ipr)
                self._ipr = None
            raise

    def _drop(self) -> None:
        """Forget the handle after the loop did not answer in time (closed on its thread)."""
        ipr, self._ipr = self._ipr, None
        if ipr is not None and self._loop is not None:
            self._loop.loop.call_soon_threadsafe(_close_quietly, ipr)

    # --- reading ------------------------------------------------------------------------
    def observe(self, vips: Sequence[Vip], *, wait_probes: bool = True) -> tuple[VipObs, ...]:
        self._events.watch_names({v.interface for v in vips})
        return super().observe(vips, wait_probes=wait_probes)

    @property
    def cached(self) -> str | None:
        """None while ``observe`` would answer from the monitor's cache, else why not."""
        return self._cache_unusable()

    @property
    def cache_dumps(self) -> int:
        """Dumps on the monitor's socket so far (start, overruns, resyncs, new sockets)."""
        return self._cache.dumps

    @property
    def overruns(self) -> int:
        """``ENOBUFS`` overruns the monitor's socket reported so far."""
        return self._cache.overruns

    def _cache_unusable(self) -> str | None:
        monitor = self._monitor
        if monitor is None:
            return "no address monitor runs"
        if not monitor.bound.is_set():
            return "the address monitor is not bound"
        return self._cache.unusable(self.clock(), self.resync)

    def _read_addresses(self) -> dict[str, set[str]]:
        acted, self._acted = self._acted, False
        why = "this adapter changed an address since" if acted else self._cache_unusable()
        if why is None:
            table, indices = self._cache.table(self._events.names())
            if table is not None:
                self._events.watch_indices(indices)
                return table
            why = "the cached table is inconsistent"
        log.debug("netlink address dump (cache not used: %s)", why)
        fresh = self._dump_afresh()
        monitor = self._monitor
        if monitor is not None and why.startswith("periodic"):
            # Also a check of the cache: a settled one that disagrees missed something.
            mine, _ = self._cache.table(self._events.names())
            if mine is not None and mine != fresh:
                log.warning(
                    "the netlink address cache missed a change (dumped %s, cached %s)",
                    fresh,
                    mine,
                )
            monitor.redump()
        return fresh

    def _dump_afresh(self) -> dict[str, set[str]]:
        async def dump(ipr: AsyncIPRoute) -> dict[str, set[str]]:
            links = await _collect(await ipr.link("dump"))
            addrs = await _collect(await ipr.addr("dump", family=_AF_INET))
            # Parsed on the handle's side: a garbage reply drops the handle like a failure.
            table = parse_netlink_addrs(links, addrs)
            self._events.watch_indices(
                {link.get("index") for link in links if link.get("IFLA_IFNAME") in table}
            )
            return table

        self.relists += 1
        try:
            return self._request(dump)
        except NetlinkReplyError:
            raise
        except Exception as exc:  # a failed or unreadable dump is data, never a crash
            raise self._error(exc, "dump the addresses") from exc

    # --- changing -----------------------------------------------------------------------
    def _change(self, verb: str, address: str, dev: str) -> bool:
        iface = ipaddress.IPv4Interface(address)
        ip, prefixlen = str(iface.ip), iface.network.prefixlen
        what = "add" if verb == "add" else "remove"
        where = "on" if verb == "add" else "from"
        kind = _NEW if verb == "add" else _DEL

        async def change(ipr: AsyncIPRoute) -> int | None:
            try:
                (link,) = await _collect(await ipr.link("get", ifname=dev))
            except NetlinkError as exc:
                if exc.code == errno.ENODEV:
                    return None
                raise
            index = link.get("index")
            if not isinstance(index, int):
                raise NetlinkReplyError(f"link {dev} without an index")
            self._events.watch_indices({index})
            self._events.expect(kind, ip)  # before the request: its event may come first
            try:
                await ipr.addr(verb, index=index, address=ip, prefixlen=prefixlen)
            except BaseException:
                self._events.unexpect(kind, ip)
                raise
            return index

        self._events.watch_names({dev})
        self._acted = True
        try:
            index = self._request(change)
        except NetlinkError as exc:
            if verb == "add" and exc.code == errno.EEXIST:
                return False
            if verb == "del" and exc.code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                return False
            raise self._error(exc, f"{what} VIP {address} {where} {dev}") from exc
        except Exception as exc:
            raise self._error(exc, f"{what} VIP {address} {where} {dev}") from exc
        if index is None:
            if verb == "del":
                return False  # no interface: the address is not on it either
            raise TerminalError(
                f"cannot add VIP {address} on {dev}: interface {dev} does not exist"
            )
        return True

    def _error(self, exc: BaseException, doing: str) -> AdapterError:
        """The ``TransientError``/``TerminalError`` for a failed netlink request."""
        where = f" in network namespace {self.namespace}" if self.namespace else ""
        if isinstance(exc, AdapterError):
            return exc
        if isinstance(exc, TimeoutError):
            return TransientError(
                f"cannot {doing}{where}: no netlink reply within {self.request_timeout:g} s"
            )
        if isinstance(exc, NetlinkError):
            text = f"cannot {doing}{where}: [Errno {exc.code}] {exc.args[-1]}"
            if exc.code in _TRANSIENT_CODES:
                return TransientError(text)
            return TerminalError(text)
        if isinstance(exc, FileNotFoundError) and self.namespace is not None:
            return TerminalError(
                f"cannot {doing}: network namespace {self.namespace} does not exist"
            )
        if isinstance(exc, OSError):
            return TransientError(f"cannot {doing}{where}: netlink socket failed: {exc}")
        return TransientError(f"cannot {doing}{where}: bad netlink reply: {clip(repr(exc), 200)}")


async def _close_handle(ipr: AsyncIPRoute) -> None:
    _close_quietly(ipr)


def _close_quietly(ipr: AsyncIPRoute) -> None:
    with contextlib.suppress(Exception):
        ipr.close()


class _EventFilter:
    """Which address events wake the agent: those on the VIPs' interfaces (by name, from the
    VIPs asked about; by index, from the last dump or lookup), except the ones this adapter's
    own requests cause (expected before each request, consumed by the first matching event).
    Thread-safe: the adapter writes, the monitor thread reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: set[str] = set()
        self._indices: set[int] = set()
        self._expected: collections.Counter[tuple[str, str]] = collections.Counter()

    def watch_names(self, names: set[str]) -> None:
        with self._lock:
            self._names |= names

    def watch_indices(self, indices: set[Any]) -> None:
        with self._lock:
            self._indices |= {i for i in indices if isinstance(i, int)}

    def names(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._names)

    def watched_link(self, index: Any, name: Any) -> bool:
        """True for a link (by index or name) a VIP names."""
        with self._lock:
            return index in self._indices or name in self._names

    def expect(self, kind: str, ip: str) -> None:
        with self._lock:
            self._expected[(kind, ip)] += 1

    def unexpect(self, kind: str, ip: str) -> None:
        with self._lock:
            if self._expected[(kind, ip)] > 0:
                self._expected[(kind, ip)] -= 1

    def forget_expected(self) -> None:
        """Events were lost: an expected one may never come, so stop waiting for any."""
        with self._lock:
            self._expected.clear()

    def wakes(self, msg: Any) -> bool:
        """True when ``msg`` (a pyroute2 message) should wake the agent."""
        kind = msg.get("event")
        if kind not in (_NEW, _DEL) or msg.get("family") != _AF_INET:
            return False
        label = msg.get("IFA_LABEL")
        name = label.split(":", 1)[0] if isinstance(label, str) else None
        ip = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
        with self._lock:
            if msg.get("index") not in self._indices and name not in self._names:
                return False
            key = (kind, ip)
            if self._expected[key] > 0:
                self._expected[key] -= 1
                return False
            return True


class _AddressCache:
    """The monitor's link and address table (see the module docstring): written by the
    monitor's thread, read by ``observe`` from any thread, under one lock. Entries are
    ``index -> name`` for links and ``(index, ip, prefixlen)`` for IPv4 addresses, so every
    event sets one entry to what it says (a replay in order ends in the same table)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._links: dict[int, str] = {}
        self._addrs: set[tuple[int, str, int]] = set()
        self._why: str | None = "the address monitor has not dumped yet"
        self.settled = False
        self.dumped: float | None = None
        """When the table was last dumped (the monitor's clock); None: never, or untrusted."""
        self.dumps = 0  # dumps on the monitor's socket (a figure for tests)
        self.overruns = 0  # ENOBUFS seen on it

    def reset(self, links: dict[int, str], addrs: set[tuple[int, str, int]], now: float) -> None:
        """A fresh dump: not settled until the events queued before it are applied."""
        with self._lock:
            self._links, self._addrs = links, addrs
            self._why, self.settled, self.dumped = None, False, now
            self.dumps += 1

    def settle(self) -> None:
        with self._lock:
            if self._why is None:
                self.settled = True

    def invalidate(self, why: str) -> None:
        with self._lock:
            self._why, self.settled, self.dumped = why, False, None

    def unusable(self, now: float, resync: float) -> str | None:
        with self._lock:
            if self._why is not None:
                return self._why
            if not self.settled:
                return "the address monitor's dump is settling"
            if self.dumped is None or now - self.dumped >= resync:
                return f"periodic re-dump (every {resync:g}s)"
            return None

    def apply(self, msg: Any) -> bool | None:
        """Apply one event; True when the table changed, False when not, None for a message
        that is no table event (other families, other kinds)."""
        kind = msg.get("event")
        if kind in (_NEW, _DEL):
            if msg.get("family") != _AF_INET:
                return None
            key = _address_key(msg)
            with self._lock:
                if kind == _NEW:
                    if key in self._addrs:
                        return False
                    self._addrs.add(key)
                    return True
                if key not in self._addrs:
                    return False
                self._addrs.discard(key)
                return True
        if kind in (_NEWLINK, _DELLINK):
            index = _link_index(msg)
            with self._lock:
                if kind == _DELLINK:
                    gone = {a for a in self._addrs if a[0] == index}
                    self._addrs -= gone
                    return self._links.pop(index, None) is not None or bool(gone)
                name = _link_name(msg, index)
                before = self._links.get(index)
                self._links[index] = name
                return before != name
        return None

    def table(self, names: frozenset[str]) -> tuple[dict[str, set[str]] | None, set[int]]:
        """The table as ``parse_netlink_addrs`` gives it (None when an address sits on a link
        the table does not know), and the indices of the links named in ``names``."""
        with self._lock:
            result: dict[str, set[str]] = {name: set() for name in self._links.values()}
            for index, ip, _prefixlen in self._addrs:
                name = self._links.get(index)
                if name is None:
                    return None, set()
                result[name].add(ip)
            indices = {i for i, n in self._links.items() if n in names}
        return result, indices


def _address_key(msg: Any) -> tuple[int, str, int]:
    index = msg.get("index")
    local = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
    prefixlen = msg.get("prefixlen")
    if not isinstance(index, int) or isinstance(index, bool) or index <= 0:
        raise NetlinkReplyError(f"address message without an interface index: {clip(repr(msg))}")
    if not isinstance(prefixlen, int) or isinstance(prefixlen, bool):
        raise NetlinkReplyError(f"address message without a prefix length: {clip(repr(msg))}")
    if not isinstance(local, str):
        raise NetlinkReplyError(f"inet address without IFA_LOCAL: {clip(repr(msg))}")
    try:
        return index, str(ipaddress.IPv4Address(local)), prefixlen
    except ValueError as exc:
        raise NetlinkReplyError(f"bad IPv4 address {local!r}") from exc


def _link_index(msg: Any) -> int:
    index = msg.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index <= 0:
        raise NetlinkReplyError(f"link message without an interface index: {clip(repr(msg))}")
    return index


def _link_name(msg: Any, index: int) -> str:
    name = msg.get("IFLA_IFNAME")
    if not isinstance(name, str) or not name:
        raise NetlinkReplyError(f"link {index} without a name")
    return name


def _parse_dump(
    links: Sequence[Any], addrs: Sequence[Any]
) -> tuple[dict[int, str], set[tuple[int, str, int]]]:
    """A link and an address dump as cache entries (``NetlinkReplyError`` for garbage)."""
    table_links: dict[int, str] = {}
    for link in links:
        index = _link_index(link)
        table_links[index] = _link_name(link, index)
    table_addrs: set[tuple[int, str, int]] = set()
    for addr in addrs:
        family = addr.get("family")
        if family != _AF_INET:
            if not isinstance(family, int):
                raise NetlinkReplyError(f"address message without a family: {clip(repr(addr))}")
            continue
        table_addrs.add(_address_key(addr))
    return table_links, table_addrs


def _overrun(exc: BaseException) -> bool:
    """The kernel dropped events for this socket (its receive buffer overflowed)."""
    return errno.ENOBUFS in (getattr(exc, "errno", None), getattr(exc, "code", None))


def _backlog(handle: Any) -> bool:
    """True when ``handle`` holds received events not read yet (pyroute2 queues a bound
    socket's events, tag 0, apart from request replies). A handle that cannot tell counts as
    having some: its cache never settles, so every observe dumps afresh."""
    try:
        return not handle.msg_queue.root.empty()
    except Exception:
        return True


async def _batch(handle: Any) -> list[Any]:
    """The events of the next datagram the bound ``handle`` received."""
    return [msg async for msg in handle.get()]


class _AddressMonitor:
    """A netlink socket bound to the link and IPv4 address groups, read on its own event-loop
    thread, keeping ``cache``; started at construction, stopped by ``stop`` (see the module
    docstring)."""

    def __init__(
        self,
        *,
        namespace: str | None,
        wakeup: Wakeup,
        events: _EventFilter,
        handles: HandleFactory,
        cache: _AddressCache,
        clock: Callable[[], float],
        request_timeout: float,
    ) -> None:
        self.namespace = namespace
        self.handles = handles
        self.wakeup = wakeup
        self.events = events
        self.cache = cache
        self.clock = clock
        self.request_timeout = request_timeout
        self.bound = threading.Event()
        self._thread = _LoopThread("netlink-vip-events")
        self._want_dump = False  # touched on the loop's thread only
        self._reader: asyncio.Future[list[Any]] | None = None
        asyncio.run_coroutine_threadsafe(self._watch(), self._thread.loop)

    def stop(self) -> None:
        self._thread.stop()  # cancels the watch task; its finally closes the socket
        self.bound.clear()

    def redump(self) -> None:
        """Ask for a new dump on the monitor's socket (from any thread)."""
        with contextlib.suppress(RuntimeError):  # the loop was closed: nothing to refresh
            self._thread.loop.call_soon_threadsafe(self._ask_dump)

    def _ask_dump(self) -> None:
        """On the loop's thread: dump next; a reader waiting for events stops waiting (a
        cancelled wait for the next datagram loses none: it stays queued)."""
        self._want_dump = True
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()

    async def _dump(self, mon: Any) -> None:
        async def both() -> tuple[list[Any], list[Any]]:
            links = await _collect(await mon.link("dump"))
            addrs = await _collect(await mon.addr("dump", family=_AF_INET))
            return links, addrs

        # asyncio.timeout, not wait_for: wait_for (3.11) can swallow the cancellation that
        # stops the monitor when it lands as the dump completes.
        async with asyncio.timeout(self.request_timeout):
            links, addrs = await both()
        table_links, table_addrs = _parse_dump(links, addrs)
        self.cache.reset(table_links, table_addrs, self.clock())

    def _lost(self, why: str) -> None:
        """Events may have been lost: the cache is not used until a new dump, and the agent
        looks now."""
        self.cache.invalidate(why)
        self.events.forget_expected()
        self.wakeup.notify("address")

    def _on_event(self, msg: Any) -> None:
        changed = self.cache.apply(msg)
        kind = msg.get("event")
        if kind in (_NEWLINK, _DELLINK):
            if changed and self.events.watched_link(msg.get("index"), msg.get("IFLA_IFNAME")):
                self.wakeup.notify("address")
        elif changed is not None and self.events.wakes(msg):
            self.wakeup.notify("address")

    async def _watch(self) -> None:
        pause = MONITOR_RETRY
        while True:
            mon = self.handles(self.namespace)
            try:
                await mon.bind(groups=_GROUPS)
                self.bound.set()
                pause = MONITOR_RETRY
                self._want_dump = True  # the first dump, on this socket
                while True:
                    if self._want_dump:
                        self._want_dump = False
                        await self._dump(mon)
                    if self._reader is None:
                        self._reader = asyncio.ensure_future(_batch(mon))
                    reader = self._reader
                    if not reader.done() and not _backlog(mon):
                        self.cache.settle()  # every event queued before the dump is in
                    await asyncio.wait([reader])  # raises only when this task is cancelled
                    self._reader = None
                    if reader.cancelled():  # asked for a dump (``_ask_dump``)
                        continue
                    try:
                        got = reader.result()
                    except Exception as exc:
                        if not _overrun(exc):
                            raise
                        self.cache.overruns += 1
                        log.info("netlink address monitor overrun (%s): re-dumping", exc)
                        self._lost("the address monitor lost events (ENOBUFS)")
                        self._want_dump = True
                        continue
                    if not got:
                        raise ConnectionError("the netlink event socket returned nothing")
                    for msg in got:
                        self._on_event(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("netlink address monitor failed (retrying in %g s): %s", pause, exc)
                why = f"the address monitor failed: {clip(str(exc), 200)}"
                if self.bound.is_set():  # events may have been lost: look now
                    self._lost(why)
                else:
                    self.cache.invalidate(why)
            finally:
                if self._reader is not None:
                    self._reader.cancel()
                    self._reader = None
                self.bound.clear()
                _close_quietly(mon)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MONITOR_RETRY_MAX)
