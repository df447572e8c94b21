"""The VIP adapter without a network: the ``ip -j addr`` parser on captured output (table +
fuzzing), the ARP frame helpers, and ``IpVip`` / ``InProcessArp`` / ``CommandArp`` /
``PingLiveness`` driven by fake runners and a fake packet socket.

Nothing here sends a packet or spawns a process: the real tools are exercised in
``tests/lab/test_vip_lab.py`` inside lab namespaces only.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.liveness import PingLiveness
from adapters.runner import CommandResult
from adapters.vip import (
    ARP_REPLY,
    ARP_REQUEST,
    AnnounceRecord,
    ArpPacket,
    CommandArp,
    InProcessArp,
    IpAddrParseError,
    IpVip,
    ProbeResult,
    announce_packets,
    arp_frame,
    conflict_in,
    parse_arp_frame,
    parse_arping,
    parse_ip_addr_json,
    probe_packet,
)
from reconciler.core.errors import TerminalError, TransientError
from reconciler.core.observed import Liveness, VipObs
from reconciler.core.spec import Vip

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ip"

# --------------------------------------------------------------------------- fixture table
LO = {"lo": {"127.0.0.1"}}
EXPECTED: dict[str, dict[str, set[str]]] = {
    "node-without-vip.json": {
        **LO,
        "eth0": {"198.51.100.2"},
        "repl0": {"198.51.100.130"},
    },
    "node-with-vip.json": {
        **LO,
        "eth0": {"198.51.100.1", "198.51.100.3"},
        "repl0": {"198.51.100.129"},
    },
    "filtered-dev-eth0.json": {"eth0": {"198.51.100.1", "198.51.100.3"}},
    "filtered-to-vip-empty.json": {},
    "bridge-no-ipv4.json": {**LO, "br0": set(), "p1": set(), "p2": set(), "p3": set()},
    "down-interfaces-vip-label.json": {
        **LO,
        "eth0": {"198.51.100.2", "198.51.100.3"},
        "repl0": {"198.51.100.130"},
    },
    "several-interfaces-ipv6.json": {
        **LO,
        "eth0": {"198.51.100.10"},
        "vx0": {"198.51.100.20", "198.51.100.21"},
        "vx1": {"198.51.100.22"},
    },
}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_every_fixture_is_in_the_table() -> None:
    assert {p.name for p in FIXTURES.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parse_captured_output(name: str) -> None:
    assert parse_ip_addr_json(fixture(name)) == EXPECTED[name]


GARBAGE = [
    "",
    "   ",
    "Error: Device does not exist.",
    "[",
    '{"ifname": "eth0"}',
    "null",
    "42",
    '"text"',
    "[1, 2]",
    '[["eth0"]]',
    '[{"ifindex": 1}]',
    '[{"ifname": ""}]',
    '[{"ifname": 7, "addr_info": []}]',
    '[{"ifname": "eth0", "addr_info": {}}]',
    '[{"ifname": "eth0", "addr_info": ["x"]}]',
    '[{"ifname": "eth0", "addr_info": [{"family": "inet"}]}]',
    '[{"ifname": "eth0", "addr_info": [{"family": "inet", "local": 3}]}]',
    '[{"ifname": "eth0", "addr_info": [{"family": "inet", "local": "300.1.1.1"}]}]',
    '[{"ifname": "eth0", "addr_info": [{"family": "inet", "local": "2001:db8::1"}]}]',
    "[" * 100_000,
]


@pytest.mark.parametrize("text", GARBAGE, ids=lambda t: repr(t[:30]))
def test_garbage_raises_a_value_error_subclass(text: str) -> None:
    with pytest.raises(IpAddrParseError) as info:
        parse_ip_addr_json(text)
    assert isinstance(info.value, ValueError)


def test_tolerated_quirks() -> None:
    # Empty link objects (older iproute2 with filters), links without addr_info, inet6 only.
    text = json.dumps(
        [
            {},
            {"ifname": "eth1"},
            {"ifname": "eth2", "addr_info": [{}, {"family": "inet6", "local": "fe80::1"}]},
            {"ifname": "eth2", "addr_info": [{"family": "inet", "local": "198.51.100.9"}]},
        ]
    )
    assert parse_ip_addr_json(text) == {"eth1": set(), "eth2": {"198.51.100.9"}}


# --------------------------------------------------------------------------------- fuzzing
def _check_total(text: str) -> None:
    """The parser's contract: a mapping of str -> set of IPv4 strings, or IpAddrParseError."""
    try:
        got = parse_ip_addr_json(text)
    except IpAddrParseError:
        return
    assert isinstance(got, dict)
    for name, addrs in got.items():
        assert isinstance(name, str) and name
        for addr in addrs:
            assert str(ipaddress.IPv4Address(addr)) == addr


