"""``NetlinkVip`` in the namespace lab: real rtnetlink inside a lab namespace (pyroute2's
``netns=`` handle from the test process, as the factory builds it for transport ``netns``), ARP
through ``arping`` run by the node's lab runner.

The contract suite (tests/contract/test_vip_contract.py) covers add/remove/observe/announce
against the same assertions as IpVip and SimVip; this file covers what only netlink has: no
process per request, one handle kept open (and re-opened after an error or ``close``), address
events that wake the agent, the error paths (missing interface, missing namespace), and the
monitor's cache of links and addresses (events applied, the own change's fresh dump, an
``ENOBUFS`` overrun's re-dump, the periodic resync, a broken monitor and a failed dump).
Every command of the test itself goes through the lab helper (``lab.run``); only
198.51.100.0/24 is used.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from adapters.vip import CommandArp, IpVip
from adapters.vip.netlink import NetlinkVip, open_handle
from adapters.wake import Wakeup
from reconciler.core.errors import TerminalError
from reconciler.core.observed import VipObs
from reconciler.core.spec import Vip
from tests.lab.netns import VIP, VIP_IP, Lab
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

OTHER = "198.51.100.4/24"


def the_vip(address: str = VIP, interface: str = "eth0") -> Vip:
    return Vip.model_validate({"address": address, "interface": interface})


def on_node(lab: Lab, key: str) -> set[str]:
    """The IPv4 addresses of ``key``'s eth0, read with iproute2 through the lab helper."""
    out = lab.run(key, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    return {line.split()[3].split("/")[0] for line in out.splitlines() if line.strip()}


def netlink_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("netlink-vip")]


@pytest.fixture
def make_vip(lab: Lab) -> Iterator[Callable[..., NetlinkVip]]:
    made: list[tuple[NetlinkVip, CommandArp]] = []

    def make(key: str = "node1", *, wakeup: Wakeup | None = None) -> NetlinkVip:
        arp = CommandArp(lab.runner(key))
        vip = NetlinkVip(namespace=lab.ns(key), arp=arp, wakeup=wakeup)
        made.append((vip, arp))
        return vip

    yield make
    for vip, arp in made:
        arp.drain()
        vip.close()


def test_add_observe_remove_over_netlink_spawn_no_process(
    lab: Lab, make_vip: Callable[..., NetlinkVip]
) -> None:
    """observe (of a VIP held here), add and remove run no command: the ARP tool's runner,
    the only one the adapter has, starts nothing; one handle serves every request."""
    runner = lab.runner("node1")
    vip = NetlinkVip(namespace=lab.ns("node1"), arp=CommandArp(runner))
    try:
        for _ in range(5):
            vip.add(the_vip())
            assert VIP_IP in on_node(lab, "node1")
            (seen,) = vip.observe([the_vip()])
            assert (seen.local, seen.announced, seen.error) == (True, False, None)
            vip.remove(the_vip())
            assert VIP_IP not in on_node(lab, "node1")
        assert runner.spawned == 0
        assert vip.opened == 1
    finally:
        vip.close()
    # The counter counts: IpVip on the same kind of runner starts one `ip` per request.
    ip_runner = lab.runner("node1")
    ip = IpVip(ip_runner, arp=CommandArp(ip_runner))
    ip.add(the_vip())
    ip.observe([the_vip()])
    ip.remove(the_vip())
    assert ip_runner.spawned == 3


def test_observe_sees_changes_made_behind_its_back(
    lab: Lab, make_vip: Callable[..., NetlinkVip]
) -> None:
    """Level-based: every observe reads the kernel's table afresh over the open handle."""
    vip = make_vip()
    assert vip.observe([the_vip()])[0].local is False
    lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])
    assert vip.observe([the_vip()])[0].local is True
    lab.run("node1", ["ip", "addr", "del", VIP, "dev", "eth0"])
    assert vip.observe([the_vip()])[0].local is False
    lab.run("node1", ["ip", "addr", "add", VIP, "dev", "repl0"])
    (seen,) = vip.observe([the_vip()])
    assert seen.local is None and seen.error is not None and "repl0" in seen.error


