"""Event-fed observation over command streams (``Runner.stream``), for nodes reached through a
command transport (the VM tier): the address monitor (``adapters.vip.monitor``) and the ping
streams (``adapters.liveness_stream``). The streams are fakes the test drives line by line
(the real ones run in the VM tier and, for the transport, in tests/vm/test_vmconsole.py);
the clock is injected, nothing sleeps."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from adapters.liveness_stream import StreamLiveness
from adapters.runner import CommandResult
from adapters.vip.monitor import AddressEvent, MonitoredVip, parse_monitor_line
from adapters.vip.tools import ProbeResult
from adapters.wake import Wakeup
from reconciler.core.errors import TerminalError
from reconciler.core.observed import Liveness, VipObs
from reconciler.core.spec import Vip

VIP_IP = "198.51.100.3"
ADD = (
    f"2: eth0    inet {VIP_IP}/24 scope global eth0\\       valid_lft forever preferred_lft forever"
)
DEL = "Deleted " + ADD


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeStream:
    """A running stream the test feeds: ``line`` and ``end`` call the adapter's callbacks as
    the runner's reader thread would."""

    argv: list[str]
    on_line: Callable[[str], None]
    on_end: Callable[[int], None]
    pid: int = 4242
    returncode: int | None = None
    killed: bool = False

    def line(self, text: str) -> None:
        self.on_line(text)

    def end(self, rc: int) -> None:
        if self.returncode is None:
            self.returncode = rc
            self.on_end(rc)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        self.killed = True
        self.end(-9)


@dataclass
class StreamRunner:
    """A runner whose ``run`` answers from a function of argv and whose ``stream`` hands out
    ``FakeStream``s (or raises ``refuse``)."""

    answer: Callable[[list[str]], CommandResult]
    runs: list[list[str]] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)
    refuse: Exception | None = None

    def run(self, argv: Sequence[str], **kw: Any) -> CommandResult:
        self.runs.append(list(argv))
        return self.answer(list(argv))

    def stream(
        self,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None],
        on_end: Callable[[int], None],
        env: Mapping[str, str] | None = None,
    ) -> FakeStream:
        if self.refuse is not None:
            raise self.refuse
        s = FakeStream(list(argv), on_line, on_end)
        self.streams.append(s)
        return s

    def lists(self) -> int:
        return sum(1 for a in self.runs if a[:3] == ["ip", "-j", "addr"])