@settings(max_examples=300)
@given(st.text())
def test_fuzz_any_text(text: str) -> None:
    _check_total(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["ifname", "addr_info", "family", "local", "prefixlen", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(json_values)
def test_fuzz_any_json(value: Any) -> None:
    _check_total(json.dumps(value))


@given(
    st.sampled_from(sorted(EXPECTED)),
    st.integers(min_value=0),
    st.integers(min_value=0),
)
def test_fuzz_damaged_fixture(name: str, cut: int, flip: int) -> None:
    text = fixture(name)
    _check_total(text[: cut % (len(text) + 1)])
    i = flip % len(text)
    _check_total(text[:i] + chr((ord(text[i]) + 1) % 128) + text[i + 1 :])


names = st.from_regex(r"[a-z][a-z0-9.]{0,14}", fullmatch=True)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


@st.composite
def ip_addr_documents(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, set[str]]]:
    links: list[dict[str, Any]] = []
    expected: dict[str, set[str]] = {}
    for name in draw(st.lists(names, unique=True, max_size=5)):
        v4 = draw(st.lists(ipv4, max_size=4))
        v6 = draw(st.lists(ipv6, max_size=2))
        infos: list[dict[str, Any]] = [
            {"family": "inet", "local": a, "prefixlen": 24, "label": name} for a in v4
        ] + [{"family": "inet6", "local": a, "prefixlen": 64} for a in v6]
        infos = draw(st.permutations(infos))
        links.append(
            {"ifindex": len(links) + 1, "ifname": name, "operstate": "UP", "addr_info": infos}
        )
        expected[name] = set(v4)
    return links, expected


@given(ip_addr_documents(), st.sampled_from([None, 0, 2]))
def test_fuzz_well_formed_documents(doc: Any, indent: int | None) -> None:
    links, expected = doc
    assert parse_ip_addr_json(json.dumps(links, indent=indent)) == expected


# ------------------------------------------------------------------------------ ARP frames
MAC1 = bytes.fromhex("020000000001")
MAC2 = bytes.fromhex("020000000002")
VIP_IP = "198.51.100.3"


@given(
    st.sampled_from([ARP_REQUEST, ARP_REPLY]),
    st.binary(min_size=6, max_size=6),
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=6, max_size=6),
    st.binary(min_size=4, max_size=4),
)
def test_arp_frame_round_trip(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> None:
    packet = ArpPacket(op, sha, spa, tha, tpa)
    frame = arp_frame(sha, packet)
    assert len(frame) == 42
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == sha
    assert parse_arp_frame(frame) == packet
    assert parse_arp_frame(frame + b"\x00" * 18) == packet  # Ethernet padding


@given(st.binary(max_size=80))
def test_parse_arp_frame_never_raises(data: bytes) -> None:
    parse_arp_frame(data)


def test_probe_and_announce_packets() -> None:
    probe = probe_packet(MAC2, VIP_IP)
    assert probe.op == ARP_REQUEST and probe.sender_ip == b"\x00" * 4
    assert probe.target_ip == socket.inet_aton(VIP_IP) and probe.target_mac == b"\x00" * 6
    request, reply = announce_packets(MAC2, VIP_IP)
    assert request.op == ARP_REQUEST and request.sender_ip == request.target_ip
    # Linux only treats a reply as gratuitous when target MAC == sender MAC.
    assert reply.op == ARP_REPLY and reply.target_mac == reply.sender_mac == MAC2


def test_conflict_rules() -> None:
    vip = socket.inet_aton(VIP_IP)
    other = socket.inet_aton("198.51.100.9")
    zero = b"\x00" * 4
    reply = ArpPacket(ARP_REPLY, MAC1, vip, MAC2, zero)
    assert (
        conflict_in(reply, own_mac=MAC2, ip=VIP_IP) == "answered by 02:00:00:00:00:01 (ARP reply)"
    )
    garp = ArpPacket(ARP_REQUEST, MAC1, vip, b"\x00" * 6, vip)
    assert "ARP request" in (conflict_in(garp, own_mac=MAC2, ip=VIP_IP) or "")
    rival_probe = ArpPacket(ARP_REQUEST, MAC1, zero, b"\x00" * 6, vip)
    # Another host's probe only asks: it is not a claim (the secondary probes every tick).
    assert conflict_in(rival_probe, own_mac=MAC2, ip=VIP_IP) is None
    assert (
        conflict_in(ArpPacket(ARP_REQUEST, MAC2, zero, MAC1, vip), own_mac=MAC2, ip=VIP_IP) is None
    )
    assert (
        conflict_in(ArpPacket(ARP_REPLY, MAC1, other, MAC2, zero), own_mac=MAC2, ip=VIP_IP) is None
    )
    assert (
        conflict_in(ArpPacket(ARP_REQUEST, MAC1, other, MAC2, vip), own_mac=MAC2, ip=VIP_IP) is None
    )


# -------------------------------------------------------------------- fakes for the adapter
@dataclass
class FakeRunner:
    """Answers commands from a function of argv; records every call."""

    answer: Callable[[list[str]], CommandResult | Exception]
    calls: list[list[str]] = field(default_factory=list)
    spawned: list[FakeProc] = field(default_factory=list)

    def run(self, argv: Sequence[str], **kw: Any) -> CommandResult:
        self.calls.append(list(argv))
        got = self.answer(list(argv))
        if isinstance(got, Exception):
            raise got
        return got

    def spawn(self, argv: Sequence[str], **kw: Any) -> FakeProc:
        self.calls.append(list(argv))
        proc = FakeProc(pid=1000 + len(self.spawned))
        self.spawned.append(proc)
        return proc


@dataclass
class FakeProc:
    pid: int
    returncode: int | None = None
    killed: bool = False

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.killed = True
        self.returncode = -9


def result(
    rc: int = 0, stdout: str = "", stderr: str = "", argv: Sequence[str] = ()
) -> CommandResult:
    return CommandResult(tuple(argv), rc, stdout, stderr, 0.001)


@dataclass
class FakeArp:
    answers: dict[str, ProbeResult] = field(default_factory=dict)
    delay: float = 0.0
    # Probes wait here for each other: a barrier for N parties passes only if N probes run at
    # the same time (run one after another, the first waits out the timeout and breaks it).
    rendezvous: threading.Barrier | None = None
    probed: list[tuple[str, str, float]] = field(default_factory=list)
    announced: list[tuple[str, str]] = field(default_factory=list)
    cancelled: list[tuple[str, str]] = field(default_factory=list)

    def probe(self, interface: str, ip: str, *, timeout: float) -> ProbeResult:
        self.probed.append((interface, ip, timeout))
        if self.rendezvous is not None:
            self.rendezvous.wait(timeout=10)
        time.sleep(self.delay)
        return self.answers.get(ip, ProbeResult(False))

    def announce(self, interface: str, ip: str) -> None:
        self.announced.append((interface, ip))

    def cancel(self, interface: str, ip: str) -> None:
        self.cancelled.append((interface, ip))


def vip(address: str = "198.51.100.3/24", interface: str = "eth0") -> Vip:
    return Vip(address=ipaddress.IPv4Interface(address), interface=interface)


def ip_addr_runner(text: str) -> FakeRunner:
    return FakeRunner(lambda argv: result(stdout=text, argv=argv))


# ------------------------------------------------------------------------- IpVip.observe
def test_observe_local_vip_is_not_probed() -> None:
    arp = FakeArp()
    adapter = IpVip(ip_addr_runner(fixture("node-with-vip.json")), arp=arp)  # type: ignore[arg-type]
    # Nothing was announced by this adapter: the VIP is local but not announced.
    assert adapter.observe([vip()]) == (VipObs(address=VIP_IP, local=True, announced=False),)
    assert arp.probed == []


# ------------------------------------------------------------------ the announcement record
def test_announced_only_after_an_announcement_that_follows_the_add(tmp_path: Path) -> None:
    """add (record cleared first) -> not announced; announce -> announced; a new adapter on the
    same record file (a restarted agent, the next --once) still knows; add again -> cleared."""
    path = tmp_path / "vip-announced-node1.json"
    runner = FakeRunner(
        lambda argv: (
            result(stdout=fixture("node-with-vip.json"), argv=argv)
            if argv[:3] == ["ip", "-j", "addr"]
            else result(argv=argv)
        )
    )
    arp = FakeArp()
    first = IpVip(runner, arp=arp, record=AnnounceRecord(path))  # type: ignore[arg-type]
    first.add(vip())
    assert first.observe([vip()])[0].announced is False
    first.announce(vip())
    assert arp.announced == [("eth0", VIP_IP)]
    assert first.observe([vip()])[0].announced is True
    restarted = IpVip(runner, arp=FakeArp(), record=AnnounceRecord(path))  # type: ignore[arg-type]
    assert restarted.observe([vip()])[0].announced is True
    restarted.add(vip())  # "already assigned" or not: it must be announced again
    assert VIP_IP not in AnnounceRecord(path)
    restarted.announce(vip())
    restarted.remove(vip())
    assert VIP_IP not in AnnounceRecord(path)


def test_the_record_is_cleared_before_the_address_is_added(tmp_path: Path) -> None:
    """An agent stopped inside ``add`` (here: the ``ip`` call dies) must leave the VIP
    unannounced in the record, whether or not the kernel added the address."""
    record = AnnounceRecord(tmp_path / "rec.json")
    record.remember(VIP_IP)

    def answer(argv: list[str]) -> CommandResult:
        if argv[:3] == ["ip", "addr", "add"]:
            raise TransientError("ip addr add timed out after 10s")
        return result(argv=argv)

    adapter = IpVip(FakeRunner(answer), arp=FakeArp(), record=record)  # type: ignore[arg-type]
    with pytest.raises(TransientError):
        adapter.add(vip())
    assert VIP_IP not in AnnounceRecord(tmp_path / "rec.json")


def test_a_failed_announcement_is_not_recorded(tmp_path: Path) -> None:
    class Failing(FakeArp):
        def announce(self, interface: str, ip: str) -> None:
            raise TransientError("gratuitous ARP for 198.51.100.3 on eth0: No buffer space")

    record = AnnounceRecord(tmp_path / "rec.json")
    adapter = IpVip(ip_addr_runner(fixture("node-with-vip.json")), arp=Failing(), record=record)  # type: ignore[arg-type]
    with pytest.raises(TransientError):
        adapter.announce(vip())
    assert adapter.observe([vip()])[0].announced is False


@pytest.mark.parametrize("content", ["{not json", '{"announced": "198.51.100.3"}', "[1, 2]"])
def test_an_unreadable_record_counts_as_nothing_announced(tmp_path: Path, content: str) -> None:
    path = tmp_path / "rec.json"
    path.write_text(content)
    record = AnnounceRecord(path)
    assert VIP_IP not in record  # one extra announcement at worst, never a crash
    record.remember(VIP_IP)
    assert VIP_IP in AnnounceRecord(path)


def test_a_record_that_cannot_be_written_still_holds_in_memory(tmp_path: Path) -> None:
    record = AnnounceRecord(tmp_path / "missing-dir" / "rec.json")
    record.remember(VIP_IP)
    assert VIP_IP in record
    record.forget(VIP_IP)
    assert VIP_IP not in record


def test_observe_free_and_answered_vips() -> None:
    arp = FakeArp(
        answers={"198.51.100.4": ProbeResult(True, mac="02:00:00:00:00:01", detail="answered")},
        rendezvous=threading.Barrier(3),  # the three probes must run concurrently
    )
    runner = ip_addr_runner(fixture("node-without-vip.json"))
    adapter = IpVip(runner, arp=arp, probe_timeout=0.02)  # type: ignore[arg-type]
    got = adapter.observe([vip(), vip("198.51.100.4/24"), vip("198.51.100.5/24")])
    assert got == (
        VipObs(address="198.51.100.3", local=False, answered_elsewhere=False),
        VipObs(address="198.51.100.4", local=False, answered_elsewhere=True, holder="answered"),
        VipObs(address="198.51.100.5", local=False, answered_elsewhere=False),
    )
    assert runner.calls == [["ip", "-j", "addr", "show"]]  # once per tick
    assert {t for _, _, t in arp.probed} == {0.02}
    assert arp.rendezvous is not None and not arp.rendezvous.broken
    # The figure (three 50 ms probes in one ~50 ms observe): tests/bench/adapters.py.


def test_observe_probe_impossible_is_unknown() -> None:
    arp = FakeArp(answers={VIP_IP: ProbeResult(None, detail="cannot probe on eth0: denied")})
    adapter = IpVip(ip_addr_runner(fixture("node-without-vip.json")), arp=arp)  # type: ignore[arg-type]
    (obs,) = adapter.observe([vip()])
    assert obs == VipObs(VIP_IP, local=False, answered_elsewhere=None, error=obs.error)
    assert "denied" in (obs.error or "")


def test_observe_probe_that_raises_is_unknown() -> None:
    class Broken(FakeArp):
        def probe(self, interface: str, ip: str, *, timeout: float) -> ProbeResult:
            raise RuntimeError("boom")

    adapter = IpVip(ip_addr_runner(fixture("node-without-vip.json")), arp=Broken())  # type: ignore[arg-type]
    (obs,) = adapter.observe([vip()])
    assert obs.local is False and obs.answered_elsewhere is None and "boom" in (obs.error or "")


def test_observe_vip_on_another_interface_is_unknown() -> None:
    adapter = IpVip(ip_addr_runner(fixture("node-with-vip.json")), arp=FakeArp())  # type: ignore[arg-type]
    (obs,) = adapter.observe([vip(interface="repl0")])
    assert obs.local is None and "configured on eth0, not on repl0" in (obs.error or "")


def test_observe_missing_interface() -> None:
    arp = FakeArp()
    adapter = IpVip(ip_addr_runner(fixture("node-with-vip.json")), arp=arp)  # type: ignore[arg-type]
    (obs,) = adapter.observe([vip("198.51.100.4/24", interface="bond0")])
    assert obs.local is False and obs.answered_elsewhere is None
    assert "bond0 does not exist" in (obs.error or "")
    assert arp.probed == []


@pytest.mark.parametrize(
    "answer",
    [
        result(stdout="Error: garbage"),
        result(stdout='[{"ifname": 1}]'),
        TransientError("ip -j addr show timed out after 10s"),
        TerminalError("command not found: ip"),
    ],
    ids=["not-json", "bad-shape", "timeout", "missing-ip"],
)
def test_observe_unreadable_addresses(answer: CommandResult | Exception) -> None:
    adapter = IpVip(FakeRunner(lambda argv: answer), arp=FakeArp())  # type: ignore[arg-type]
    got = adapter.observe([vip(), vip("198.51.100.4/24")])
    assert [o.local for o in got] == [None, None]
    assert [o.answered_elsewhere for o in got] == [None, None]
    assert all("cannot read local addresses" in (o.error or "") for o in got)


def test_observe_nothing() -> None:
    runner = ip_addr_runner("[]")
    assert IpVip(runner, arp=FakeArp()).observe([]) == ()  # type: ignore[arg-type]
    assert runner.calls == []


# ------------------------------------------------------------------- IpVip actions
@pytest.mark.parametrize(
    "stderr",
    ["", "Error: ipv4: Address already assigned.\n", "RTNETLINK answers: File exists\n"],
)
def test_add_is_idempotent(stderr: str) -> None:
    runner = FakeRunner(lambda argv: result(rc=2 if stderr else 0, stderr=stderr, argv=argv))
    IpVip(runner, arp=FakeArp()).add(vip())  # type: ignore[arg-type]
    assert runner.calls == [["ip", "addr", "add", "198.51.100.3/24", "dev", "eth0"]]


def test_add_failure_is_terminal() -> None:
    runner = FakeRunner(lambda argv: result(rc=1, stderr='Cannot find device "eth9"\n'))
    with pytest.raises(TerminalError, match="eth9"):
        IpVip(runner, arp=FakeArp()).add(vip(interface="eth9"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "stderr",
    [
        "",
        "Error: ipv4: Address not found.\n",
        "RTNETLINK answers: Cannot assign requested address\n",
        'Cannot find device "eth0"\n',
    ],
)
def test_remove_is_idempotent(stderr: str) -> None:
    runner = FakeRunner(lambda argv: result(rc=2 if stderr else 0, stderr=stderr, argv=argv))
    IpVip(runner, arp=FakeArp()).remove(vip())  # type: ignore[arg-type]
    assert runner.calls == [["ip", "addr", "del", "198.51.100.3/24", "dev", "eth0"]]


def test_remove_failure_is_terminal_and_timeouts_transient() -> None:
    runner = FakeRunner(
        lambda argv: result(rc=2, stderr="RTNETLINK answers: Operation not permitted")
    )
    with pytest.raises(TerminalError, match="not permitted"):
        IpVip(runner, arp=FakeArp()).remove(vip())  # type: ignore[arg-type]
    slow = FakeRunner(lambda argv: TransientError("timed out"))
    with pytest.raises(TransientError):
        IpVip(slow, arp=FakeArp()).remove(vip())  # type: ignore[arg-type]


def test_announce_delegates() -> None:
    arp = FakeArp()
    IpVip(ip_addr_runner("[]"), arp=arp).announce(vip())  # type: ignore[arg-type]
    assert arp.announced == [("eth0", VIP_IP)]


# ------------------------------------------------------------ InProcessArp, fake socket
class FakeSocket:
    """A bound AF_PACKET socket: records sent frames, delivers ``incoming`` after the first
    send (each after ``delay`` seconds), then times out like the real one."""

    def __init__(self, incoming: list[tuple[bytes, int]], delay: float = 0.0) -> None:
        self.incoming = list(incoming)
        self.delay = delay
        self.sent: list[tuple[float, bytes]] = []
        self.timeout: float | None = None
        self.closed = False
        self.fail_send: OSError | None = None
        self.events: list[str] = []  # "send", "answer", "wait" (a receive that timed out)

    def getsockname(self) -> tuple[Any, ...]:
        return ("eth0", 0x0806, 0, 1, MAC2)

    def send(self, frame: bytes) -> int:
        if self.fail_send:
            raise self.fail_send
        self.sent.append((time.monotonic(), frame))
        self.events.append("send")
        return len(frame)

    def settimeout(self, value: float) -> None:
        self.timeout = value

    def recvfrom(self, size: int) -> tuple[bytes, tuple[Any, ...]]:
        assert self.sent, "receiving before the probe was sent"
        if self.incoming:
            time.sleep(self.delay)
            data, pkttype = self.incoming.pop(0)
            self.events.append("answer")
            return data, ("eth0", 0x0806, pkttype, 1, data[6:12])
        time.sleep(self.timeout or 0)
        self.events.append("wait")
        raise TimeoutError

    def fileno(self) -> int:
        return -1 if self.closed else 3

    def close(self) -> None:
        self.closed = True


class FakeSocketArp(InProcessArp):
    def __init__(self, sock: FakeSocket | OSError, **kw: Any) -> None:
        super().__init__(**kw)
        self.sock = sock

    def _open(self, interface: str) -> Any:
        if isinstance(self.sock, OSError):
            raise self.sock
        return self.sock

    def _close(self, sock: Any) -> None:
        sock.close()  # the real one closes in a thread; here the test checks it at once


def reply_from(mac: bytes, ip: str = VIP_IP) -> bytes:
    packet = ArpPacket(ARP_REPLY, mac, socket.inet_aton(ip), MAC2, b"\x00" * 4)
    return arp_frame(mac, packet, dst_mac=MAC2)


def test_in_process_probe_answered() -> None:
    own_probe = arp_frame(MAC2, probe_packet(MAC2, VIP_IP))
    noise = reply_from(MAC1, "198.51.100.9")
    sock = FakeSocket(
        [
            (own_probe, socket.PACKET_OUTGOING),
            (noise, socket.PACKET_HOST),
            (b"junk", 0),
            (reply_from(MAC1), socket.PACKET_HOST),
        ]
    )
    got = FakeSocketArp(sock).probe("eth0", VIP_IP, timeout=0.5)
    assert got.answered is True and got.mac == "02:00:00:00:00:01"
    assert "02:00:00:00:00:01" in got.detail
    assert "wait" not in sock.events, "an answer ends the wait (no receive timed out)"
    # How soon an answer ends it (got.seconds): tests/bench/adapters.py.
    assert sock.closed
    assert parse_arp_frame(sock.sent[0][1]) == probe_packet(MAC2, VIP_IP)


def test_in_process_probe_free_is_bounded_and_retransmits() -> None:
    sock = FakeSocket([(arp_frame(MAC2, probe_packet(MAC2, VIP_IP)), socket.PACKET_OUTGOING)])
    got = FakeSocketArp(sock, probes=2).probe("eth0", VIP_IP, timeout=0.04)
    assert got == ProbeResult(False, seconds=got.seconds)
    assert got.seconds >= 0.04  # "free" only once the whole window has passed
    assert len(sock.sent) == 2
    # Spread over the window, not back to back: the second frame follows a timed-out wait.
    second = sock.events.index("send", 1)
    assert "wait" in sock.events[1:second] and sock.events[-1] == "wait"
    assert sock.closed


@pytest.mark.parametrize(
    "sock",
    [OSError(19, "No such device"), PermissionError(1, "Operation not permitted")],
    ids=["no-device", "no-permission"],
)
def test_in_process_probe_impossible(sock: OSError) -> None:
    got = FakeSocketArp(sock).probe("eth0", VIP_IP, timeout=0.03)
    assert got.answered is None and str(sock.strerror) in got.detail


def test_in_process_probe_send_failure() -> None:
    sock = FakeSocket([])
    sock.fail_send = OSError(100, "Network is down")
    got = FakeSocketArp(sock).probe("eth0", VIP_IP, timeout=0.03)
    assert got.answered is None and "Network is down" in got.detail and sock.closed


def test_in_process_announce_sends_first_round_then_returns() -> None:
    sock = FakeSocket([])
    arp = FakeSocketArp(sock, count=3, interval=0.05)
    arp.announce("eth0", VIP_IP)
    # Returned after the first round (request + reply), the other two still due in the
    # background; how fast it returns: tests/bench/adapters.py.
    assert len(sock.sent) == 2 and arp.pending() == 1
    assert arp.drain(timeout=2)
    packets = [parse_arp_frame(f) for _, f in sock.sent]
    assert packets == list(announce_packets(MAC2, VIP_IP)) * 3
    gaps = [b[0] - a[0] for a, b in zip(sock.sent[::2], sock.sent[2::2], strict=False)]
    assert all(g >= 0.045 for g in gaps)
    assert sock.closed


def test_in_process_announce_later_round_failure_is_logged(caplog: Any) -> None:
    class FailsLater(FakeSocket):
        def send(self, frame: bytes) -> int:
            if len(self.sent) >= 2:
                raise OSError(100, "Network is down")
            return super().send(frame)

    sock = FailsLater([])
    arp = FakeSocketArp(sock, count=3, interval=0.01)
    arp.announce("eth0", VIP_IP)
    assert arp.drain(timeout=2) and arp.pending() == 0
    assert len(sock.sent) == 2 and sock.closed
    assert "Network is down" in caplog.text


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (OSError(19, "No such device"), TerminalError),
        (PermissionError(1, "Operation not permitted"), TerminalError),
        (OSError(100, "Network is down"), TransientError),
    ],
)
def test_in_process_announce_errors(error: OSError, kind: type[Exception]) -> None:
    with pytest.raises(kind):
        FakeSocketArp(error).announce("eth0", VIP_IP)
    sock = FakeSocket([])
    sock.fail_send = error
    with pytest.raises(kind):
        FakeSocketArp(sock).announce("eth0", VIP_IP)
    assert sock.closed