def test_peer_holding_the_vip_is_answered_elsewhere(
    lab: Lab, make_vip: Callable[..., NetlinkVip]
) -> None:
    make_vip("node1").add(the_vip())
    (seen,) = make_vip("node2").observe([the_vip()])
    assert (seen.local, seen.answered_elsewhere, seen.error) == (False, True, None)
    assert seen.holder is not None and lab.mac("node1") in seen.holder


def test_announce_moves_the_client(lab: Lab, make_vip: Callable[..., NetlinkVip]) -> None:
    node1, node2 = make_vip("node1"), make_vip("node2")
    node1.add(the_vip())
    node1.announce(the_vip())
    lab.run("client", ["ping", "-c", "1", "-W", "1", VIP_IP])
    assert lab.neigh("client", VIP_IP) == lab.mac("node1")
    node1.remove(the_vip())
    node2.add(the_vip())
    node2.announce(the_vip())
    assert node2.observe([the_vip()])[0].announced is True
    wait_for(
        "the client to follow node2's announcement",
        lambda: lab.neigh("client", VIP_IP) == lab.mac("node2"),
        timeout=3.0,
    )


def test_vip_removed_from_outside_wakes_the_agent(
    lab: Lab, make_vip: Callable[..., NetlinkVip]
) -> None:
    wakeup = Wakeup()
    vip = make_vip(wakeup=wakeup)
    vip.add(the_vip())
    wait_for("the address monitor to be bound", lambda: vip.monitoring, timeout=5)
    wakeup.clear()  # as the loop does right before a tick
    lab.run("node1", ["ip", "addr", "del", VIP, "dev", "eth0"])
    assert wakeup.wait(5.0) == "address"
    assert vip.observe([the_vip()])[0].local is False
    wakeup.clear()
    lab.run("node1", ["ip", "addr", "add", OTHER, "dev", "eth0"])  # any address on eth0
    assert wakeup.wait(5.0) == "address"


def test_close_stops_everything_and_a_later_request_reopens(
    lab: Lab, make_vip: Callable[..., NetlinkVip]
) -> None:
    before = set(netlink_threads())
    wakeup = Wakeup()
    vip = make_vip(wakeup=wakeup)
    assert set(netlink_threads()) == before, "building the adapter starts nothing"
    vip.add(the_vip())
    wait_for("the address monitor to be bound", lambda: vip.monitoring, timeout=5)
    assert len(set(netlink_threads()) - before) == 2  # the handle's loop and the monitor's
    vip.close()
    vip.close()  # idempotent
    assert set(netlink_threads()) == before
    assert not vip.monitoring
    # Reopened on the next request: a new handle, a new monitor that wakes again.
    assert vip.observe([the_vip()])[0].local is True
    assert vip.opened == 2
    wait_for("the new monitor to be bound", lambda: vip.monitoring, timeout=5)
    wakeup.clear()
    lab.run("node1", ["ip", "addr", "del", VIP, "dev", "eth0"])
    assert wakeup.wait(5.0) == "address"


def test_missing_interface(lab: Lab, make_vip: Callable[..., NetlinkVip]) -> None:
    vip = make_vip()
    gone = the_vip(interface="eth9")
    with pytest.raises(TerminalError, match="eth9 does not exist"):
        vip.add(gone)
    vip.remove(gone)  # not there either way: success
    (seen,) = vip.observe([gone])
    assert seen.local is False and seen.error is not None and "eth9" in seen.error
    assert vip.opened == 1  # a kernel refusal keeps the handle


def test_missing_namespace_is_unknown_and_never_created(lab_factory: Callable[[], Lab]) -> None:
    """A namespace that does not exist: observe is unknown with the reason, add and remove
    are terminal, and pyroute2 does not create it. Once it exists (the lab comes up), the
    next request opens a handle and works: a failed open is retried, not remembered."""
    lab = lab_factory()
    ns = lab.ns("node1")
    assert not os.path.exists(f"/run/netns/{ns}")
    vip = NetlinkVip(namespace=ns, arp=CommandArp(lab.runner("node1")), wakeup=Wakeup())
    try:
        (seen,) = vip.observe([the_vip()])
        assert seen.local is None
        assert seen.error is not None and f"network namespace {ns} does not exist" in seen.error
        with pytest.raises(TerminalError, match="does not exist"):
            vip.add(the_vip())
        with pytest.raises(TerminalError, match="does not exist"):
            vip.remove(the_vip())
        assert not os.path.exists(f"/run/netns/{ns}")
        assert vip.opened == 0
        lab.up()
        vip.add(the_vip())
        assert VIP_IP in on_node(lab, "node1")
        assert vip.observe([the_vip()])[0].local is True
        assert vip.opened == 1
    finally:
        vip.close()


