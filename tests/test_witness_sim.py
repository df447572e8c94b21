"""The witness in the simulator and in the planner's plans (promotion.whenDisconnected:
witness): the simulated 3-member etcd (majority, lease expiry on the witness's clock, each
node's clock), the shipped witness scenarios, the agent pause with and without the watchdog,
and the plans the policy makes (claim before promote, refresh not at every tick, step-down
and release after the demote, a connected cluster serving on while etcd is down)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from adapters.sim.adapters import SimWitness
from adapters.sim.world import World, WorldStore
from reconciler.core.errors import TransientError
from reconciler.core.observed import ResourceObs, Role
from reconciler.core.plan import ActionKind, BlockKind, Plan, WarningKind
from reconciler.core.planner import DEFAULT_GUARDS, Guards
from reconciler.core.safety import Verdict, ViolationKind, WitnessTiming, may_promote
from reconciler.core.specload import load_spec
from reconciler.simulation import (
    InvariantViolation,
    Simulation,
    load_scenario,
    new_simulation,
    run_scenario,
)
from tests.simcluster import ROOT, WITNESS_TEXT, witness_spec

SPEC = witness_spec()
# specs/witness.yaml with a longer watchdog (4.5 s) and the ttl it needs (12 s): the hold after
# a claim (4.5 / 0.99 - 1) x 1.01 = 3.58 s is then longer than a tick, so a guard test can show
# what it is for.
_LONG = WITNESS_TEXT.replace("      timeout: 3.5\n", "      timeout: 4.5\n").replace(
    "    ttl: 10\n", "    ttl: 12\n"
)
assert _LONG != WITNESS_TEXT, "specs/witness.yaml changed shape"
LONG_DOG = load_spec(_LONG, filename="specs/witness.yaml")
SCENARIOS = sorted((ROOT / "specs" / "scenarios" / "witness").glob("*.yaml"))
N1, N2 = SPEC.node_names


def kinds(plan: Plan) -> list[str]:
    return [a.kind.value for a in plan.actions]


# --- the simulated etcd ---------------------------------------------------------------------


def witness_pair() -> tuple[World, SimWitness, SimWitness]:
    world = World.fresh(SPEC)
    store = WorldStore(world)
    return world, SimWitness(store, N1, ttl=10.0), SimWitness(store, N2, ttl=10.0)


def test_the_key_is_exclusive_and_its_lease_expires_on_the_witness_clock() -> None:
    world, a, b = witness_pair()
    assert a.observe().holder is None
    a.claim()
    with pytest.raises(TransientError, match="held by node1"):
        b.claim()
    world.now = 9.9
    seen = b.observe()
    assert seen.reachable and seen.holder == N1 and seen.lease_left is None
    assert a.observe().lease_left == pytest.approx(0.1)
    world.now = 10.0  # expired on etcd: the other node may claim
    assert b.observe().holder is None
    b.claim()
    assert a.observe().holder == N2 and a.observe().lease_left is None


def test_a_majority_answers_and_a_node_cut_from_etcd_does_not() -> None:
    world, a, b = witness_pair()
    a.claim()
    world.witness.members = [True, False, True]
    assert a.observe().reachable is True
    world.witness.members = [True, False, False]
    seen = a.observe()
    assert seen.reachable is False and seen.error and seen.lease_left == pytest.approx(10.0)
    with pytest.raises(TransientError, match="majority"):
        a.claim()
    world.witness.members = [True, True, True]
    world.nodes[N2].etcd_cut = True
    assert b.observe().reachable is False
    world.nodes[N2].etcd_cut = False
    world.nodes[N2].isolated = True  # off the switch: no etcd either
    assert b.observe().reachable is False


def test_lease_left_runs_on_the_nodes_own_clock_and_release_frees_the_key() -> None:
    world, a, b = witness_pair()
    world.nodes[N1].clock_rate = 0.99  # a slow clock believes in more lease
    a.claim()
    world.now = 5.0
    assert a.observe().lease_left == pytest.approx(10.0 - 5.0 * 0.99)
    a.release()
    assert b.observe().holder is None and a.observe().lease_left is None


# --- the scenarios and the pause --------------------------------------------------------------


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_the_witness_scenarios_hold(path: Path) -> None:
    loaded = load_scenario(path.read_text(), filename=str(path))
    result = run_scenario(SPEC, loaded)
    assert result.ok, f"{result.failed}\n{result.sim.timeline[-5:]}"
    assert not result.sim.violations


def test_without_the_watchdog_a_paused_primary_ends_in_two_primaries() -> None:
    """The agent-pause scenario on a spec without the watchdog: node1's DRBD stays Primary
    through the pause while node2 takes over on the expired lease. Software on a paused node
    cannot prevent this; only the watchdog reset (or STONITH) can."""
    path = ROOT / "specs" / "scenarios" / "witness" / "agent-pause.yaml"
    result = run_scenario(witness_spec(watchdog=False), load_scenario(path.read_text()))
    assert not result.ok
    found = {f.violation.kind for f in result.sim.violations if f.violation is not None}
    assert ViolationKind.TWO_PRIMARIES in found
    with_dog = run_scenario(SPEC, load_scenario(path.read_text()))
    assert with_dog.ok and with_dog.sim.counts["watchdog reset"] == 1


def test_time_never_moves_past_a_running_agents_tick_rhythm() -> None:
    sim = new_simulation(SPEC, fencing="resource-only")
    sim.converge(max_rounds=3)
    gap = SPEC.spec.witness.gap(SPEC.spec.timings.tick_interval)
    assert sim.advance(100.0) <= gap
    assert sim.advance(100.0) == 0.0  # nobody ticked since: time waits for them
    sim.tick(N1)
    assert sim.advance(100.0) == 0.0  # node2 has not
    sim.tick(N2)
    assert sim.advance(1.0) == 1.0


# --- the plans --------------------------------------------------------------------------------


def serving_cluster() -> Simulation:
    sim = new_simulation(SPEC, fencing="resource-only")
    sim.converge(max_rounds=3)
    sim.tick(N1)
    assert sim.w.witness_holder() == N1
    return sim


def test_an_idle_serving_node_refreshes_its_lease_only_below_the_threshold() -> None:
    sim = serving_cluster()
    plans = []
    for _ in range(6):
        sim.advance(2.0)
        plans.append(kinds(sim.tick(N1)))
        sim.tick(N2)
    refreshes = sum(p == ["claim-witness"] for p in plans)
    assert all(p in ([], ["claim-witness"]) for p in plans), plans
    assert 0 < refreshes < len(plans), plans  # not at every tick


def test_a_disconnected_node_claims_first_waits_the_settle_time_then_claims_before_promoting() -> (
    None
):
    sim = serving_cluster()
    sim.fault("crash", N1)
    sim.set_pool_master(N2)
    first = sim.tick(N2)
    assert BlockKind.WITNESS_HELD in {b.kind for b in first.blocked}
    for _ in range(10):
        sim.advance(2.0)
        sim.tick(N2)
        if sim.w.witness_holder() != N1:
            break
    claimed = sim.last_plans[N2]
    assert kinds(claimed) == ["claim-witness"]
    assert BlockKind.WITNESS_CLAIM in {b.kind for b in claimed.blocked}
    sim.advance(2.0)
    waiting = sim.tick(N2)
    assert BlockKind.WITNESS_SETTLING in {b.kind for b in waiting.blocked}
    assert not waiting.actions
    for _ in range(10):
        if any(a.kind is ActionKind.PROMOTE for a in sim.last_plans[N2].actions):
            break
        sim.advance(2.0)
        sim.tick(N2)
    plan = sim.last_plans[N2]
    assert kinds(plan)[:2] == ["claim-witness", "promote"]
    assert plan.actions[1].after == (0,)  # the promotion runs only if the claim succeeded


def test_a_cut_off_primary_stops_serving_before_its_lease_expires_and_keeps_it_connected() -> None:
    sim = serving_cluster()
    sim.fault("etcdDown")
    for _ in range(3):
        sim.advance(2.0)
        plan = sim.tick(N1)
        sim.tick(N2)
        assert not plan.actions  # connected: etcd down does not stop the serving node
        assert WarningKind.WITNESS_UNREACHABLE in {w.kind for w in plan.warnings}
    sim.fault("etcdUp")
    sim.advance(2.0)
    assert kinds(sim.tick(N1)) == ["claim-witness"]  # the key is free again: claimed
    sim.fault("etcdCut", N1)
    sim.fault("replication", value=False)
    left = []
    for _ in range(10):
        sim.advance(2.0)
        plan = sim.tick(N1)
        sim.tick(N2)
        left.append(sim.w.lease_left(N1, 10.0))
        if sim.serving_ok(N1) is not None:
            break
    assert kinds(plan) == ["stop-target", "remove-vip", "demote"]
    assert WarningKind.WITNESS_STEP_DOWN in {w.kind for w in plan.warnings}
    assert left[-1] is not None and left[-1] > 0  # before the lease can expire on etcd


def test_the_old_primary_releases_the_key_after_its_demote_in_a_swap() -> None:
    sim = serving_cluster()
    sim.set_pool_master(N2)
    plan = sim.tick(N1)
    names = kinds(plan)
    assert names[-1] == "release-witness" and "demote" in names
    assert plan.actions[-1].after == (names.index("demote"),)
    assert sim.w.witness_holder() is None
    sim.tick(N2)
    sim.advance(2.0)
    assert kinds(sim.tick(N2)) == ["claim-witness"]  # the new primary claims it
    assert sim.w.witness_holder() == N2


# --- the simulated DRBD's disconnected_for (the world's ground truth) -------------------------


def test_sim_drbd_counts_the_disconnect_on_the_world_clock_and_a_heal_clears_it(
    tmp_path: Path,
) -> None:
    from adapters.sim.adapters import SimDrbd
    from tests.simcluster import SimCluster

    c = SimCluster.create(SPEC, tmp_path)
    c.converge()
    drbd = SimDrbd(WorldStore(c.world), N2)
    (res,) = SPEC.spec.resources
    assert drbd.observe([res])[0].disconnected_for is None  # connected
    c.world.now = 5.0
    c.world.set_links(replication=False)
    c.world.now = 8.0
    assert drbd.observe([res])[0].disconnected_for == 3.0
    c.world.set_links(replication=True)  # healed, even for an instant, clears it
    assert drbd.observe([res])[0].disconnected_for is None
    c.world.now = 9.0
    c.world.set_links(replication=False)
    c.world.now = 10.5
    assert drbd.observe([res])[0].disconnected_for == 1.5  # from the re-cut


class _Silent:
    """A pinger whose view of the peer's addresses the test sets."""

    def __init__(self) -> None:
        self.up: bool | None = True

    def answers(self, addresses: object) -> tuple[bool | None, ...]:
        return (self.up, self.up)