def test_in_process_netns_name_is_validated() -> None:
    for bad in ("", "../etc", "a/b", "-x"):
        with pytest.raises(ValueError):
            InProcessArp(netns=bad)


# ----------------------------------------------------------------------------- CommandArp
ARPING_DUP = (
    "ARPING 198.51.100.3 from 0.0.0.0 eth0\n"
    "Unicast reply from 198.51.100.3 [02:00:00:00:00:01]  0.563ms\n"
    "Sent 1 probes (1 broadcast(s))\nReceived 1 response(s)\n"
)
ARPING_FREE = (
    "ARPING 198.51.100.4 from 0.0.0.0 eth0\nSent 1 probes (1 broadcast(s))\n"
    "Received 0 response(s)\n"
)


def interrupted(wait: str) -> list[str]:
    return ["timeout", "--preserve-status", "-s", "INT", wait, "arping", "-D", "-c", "1", "-w",
            "2", "-I", "eth0", VIP_IP]  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "expected", "mac"),
    [
        (result(rc=1, stdout=ARPING_DUP), True, "02:00:00:00:00:01"),
        (result(rc=0, stdout=ARPING_FREE), False, None),
        (result(rc=0, stdout="ARPING 198.51.100.3 from 0.0.0.0 eth0\n"), None, None),
        (result(rc=2, stderr="arping: Device nope0 not available.\n"), None, None),
        (result(rc=1, stderr="arping: invalid argument: '0.2'\n"), None, None),
        (TerminalError("command not found: arping"), None, None),
        (TransientError("timed out"), None, None),
    ],
    ids=["duplicate", "free", "no-counts", "no-device", "usage-error", "missing", "timeout"],
)
def test_command_probe(answer: Any, expected: bool | None, mac: str | None) -> None:
    runner = FakeRunner(lambda argv: answer)
    got = CommandArp(runner, startup=0.05).probe("eth0", VIP_IP, timeout=0.03)  # type: ignore[arg-type]
    assert got.answered is expected and got.mac == mac
    if expected is None:
        assert got.detail
    # Stopped by SIGINT after the probe timeout plus the start-up allowance.
    assert runner.calls == [interrupted("0.080")]