# ------------------------------------------------------------------ the monitor's cache
class Handle:
    """A real pyroute2 handle (``open_handle``) with faults a test can switch on: a small
    receive buffer on the monitor's socket (so a burst of events overruns it), a monitor
    socket that fails on its next event, request dumps that fail."""

    def __init__(self, namespace: str | None, faults: dict[str, bool]) -> None:
        self._inner = open_handle(namespace)
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def bind(self, groups: int = 0) -> None:
        await self._inner.bind(groups=groups)
        if self._faults.get("small buffer"):
            self._inner.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)

    async def get(self) -> AsyncIterator[Any]:
        async for msg in self._inner.get():
            if self._faults.get("monitor fails"):
                raise OSError(errno.EBADF, "the test broke the monitor socket")
            yield msg

    async def addr(self, command: str, **kw: Any) -> Any:
        if command == "dump" and self._faults.get("dumps fail"):
            raise OSError(errno.EBADF, "the test broke the request socket")
        return await self._inner.addr(command, **kw)


@pytest.fixture
def cached_vip(lab: Lab) -> Iterator[Callable[..., tuple[NetlinkVip, dict[str, bool]]]]:
    made: list[NetlinkVip] = []

    def make(**kw: Any) -> tuple[NetlinkVip, dict[str, bool]]:
        faults: dict[str, bool] = {}
        vip = NetlinkVip(
            namespace=lab.ns("node1"),
            arp=CommandArp(lab.runner("node1")),
            wakeup=Wakeup(),
            handles=lambda ns: Handle(ns, faults),
            **kw,
        )
        made.append(vip)
        vip.observe([the_vip()])  # the first request starts the monitor (a fresh dump)
        wait_for("the cache to settle", lambda: vip.cached is None, timeout=5)
        return vip, faults

    yield make
    for vip in made:
        vip.close()


def seen(vip: NetlinkVip, v: Vip) -> VipObs:
    (obs,) = vip.observe([v])
    return obs


def test_the_cache_follows_address_and_link_events_without_a_request(
    lab: Lab, cached_vip: Callable[..., tuple[NetlinkVip, dict[str, bool]]]
) -> None:
    """Once settled, observe answers from the events alone: addresses added and removed by
    hand, a link created, given an address and deleted; no dump is requested for any of it."""
    vip, _ = cached_vip()
    relists = vip.relists
    assert relists == 1  # the first observe, before the monitor had dumped
    lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])
    wait_for("the cache to show the VIP", lambda: seen(vip, the_vip()).local is True, timeout=5)
    lab.run("node1", ["ip", "addr", "del", VIP, "dev", "eth0"])
    wait_for("the cache to drop the VIP", lambda: seen(vip, the_vip()).local is False, timeout=5)
    on_veth = the_vip(interface="tdmv0")
    gone = "interface tdmv0 does not exist"
    assert gone in (seen(vip, on_veth).error or "")
    lab.run("node1", ["ip", "link", "add", "tdmv0", "type", "veth", "peer", "name", "tdmv1"])
    try:
        wait_for("the new link", lambda: gone not in (seen(vip, on_veth).error or ""), timeout=5)
        lab.run("node1", ["ip", "addr", "add", VIP, "dev", "tdmv0"])
        wait_for("its address", lambda: seen(vip, on_veth).local is True, timeout=5)
    finally:
        lab.run("node1", ["ip", "link", "del", "tdmv0"])
    wait_for("the link gone", lambda: gone in (seen(vip, on_veth).error or ""), timeout=5)
    assert seen(vip, the_vip()).local is False
    assert vip.relists == relists  # every observation above came from the cache
    assert vip.cache_dumps == 1


