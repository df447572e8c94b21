"""The event-fed DRBD adapter over a protocol-level fake ``drbdsetup``/``drbdadm``
(``tests/fakes/drbd.py``) that the real ``Runner`` spawns from PATH: the stream, the re-lists,
the wakes, ``close()``, and the issue's test (the events2 stream killed mid-swap).

Waiting: the fake's stream runs in its own process, so a test waits for what it delivers
(``tests.waiting.wait_for``, a bounded wait on the condition); time-based behaviour (the
periodic re-list, the stall) runs on an injected clock, never on real sleeping."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.drbd import RealDrbd
from adapters.drbd.stream import EventFedDrbd
from adapters.factory import build_adapters
from adapters.runner import Runner
from adapters.sim.world import World
from adapters.wake import Wakeup
from reconciler.agent import TickReport
from reconciler.agent import tick as agent_tick
from reconciler.core.observed import ConnState, DiskState, ResourceObs, Role
from reconciler.core.plan import ActionKind
from reconciler.core.spec import Resource, StorageCluster
from reconciler.core.specload import load_spec
from tests.fakes.drbd import FakeDrbd
from tests.simcluster import DEMO_TEXT, NO_SLEEP_RETRY, SimCluster
from tests.waiting import wait_for

R1 = Resource(name="iscsi1", minor=1, disk="/dev/vdb")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDrbd:
    drbd = FakeDrbd(tmp_path, {"iscsi1": 1})
    monkeypatch.setenv("PATH", f"{drbd.bin}{os.pathsep}{os.environ['PATH']}")
    return drbd


@pytest.fixture
def adapters(fake: FakeDrbd) -> Iterator[dict[str, EventFedDrbd]]:
    made: dict[str, EventFedDrbd] = {}
    yield made
    for adapter in made.values():
        adapter.close()


def make(
    fake: FakeDrbd,
    made: dict[str, EventFedDrbd],
    node: str = "node1",
    *,
    clock: Clock | None = None,
    wakeup: Wakeup | None = None,
    resync: float = 30.0,
) -> EventFedDrbd:
    runner = Runner(env=fake.env(node))
    adapter = EventFedDrbd(
        runner,
        real=RealDrbd(runner),
        wakeup=wakeup,
        resync=resync,
        clock=clock or Clock(),
    )
    made[node] = adapter
    return adapter


def spawned(adapter: EventFedDrbd) -> int:
    return adapter.runner.spawned  # the stream's and the listings' runner (one per node)


def streaming(adapter: EventFedDrbd) -> EventFedDrbd:
    wait_for("the events2 stream's initial dump", lambda: adapter.streaming)
    return adapter


def one(adapter: EventFedDrbd) -> ResourceObs:
    (obs,) = adapter.observe([R1])
    return obs


def test_building_starts_nothing(fake: FakeDrbd, adapters: dict[str, EventFedDrbd]) -> None:
    adapter = make(fake, adapters)
    assert spawned(adapter) == 0 and adapter.process is None and fake.events2_pids("node1") == []


def test_first_observe_lists_and_starts_the_stream_then_idle_observes_spawn_nothing(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    fake.set_node("iscsi1", "node1", role="Primary")
    adapter = make(fake, adapters)
    obs = one(adapter)
    # The stream has no dump yet: the first tick is a full listing (and the stream's start).
    assert (obs.known, obs.role, obs.peer_role, obs.conn) == (
        True,
        Role.PRIMARY,
        Role.SECONDARY,
        ConnState.CONNECTED,
    )
    assert adapter.relists == 1 and spawned(adapter) == 2
    streaming(adapter)
    before = spawned(adapter)
    for _ in range(5):
        again = one(adapter)
        assert again == obs
    assert spawned(adapter) == before  # idle: the stream is already running
    assert adapter.relists == 1


def test_incremental_changes_are_observed_and_wake_the_agent(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    wakeup = Wakeup()
    adapter = streaming_after_first(make(fake, adapters, wakeup=wakeup))
    wakeup.clear()
    before = spawned(adapter)
    fake.set_node("iscsi1", "node2", role="Primary")
    assert wait_for("a wake", lambda: wakeup.pending()) == "drbd events"
    assert one(adapter).peer_role is Role.PRIMARY
    wakeup.clear()
    fake.set_node("iscsi1", "node1", disk="Outdated")
    wait_for("a wake", lambda: wakeup.pending())
    assert one(adapter).disk is DiskState.OUTDATED
    wakeup.clear()
    fake.set_node("iscsi1", "node2", up=False)  # the peer went down: connection lost
    wait_for("a wake", lambda: wakeup.pending())
    obs = one(adapter)
    assert (obs.conn, obs.peer_role, obs.peer_disk) == (
        ConnState.CONNECTING,
        Role.UNKNOWN,
        DiskState.DUNKNOWN,
    )
    fake.set_node("iscsi1", "node1", up=False)  # this node down: destroy lines
    wait_for("the resource gone from the stream", lambda: not one(adapter).up)
    assert spawned(adapter) == before  # every one of them from the stream


def ended(adapter: EventFedDrbd) -> bool:
    proc = adapter.process
    return proc is not None and proc.poll() is not None


def streaming_after_first(adapter: EventFedDrbd) -> EventFedDrbd:
    one(adapter)
    return streaming(adapter)


def test_a_stream_that_ends_is_relisted_and_replaced(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    wakeup = Wakeup()
    adapter = streaming_after_first(make(fake, adapters, wakeup=wakeup))
    first = adapter.process
    assert first is not None
    wakeup.clear()
    fake.events2_mode("node1", "exit:3")
    wait_for("the stream's end", lambda: not adapter.streaming)
    assert wakeup.pending() == "drbd events"  # its end wakes the agent
    fake.events2_mode("node1", "run")
    fake.set_node("iscsi1", "node2", role="Primary")  # a change no stream reported
    relists = adapter.relists
    assert one(adapter).peer_role is Role.PRIMARY  # from the listing, not the dead stream
    assert adapter.relists == relists + 1
    assert adapter.process is not first  # replaced at once
    streaming(adapter)
    assert one(adapter).peer_role is Role.PRIMARY and adapter.relists == relists + 1


def test_a_stream_that_keeps_dying_backs_off_and_the_ticks_poll(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    clock = Clock()
    fake.events2_mode("node1", "exit:20")  # e.g. the DRBD module is not loaded
    adapter = make(fake, adapters, clock=clock)
    for _ in range(3):
        assert one(adapter).known
        wait_for("the stream's end", lambda: ended(adapter))
    # first tick starts one; the second replaces it (backoff 1 s starts now); the third is
    # within the backoff: it only lists.
    assert adapter.relists == 3 and spawned(adapter) == 3 + 2
    clock.now += 1.0
    one(adapter)
    wait_for("a third stream", lambda: len(fake.events2_pids("node1")) == 3)


def test_garbage_on_the_stream_is_never_used(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    wakeup = Wakeup()
    adapter = streaming_after_first(make(fake, adapters, wakeup=wakeup))
    first = adapter.process
    wakeup.clear()
    fake.events2_mode("node1", "garbage")
    wait_for("the garbage noticed", lambda: not adapter.streaming)
    assert wakeup.pending() == "drbd events"
    fake.events2_mode("node1", "run")
    relists = adapter.relists
    assert one(adapter).known and adapter.relists == relists + 1
    assert first is not None and first.wait(timeout=10) == -signal.SIGKILL  # killed by us
    streaming(adapter)


def test_a_stall_before_the_dump_relists_then_replaces_the_stream(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    clock = Clock()
    fake.events2_mode("node1", "nodump")
    adapter = make(fake, adapters, clock=clock)
    assert one(adapter).known and adapter.relists == 1
    wait_for("the stream started", lambda: fake.events2_pids("node1"))
    clock.now += 1.0
    assert one(adapter).known and adapter.relists == 2  # still no dump: listed again
    stalled = adapter.process
    fake.events2_mode("node1", "run")
    clock.now += 5.0  # past the stall bound
    one(adapter)
    assert stalled is not None and stalled.wait(timeout=10) == -signal.SIGKILL
    wait_for("the replacement stream", lambda: len(fake.events2_pids("node1")) == 2)
    streaming(adapter)


def test_if_the_relist_fails_too_every_resource_is_unknown_with_the_reason(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    adapter = streaming_after_first(make(fake, adapters))
    fake.events2_mode("node1", "exit:1")
    wait_for("the stream's end", lambda: not adapter.streaming)
    fake.fail_status("node1")
    obs = one(adapter)
    assert not obs.known
    assert obs.error is not None
    assert "DRBD status unreadable" in obs.error and "events2 stream ended" in obs.error


def test_periodic_relist_and_a_stream_that_missed_a_change_is_replaced(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    clock = Clock()
    adapter = streaming_after_first(make(fake, adapters, clock=clock, resync=30.0))
    first = adapter.process
    clock.now += 29.0
    one(adapter)
    assert adapter.relists == 1  # not yet
    fake.events2_mode("node1", "silent")  # the stream goes on, reporting nothing
    fake.set_node("iscsi1", "node2", role="Primary")
    wait_for("the fake applied the change", lambda: fake.node("iscsi1", "node2")["role"])
    clock.now += 1.0
    assert one(adapter).peer_role is Role.PRIMARY  # the periodic listing
    assert adapter.relists == 2
    assert first is not None and first.wait(timeout=10) == -signal.SIGKILL  # it missed it
    fake.events2_mode("node1", "run")
    assert one(adapter).peer_role is Role.PRIMARY
    streaming(adapter)
    assert one(adapter).peer_role is Role.PRIMARY and adapter.relists == 3


def test_the_observe_after_an_action_relists(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    adapter = streaming_after_first(make(fake, adapters))
    adapter.primary(R1)
    relists = adapter.relists
    assert one(adapter).role is Role.PRIMARY and adapter.relists == relists + 1
    wait_for("the stream shows it", lambda: adapter.streaming and one(adapter).role is Role.PRIMARY)
    assert adapter.relists == relists + 1


def test_close_kills_the_stream_and_is_idempotent(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    adapter = streaming_after_first(make(fake, adapters))
    proc = adapter.process
    assert proc is not None
    adapter.close()
    adapter.close()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    before = spawned(adapter)
    assert one(adapter).known  # after close: a listing, no new stream
    assert spawned(adapter) == before + 1 and adapter.process is proc


def test_split_brain_helper_is_recorded(fake: FakeDrbd, adapters: dict[str, EventFedDrbd]) -> None:
    wakeup = Wakeup()
    runner = Runner(env=fake.env("node1"))
    # No inference from StandAlone transitions: only the helper line can flag it.
    adapter = EventFedDrbd(runner, real=RealDrbd(runner, infer_split_brain=False), wakeup=wakeup)
    adapters["node1"] = adapter
    streaming_after_first(adapter)
    assert not one(adapter).split_brain
    wakeup.clear()
    # What DRBD 9 prints when it detects a split brain, then drops the connection.
    fake.events2_say(
        "node1",
        "call helper name:iscsi1 peer-node-id:1 conn-name:node2 volume:0 helper:split-brain",
    )
    wait_for("a wake", lambda: wakeup.pending())
    fake.set_node("iscsi1", "node1", standalone=True)
    wait_for(
        "StandAlone streamed",
        lambda: getattr(adapter.streamed("iscsi1"), "conn", None) is ConnState.STANDALONE,
    )
    obs = one(adapter)
    assert obs.conn is ConnState.STANDALONE and obs.split_brain
    assert "iscsi1" in adapter.split_brain_suspects


def test_standalone_after_connected_is_inferred_as_split_brain_from_the_stream(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    adapter = streaming_after_first(make(fake, adapters))
    assert not one(adapter).split_brain
    fake.set_node("iscsi1", "node1", standalone=True)  # not our disconnect
    wait_for("StandAlone", lambda: one(adapter).conn is ConnState.STANDALONE)
    assert one(adapter).split_brain


# ----------------------------------------------------------------------- the test


def one_resource_spec() -> StorageCluster:
    return load_spec(DEMO_TEXT.replace("hypervisor: sim", "hypervisor: none"), filename="t.yaml")


@dataclass
class EventFedCluster:
    """Two agents whose DRBD is the event-fed adapter over the fake; VIP, target and pool
    master are the simulated world's. The simulated target opens only a Primary device, so
    the world's DRBD roles follow the fake's (before a tick and after each of its steps)."""

    sim: SimCluster
    fake: FakeDrbd

    def follow(self, _step: object = None) -> None:
        for node in self.sim.spec.node_names:
            role = Role(self.fake.node("iscsi1", node)["role"])
            self.sim.world.res(node, "iscsi1").role = role

    def tick(self, node: str) -> TickReport:
        self.follow()
        return agent_tick(
            self.sim.spec,
            self.sim.adapters[node],
            retry=NO_SLEEP_RETRY,
            sleep=self.sim.sleeps.append,
            after_step=self.follow,
        )

    def converge(self) -> None:
        for _ in range(6):
            if not any([self.tick(n).plan.actions for n in self.sim.spec.node_names]):
                return
        raise AssertionError("not converged after 6 rounds")

    @property
    def world(self) -> World:
        return self.sim.world


def event_fed_cluster(
    fake: FakeDrbd, made: dict[str, EventFedDrbd], tmp_path: Path
) -> EventFedCluster:
    spec = one_resource_spec()
    cluster = SimCluster.create(spec, tmp_path / "state", world=World.fresh(spec))
    for node in spec.node_names:
        adapters = cluster.adapters[node]
        drbd = make(fake, made, node, wakeup=adapters.wakeup, resync=1e9)
        cluster.adapters[node] = dataclasses.replace(adapters, drbd=drbd)
    return EventFedCluster(cluster, fake)


def test_events2_killed_mid_swap_the_next_tick_relists_and_does_not_act_on_stale_state(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd], tmp_path: Path
) -> None:
    cluster = event_fed_cluster(fake, adapters, tmp_path)
    cluster.converge()
    assert fake.node("iscsi1", "node1")["role"] == "Primary"
    node2 = adapters["node2"]
    streaming(node2)
    before = node2.runner.spawned
    idle = cluster.tick("node2")
    assert not idle.plan.actions and node2.runner.spawned == before  # an idle tick: 0 spawns
    cluster.world.pool_master = "node2"  # the planned swap begins
    report = cluster.tick("node2")
    assert ActionKind.PROMOTE not in {a.kind for a in report.plan.actions}  # peer Primary
    cluster.tick("node1")  # the old primary steps down: target, VIP, DRBD demoted
    assert fake.node("iscsi1", "node1")["role"] == "Secondary"
    wait_for(
        "node2's stream shows the demote",
        lambda: getattr(node2.streamed("iscsi1"), "peer_role", None) is Role.SECONDARY,
    )
    # Between the peer's demote and the promote: the stream dies (killed from outside) ...
    proc = node2.process
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)
    wait_for("node2 noticed the stream's end", lambda: not node2.streaming)
    # ... and behind its back the peer is Primary again (the swap undone there). The dead
    # stream's last word was "peer Secondary": acting on it would promote beside a Primary.
    fake.set_node("iscsi1", "node1", role="Primary")
    relists = node2.relists
    report = cluster.tick("node2")
    assert node2.relists == relists + 1  # the tick re-listed
    (obs,) = report.observed.resources
    assert obs.peer_role is Role.PRIMARY  # fresh, not the stream's stale "Secondary"
    assert ActionKind.PROMOTE not in {a.kind for a in report.plan.actions}
    assert report.plan.blocked
    assert fake.node("iscsi1", "node2")["role"] == "Secondary"
    # The swap resumes once the peer demotes again, seen by the replacement stream.
    fake.set_node("iscsi1", "node1", role="Secondary")
    wait_for(
        "node2's new stream shows the demote",
        lambda: node2.streaming and one(node2).peer_role is Role.SECONDARY,
    )
    report = cluster.tick("node2")
    assert ActionKind.PROMOTE in {a.kind for a in report.plan.actions}
    assert fake.node("iscsi1", "node2")["role"] == "Primary"


def test_events2_killed_before_it_showed_the_demote_the_swap_completes_from_a_listing(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd], tmp_path: Path
) -> None:
    cluster = event_fed_cluster(fake, adapters, tmp_path)
    cluster.converge()
    node2 = adapters["node2"]
    streaming(node2)
    proc = node2.process
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)  # dies while the peer is still Primary
    wait_for("node2 noticed the stream's end", lambda: not node2.streaming)
    cluster.world.pool_master = "node2"
    cluster.tick("node1")  # demotes: no stream of node2 reports it
    relists = node2.relists
    report = cluster.tick("node2")
    assert node2.relists == relists + 1
    assert report.observed.resources[0].peer_role is Role.SECONDARY
    assert ActionKind.PROMOTE in {a.kind for a in report.plan.actions}
    assert fake.node("iscsi1", "node2")["role"] == "Primary"


# ----------------------------------------------------------------------- the factory


def test_the_factory_builds_real_drbd_event_fed_sharing_the_agents_wakeup(
    fake: FakeDrbd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = DEMO_TEXT.replace("drbd: sim", "drbd: drbd").replace(
        "hypervisor: sim", "hypervisor: none"
    )
    spec = load_spec(text, filename="t.yaml")
    for name, value in fake.env("node1").items():
        monkeypatch.setenv(name, value)
    built = build_adapters(spec, "node1", tmp_path / "state")
    drbd = built.drbd
    try:
        assert isinstance(drbd, EventFedDrbd)
        assert drbd.wakeup is built.wakeup
        assert drbd.runner.spawned == 0 and drbd.process is None  # building starts nothing
        (obs,) = drbd.observe(spec.spec.resources)
        assert obs.known and obs.conn is ConnState.CONNECTED
        streaming(drbd)
        proc = drbd.process
        built.close()
        assert proc is not None and proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        built.close()


def test_its_own_promote_does_not_wake_the_agent_the_peers_does(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    wakeup = Wakeup()
    adapter = streaming_after_first(make(fake, adapters, wakeup=wakeup))
    wakeup.clear()
    adapter.primary(R1)
    wait_for(
        "the promote streamed",
        lambda: getattr(adapter.streamed("iscsi1"), "role", None) is Role.PRIMARY,
    )
    assert wakeup.pending() is None
    adapter.secondary(R1)
    fake.set_node("iscsi1", "node2", role="Primary")  # the peer takes over
    wait_for("a wake", lambda: wakeup.pending())
    assert getattr(adapter.streamed("iscsi1"), "role", None) is Role.SECONDARY
    wakeup.clear()
    fake.set_node("iscsi1", "node1", disk="Outdated")  # not ours: it wakes
    wait_for("a wake", lambda: wakeup.pending())


# --- disconnected_for: the connection's continuity as the stream knows it ---------------------


def cut_seen(adapter: EventFedDrbd) -> bool:
    seen = adapter.streamed("iscsi1")
    return seen is not None and not seen.conn.is_connected


def healed_seen(adapter: EventFedDrbd) -> bool:
    seen = adapter.streamed("iscsi1")
    return seen is not None and seen.conn.is_connected


def test_disconnected_for_counts_from_the_streamed_disconnect_and_a_heal_clears_it(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    clock = Clock()
    adapter = streaming_after_first(make(fake, adapters, clock=clock))
    assert one(adapter).disconnected_for is None  # connected
    fake.set_node("iscsi1", "node2", up=False)  # the connection is lost at clock 1000
    wait_for("the stream shows the disconnect", lambda: cut_seen(adapter))
    clock.now += 7.0
    obs = one(adapter)
    assert obs.conn is ConnState.CONNECTING and obs.disconnected_for == 7.0
    fake.set_node("iscsi1", "node2", up=True)  # a heal, however short, clears it
    wait_for("the stream shows the heal", lambda: healed_seen(adapter))
    assert one(adapter).disconnected_for is None
    clock.now += 1.0
    fake.set_node("iscsi1", "node2", up=False)  # re-cut at 1008: counted from there
    wait_for("the stream shows the re-cut", lambda: cut_seen(adapter))
    clock.now += 2.0
    assert one(adapter).disconnected_for == 2.0
    assert adapter.relists == 1  # every one of them from the stream


def test_a_relist_while_disconnected_restarts_the_count_at_the_relist(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    """Found disconnected by the first listing and the stream's dump: counted from the dump.
    The stream then goes silent (a heal and a re-cut it never reports); the periodic re-list
    finds it disconnected again and restarts the count there, not at the dump."""
    clock = Clock()
    fake.set_node("iscsi1", "node2", up=False)
    adapter = make(fake, adapters, clock=clock, resync=30.0)
    first = one(adapter)
    assert first.conn is ConnState.CONNECTING
    # The listing's own instant (0 s), or not known if the stream was not trusted yet then.
    assert first.disconnected_for in (None, 0.0)
    streaming(adapter)  # the dump at clock 1000
    clock.now += 5.0
    assert one(adapter).disconnected_for == 5.0
    fake.events2_mode("node1", "silent")
    fake.set_node("iscsi1", "node2", up=True)
    fake.set_node("iscsi1", "node2", up=False)
    clock.now += 25.0  # the periodic re-list (every 30 s), at 1030
    relisted = one(adapter)
    assert adapter.relists == 2 and relisted.disconnected_for == 0.0
    clock.now += 3.0
    assert one(adapter).disconnected_for == 3.0  # from the re-list, the stream agreed


def test_without_a_trusted_stream_disconnected_for_is_not_known(
    fake: FakeDrbd, adapters: dict[str, EventFedDrbd]
) -> None:
    clock = Clock()
    adapter = streaming_after_first(make(fake, adapters, clock=clock))
    fake.set_node("iscsi1", "node2", up=False)
    wait_for("the stream shows the disconnect", lambda: cut_seen(adapter))
    clock.now += 10.0
    assert one(adapter).disconnected_for == 10.0
    fake.events2_mode("node1", "exit:3")
    wait_for("the stream's end", lambda: not adapter.streaming)
    fake.events2_mode("node1", "nodump")  # the replacement delivers nothing: the ticks poll
    clock.now += 1.0
    polled = one(adapter)
    assert polled.conn is ConnState.CONNECTING and polled.disconnected_for is None
    fake.events2_mode("node1", "run")
    clock.now += 5.5  # past the stall bound: replaced
    one(adapter)
    streaming(adapter)  # the new stream's dump, at 1016.5: the count restarts there
    clock.now += 2.0
    assert one(adapter).disconnected_for == 2.0