@pytest.mark.parametrize(
    "early",
    [
        result(
            rc=0,
            stdout="ARPING 198.51.100.3 from 0.0.0.0 eth0\nSent 0 probes (0 "
            "broadcast(s))\nReceived 0 response(s)\n",
        ),
        result(rc=130),  # SIGINT came before arping installed its handler
    ],
    ids=["sent-nothing", "killed-by-sigint"],
)
def test_command_probe_stopped_before_sending_waits_longer(early: CommandResult) -> None:
    answers = iter([early, result(rc=0, stdout=ARPING_FREE)])
    runner = FakeRunner(lambda argv: next(answers))
    arp = CommandArp(runner, startup=0.05)  # type: ignore[arg-type]
    assert arp.probe("eth0", VIP_IP, timeout=0.03).answered is False
    assert runner.calls == [interrupted("0.080"), interrupted("0.130")]
    # The doubled allowance decays back to the measured one as probes go out again.
    assert arp.startup == pytest.approx(0.08)
    answers = iter([result(rc=0, stdout=ARPING_FREE)] * 5)
    for _ in range(5):
        arp.probe("eth0", VIP_IP, timeout=0.03)
    assert arp.startup == 0.05


def test_command_probe_that_never_sends_is_unknown() -> None:
    runner = FakeRunner(lambda argv: result(rc=130))
    got = CommandArp(runner, startup=0.5).probe("eth0", VIP_IP, timeout=0.03)  # type: ignore[arg-type]
    assert got.answered is None and "did not send its probe" in got.detail
    assert [c[4] for c in runner.calls] == ["0.530", "1.030"]