def test_an_own_change_is_verified_by_a_fresh_dump(
    lab: Lab, cached_vip: Callable[..., tuple[NetlinkVip, dict[str, bool]]]
) -> None:
    vip, _ = cached_vip()
    relists = vip.relists
    vip.add(the_vip())
    assert seen(vip, the_vip()).local is True  # at once: not waiting for the event
    assert vip.relists == relists + 1
    wait_for("the event", lambda: seen(vip, the_vip()).local is True, timeout=5)
    assert vip.relists == relists + 1  # then the cache again


def test_an_overrun_redumps_on_the_same_socket(
    lab: Lab, cached_vip: Callable[..., tuple[NetlinkVip, dict[str, bool]]]
) -> None:
    """A burst of address events overflows the monitor's (shrunk) receive buffer: the kernel
    reports ENOBUFS, the cache is re-dumped on the same socket and then agrees with the
    kernel, including addresses whose events were lost."""
    vip, faults = cached_vip()
    faults["small buffer"] = True
    vip.close()  # a new monitor, bound with the small buffer
    vip.observe([the_vip()])
    wait_for("the new monitor's cache", lambda: vip.cached is None, timeout=5)
    dumps = vip.cache_dumps
    burst = "for i in $(seq 140 249); do echo addr {verb} 198.51.100.$i/32 dev repl0; done"
    lab.run("node1", ["sh", "-c", f"({burst.format(verb='add')}) | ip -force -batch -"])
    try:
        wait_for("an overrun", lambda: vip.overruns >= 1, timeout=5)
        wait_for("a re-dump", lambda: vip.cache_dumps > dumps, timeout=5)
        wait_for("the cache to settle again", lambda: vip.cached is None, timeout=5)
        relists = vip.relists
        for last in ("198.51.100.140/24", "198.51.100.249/24"):
            assert seen(vip, the_vip(last, "repl0")).local is True
        assert vip.relists == relists
    finally:
        lab.run("node1", ["sh", "-c", f"({burst.format(verb='del')}) | ip -force -batch -"])


def test_a_periodic_resync_dumps_afresh_and_redumps_the_cache(
    lab: Lab, cached_vip: Callable[..., tuple[NetlinkVip, dict[str, bool]]]
) -> None:
    now = [1000.0]
    vip, _ = cached_vip(resync=30.0, clock=lambda: now[0])
    relists, dumps = vip.relists, vip.cache_dumps
    assert seen(vip, the_vip()).local is False
    assert vip.relists == relists
    now[0] += 30.0
    assert vip.cached is not None and "periodic" in vip.cached
    assert seen(vip, the_vip()).local is False  # a fresh dump is this tick's observation
    assert vip.relists == relists + 1
    wait_for("the monitor's re-dump", lambda: vip.cache_dumps == dumps + 1, timeout=5)
    wait_for("the cache to settle", lambda: vip.cached is None, timeout=5)
    assert seen(vip, the_vip()).local is False
    assert vip.relists == relists + 1


def test_a_broken_monitor_is_never_read_and_a_failed_dump_is_unknown(
    lab: Lab, cached_vip: Callable[..., tuple[NetlinkVip, dict[str, bool]]]
) -> None:
    """The monitor's socket fails: the cache is not used (a fresh dump answers); if that
    dump fails too, the observation is unknown, never the cache's last table."""
    vip, faults = cached_vip()
    lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])
    wait_for("the cache to show the VIP", lambda: seen(vip, the_vip()).local is True, timeout=5)
    faults["monitor fails"] = True
    lab.run("node1", ["ip", "addr", "del", VIP, "dev", "eth0"])  # its event breaks it
    wait_for("the cache to be dropped", lambda: vip.cached is not None, timeout=5)
    assert vip.wakeup is not None and vip.wakeup.pending() == "address"
    relists = vip.relists
    assert seen(vip, the_vip()).local is False  # from a fresh dump
    assert vip.relists == relists + 1
    lab.run("node1", ["ip", "addr", "add", VIP, "dev", "eth0"])
    faults["dumps fail"] = True
    obs = seen(vip, the_vip())
    assert obs.local is None and obs.error is not None and "request socket" in obs.error
