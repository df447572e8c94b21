"""``NetlinkVip`` without a kernel: the pure netlink dump parser (garbage is an error, never a
crash), which address events wake the agent, and that building or closing the adapter starts
nothing. The netlink requests themselves run in the namespace lab
(tests/lab/test_vip_netlink_lab.py and the contract suite)."""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.exceptions import NetlinkError

from adapters.inventory import FileInventory
from adapters.vip import NetlinkReplyError, parse_netlink_addrs
from adapters.vip.netlink import NetlinkVip, _EventFilter
from adapters.wake import Wakeup
from reconciler.core.errors import TerminalError, TransientError
from reconciler.core.observed import VipObs
from reconciler.core.spec import Vip
from tests.adapters.test_vip_parse import FakeArp
from tests.fakes.netlink import FakeKernel
from tests.waiting import wait_for


def link(index: int, name: str) -> dict[str, Any]:
    return {"index": index, "IFLA_IFNAME": name}


def addr(index: int, ip: str, *, family: int = 2, label: str | None = None) -> dict[str, Any]:
    return {"index": index, "family": family, "IFA_LOCAL": ip, "IFA_LABEL": label}


LINKS = [link(1, "lo"), link(2, "eth0"), link(3, "repl0")]


def the_vip(address: str = "198.51.100.3/24", interface: str = "eth0") -> Vip:
    return Vip.model_validate({"address": address, "interface": interface})


# ------------------------------------------------------------------------ the dump parser
def test_parse_maps_every_link_to_its_ipv4_addresses() -> None:
    addrs = [
        addr(1, "127.0.0.1"),
        addr(2, "198.51.100.1"),
        addr(2, "198.51.100.3"),
        addr(2, "fe80::1", family=10),  # IPv6 is ignored
    ]
    assert parse_netlink_addrs(LINKS, addrs) == {
        "lo": {"127.0.0.1"},
        "eth0": {"198.51.100.1", "198.51.100.3"},
        "repl0": set(),
    }


def test_parse_takes_ifa_address_when_there_is_no_ifa_local() -> None:
    msg = {"index": 2, "family": 2, "IFA_ADDRESS": "198.51.100.3"}
    assert parse_netlink_addrs(LINKS, [msg])["eth0"] == {"198.51.100.3"}


@pytest.mark.parametrize(
    ("links", "addrs", "why"),
    [
        ([{"IFLA_IFNAME": "eth0"}], [], "without an interface index"),
        ([{"index": "2", "IFLA_IFNAME": "eth0"}], [], "without an interface index"),
        ([{"index": True, "IFLA_IFNAME": "eth0"}], [], "without an interface index"),
        ([{"index": 2}], [], "without a name"),
        ([{"index": 2, "IFLA_IFNAME": ""}], [], "without a name"),
        (LINKS, [addr(7, "198.51.100.3")], "not in the link dump"),
        (LINKS, [{"index": 2, "family": 2}], "without IFA_LOCAL"),
        (LINKS, [addr(2, "198.51.100.300")], "bad IPv4 address"),
        (LINKS, [addr(2, "nonsense")], "bad IPv4 address"),
        (LINKS, [{"index": 2, "IFA_LOCAL": "198.51.100.3"}], "without a family"),
    ],
)
def test_parse_refuses_garbage(links: list[Any], addrs: list[Any], why: str) -> None:
    with pytest.raises(NetlinkReplyError, match=why):
        parse_netlink_addrs(links, addrs)


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 12), st.text(max_size=20), st.just("198.51.100.3")
)
_messages = st.lists(
    st.dictionaries(
        st.sampled_from(["index", "family", "IFLA_IFNAME", "IFA_LOCAL", "IFA_ADDRESS"]), _values
    ),
    max_size=5,
)


@given(links=_messages, addrs=_messages)
def test_parse_of_any_messages_gives_a_table_or_the_parse_error(
    links: list[dict[str, Any]], addrs: list[dict[str, Any]]
) -> None:
    try:
        table = parse_netlink_addrs(links, addrs)
    except NetlinkReplyError:
        return
    assert all(isinstance(name, str) and name for name in table)
    assert all(isinstance(ip, str) for ips in table.values() for ip in ips)


# ------------------------------------------------------------------------ which events wake
def event(kind: str, index: int, ip: str, *, label: str | None = None, family: int = 2) -> Any:
    return {"event": kind, "index": index, "family": family, "IFA_LOCAL": ip, "IFA_LABEL": label}


def test_events_on_the_vips_interface_wake() -> None:
    events = _EventFilter()
    events.watch_names({"eth0"})
    events.watch_indices({2})
    assert events.wakes(event("RTM_DELADDR", 2, "198.51.100.3", label="eth0"))
    assert events.wakes(event("RTM_NEWADDR", 2, "198.51.100.4", label="eth0"))
    assert events.wakes(event("RTM_DELADDR", 2, "198.51.100.3"))  # by index alone
    assert events.wakes(event("RTM_NEWADDR", 9, "198.51.100.3", label="eth0:vip"))  # by label