def test_command_probe_measures_the_start_up_allowance_once() -> None:
    def answer(argv: list[str]) -> CommandResult:
        if argv[-1] == "true":
            time.sleep(0.05)
            return result(argv=argv)
        return result(rc=0, stdout=ARPING_FREE, argv=argv)

    runner = FakeRunner(answer)
    arp = CommandArp(runner)  # type: ignore[arg-type]
    assert arp.startup is None
    assert arp.probe("eth0", VIP_IP, timeout=0.03).answered is False
    assert arp.probe("eth0", VIP_IP, timeout=0.03).answered is False
    assert runner.calls[0] == ["timeout", "--preserve-status", "-s", "INT", "5", "true"]
    assert len(runner.calls) == 3  # measured once
    startup = arp.startup
    assert startup is not None and startup >= 0.1  # twice the measured (>= 50 ms) start-up
    assert runner.calls[1][4] == f"{0.03 + startup:.3f}"


@pytest.mark.parametrize(
    "calibration",
    [
        result(rc=127, stderr="sh: timeout: not found\n"),
        result(rc=1, stderr="timeout: unrecognized option: preserve-status\n"),
        TerminalError("command not found: timeout"),
    ],
    ids=["missing", "busybox", "missing-locally"],
)
def test_command_probe_without_a_usable_timeout_waits_whole_seconds(calibration: Any) -> None:
    def answer(argv: list[str]) -> CommandResult | Exception:
        return calibration if argv[0] == "timeout" else result(rc=0, stdout=ARPING_FREE)

    runner = FakeRunner(answer)
    arp = CommandArp(runner)  # type: ignore[arg-type]
    assert arp.probe("eth0", VIP_IP, timeout=0.03).answered is False
    assert runner.calls[1] == ["arping", "-D", "-c", "1", "-w", "1", "-I", "eth0", VIP_IP]
    assert arp.startup is None
    arp.probe("eth0", VIP_IP, timeout=2.5)
    assert runner.calls[2][5] == "3"  # whole seconds, rounded up


