"""The watch loop: wake sources, the blocked retry, concurrent observation.

Two simulated agents share one world file with a tick interval of 60 s: anything they do
within the test's few seconds is done by a wake or by the blocked retry, not by the timer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.factory import build_adapters, world_store
from adapters.sim.world import Fault, World
from adapters.wake import DerivedFileWake, FileWake, FileWatch, Wakeup
from reconciler import loop
from reconciler.agent import TickReport
from reconciler.core.observed import Role
from reconciler.core.plan import ActionKind, BlockKind
from reconciler.core.spec import StorageCluster
from reconciler.core.specload import load_spec
from reconciler.observe import observe
from tests.waiting import wait_for

SPEC = (
    (Path(__file__).parent.parent / "specs" / "demo.yaml")
    .read_text()
    .replace(
        "tickInterval: 2",
        "{tickInterval: 60, wakePoll: 0.01, blockedRetry: 0.05, verifyAfter: 0.1}",
    )
    .replace("timings:\n    {", "timings: {")
    # The loop's stories are about roles and wakes, not the host's SR attachments.
    .replace("hypervisor: sim ", "hypervisor: none ")
)


@pytest.fixture
def spec() -> StorageCluster:
    return load_spec(SPEC, filename="loop.yaml")


def test_pace_waits_the_interval_unless_blocked_and_backs_off(spec: StorageCluster) -> None:
    pace = loop.Pace(interval=10.0, wake_poll=0.02, blocked_retry=0.1)
    assert pace.delay(0) == 10.0
    assert [pace.delay(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert pace.delay(50) == 10.0  # capped at the interval, never above
    from_spec = loop.Pace.from_spec(spec, interval=0.03)
    assert from_spec.interval == 0.03
    assert from_spec.blocked_retry == 0.03  # never slower than the interval itself
    assert from_spec.verify_after == 0.03


def test_pace_verifies_soon_after_acting_and_backs_off_while_acting_persists(
    spec: StorageCluster,
) -> None:
    pace = loop.Pace(interval=10.0, wake_poll=0.02, blocked_retry=0.1, verify_after=0.2)
    assert pace.delay(0, 0) == 10.0
    assert [pace.delay(0, n) for n in (1, 2, 3)] == [0.2, 0.4, 0.8]
    assert pace.delay(0, 40) == 10.0  # a plan that never converges cannot spin the agent
    assert pace.delay(3, 1) == 0.2  # acted (maybe something else was blocked): verify first
    assert loop.Pace(interval=10.0, wake_poll=0.02, blocked_retry=0.1).delay(0, 1) == 10.0
    assert loop.Pace.from_spec(spec).verify_after == 0.1  # the test spec's verifyAfter


def test_file_wake_sees_a_rewrite_and_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "pool.conf"
    wake = FileWake(path, name="pool.conf")
    missing = wake.fingerprint()
    path.write_text("master\n")
    written = wake.fingerprint()
    assert written != missing
    assert wake.fingerprint() == written  # stable while nothing changes
    replacement = tmp_path / "new"
    replacement.write_text("slave:198.51.100.12\n")
    replacement.replace(path)  # how HA-Lizard and our own stores write: rename over
    assert wake.fingerprint() != written


def test_world_wake_ignores_the_step_counter(tmp_path: Path, spec: StorageCluster) -> None:
    store = world_store(spec, tmp_path)
    wake = store.wake_source()
    with store.transaction() as world:
        world.step()
    before = wake.fingerprint()
    data = json.loads(store.path.read_text())
    data["step_count"] += 7
    store.path.write_text(json.dumps(data))
    assert wake.fingerprint() == before
    with store.transaction() as world:
        world.pool_master = "node2"
    assert wake.fingerprint() != before


def test_a_step_alone_does_not_rewrite_the_world_file(tmp_path: Path, spec: StorageCluster) -> None:
    """An idle agent's observation only advances the step counter: the file is not written
    (each write would wake both agents' file watchers; that step is not counted); a real
    change still saves, with its step."""
    store = world_store(spec, tmp_path)
    with store.transaction() as world:
        world.step()
    assert store.path.exists()  # a fresh world is saved by its first transaction
    first = store.path.stat()
    with store.transaction() as world:
        world.step()
    assert store.path.stat().st_ino == first.st_ino
    with store.transaction() as world:
        world.step()
        world.pool_master = "node2"
    saved = json.loads(store.path.read_text())
    assert store.path.stat().st_ino != first.st_ino
    assert saved["pool_master"] == "node2" and saved["step_count"] == 2


def test_a_nodes_world_wake_ignores_its_own_changes_but_not_the_peers(
    tmp_path: Path, spec: StorageCluster
) -> None:
    """node1's agent must not wake itself with its own promote/VIP/target changes (it would
    observe again at once, in the middle of the peer's takeover), but the peer's demote, a
    link cut and the operator state kept in its entry wake it."""
    store = world_store(spec, tmp_path)
    with store.transaction() as world:
        world.step()
    wake = store.wake_source("node1")
    before = wake.fingerprint()
    with store.transaction() as world:  # what node1's own actions change
        world.res("node1", "iscsi1").role = Role.PRIMARY
        world.nodes["node1"].vips.append("198.51.100.3")
        world.nodes["node1"].target_running = True
        world.next_gen += 1
        world.events.append("node1 promoted")
    assert wake.fingerprint() == before
    assert store.wake_source().fingerprint() != before  # the whole-world digest sees it
    with store.transaction() as world:
        world.res("node2", "iscsi1").role = Role.PRIMARY
    peer_changed = wake.fingerprint()
    assert peer_changed != before
    with store.transaction() as world:
        world.replication_link = False
    assert wake.fingerprint() != peer_changed
    cut = wake.fingerprint()
    with store.transaction() as world:
        world.nodes["node1"].isolated = True  # done to node1 from outside
    assert wake.fingerprint() != cut


def test_a_broken_wake_source_is_a_change_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text("{")
    wake = DerivedFileWake(path, json.loads, name="broken")
    digest = wake.fingerprint()
    assert isinstance(digest, tuple) and digest[0] == "undigestable"

    class Exploding:
        name = "exploding"
        calls = 0

        def fingerprint(self) -> object:
            Exploding.calls += 1
            raise RuntimeError("boom")

    # No path: polled (here every 10 ms) next to inotify; its exception is a fingerprint.
    wakeup = Wakeup()
    files = FileWatch([Exploding()], wakeup, poll=0.01).start()
    try:
        wait_for("a few polls of the exploding source", lambda: Exploding.calls >= 3)
        assert wakeup.pending() is None  # failing the same way is no change
    finally:
        files.close()


def test_wait_for_next_says_why_it_ended() -> None:
    wakeup = Wakeup()
    stop = loop.Stop()
    assert loop.wait_for_next(wakeup, stop, delay=0.01) == "timer"
    wakeup.notify("pool.conf")  # e.g. during the tick: the next wait returns at once
    assert loop.wait_for_next(wakeup, stop, delay=30.0) == "wake:pool.conf"
    assert loop.wait_for_next(wakeup, stop, delay=30.0) == "wake:pool.conf"  # until clear()
    wakeup.clear()
    stop.set()
    assert loop.wait_for_next(wakeup, stop, delay=30.0) == "stop"


class Agent:
    def __init__(self, spec: StorageCluster, node: str, state_dir: Path) -> None:
        self.adapters = build_adapters(spec, node, state_dir)
        self.spec = spec
        self.reports: list[TickReport] = []
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            loop.run(self.spec, self.adapters, stop=self.stop, on_report=self.reports.append)
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout}s")
        time.sleep(0.01)


def test_two_agents_swap_on_wakes_alone_with_a_60s_interval(
    tmp_path: Path, spec: StorageCluster
) -> None:
    store = world_store(spec, tmp_path)
    with store.transaction() as world:
        world.pool_master = "node1"
    agents = {n: Agent(spec, n, tmp_path) for n in ("node1", "node2")}
    for a in agents.values():
        a.thread.start()
    try:

        def serving(node: str) -> bool:
            with store.transaction() as w:
                return w.res(node, "iscsi1").role is Role.PRIMARY and w.nodes[node].vips != []

        _wait(lambda: serving("node1"), 10, "node1 serving after the first ticks")
        ticks_before = {n: len(a.reports) for n, a in agents.items()}
        # node1's demote blocks (a slow `drbdadm secondary`) until node2 was refused once:
        # the refusal, and so the retry under test, no longer depends on thread timing.
        with store.transaction() as world:
            world.faults.append(
                Fault(node="node1", op="drbd-secondary", kind="hang", count=-1, seconds=30)
            )
            world.pool_master = "node2"

        def node2_refused() -> bool:
            return any(
                b.kind is BlockKind.PEER_PRIMARY
                for r in agents["node2"].reports[ticks_before["node2"] :]
                for b in r.plan.blocked
            )

        _wait(node2_refused, 10, "node2 refused while node1 is still Primary")
        with store.transaction() as world:
            world.faults = [f for f in world.faults if f.kind != "hang"]
        _wait(lambda: serving("node2") and not serving("node1"), 10, "the swap to node2")
        # node2 must have been refused while node1 was still Primary, then retried soon.
        refused = [
            r
            for r in agents["node2"].reports[ticks_before["node2"] :]
            if any(b.kind is BlockKind.PEER_PRIMARY for b in r.plan.blocked)
        ]
        assert refused, "node2 never saw the peer still Primary: the test did not test the retry"
    finally:
        for a in agents.values():
            a.stop.set()
        for a in agents.values():
            a.thread.join(10)
    assert not any(a.errors for a in agents.values())
    assert not any(a.thread.is_alive() for a in agents.values())


def test_concurrent_observation_equals_the_sequential_one(
    tmp_path: Path, spec: StorageCluster
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    adapters = build_adapters(spec, "node1", tmp_path)
    parts: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = observe(spec, adapters, executor=pool, timings=parts)
    alone = observe(spec, adapters)
    assert together == alone
    # Each concern's read is timed (the tick report's observe_parts_ms).
    assert set(parts) == {"drbd", "vip", "target", "role", "operator", "liveness"}
    assert all(v >= 0 for v in parts.values())
    assert isinstance(World, type)  # the world module stays importable without a store


def test_an_acting_agent_verifies_soon_and_sees_the_state_it_left(
    tmp_path: Path, spec: StorageCluster
) -> None:
    """60 s interval, no wake sources: only the verify tick can follow the bring-up within
    the test; it finds nothing to do and observes the node serving."""
    store = world_store(spec, tmp_path)
    with store.transaction() as world:
        world.pool_master = "node1"
    agent = Agent(spec, "node1", tmp_path)
    agent.adapters.wake = ()
    agent.thread.start()
    try:
        _wait(lambda: len(agent.reports) >= 2, 10, "the verify tick after the bring-up")
    finally:
        agent.stop.set()
        agent.thread.join(10)
    first, second = agent.reports[0], agent.reports[1]
    assert first.result is not None and first.result.applied
    assert second.plan.converged and not second.plan.actions
    gap = second.started - first.started - first.seconds
    # verifyAfter (0.1 s) passed first; that it was not the 60 s interval, _wait's 10 s says.
    assert gap >= 0.05
    assert second.observed.vips[0].local and second.observed.target.running
    assert not agent.errors


def test_a_blocked_agent_retries_soon_without_any_wake(
    tmp_path: Path, spec: StorageCluster
) -> None:
    """No wake sources at all: node2 (the new pool master) is refused while node1 is still
    Primary; only the blocked retry can bring its next tick before the 60 s interval."""
    from reconciler.agent import tick

    store = world_store(spec, tmp_path)
    first = build_adapters(spec, "node1", tmp_path)
    tick(spec, first)
    with store.transaction() as world:
        assert world.res("node1", "iscsi1").role is Role.PRIMARY
        world.pool_master = "node2"
    agents = {n: Agent(spec, n, tmp_path) for n in ("node2", "node1")}
    for a in agents.values():
        a.adapters.wake = ()
    try:
        agents["node2"].thread.start()
        _wait(lambda: any(r.plan.blocked for r in agents["node2"].reports), 10, "node2 refused")
        agents["node1"].thread.start()
        _wait(lambda: len(agents["node1"].reports) >= 1, 10, "node1's demoting tick")
        _wait(
            lambda: any(
                a.kind is ActionKind.PROMOTE
                for r in agents["node2"].reports
                if r.result is not None
                for a in r.result.applied
            ),
            10,
            "node2 promoting on a retry",
        )
    finally:
        for a in agents.values():
            a.stop.set()
        for a in agents.values():
            if a.thread.is_alive():
                a.thread.join(10)
    with store.transaction() as world:
        assert world.res("node2", "iscsi1").role is Role.PRIMARY
        assert world.res("node1", "iscsi1").role is Role.SECONDARY
