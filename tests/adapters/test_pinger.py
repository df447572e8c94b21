"""The resident pinger's rules without a network (``ReplyTracker``, the ICMP codec), the
simulated DRBD that follows a node's view of its peer's real links, and how the factory and
the spec choose liveness. The pinger on real sockets runs in the namespace lab
(tests/lab/test_crash_lab.py)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

from adapters.factory import build_adapters
from adapters.pinger import Pinger, ReplyTracker, echo_request, icmp_checksum, parse_echo_reply
from adapters.sim.adapters import SimDrbd, SimLiveness
from adapters.sim.world import World, WorldStore
from reconciler.core.observed import ConnState, DiskState, Role
from reconciler.core.spec import LivenessTimings, StorageCluster
from tests.lab.specs import LabCluster
from tests.simcluster import demo_spec

# --------------------------------------------------------------------------- ReplyTracker


def test_an_address_is_unknown_until_it_answers_or_misses_enough_rounds() -> None:
    t = ReplyTracker(["a", "b"], misses=3)
    assert t.states == {"a": None, "b": None}
    assert t.round({"a"}) is True
    assert t.states == {"a": True, "b": None}
    assert t.round({"a"}) is False  # nothing changed
    assert t.round({"a"}) is True  # b's third miss: dead
    assert t.states == {"a": True, "b": False}


def test_dead_after_misses_consecutive_silent_rounds_alive_after_one_reply() -> None:
    t = ReplyTracker(["peer"], misses=2)
    t.round({"peer"})
    t.round(set())
    assert t.states["peer"] is True  # one miss is not enough
    t.round({"peer"})  # the count restarts
    t.round(set())
    assert t.states["peer"] is True
    assert t.round(set()) is True
    assert t.states["peer"] is False
    assert t.round({"peer"}) is True
    assert t.states["peer"] is True


def test_misses_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReplyTracker(["a"], misses=0)


# --------------------------------------------------------------------------- ICMP codec


def test_echo_request_checksum_verifies_to_zero() -> None:
    packet = echo_request(0x1234, 7)
    assert packet[0] == 8 and struct.unpack("!HH", packet[4:8]) == (0x1234, 7)
    assert icmp_checksum(packet) == 0
    assert icmp_checksum(echo_request(1, 2, b"odd")) == 0  # odd length is padded


def test_parse_echo_reply_with_and_without_the_ip_header() -> None:
    reply = bytes([0]) + echo_request(0xBEEF, 42)[1:]  # type 0: an echo reply
    ip_header = bytes([0x45]) + bytes(19)
    assert parse_echo_reply(reply, raw=False) == (0xBEEF, 42)
    assert parse_echo_reply(ip_header + reply, raw=True) == (0xBEEF, 42)
    assert parse_echo_reply(echo_request(1, 1), raw=False) is None  # a request, not a reply
    unreachable = bytes([3, 1]) + bytes(6)
    assert parse_echo_reply(unreachable, raw=False) is None
    assert parse_echo_reply(b"\x45\x00", raw=True) is None


# --------------------------------------------------------------------------- Pinger, no I/O


def test_a_pinger_starts_nothing_until_observed_and_a_closed_one_is_unknown() -> None:
    p = Pinger(peer_addresses=["198.51.100.2"], heuristics=["198.51.100.10"])
    assert p._thread is None  # building starts no thread
    p.close()
    p.close()  # idempotent
    live = p.observe()
    assert (live.peer_reachable, live.heuristics_ok, live.heuristics_total) == (None, 0, 1)
    assert p._thread is None  # never restarted
    assert p.answers(["198.51.100.2"]) == (None,)


def test_pinger_validates_addresses_and_timings() -> None:
    with pytest.raises(ValueError):
        Pinger(peer_addresses=["not-an-address"])
    with pytest.raises(ValueError):
        Pinger(peer_addresses=["198.51.100.2"], interval=0.1, timeout=0.2)


# --------------------------------------------------------------------------- SimDrbd + links


class FakeLinks:
    """What a node's pinger says of its peer's addresses (set by the test)."""

    def __init__(self) -> None:
        self.state: dict[str, bool | None] = {}

    def answers(self, addresses: Sequence[str]) -> tuple[bool | None, ...]:
        return tuple(self.state.get(a) for a in addresses)


REPL1, MGMT1 = "198.51.100.129", "198.51.100.1"


def _serving_world() -> tuple[StorageCluster, WorldStore]:
    spec = demo_spec()
    store = WorldStore(World.fresh(spec))
    with store.transaction() as world:
        world.drbd_primary("node1", spec.spec.resources[0].name)
    return spec, store


def test_sim_drbd_loses_the_connection_when_the_peers_replication_address_goes_silent() -> None:
    spec, store = _serving_world()
    res = spec.spec.resources[0]
    links = FakeLinks()
    drbd = SimDrbd(store, "node2", links=links, peer_replication=REPL1, peer_management=MGMT1)
    (before,) = drbd.observe([res])
    assert (before.conn, before.peer_role) == (ConnState.CONNECTED, Role.PRIMARY)

    links.state = {REPL1: None, MGMT1: None}  # not known yet: nothing changes
    (same,) = drbd.observe([res])
    assert same.conn is ConnState.CONNECTED

    links.state = {REPL1: False, MGMT1: False}  # node1 crashed: silent on both links
    (after,) = drbd.observe([res])
    assert after.conn is ConnState.WF_CONNECTION
    assert (after.peer_role, after.peer_disk) == (Role.UNKNOWN, DiskState.DUNKNOWN)
    assert after.disk is DiskState.UPTODATE  # not outdated by a handler that cannot reach it
    with store.transaction() as world:
        assert not world.replication_link and not world.management_link
        assert any("stopped answering" in e for e in world.events)

    drbd.primary(res)  # the survivor may take over (fencing: peer unreachable, assumed dead)
    (taken,) = drbd.observe([res])
    assert taken.role is Role.PRIMARY


def test_sim_drbd_reconnects_when_the_peer_answers_again() -> None:
    spec, store = _serving_world()
    res = spec.spec.resources[0]
    links = FakeLinks()
    drbd = SimDrbd(store, "node2", links=links, peer_replication=REPL1, peer_management=MGMT1)
    links.state = {REPL1: False, MGMT1: True}  # only the replication link is cut
    (cut,) = drbd.observe([res])
    assert cut.conn is ConnState.WF_CONNECTION
    links.state = {REPL1: True, MGMT1: True}
    (back,) = drbd.observe([res])
    assert (back.conn, back.peer_role) == (ConnState.CONNECTED, Role.PRIMARY)


def test_sim_drbd_without_links_ignores_nothing_of_the_world() -> None:
    spec, store = _serving_world()
    res = spec.spec.resources[0]
    with store.transaction() as world:
        world.set_links(replication=False)
    (obs,) = SimDrbd(store, "node2").observe([res])
    assert obs.conn is ConnState.WF_CONNECTION


# --------------------------------------------------------------------------- spec + factory


def _lab_spec(tmp_path: Path) -> StorageCluster:
    return LabCluster.create(tmp_path / "files").spec()  # file work only: no command runs


def test_liveness_is_real_in_the_lab_and_simulated_in_the_all_sim_demo(tmp_path: Path) -> None:
    demo = demo_spec()
    assert demo.spec.adapters.liveness == "sim"
    sim = build_adapters(demo, "node1", tmp_path / "demo")
    assert isinstance(sim.liveness, SimLiveness)

    lab = _lab_spec(tmp_path)
    assert lab.spec.adapters.liveness == "ping"
    adapters = build_adapters(lab, "node2", tmp_path / "lab")
    pinger = adapters.liveness
    assert isinstance(pinger, Pinger)
    assert pinger._thread is None  # building adapters starts nothing
    assert pinger.wakeup is adapters.wakeup  # it pushes its changes; the loop waits on it
    assert pinger not in adapters.wake  # never polled
    assert pinger.peer_addresses == ["198.51.100.1", "198.51.100.129"]
    assert isinstance(adapters.drbd, SimDrbd) and adapters.drbd.links is pinger
    assert adapters.drbd.peer_replication == "198.51.100.129"
    adapters.close()

    static = LabCluster.create(tmp_path / "static", static=True, liveness={"misses": 2})
    spec = static.spec()
    assert spec.spec.liveness.misses == 2
    assert spec.spec.promotion.heuristics[0].exploded == "198.51.100.10"
    assert spec.spec.adapters.role_source == "state"


def test_liveness_timings_are_validated_and_give_the_documented_detection() -> None:
    assert LivenessTimings().detection == pytest.approx((0.8, 1.0))
    tuned = LivenessTimings(interval=0.05, timeout=0.04, misses=3)
    assert tuned.detection == pytest.approx((0.14, 0.19))
    with pytest.raises(ValidationError, match="longer than interval"):
        LivenessTimings(interval=0.1, timeout=0.2)
    with pytest.raises(ValidationError):
        LivenessTimings(misses=0)


def test_simulated_liveness_needs_the_simulated_drbd(tmp_path: Path) -> None:
    spec = _lab_spec(tmp_path)
    data = spec.model_dump(by_alias=True, mode="json")
    data["spec"]["adapters"]["drbd"] = "drbd"
    data["spec"]["adapters"]["liveness"] = "sim"
    with pytest.raises(ValidationError, match="needs drbd 'sim'"):
        StorageCluster.model_validate(data)