def test_sim_drbd_following_the_pinger_stamps_the_instant_the_world_dropped_the_link(
    tmp_path: Path,
) -> None:
    """The lab's setup: a world shared through a file, the links following each node's pinger,
    the world's clock following the agents' clock. The instant is when the first node's
    pinger reported the peer silent, whichever node observes later."""
    from adapters.sim.adapters import SimDrbd
    from adapters.sim.world import FileWorldStore

    now = [100.0]
    store = FileWorldStore(tmp_path / "world.json", spec=SPEC)
    with store.transaction() as world:
        for n in SPEC.node_names:
            for r in SPEC.spec.resources:
                world.drbd_up(n, r.name)
    pingers = {n: _Silent() for n in SPEC.node_names}
    drbd = {
        n: SimDrbd(
            store,
            n,
            links=pingers[n],
            peer_replication="198.51.100.130",
            peer_management="198.51.100.1",
            clock=lambda: now[0],
        )
        for n in SPEC.node_names
    }
    (res,) = SPEC.spec.resources
    assert drbd[N2].observe([res])[0].conn.is_connected
    pingers[N1].up = False  # node1's pinger first: it drops the link at 101
    now[0] = 101.0
    assert not drbd[N1].observe([res])[0].conn.is_connected
    pingers[N2].up = False
    now[0] = 104.0
    seen = drbd[N2].observe([res])[0]
    assert not seen.conn.is_connected and seen.disconnected_for == 3.0
    pingers[N1].up = pingers[N2].up = True
    now[0] = 105.0
    assert drbd[N2].observe([res])[0].disconnected_for is None


