"""A fake rtnetlink for ``NetlinkVip``: one kernel address table (``FakeKernel``) and the
handles ``NetlinkVip`` opens on it (``kernel.open``, passed as ``handles=``), answering the
few pyroute2 ``AsyncIPRoute`` calls the adapter makes the way the kernel does (``EEXIST`` on a
second add, ``EADDRNOTAVAIL`` on deleting an absent address, ``ENODEV`` for an unknown link)
and delivering ``RTM_NEWADDR``/``RTM_DELADDR`` events to bound handles. Faults are data: the
next request fails with a given exception, dumps return garbage, opening fails.

Messages are plain dicts (pyroute2's messages are read with ``msg.get(name)`` too).
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError


@dataclass
class FakeKernel:
    links: dict[int, str] = field(default_factory=lambda: {1: "lo", 2: "eth0", 3: "repl0"})
    addrs: set[tuple[int, str, int]] = field(
        default_factory=lambda: {(1, "127.0.0.1", 8), (2, "198.51.100.1", 24)}
    )
    fail_next: list[BaseException] = field(default_factory=list)
    """Raised, first to last, by the next requests (one each)."""
    fail_events: list[BaseException] = field(default_factory=list)
    """Raised, first to last, by bound handles' ``get`` instead of the next event."""
    open_error: BaseException | None = None
    garbage: bool = False
    opened: int = 0
    bound: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)
    dumps: list[str] = field(default_factory=list)
    """Who dumped the links, in order: "monitor" (a bound handle) or "request"."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _listeners: list[FakeHandle] = field(default_factory=list)

    def open(self, namespace: str | None) -> FakeHandle:
        return FakeHandle(self, namespace)

    # --- behind the adapter's back ------------------------------------------------------
    def add_by_hand(self, index: int, ip: str, prefixlen: int = 24) -> None:
        self.addrs.add((index, ip, prefixlen))
        self._broadcast("RTM_NEWADDR", index, ip, prefixlen)

    def del_by_hand(self, index: int, ip: str, prefixlen: int = 24) -> None:
        self.addrs.discard((index, ip, prefixlen))
        self._broadcast("RTM_DELADDR", index, ip, prefixlen)

    def add_link_by_hand(self, index: int, name: str) -> None:
        self.links[index] = name
        self._broadcast_link("RTM_NEWLINK", index, name)

    def del_link_by_hand(self, index: int) -> None:
        name = self.links.pop(index)
        for addr in [a for a in self.addrs if a[0] == index]:
            self.del_by_hand(*addr)
        self._broadcast_link("RTM_DELLINK", index, name)

    def send_raw_event(self, msg: dict[str, Any]) -> None:
        """Deliver ``msg`` as it is to the bound handles (a garbage event, say)."""
        with self._lock:
            listeners = list(self._listeners)
        for handle in listeners:
            handle.deliver(msg)

    def _broadcast_link(self, kind: str, index: int, name: str) -> None:
        self.send_raw_event({"event": kind, "family": 0, "index": index, "IFLA_IFNAME": name})

    def break_events(self, exc: BaseException) -> None:
        """The bound sockets fail (as on ENOBUFS): their next ``get`` raises ``exc``."""
        self.fail_events.append(exc)
        self._broadcast("FAIL", 0, "", 0)

    def _broadcast(self, kind: str, index: int, ip: str, prefixlen: int) -> None:
        msg = {
            "event": kind,
            "family": 2,
            "index": index,
            "prefixlen": prefixlen,
            "IFA_LOCAL": ip,
            "IFA_LABEL": self.links.get(index),
        }
        with self._lock:
            listeners = list(self._listeners)
        for handle in listeners:
            handle.deliver(msg)


class FakeHandle:
    """One opened handle (an ``AsyncIPRoute`` as ``NetlinkVip`` uses it)."""

    def __init__(self, kernel: FakeKernel, namespace: str | None) -> None:
        self.kernel = kernel
        self.namespace = namespace
        self.closed = False
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.msg_queue: Any = None  # as pyroute2's: ``.root`` holds the unread events

    async def setup_endpoint(self) -> None:
        if self.kernel.open_error is not None:
            raise self.kernel.open_error
        self.kernel.opened += 1

    async def bind(self, groups: int = 0) -> None:
        if self.kernel.open_error is not None:
            raise self.kernel.open_error
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self.msg_queue = SimpleNamespace(root=self._queue)
        with self.kernel._lock:
            self.kernel._listeners.append(self)
            self.kernel.bound += 1

    def deliver(self, msg: dict[str, Any]) -> None:
        if self._loop is not None and self._queue is not None and not self.closed:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, msg)

    async def get(self) -> AsyncIterator[dict[str, Any]]:
        assert self._queue is not None, "get() on a handle that is not bound"
        msg = await self._queue.get()
        if msg["event"] == "FAIL":
            raise self.kernel.fail_events.pop(0)
        yield msg

    def close(self) -> None:
        self.closed = True
        with self.kernel._lock:
            if self in self.kernel._listeners:
                self.kernel._listeners.remove(self)

    def _request(self, what: str, command: str) -> None:
        assert not self.closed, "request on a closed handle"
        self.kernel.requests.append((what, command))
        if self.kernel.fail_next:
            raise self.kernel.fail_next.pop(0)

    async def link(self, command: str, **kw: Any) -> list[dict[str, Any]]:
        self._request("link", command)
        if command == "dump":
            self.kernel.dumps.append("monitor" if self._queue is not None else "request")
            if self.kernel.garbage:
                return [{"index": "two", "IFLA_IFNAME": None}]
            return [{"index": i, "IFLA_IFNAME": n} for i, n in self.kernel.links.items()]
        assert command == "get", command
        found = [i for i, n in self.kernel.links.items() if n == kw["ifname"]]
        if not found:
            raise NetlinkError(errno.ENODEV)
        return [{"index": found[0], "IFLA_IFNAME": kw["ifname"]}]

    async def addr(self, command: str, **kw: Any) -> list[dict[str, Any]]:
        self._request("addr", command)
        if command == "dump":
            return [
                {"index": i, "family": 2, "IFA_LOCAL": ip, "prefixlen": p}
                for i, ip, p in sorted(self.kernel.addrs)
            ]
        key = (kw["index"], kw["address"], kw["prefixlen"])
        if kw["index"] not in self.kernel.links:
            raise NetlinkError(errno.ENODEV)
        if command == "add":
            if any(a[:2] == key[:2] for a in self.kernel.addrs):
                raise NetlinkError(errno.EEXIST)
            self.kernel.add_by_hand(*key)
            return []
        assert command == "del", command
        if key not in self.kernel.addrs:
            raise NetlinkError(errno.EADDRNOTAVAIL)
        self.kernel.del_by_hand(*key)
        return []
