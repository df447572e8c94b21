"""Benchmark: simulated ticks per second (not collected by pytest: no test_ prefix).

    python tests/bench/ticks.py [--ticks N]

A tick is what `reconcile --once` does for one node: observe (simulated adapters over the
in-memory world), plan (pure), apply (executor with its retry machinery). Three loads:
- steady: a converged cluster, both agents ticking (the common case: nothing to do);
- churn: the pool master moves every two rounds, so every other tick demotes or promotes,
  moves the VIP and restarts the target;
- checked: the simulation engine of `reconcile simulate` and the property tests (random faults,
  every invariant checked after every executed action, a client write after each action).
The goal is >= 10,000 ticks/s for the agent path (steady and churn).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.sim.adapters import sim_node_adapters
from adapters.sim.world import World, WorldStore
from reconciler.agent import tick
from reconciler.simulation import SIM_RETRY, new_simulation, random_step
from tests.simcluster import demo_spec

GOAL = 10_000


def _no_sleep(_: float) -> None:
    return None


def agent_ticks(ticks: int, *, churn: bool) -> float:
    spec = demo_spec()
    world = World.fresh(spec, fencing="resource-and-stonith")
    store = WorldStore(world)
    nodes = spec.node_names
    adapters = {n: sim_node_adapters(store, n, spec) for n in nodes}
    for _ in range(3):
        for n in nodes:
            tick(spec, adapters[n], retry=SIM_RETRY, sleep=_no_sleep)
    started = time.perf_counter()
    for i in range(ticks):
        if churn and i % 4 == 0:
            world.pool_master = nodes[(i // 4) % 2]
        tick(spec, adapters[nodes[i % 2]], retry=SIM_RETRY, sleep=_no_sleep)
    return ticks / (time.perf_counter() - started)


def checked_steps(steps: int) -> tuple[float, float]:
    spec = demo_spec()
    rng = random.Random(1)
    sim = new_simulation(spec, raise_on_violation=True)
    sim.keep_timeline = False
    started = time.perf_counter()
    for i in range(steps):
        random_step(sim, rng)
        if i % 50 == 49:
            sim.heal()
    seconds = time.perf_counter() - started
    return steps / seconds, (sim.counts["tick"] + sim.counts["plan"]) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=50_000)
    args = parser.parse_args()
    steady = agent_ticks(args.ticks, churn=False)
    churn = agent_ticks(args.ticks, churn=True)
    steps, sim_ticks = checked_steps(max(2000, args.ticks // 5))
    print(f"steady (converged, nothing to do): {steady:10,.0f} ticks/s")
    print(f"churn (role swap every 2 rounds):  {churn:10,.0f} ticks/s")
    print(f"checked simulation (faults + invariants after every action): "
          f"{steps:,.0f} steps/s, {sim_ticks:,.0f} agent ticks/s")  # fmt: skip
    verdict = "met" if min(steady, churn) >= GOAL else "NOT met"
    print(f"goal >= {GOAL:,} ticks/s for the agent path: {verdict}")
    return 0 if min(steady, churn) >= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