class Kernel:
    """The node's addresses, as ``ip -j addr show`` prints them."""

    def __init__(self, *addresses: str) -> None:
        self.eth0 = set(addresses)
        self.on_list: Callable[[], None] | None = None  # runs while the list is being taken

    def answer(self, argv: list[str]) -> CommandResult:
        if argv[:3] == ["ip", "-j", "addr"]:
            doc = [
                {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1"}]},
                {
                    "ifname": "eth0",
                    "addr_info": [{"family": "inet", "local": a} for a in self.eth0],
                },
            ]
            text = json.dumps(doc)
            if self.on_list is not None:
                self.on_list()
            return CommandResult(tuple(argv), 0, text, "", 0.001)
        if argv[:3] == ["ip", "addr", "add"]:
            self.eth0.add(argv[3].split("/")[0])
        if argv[:3] == ["ip", "addr", "del"]:
            self.eth0.discard(argv[3].split("/")[0])
        return CommandResult(tuple(argv), 0, "", "", 0.001)


class NoArp:
    def probe(self, interface: str, ip: str, *, timeout: float) -> ProbeResult:
        return ProbeResult(False)

    def announce(self, interface: str, ip: str) -> None:
        pass

    def cancel(self, interface: str, ip: str) -> None:
        pass


VIP = Vip(address=ipaddress.IPv4Interface(f"{VIP_IP}/24"), interface="eth0")


def monitored(
    kernel: Kernel, *, settle: float = 1.0
) -> tuple[MonitoredVip, StreamRunner, Wakeup, Clock]:
    runner = StreamRunner(kernel.answer)
    wakeup, clock = Wakeup(), Clock()
    adapter = MonitoredVip(
        runner,  # type: ignore[arg-type]
        arp=NoArp(),
        wakeup=wakeup,
        resync=30.0,
        settle=settle,
        clock=clock,
    )
    return adapter, runner, wakeup, clock


def local(adapter: MonitoredVip) -> bool | None:
    return adapter.observe([VIP])[0].local


# ------------------------------------------------------------------------- the line parser
def test_monitor_lines_parse_to_address_events() -> None:
    assert parse_monitor_line(ADD) == AddressEvent(False, "eth0", VIP_IP)
    assert parse_monitor_line(DEL) == AddressEvent(True, "eth0", VIP_IP)
    label = "1: lo    inet 10.9.9.10/24 scope global secondary lo:1\\       valid_lft forever"
    assert parse_monitor_line(label) == AddressEvent(False, "lo", "10.9.9.10")
    assert parse_monitor_line("[ADDR]" + DEL) == AddressEvent(True, "eth0", VIP_IP)
    assert parse_monitor_line("1: lo    inet6 ::1/128 scope host \\       valid_lft") is None
    link = "3: eth1: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN \\    link/ether"
    assert parse_monitor_line(link) == link  # not an address: the cache is re-listed


# ------------------------------------------------------------------------- MonitoredVip
def test_the_monitor_starts_on_first_observe_and_then_spawns_nothing() -> None:
    kernel = Kernel()
    adapter, runner, _, _ = monitored(kernel)
    assert runner.streams == [] and runner.runs == []  # building starts nothing
    assert local(adapter) is False
    assert [s.argv for s in runner.streams] == [["ip", "-o", "monitor", "address", "link"]]
    assert runner.lists() == 1
    for _ in range(5):
        assert local(adapter) is False
    assert runner.lists() == 1  # served from the cache


def test_address_events_update_the_cache_and_wake_the_agent() -> None:
    kernel = Kernel()
    adapter, runner, wakeup, _ = monitored(kernel)
    local(adapter)
    kernel.eth0.add(VIP_IP)  # someone (the operator) adds it: the kernel reports it
    runner.streams[0].line(ADD)
    assert wakeup.pending() == "address change"
    assert adapter.observe([VIP]) == (VipObs(address=VIP_IP, local=True, announced=False),)
    wakeup.clear()
    runner.streams[0].line(DEL)
    assert wakeup.pending() == "address change"
    assert local(adapter) is False
    assert runner.lists() == 1


def test_an_ended_monitor_is_started_again_and_the_cache_re_listed() -> None:
    kernel = Kernel(VIP_IP)
    adapter, runner, wakeup, _ = monitored(kernel)
    assert local(adapter) is True
    runner.streams[0].end(-9)  # the VM connection broke, say
    assert wakeup.pending() is not None
    kernel.eth0.clear()  # what changed meanwhile, no stream saw it
    assert local(adapter) is False  # not the old cache: a new monitor and a fresh list
    assert len(runner.streams) == 2 and runner.lists() == 2


def test_a_line_not_understood_and_the_resync_period_re_list() -> None:
    kernel = Kernel()
    adapter, runner, _, clock = monitored(kernel)
    local(adapter)
    runner.streams[0].line("3: eth1: <BROADCAST,MULTICAST> mtu 1500 state DOWN")
    local(adapter)
    assert runner.lists() == 2
    clock.now += 29.0
    local(adapter)
    assert runner.lists() == 2
    clock.now += 1.0
    kernel.eth0.add(VIP_IP)  # a change no event reported (lost in the kernel's buffer)
    assert local(adapter) is True
    assert runner.lists() == 3


def test_events_during_a_re_list_are_applied_on_top_of_it() -> None:
    kernel = Kernel()
    adapter, runner, _, _ = monitored(kernel)
    local(adapter)
    runner.streams[0].end(-9)

    def added_right_after_the_snapshot() -> None:
        kernel.on_list = None
        runner.streams[-1].line(ADD)  # the list (taken already) does not show it

    kernel.on_list = added_right_after_the_snapshot
    assert local(adapter) is True


def test_no_monitor_means_a_fresh_read_each_time_and_a_failed_read_is_unknown() -> None:
    kernel = Kernel(VIP_IP)
    adapter, runner, _, _ = monitored(kernel)
    runner.refuse = TerminalError("transport vm cannot stream")
    assert local(adapter) is True
    kernel.eth0.clear()
    assert local(adapter) is False
    assert runner.lists() == 2  # every observation read afresh

    def broken(argv: list[str]) -> CommandResult:
        return CommandResult(tuple(argv), 1, "", "Cannot open netlink socket", 0.001)

    runner.answer = broken
    obs = adapter.observe([VIP])[0]
    assert obs.local is None and obs.error and "cannot read local addresses" in obs.error


def test_own_changes_wait_for_their_event_or_re_list() -> None:
    kernel = Kernel()
    adapter, runner, _, _ = monitored(kernel, settle=0.0)
    local(adapter)
    adapter.add(VIP)  # the event is not delivered (yet): the next observe must not say "absent"
    assert local(adapter) is True
    assert runner.lists() == 2
    adapter.remove(VIP)
    runner.streams[0].line(DEL)  # reported: no re-list needed
    assert local(adapter) is False
    assert runner.lists() == 2


def test_close_kills_the_monitor_and_later_observations_read_afresh() -> None:
    kernel = Kernel()
    adapter, runner, _, _ = monitored(kernel)
    local(adapter)
    adapter.close()
    adapter.close()
    assert runner.streams[0].killed and len(runner.streams) == 1
    kernel.eth0.add(VIP_IP)
    assert local(adapter) is True
    assert len(runner.streams) == 1  # never started again


# ------------------------------------------------------------------------- StreamLiveness
PEER, REPL, CLIENT = "198.51.100.2", "198.51.100.130", "198.51.100.10"


def reply(address: str, seq: int = 1) -> str:
    return f"64 bytes from {address}: icmp_seq={seq} ttl=64 time=0.4 ms"


def miss(seq: int = 1) -> str:
    return f"no answer yet for icmp_seq={seq}"


def liveness() -> tuple[StreamLiveness, StreamRunner, Wakeup, Clock]:
    runner = StreamRunner(lambda argv: CommandResult(tuple(argv), 0, "", "", 0.0))
    wakeup, clock = Wakeup(), Clock()
    adapter = StreamLiveness(
        runner,  # type: ignore[arg-type]
        peer_addresses=[PEER, REPL],
        heuristics=[CLIENT],
        interval=0.2,
        misses=3,
        wakeup=wakeup,
        clock=clock,
    )
    return adapter, runner, wakeup, clock


def stream_of(runner: StreamRunner, address: str) -> FakeStream:
    return [s for s in runner.streams if s.argv[-1] == address][-1]


def test_pings_start_on_first_observe_and_say_nothing_before_evidence() -> None:
    adapter, runner, _, _ = liveness()
    assert runner.streams == []
    assert adapter.observe() == Liveness(peer_reachable=None, heuristics_ok=0, heuristics_total=1)
    assert sorted(s.argv[-1] for s in runner.streams) == sorted([PEER, REPL, CLIENT])
    assert runner.streams[0].argv[:5] == ["ping", "-n", "-O", "-i", "0.2"]
    adapter.observe()
    assert len(runner.streams) == 3 and runner.runs == []  # no process per observation


def test_replies_then_misses_flip_the_answer_and_wake_the_agent() -> None:
    adapter, runner, wakeup, clock = liveness()
    adapter.observe()
    stream_of(runner, PEER).line(f"PING {PEER} ({PEER}) 56(84) bytes of data.")
    stream_of(runner, PEER).line(reply(PEER))
    stream_of(runner, CLIENT).line(reply(CLIENT))
    assert wakeup.pending() is not None
    assert adapter.observe() == Liveness(peer_reachable=True, heuristics_ok=1, heuristics_total=1)
    wakeup.clear()
    for seq in (2, 3):
        clock.now += 0.2
        stream_of(runner, PEER).line(miss(seq))
    assert adapter.observe().peer_reachable is True  # two misses: not dead yet
    assert wakeup.pending() is None
    clock.now += 0.2
    stream_of(runner, PEER).line(miss(4))
    assert wakeup.pending() is not None
    # PEER is silent, REPL never said anything: not every peer address is known dead.
    assert adapter.observe().peer_reachable is None
    for seq in (1, 2, 3):
        stream_of(runner, REPL).line(
            f"From 198.51.100.129 icmp_seq={seq} Destination Host Unreachable"
        )
    assert adapter.observe().peer_reachable is False
    stream_of(runner, REPL).line(reply(REPL, 4))
    assert adapter.observe().peer_reachable is True


def test_a_stalled_or_ended_stream_is_not_probed_and_no_route_is_dead() -> None:
    adapter, runner, _, clock = liveness()
    adapter.observe()
    for address in (PEER, REPL):
        stream_of(runner, address).line(reply(address))
    assert adapter.observe().peer_reachable is True
    clock.now += 1.7  # nothing from any ping for longer than ``stall``: the streams are stuck
    assert adapter.observe().peer_reachable is None
    stream_of(runner, PEER).end(-9)
    stream_of(runner, REPL).end(2)  # ping: network unreachable
    obs = adapter.observe()  # restarts both; PEER has no evidence yet, REPL had no route
    assert obs.peer_reachable is None
    assert len(runner.streams) == 5
    stream_of(runner, PEER).end(2)
    stream_of(runner, REPL).end(2)
    assert adapter.observe().peer_reachable is False


def test_close_kills_every_ping() -> None:
    adapter, runner, _, _ = liveness()
    adapter.observe()
    adapter.close()
    assert all(s.killed for s in runner.streams)
    adapter.observe()
    assert len(runner.streams) == 3


@pytest.mark.parametrize("bad", [{"interval": 0.0}, {"misses": 0}])
def test_bad_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        StreamLiveness(
            StreamRunner(lambda argv: CommandResult((), 0, "", "", 0.0)),  # type: ignore[arg-type]
            peer_addresses=[PEER],
            **bad,  # type: ignore[arg-type]
        )


def test_lines_from_a_replaced_stream_are_ignored() -> None:
    kernel = Kernel()
    adapter, runner, _, _ = monitored(kernel)
    local(adapter)
    old = runner.streams[0]
    old.end(-9)
    assert local(adapter) is False  # a new monitor, a fresh list
    old.on_line(ADD)  # a late line of the old stream's reader
    old.on_end(-9)  # and a late end: neither may touch the new stream's cache
    assert local(adapter) is False
    assert runner.lists() == 2 and len(runner.streams) == 2
