"""Random runs: ``reconcile simulate --seed N --steps M`` (and the tick benchmark).

A run is a pure function of the spec, the seed and the step count: the same seed replays the
same steps. Faults, operator commands, role-source changes and spec edits are drawn with the
weights below; then faults stop and the agents must converge (liveness).
"""

from __future__ import annotations

import random
from typing import Any

from adapters.sim.world import Fencing
from reconciler.core.spec import StorageCluster
from reconciler.simulation.engine import Finding, InvariantViolation, Simulation, new_simulation
from reconciler.simulation.model import ACTION_OPS, DEFAULT_FENCING, OBSERVE_OPS
from reconciler.simulation.runner import RunResult


def run_random(
    spec: StorageCluster,
    *,
    seed: int,
    steps: int,
    fencing: Fencing = DEFAULT_FENCING,
    overrides: bool = False,
    max_rounds: int = 10,
) -> RunResult:
    """``steps`` random steps (agents, faults, operator commands, role changes), reproducible
    from ``seed``; then faults stop and the agents must converge. Invariants after every
    executed action; stops at the first violation."""
    rng = random.Random(seed)
    sim = new_simulation(spec, fencing=fencing, raise_on_violation=True)
    result = RunResult(ok=True, sim=sim, seed=seed)
    try:
        for _ in range(steps):
            random_step(sim, rng, overrides=overrides)
        sim.heal()
        order = list(sim.names)
        rng.shuffle(order)
        k, k_sync = sim.converge(max_rounds=max_rounds, order=order)
        result.k, result.k_sync = k, k_sync
        if k is None and not sim.diverged():
            why = sim.serving_ok(sim.expected_primary() or sim.names[0])
            finding = Finding(
                sim.step, "liveness", f"not converged within {max_rounds} rounds: {why}"
            )
            sim.violations.append(finding)
            sim._note("violation", None, str(finding), ok=False)
    except InvariantViolation:
        pass
    result.ok = not sim.violations
    return result


WITNESS_STEPS = (
    "etcdMemberDown",
    "etcdMemberUp",
    "etcdDown",
    "etcdUp",
    "etcdCut",
    "etcdRejoin",
    "pause",
    "resume",
)


def random_step(sim: Simulation, rng: random.Random, *, overrides: bool = False) -> None:
    """One random step, weighted so agents act about half of the time. With a witness in the
    spec, one step in five moves the witness's clock or applies a witness fault instead."""
    n = rng.choice(sim.names)
    if sim.witness_on and rng.random() < 0.2:
        if rng.random() < 0.6:
            sim.advance(rng.choice([0.5, 1.0, 2.0, 4.0, 7.0]))
        else:
            sim.fault(rng.choice(WITNESS_STEPS), n)
        return
    r = rng.random()
    if r < 0.30:
        sim.tick(n)
    elif r < 0.38:
        sim.plan_only(n)
    elif r < 0.50:
        sim.apply_next(n)
    elif r < 0.52:
        sim.agent_crash(n)
    elif r < 0.56:
        sim.write(rng.randint(1, 3))
    elif r < 0.84:
        random_fault(sim, rng, n)
    elif r < 0.92:
        command = rng.choice(
            ["manual-mode enable", "manual-mode disable", "become-primary", "become-secondary"]
        )
        force = overrides and command == "become-primary" and rng.random() < 0.5
        sim.operator(n, command, force=force)
    elif r < 0.98:
        if rng.random() < 0.7:
            sim.set_pool_master(rng.choice([*sim.names, None]))
        else:
            sim.split_pool({x: rng.choice([*sim.names, None]) for x in sim.names})
    else:
        sim.edit_spec(random_spec_edit(sim.spec, rng))


def random_fault(sim: Simulation, rng: random.Random, n: str) -> None:
    w = sim.w
    name = rng.choice(
        [
            "crash", "boot", "replication", "management", "isolate", "rejoin", "killTarget",
            "removeVip", "addVip", "stranger", "disconnect", "detachDisk", "failDisk",
            "replaceDisk", "inject", "clearFaults", "unplugPbd", "breakSr", "xapiDown", "xapiUp",
        ]
    )  # fmt: skip
    if name in ("failDisk", "detachDisk") and not sim.peer_has_data(n):
        # Losing the disk that holds the only current copy is data loss beyond redundancy,
        # which no policy can prevent: the fault model fails one disk at a time.
        name = "replaceDisk"
    if name == "crash" and not w.nodes[n].alive:
        name = "boot"
    elif name == "boot" and w.nodes[n].alive:
        name = "crash" if rng.random() < 0.3 else "rejoin"
    if name in ("replication", "management", "stranger"):
        current = {
            "replication": w.replication_link,
            "management": w.management_link,
            "stranger": bool(w.strangers),
        }[name]
        sim.fault(name, value=not current)
    elif name == "inject":
        op = rng.choice(ACTION_OPS + OBSERVE_OPS)
        kind = "garbage" if op in OBSERVE_OPS else rng.choice(["transient", "terminal", "timeout"])
        count = rng.choice([1, 1, 2, 3, -1])
        sim.fault("inject", n, op=op, kind=kind, count=count)
    elif name == "clearFaults":
        sim.fault("clearFaults")
    else:
        sim.fault(name, n)


def random_spec_edit(spec: StorageCluster, rng: random.Random) -> dict[str, Any]:
    choice = rng.randrange(3)
    if choice == 0:
        return {
            "promotion": {"whenDisconnected": rng.choice(["refuse", "outdated-peer", "quorum"])}
        }
    if choice == 1:
        count = rng.randrange(3)
        return {"promotion": {"heuristics": [f"198.51.100.{250 + i}" for i in range(count)]}}
    if rng.random() < 0.5:
        return {"roleSource": {"type": "pool-master", "preferred": None, "failback": False}}
    return {
        "roleSource": {
            "type": "static",
            "preferred": rng.choice(list(spec.node_names)),
            "failback": rng.random() < 0.5,
        }
    }