def test_command_probe_falls_back_when_timeout_stops_working() -> None:
    answers = iter(
        [
            result(rc=1, stderr="timeout: unrecognized option: preserve-status\n"),
            result(rc=0, stdout=ARPING_FREE),
        ]
    )
    runner = FakeRunner(lambda argv: next(answers))
    arp = CommandArp(runner, startup=0.05)  # type: ignore[arg-type]
    assert arp.probe("eth0", VIP_IP, timeout=0.03).answered is False
    assert runner.calls[1][0] == "arping" and arp.startup is None


@given(st.text(max_size=400))
@settings(max_examples=300, deadline=None)
def test_parse_arping_never_raises(text: str) -> None:
    report = parse_arping(text)
    assert report.sent is None or report.sent >= 0


def test_command_announce_spawns_and_reaps() -> None:
    runner = FakeRunner(lambda argv: result())
    arp = CommandArp(runner, count=3)  # type: ignore[arg-type]
    arp.announce("eth0", VIP_IP)
    arp.announce("eth0", VIP_IP)
    assert runner.calls == [["arping", "-U", "-c", "3", "-I", "eth0", VIP_IP]] * 2
    assert arp.pending() == 2
    runner.spawned[0].returncode = 0
    assert arp.pending() == 1
    assert arp.drain(timeout=0.05) is False  # the second one had to be killed
    assert runner.spawned[1].killed and arp.pending() == 0