# --- the watchdog's window: what the hold after the claim is for ------------------------------


def _hold_switched_off(res: ResourceObs, **kw: Any) -> Verdict:
    """The rule counted from the disconnect without the watchdog's hold."""
    timing = kw.get("witness_timing")
    if isinstance(timing, WitnessTiming):
        kw["witness_timing"] = replace(timing, hold=0.0)
    return may_promote(res, **kw)


def _paused_after_planning_its_step_down(guards: Guards) -> tuple[Simulation, float]:
    """node1 serves; a full partition (off its switch port, so off etcd, and off node2; the
    pool split, so each node wants to serve); node1 ticks on its lease until the observation
    that plans its step-down, and its agent pauses right after it (the plan not applied).
    Returns the simulation and that observation's time; node2 ticks every 0.25 s from then."""
    sim = new_simulation(LONG_DOG, fencing="resource-only", guards=guards, raise_on_violation=True)
    sim.set_pool_master(N1)
    sim.converge()
    sim.elapse(2.0)
    assert sim.w.witness_holder() == N1
    sim.split_pool({N1: N1, N2: N2})
    sim.fault("isolate", N1)
    sim.fault("replication", value=False)
    step_down = WitnessTiming.from_spec(LONG_DOG.spec).step_down
    while True:
        sim.advance(0.25)
        sim.tick(N2)
        left = sim.w.lease_left(N1, LONG_DOG.spec.witness.ttl)
        if left is not None and left < step_down + 0.01:
            plan = sim.plan_only(N1)
            assert ActionKind.DEMOTE in {a.kind for a in plan.actions}
            sim.fault("pause", N1)
            return sim, sim.w.now
        sim.tick(N1)