def test_other_interfaces_families_and_messages_do_not_wake() -> None:
    events = _EventFilter()
    events.watch_names({"eth0"})
    events.watch_indices({2})
    assert not events.wakes(event("RTM_NEWADDR", 3, "198.51.100.129", label="repl0"))
    assert not events.wakes(event("RTM_NEWADDR", 2, "fe80::1", family=10))
    assert not events.wakes({"event": "RTM_NEWLINK", "index": 2, "family": 0})


def test_nothing_watched_nothing_wakes() -> None:
    assert not _EventFilter().wakes(event("RTM_DELADDR", 2, "198.51.100.3", label="eth0"))


def test_the_adapters_own_changes_do_not_wake_once_each() -> None:
    events = _EventFilter()
    events.watch_indices({2})
    events.expect("RTM_NEWADDR", "198.51.100.3")
    assert not events.wakes(event("RTM_NEWADDR", 2, "198.51.100.3"))  # our add
    assert events.wakes(event("RTM_NEWADDR", 2, "198.51.100.3"))  # someone's, after it
    events.expect("RTM_DELADDR", "198.51.100.3")
    assert events.wakes(event("RTM_NEWADDR", 2, "198.51.100.3"))  # not what was expected
    events.unexpect("RTM_DELADDR", "198.51.100.3")  # the request failed: no event will come
    assert events.wakes(event("RTM_DELADDR", 2, "198.51.100.3"))


def test_lost_events_forget_what_was_expected() -> None:
    events = _EventFilter()
    events.watch_indices({2})
    events.expect("RTM_DELADDR", "198.51.100.3")
    events.forget_expected()
    assert events.wakes(event("RTM_DELADDR", 2, "198.51.100.3"))


# ------------------------------------------------------------------------ lifecycle
def netlink_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("netlink-vip")}


def test_building_observing_nothing_and_closing_start_nothing() -> None:
    before = netlink_threads()
    vip = NetlinkVip(arp=FakeArp(), wakeup=Wakeup())
    assert vip.observe([]) == ()
    vip.close()
    vip.close()
    assert netlink_threads() == before
    assert vip.opened == 0
    assert not vip.monitoring


def test_bad_timeouts_are_refused() -> None:
    with pytest.raises(ValueError, match="request_timeout"):
        NetlinkVip(arp=FakeArp(), request_timeout=0)
    with pytest.raises(ValueError, match="probe_timeout"):
        NetlinkVip(arp=FakeArp(), probe_timeout=0)


# ------------------------------------------------------------------------ the factory
@pytest.mark.parametrize("transport", ["local", "netns"])
def test_the_factory_builds_netlinkvip_with_the_nodes_wakeup(
    tmp_path: Path, transport: str
) -> None:
    """Real VIP adapters are NetlinkVip for transports local and netns, notifying the same
    Wakeup the node's adapters expose; building them opens nothing."""
    from adapters.factory import build_adapters
    from adapters.vip import CommandArp, InProcessArp
    from reconciler.core.spec import StorageCluster
    from tests.lab.specs import LabCluster

    cluster = LabCluster.create(tmp_path / "cluster")
    data = cluster.spec().model_dump(mode="json", by_alias=True)
    if transport == "netns":
        data["spec"]["nodes"][0].update(transport="netns", namespace="tdmh2-absent")
    spec = StorageCluster.model_validate(data)
    before = netlink_threads()
    try:
        adapters = build_adapters(spec, "node1", cluster.state_dir)
    except TerminalError as exc:  # a tool the real tgt adapter needs is not installed
        pytest.skip(str(exc))
    try:
        vip = adapters.vip
        assert isinstance(vip, NetlinkVip)
        assert vip.wakeup is adapters.wakeup
        if transport == "netns":
            assert vip.namespace == "tdmh2-absent"
            assert isinstance(vip.arp, CommandArp)
        else:
            assert vip.namespace is None
            assert isinstance(vip.arp, InProcessArp)
        assert netlink_threads() == before
        assert vip.opened == 0
    finally:
        adapters.close()


# ------------------------------------------------------------------------ over a fake netlink
def fake_vip(kernel: FakeKernel, **kw: Any) -> NetlinkVip:
    return NetlinkVip(arp=FakeArp(), handles=kernel.open, **kw)


def test_add_observe_remove_over_one_handle() -> None:
    kernel = FakeKernel()
    vip = fake_vip(kernel)
    try:
        assert vip.observe([the_vip()]) == (
            VipObs(address="198.51.100.3", local=False, answered_elsewhere=False),
        )
        vip.add(the_vip())
        assert (2, "198.51.100.3", 24) in kernel.addrs
        assert vip.observe([the_vip()]) == (
            VipObs(address="198.51.100.3", local=True, announced=False),
        )
        vip.add(the_vip())  # already there: success (EEXIST)
        vip.remove(the_vip())
        vip.remove(the_vip())  # not there: success (EADDRNOTAVAIL)
        vip.remove(the_vip(interface="eth9"))  # no such interface: not there either
        assert (2, "198.51.100.3", 24) not in kernel.addrs
        assert vip.opened == kernel.opened == 1
    finally:
        vip.close()