# --------------------------------------------------------------------------- PingLiveness
def ping_runner(table: dict[str, CommandResult | Exception], delay: float = 0.0) -> FakeRunner:
    lock = threading.Lock()
    active = [0, 0]  # now, max

    def answer(argv: list[str]) -> CommandResult | Exception:
        assert argv[:6] == ["ping", "-c", "1", "-W", "0.5", "-n"]
        with lock:
            active[0] += 1
            active[1] = max(active)
        time.sleep(delay)
        with lock:
            active[0] -= 1
        return table[argv[-1]]

    runner = FakeRunner(answer)
    runner.max_active = active  # type: ignore[attr-defined]
    return runner


UP, DOWN = result(rc=0), result(rc=1)
NO_ROUTE = result(rc=2, stderr="ping: connect: Network is unreachable\n")


@pytest.mark.parametrize(
    ("peers", "expected"),
    [
        ({"10.0.0.2": UP, "10.0.1.2": DOWN}, True),
        ({"10.0.0.2": DOWN, "10.0.1.2": NO_ROUTE}, False),
        ({"10.0.0.2": DOWN, "10.0.1.2": TransientError("timed out")}, None),
        ({"10.0.0.2": UP, "10.0.1.2": TerminalError("no ping")}, True),
        ({"10.0.0.2": result(rc=2, stderr="ping: bad option")}, None),
        ({}, None),
    ],
)
def test_peer_reachable(peers: dict[str, Any], expected: bool | None) -> None:
    runner = ping_runner(peers)
    got = PingLiveness(runner, peer_addresses=list(peers)).observe()  # type: ignore[arg-type]
    assert got == Liveness(peer_reachable=expected, heuristics_ok=0, heuristics_total=0)