def test_the_hold_keeps_the_survivor_from_promoting_inside_the_paused_nodes_watchdog_window() -> (
    None
):
    """node2, disconnected for far longer than the settle time, claims the key as node1's
    lease expires (about 4 s after node1's last observation) and still waits the hold
    (3.58 s): node1's watchdog (4.5 s after that observation) has reset it by then."""
    sim, paused_at = _paused_after_planning_its_step_down(DEFAULT_GUARDS)
    while sim.w.nodes[N2].resources["iscsi1"].role is not Role.PRIMARY:
        assert sim.w.now - paused_at < 15.0, "node2 never took over"
        sim.advance(0.25)
        sim.tick(N2)
        if not sim.w.nodes[N1].agent_paused:
            sim.tick(N1)  # reset by its watchdog: a new agent
    assert sim.counts["watchdog reset"] == 1
    assert sim.w.now - paused_at >= 4.0 + 3.58


def test_without_the_hold_the_survivor_promotes_inside_the_watchdog_window() -> None:
    """The guard bites: the same run with the hold switched off is two primaries (node2
    promotes a tick after its claim, node1 paused and still Primary until its watchdog)."""
    sim, paused_at = _paused_after_planning_its_step_down(Guards(may_promote=_hold_switched_off))
    with pytest.raises(InvariantViolation) as caught:
        for _ in range(60):
            sim.advance(0.25)
            sim.tick(N2)
    assert ViolationKind.TWO_PRIMARIES in {p.kind for p in caught.value.problems}
    assert sim.w.now - paused_at < LONG_DOG.spec.witness.watchdog.timeout  # type: ignore[union-attr]


def _settle_without_the_watchdog(res: ResourceObs, **kw: Any) -> Verdict:
    """The settle time as it was before it covered the watchdog: gap + stepDownMargin."""
    timing = kw.get("witness_timing")
    if isinstance(timing, WitnessTiming):
        w, tick = LONG_DOG.spec.witness, LONG_DOG.spec.timings.tick_interval
        old = (w.gap(tick) + w.step_down_margin) * (1 + w.clock_drift)
        kw["witness_timing"] = replace(timing, settle=old)
    return may_promote(res, **kw)


@pytest.mark.parametrize("covered", [True, False], ids=["settle-covers-watchdog", "switched-off"])
def test_a_node_serving_unleased_that_pauses_as_it_sees_the_cut_is_reset_before_the_takeover(
    covered: bool,
) -> None:
    """node1 serves while connected without a lease (off its switch port, so off etcd); the
    link is cut, node1's next observation plans its step-down and its agent pauses: only its
    watchdog (4.5 s) stops it. The settle time covers that timeout ((1 + 2 + 4.5 / 0.99) x 1.01
    = 7.62 s), so node2 promotes only after node1 was reset. Switched off (the settle time of
    gap + stepDownMargin, 4.04 s, counted from the claim or from the cut alike), node2 promotes
    while node1 is paused and still Primary: two primaries."""
    guards = DEFAULT_GUARDS if covered else Guards(may_promote=_settle_without_the_watchdog)
    sim = new_simulation(LONG_DOG, fencing="resource-only", guards=guards, raise_on_violation=True)
    sim.set_pool_master(N1)
    sim.converge()
    sim.fault("isolate", N1)
    for _ in range(14):
        sim.elapse(1.0)  # node1's lease runs out on etcd; connected, it serves on
    sim.split_pool({N1: N1, N2: N2})
    sim.fault("replication", value=False)
    plan = sim.plan_only(N1)
    assert ActionKind.DEMOTE in {a.kind for a in plan.actions}
    sim.fault("pause", N1)
    paused_at = sim.w.now
    sim.tick(N2)  # the key is free: claim
    if not covered:
        with pytest.raises(InvariantViolation) as caught:
            for _ in range(100):
                sim.advance(0.1)
                sim.tick(N2)
        assert ViolationKind.TWO_PRIMARIES in {p.kind for p in caught.value.problems}
        return
    while sim.w.nodes[N2].resources["iscsi1"].role is not Role.PRIMARY:
        assert sim.w.now - paused_at < 20.0, "node2 never took over"
        sim.advance(0.1)
        sim.tick(N2)
        if not sim.w.nodes[N1].agent_paused:
            sim.tick(N1)  # reset by its watchdog: a new agent
    assert sim.counts["watchdog reset"] == 1
    assert sim.w.now - paused_at >= 4.5