def test_only_what_add_created_is_in_the_inventory(tmp_path: Path) -> None:
    kernel = FakeKernel()
    kernel.add_by_hand(2, "198.51.100.3")  # an operator's address
    vip = fake_vip(kernel, inventory=FileInventory(tmp_path / "inv.json"))
    try:
        vip.add(the_vip())
        assert vip.leftovers([]).vips == ()
        vip.add(the_vip("198.51.100.4/24"))
        assert [v.address for v in vip.leftovers([]).vips] == ["198.51.100.4/24"]
    finally:
        vip.close()


def test_a_garbage_dump_is_unknown_and_drops_the_handle() -> None:
    kernel = FakeKernel(garbage=True)
    vip = fake_vip(kernel)
    try:
        (seen,) = vip.observe([the_vip()])
        assert seen.local is None
        assert seen.error is not None and "without an interface index" in seen.error
        kernel.garbage = False
        assert vip.observe([the_vip()])[0].local is False
        assert vip.opened == 2
    finally:
        vip.close()


def test_a_socket_error_is_unknown_and_the_next_request_reopens() -> None:
    kernel = FakeKernel(fail_next=[ConnectionResetError(errno.ECONNRESET, "reset")])
    vip = fake_vip(kernel)
    try:
        (seen,) = vip.observe([the_vip()])
        assert seen.local is None
        assert seen.error is not None and "netlink socket failed" in seen.error
        assert vip.observe([the_vip()])[0].local is False
        assert vip.opened == 2
        kernel.fail_next.append(OSError(errno.EBADF, "bad fd"))
        with pytest.raises(TransientError, match="netlink socket failed"):
            vip.add(the_vip())
        vip.add(the_vip())
        assert vip.opened == 3
    finally:
        vip.close()


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (errno.EPERM, TerminalError),
        (errno.EINVAL, TerminalError),
        (errno.ENOBUFS, TransientError),
        (errno.EBUSY, TransientError),
    ],
)
def test_kernel_refusals_map_like_ipvip_and_keep_the_handle(
    code: int, error: type[Exception]
) -> None:
    kernel = FakeKernel()
    vip = fake_vip(kernel)
    try:
        vip.observe([the_vip()])
        kernel.fail_next.append(NetlinkError(code))
        with pytest.raises(error, match=f"cannot add VIP 198.51.100.3/24 on eth0: .Errno {code}"):
            vip.add(the_vip())
        kernel.fail_next.append(NetlinkError(code))
        with pytest.raises(error, match="cannot remove VIP"):
            vip.remove(the_vip())
        kernel.fail_next.append(NetlinkError(code))
        (seen,) = vip.observe([the_vip()])
        assert seen.local is None and seen.error is not None and f"Errno {code}" in seen.error
        assert vip.opened == 1
    finally:
        vip.close()


def test_a_missing_interface_on_add_is_terminal_and_unknown_to_observe() -> None:
    vip = fake_vip(FakeKernel())
    try:
        with pytest.raises(TerminalError, match="interface eth9 does not exist"):
            vip.add(the_vip(interface="eth9"))
        (seen,) = vip.observe([the_vip(interface="eth9")])
        assert seen.local is False and seen.error is not None and "eth9" in seen.error
    finally:
        vip.close()


def test_a_missing_namespace() -> None:
    kernel = FakeKernel(open_error=FileNotFoundError(errno.ENOENT, "No such file or directory"))
    vip = fake_vip(kernel, namespace="tdm-gone")
    try:
        (seen,) = vip.observe([the_vip()])
        assert seen.local is None
        assert seen.error == (
            "cannot read local addresses: cannot dump the addresses: network namespace "
            "tdm-gone does not exist"
        )
        with pytest.raises(TerminalError, match="network namespace tdm-gone does not exist"):
            vip.add(the_vip())
        assert vip.opened == 0
        kernel.open_error = None  # the namespace came (back)
        vip.add(the_vip())
        assert vip.opened == 1
    finally:
        vip.close()


def test_an_address_changed_behind_its_back_wakes_and_a_broken_monitor_wakes() -> None:
    kernel = FakeKernel()
    wakeup = Wakeup()
    vip = fake_vip(kernel, wakeup=wakeup)
    try:
        vip.add(the_vip())
        wait_for("the monitor to be bound", lambda: vip.monitoring, timeout=5)
        wakeup.clear()
        kernel.del_by_hand(2, "198.51.100.3")
        assert wakeup.wait(5.0) == "address"
        wakeup.clear()
        kernel.break_events(OSError(errno.ENOBUFS, "No buffer space available"))
        assert wakeup.wait(5.0) == "address"  # events may have been lost: look now
        assert kernel.bound == 1
    finally:
        vip.close()
    assert not vip.monitoring