def test_heuristics_and_concurrency() -> None:
    table: dict[str, Any] = {
        "10.0.0.2": DOWN,
        "10.0.9.1": UP,
        "10.0.9.2": DOWN,
        "10.0.9.3": RuntimeError("unexpected"),
        "10.0.9.4": UP,
    }
    runner = ping_runner(table, delay=0.1)
    adapter = PingLiveness(
        runner,  # type: ignore[arg-type]
        peer_addresses=["10.0.0.2"],
        heuristics=["10.0.9.1", "10.0.9.2", "10.0.9.3", "10.0.9.4"],
    )
    got = adapter.observe()
    assert got == Liveness(peer_reachable=False, heuristics_ok=2, heuristics_total=4)
    assert runner.max_active[1] == 5, "pings run concurrently"  # type: ignore[attr-defined]


def test_liveness_rejects_non_addresses() -> None:
    with pytest.raises(ValueError):
        PingLiveness(ip_addr_runner(""), peer_addresses=["-f"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PingLiveness(ip_addr_runner(""), peer_addresses=[], heuristics=["gw.example"])  # type: ignore[arg-type]


# ------------------------------------------------------- releasing a VIP ends its announcement
class SocketPerCallArp(InProcessArp):
    """``InProcessArp`` on a fresh ``FakeSocket`` per announcement (rounds, no packets)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.sockets: list[FakeSocket] = []

    def _open(self, interface: str) -> FakeSocket:
        sock = FakeSocket([])
        self.sockets.append(sock)
        return sock


def test_announcement_rounds_run_in_the_background_until_cancelled() -> None:
    arp = SocketPerCallArp(count=3, interval=0.05)
    arp.announce("eth0", "198.51.100.3")  # rounds at 0, 50, 100 ms
    arp.announce("eth0", "198.51.100.4")  # another VIP: not cancelled below
    first, other = arp.sockets
    assert len(first.sent) == 2  # the first round (request + reply) before returning
    arp.cancel("eth0", "198.51.100.3")
    assert arp.drain(5)
    assert len(first.sent) == 2  # no later round after the cancel
    assert len(other.sent) == 6  # three rounds of two frames
    assert first.closed and other.closed
    arp.cancel("eth0", "198.51.100.3")  # nothing left to cancel: a no-op


def test_removing_a_vip_cancels_its_announcement_before_the_address_goes() -> None:
    calls: list[object] = []

    class Recording(FakeArp):
        def cancel(self, interface: str, ip: str) -> None:
            calls.append(("cancel", interface, ip))

    def answer(argv: list[str]) -> CommandResult:
        calls.append(tuple(argv[:3]))
        return result(argv=argv)

    adapter = IpVip(FakeRunner(answer), arp=Recording())  # type: ignore[arg-type]
    adapter.remove(vip())
    assert calls == [("cancel", "eth0", VIP_IP), ("ip", "addr", "del")]


def test_command_arp_cancel_kills_only_that_vips_arping() -> None:
    runner = FakeRunner(lambda argv: result(argv=argv))
    arp = CommandArp(runner)  # type: ignore[arg-type]
    arp.announce("eth0", "198.51.100.3")
    arp.announce("eth0", "198.51.100.4")
    arp.cancel("eth0", "198.51.100.3")
    assert [p.killed for p in runner.spawned] == [True, False]
    assert arp.pending() == 1
