"""Property-based failover simulations: a hypothesis state machine over the simulated cluster.

Both agents act exactly as the CLI does (observe -> plan -> apply), through
``reconciler.simulation.Simulation``, while faults of every class land between their ticks and
between the actions of one tick. The invariants of reconciler.core.safety are checked after
every executed action (inside ``Simulation``); the liveness properties are checked at the end of
every run and every HEAL_EVERY steps: once faults stop and the role source agrees, one Primary
serves the VIP and the target where the role source says within K_MAX rounds of both agents;
and every resource some node holds UpToDate (on the switch, so it may serve) is served through
the VIP, wherever, within K_MAX rounds (``Simulation.k_served``).

Every other run of the main test uses a two-resource spec (``TwoResourceMachine``), whose extra
rule makes per-resource faults (disconnect, detach, fail or replace one resource's disk, inject
a command fault for one resource): one failing resource must not keep the other unserved, and
the holding rule (never demote into an outage) must not break liveness.

Depth is a hypothesis profile chosen by ``TANDEM_SIM_PROFILE``: ``ci`` (the default: >= 100,000
state-machine steps, a few minutes on 2 cores) or ``deep`` (long runs). The step count, how often
each rule and each fault class fired, and the measured K are printed in pytest's terminal
summary (section "tandem failover simulation"), so a plain ``pytest`` run shows them.

The two-node problem is modelled, not defined away (docs/simulation.md):
- the main machine runs DRBD with ``fencing resource-and-stonith``: every invariant is strict;
- operator overrides (``become-primary --force``) may force a split brain: the simulator must
  report it, and "every acknowledged write is still on some disk" stays strict;
- without STONITH (``fencing resource-only``) the quorum policy cannot keep "at most one Primary"
  under a full partition: a test proves hypothesis finds that violation.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import replace
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

from adapters.sim.world import Fencing
from reconciler import agent
from reconciler.core import safety
from reconciler.core.observed import ConnState, ResourceObs, Role
from reconciler.core.plan import BlockKind, Plan, WarningKind
from reconciler.core.planner import DEFAULT_GUARDS, Guards
from reconciler.core.safety import ViolationKind
from reconciler.core.spec import StorageCluster
from reconciler.core.specload import load_spec
from reconciler.simulation import (
    ACTION_OPS,
    OBSERVE_OPS,
    InvariantViolation,
    Simulation,
    new_simulation,
)
from tests.simcluster import WITNESS_TEXT, demo_spec, two_resource_spec, witness_spec

SPEC = demo_spec()
SPEC2 = two_resource_spec()
WITNESS_SPEC = witness_spec()
# The witness's liveness goal: a takeover within ttl + settle + this many tick intervals (the
# survivor's tick that sees the key free, the one that promotes, one for the serving chain).
TAKEOVER_TICKS = 3
NODES = SPEC.node_names
K_MAX = 3  # the liveness goal: converged within 3 rounds of both agents
K_SYNC_MAX = 6  # ... and replication healthy (resync done) within 6
HEAL_EVERY = 12  # state-machine steps between mid-run "faults stop" liveness checks

settings.register_profile(
    "tandem-sim-ci",
    # One round per machine (main, two-resource, witness): about 55,000 steps each, so the
    # CI run stays well inside its time budget with all three at depth.
    max_examples=800,
    stateful_step_count=80,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "tandem-sim-deep",
    max_examples=30000,
    stateful_step_count=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
PROFILE = os.environ.get("TANDEM_SIM_PROFILE", "ci")
if PROFILE not in ("ci", "deep"):
    raise RuntimeError(f"TANDEM_SIM_PROFILE={PROFILE!r}: expected 'ci' or 'deep'")
MIN_STEPS = 100_000 if PROFILE == "ci" else 1_000_000

# Every class of the fault model, as Simulation labels its steps.
FAULT_CLASSES = (
    "crash",
    "boot",
    "replication down",
    "replication up",
    "management down",
    "management up",
    "isolate",
    "rejoin",
    "killTarget",
    "removeVip",
    "addVip",
    "stranger up",
    "disconnect",
    "detachDisk",
    "failDisk",
    "replaceDisk",
    "inject transient",
    "inject transient persistent",
    "inject timeout",
    "inject timeout persistent",
    "inject terminal",
    "inject garbage",
    "clearFaults",
    "unplugPbd",
    "breakSr",
    "xapiDown",
    "xapiUp",
    "agent-crash-mid-apply",
    "operator manual-mode enable",
    "operator manual-mode disable",
    "operator become-primary",
    "operator become-primary --force",
    "operator become-secondary",
    "pool-master-change",
    "pool-split",
    "spec-edit",
    "client-write",
    "heal",
)
# The per-resource fault classes (the two-resource machine's extra rule).
RESOURCE_FAULT_CLASSES = (
    "disconnect (one resource)",
    "detachDisk (one resource)",
    "failDisk (one resource)",
    "replaceDisk (one resource)",
    "inject transient (one resource)",
    "inject terminal (one resource)",
    "inject garbage (one resource)",
)
# The witness machine's fault classes (each must fire; the counts are printed).
WITNESS_FAULT_CLASSES = (
    "etcdMemberDown",
    "etcdMemberUp",
    "etcdDown",
    "etcdUp",
    "etcdCut",
    "etcdRejoin",
    "pause",
    "resume",
    "watchdog reset",
    "time",
)
RESOURCE_OPS = ("drbd-up", "drbd-primary", "drbd-secondary", "drbd-connect", "target-export")


class Stats:
    """Totals over every run of the main machine (printed in the terminal summary)."""

    steps = 0
    runs = 0
    seconds = 0.0
    rules: ClassVar[Counter[str]] = Counter()
    classes: ClassVar[Counter[str]] = Counter()
    k: ClassVar[Counter[int]] = Counter()
    k_sync: ClassVar[Counter[int]] = Counter()
    k_served: ClassVar[Counter[int]] = Counter()
    two_resource_runs = 0
    split_brain_runs = 0
    override_runs = 0
    destroyed_writes = 0
    witness_runs = 0
    takeover: ClassVar[Counter[int]] = Counter()
    lines: ClassVar[list[str]] = []


class FailoverMachine(RuleBasedStateMachine):
    """Two agents, one simulated cluster, every fault class; invariants after every action."""

    spec: ClassVar[StorageCluster] = SPEC
    fencing: ClassVar[Fencing] = "resource-and-stonith"
    guards: ClassVar[Guards] = DEFAULT_GUARDS
    spec_edits: ClassVar[bool] = True
    overrides: ClassVar[bool] = True
    record: ClassVar[bool] = True  # add to Stats (the main machine only)

    def __init__(self) -> None:
        super().__init__()
        self.sim: Simulation = new_simulation(
            self.spec, fencing=self.fencing, guards=self.guards, raise_on_violation=True
        )
        self.sim.keep_timeline = False
        self.since_heal = 0
        self.rules: Counter[str] = Counter()

    def _count(self, name: str) -> None:
        self.rules[name] += 1
        self.since_heal += 1

    # --- agents ------------------------------------------------------------------------------

    @rule(node=st.sampled_from(NODES))
    def tick(self, node: str) -> None:
        self._count("tick")
        self.sim.tick(node)

    @rule(first=st.sampled_from(NODES))
    def tick_both(self, first: str) -> None:
        self._count("tick both")
        self.sim.tick(first)
        self.sim.tick(self.sim.w.peer(first))

    @rule(node=st.sampled_from(NODES))
    def plan_only(self, node: str) -> None:
        """Observe and plan now, act later: faults may land in between (a stale plan)."""
        self._count("plan (apply later)")
        self.sim.plan_only(node)

    @precondition(lambda self: any(self.sim.pending.values()))
    @rule(pick=st.integers(0, 1))
    def apply_next(self, pick: int) -> None:
        self._count("apply next action")
        busy = [n for n in NODES if self.sim.pending[n]]
        self.sim.apply_next(busy[pick % len(busy)])

    @precondition(lambda self: any(self.sim.pending.values()))
    @rule(pick=st.integers(0, 1))
    def agent_crash_mid_apply(self, pick: int) -> None:
        self._count("agent crash mid-apply")
        busy = [n for n in NODES if self.sim.pending[n]]
        self.sim.agent_crash(busy[pick % len(busy)])

    @rule(count=st.integers(1, 3))
    def client_write(self, count: int) -> None:
        self._count("client write")
        self.sim.write(count)

    # --- faults ------------------------------------------------------------------------------

    @rule(node=st.sampled_from(NODES))
    def crash_or_boot(self, node: str) -> None:
        self._count("node crash/boot")
        self.sim.fault("crash" if self.sim.w.nodes[node].alive else "boot", node)

    @rule(
        kind=st.sampled_from(["replication", "management", "isolate", "stranger"]),
        node=st.sampled_from(NODES),
    )
    def network(self, kind: str, node: str) -> None:
        """Toggle: replication link, management path, one node's switch port, a VIP stranger."""
        self._count("network fault")
        w = self.sim.w
        if kind == "isolate":
            self.sim.fault("rejoin" if w.nodes[node].isolated else "isolate", node)
        elif kind == "stranger":
            self.sim.fault("stranger", value=not w.strangers)
        else:
            up = w.replication_link if kind == "replication" else w.management_link
            self.sim.fault(kind, value=not up)

    @rule(
        kind=st.sampled_from(["killTarget", "removeVip", "addVip", "disconnect"]),
        node=st.sampled_from(NODES),
    )
    def service(self, kind: str, node: str) -> None:
        """tgtd crash, VIP removed/added by hand, DRBD disconnected by hand (StandAlone)."""
        self._count("service fault")
        self.sim.fault(kind, node)

    @rule(
        kind=st.sampled_from(["unplugPbd", "breakSr", "xapiDown", "xapiUp"]),
        node=st.sampled_from(NODES),
    )
    def hypervisor(self, kind: str, node: str) -> None:
        """The host's PBDs unplugged, its SR broken (attached, VG missing), XAPI unreachable
        or back."""
        self._count("hypervisor fault")
        self.sim.fault(kind, node)

    @rule(
        kind=st.sampled_from(["detachDisk", "failDisk", "replaceDisk"]),
        node=st.sampled_from(NODES),
    )
    def disk(self, kind: str, node: str) -> None:
        self._count("disk fault")
        if kind != "replaceDisk" and not self.sim.peer_has_data(node):
            kind = "replaceDisk"  # one disk at a time: losing the only current copy is out of scope
        self.sim.fault(kind, node)

    @precondition(lambda self: len(self.sim.resources) > 1)
    @rule(
        kind=st.sampled_from(
            ["disconnect", "detachDisk", "failDisk", "replaceDisk", "inject", "garbage"]
        ),
        node=st.sampled_from(NODES),
        which=st.integers(0, 1),
        terminal=st.booleans(),
        op=st.sampled_from(RESOURCE_OPS),
        count=st.sampled_from([1, 2, -1]),
    )
    def resource_fault(
        self, kind: str, node: str, which: int, terminal: bool, op: str, count: int
    ) -> None:
        """One resource only: disconnected, its disk detached/failed/replaced, or one of its
        commands (or its part of the DRBD observation) failing."""
        self._count("resource fault")
        resource = self.sim.resources[which % len(self.sim.resources)]
        if kind in ("detachDisk", "failDisk") and not self.sim.peer_has_data(node, resource):
            kind = "replaceDisk"  # one disk at a time: losing the only current copy is out of scope
        if kind == "garbage":
            self.sim.fault(
                "inject", node, op="drbd-observe", kind="garbage", count=1, resource=resource
            )
        elif kind == "inject":
            fault = "terminal" if terminal else "transient"
            self.sim.fault("inject", node, op=op, kind=fault, count=count, resource=resource)
        else:
            self.sim.fault(kind, node, resource=resource)

    @rule(
        node=st.sampled_from(NODES),
        op=st.sampled_from(ACTION_OPS + OBSERVE_OPS),
        kind=st.sampled_from(["transient", "timeout", "terminal"]),
        count=st.sampled_from([1, 2, 3, -1]),
        clear=st.booleans(),
    )
    def command_fault(self, node: str, op: str, kind: str, count: int, clear: bool) -> None:
        """Commands fail (transient, timeout, terminal; a few times or forever) or observations
        come back as garbage."""
        self._count("command fault")
        if clear and self.sim.w.faults:
            self.sim.fault("clearFaults")
            return
        if op in OBSERVE_OPS:
            kind = "garbage"
        self.sim.fault("inject", node, op=op, kind=kind, count=count)

    # --- operator, role source, spec -----------------------------------------------------------

    @rule(
        node=st.sampled_from(NODES),
        command=st.sampled_from(
            ["manual-mode enable", "manual-mode disable", "become-primary", "become-secondary"]
        ),
        force=st.booleans(),
    )
    def operator(self, node: str, command: str, force: bool) -> None:
        self._count("operator command")
        force = force and self.overrides and command == "become-primary"
        self.sim.operator(node, command, force=force)

    @rule(
        master=st.sampled_from([*NODES, None]),
        split=st.booleans(),
        other=st.sampled_from([*NODES, None]),
    )
    def role_source(self, master: str | None, split: bool, other: str | None) -> None:
        """HA-Lizard moves the pool master; or the pool splits and the views differ."""
        self._count("role source change")
        if split:
            self.sim.split_pool({NODES[0]: master, NODES[1]: other})
        else:
            self.sim.set_pool_master(master)

    @precondition(lambda self: self.spec_edits)
    @rule(
        policy=st.sampled_from(["refuse", "outdated-peer", "quorum"]),
        heuristics=st.integers(0, 2),
        role=st.sampled_from(["pool-master", "static-node1", "static-node2"]),
        failback=st.booleans(),
    )
    def spec_edit(self, policy: str, heuristics: int, role: str, failback: bool) -> None:
        self._count("spec edit")
        source: dict[str, Any] = {"type": "pool-master", "preferred": None, "failback": False}
        if role != "pool-master":
            source = {"type": "static", "preferred": role.split("-")[1], "failback": failback}
        self.sim.edit_spec(
            {
                "promotion": {
                    "whenDisconnected": policy,
                    "heuristics": [f"198.51.100.{250 + i}" for i in range(heuristics)],
                },
                "roleSource": source,
            }
        )

    # --- liveness ----------------------------------------------------------------------------

    @precondition(lambda self: self.since_heal >= HEAL_EVERY)
    @rule(first=st.sampled_from(NODES))
    def faults_stop(self, first: str) -> None:
        """Mid-run liveness: heal everything, converge, then the run goes on with new faults."""
        self._count("faults stop + converge")
        self.check_liveness(first)

    def check_liveness(self, first: str) -> None:
        sim = self.sim
        self.since_heal = 0
        sim.heal()
        order = [first, sim.w.peer(first)]
        k, k_sync = sim.converge(max_rounds=K_SYNC_MAX + 2, order=order)
        if sim.override_promotions and sim.diverged():
            # A split brain the operator forced: nothing may be resolved automatically, and the
            # agents must say so (the data itself is checked strictly after every action).
            said = [
                kind
                for p in sim.last_plans.values()
                for kind in (*(w.kind for w in p.warnings), *(b.kind for b in p.blocked))
            ]
            assert WarningKind.SPLIT_BRAIN in said or BlockKind.SPLIT_BRAIN in said, (
                f"split brain not reported: {said}"
            )
            return
        assert not sim.diverged(), "split brain without an operator override"
        where = sim.expected_primary()
        assert k is not None, (
            f"not converged within {K_SYNC_MAX + 2} rounds after faults stopped: "
            f"{sim.serving_ok(where or NODES[0])}\n{sim.world_line()}\n{sim.to_scenario_yaml()}"
        )
        replay = sim.to_scenario_yaml()
        assert k <= K_MAX, f"converged only after {k} rounds (goal {K_MAX})\n{replay}"
        assert k_sync is not None and k_sync <= K_SYNC_MAX, (
            f"replication not healthy within {K_SYNC_MAX} rounds\n{sim.to_scenario_yaml()}"
        )
        served = sim.k_served
        assert served is not None and served <= K_MAX, (
            f"storage some node holds UpToDate not served within {K_MAX} rounds (K={served})\n"
            f"{sim.world_line()}\n{replay}"
        )
        # PBD liveness: one more round and every host's SR is attached and usable (the primary
        # plugs in its serving tick, the secondary once it sees the VIP answer from the peer).
        for n in order:
            sim.tick(n)
        unplugged = [n for n in NODES if sim.w.srs_usable(n) is False]
        assert not unplugged, f"PBDs not plugged/usable on {unplugged} after converging\n{replay}"
        if self.record:
            Stats.k[k] += 1
            Stats.k_sync[k_sync] += 1
            Stats.k_served[served] += 1

    def teardown(self) -> None:
        # Hypothesis tears down failed runs too: keep their own failure, check nothing more.
        if self.sim.violations:
            return
        self.check_liveness(NODES[self.since_heal % 2])
        if self.record:
            Stats.runs += 1
            Stats.two_resource_runs += len(self.sim.resources) > 1
            Stats.witness_runs += self.sim.witness_on
            Stats.steps += sum(self.rules.values())
            Stats.rules.update(self.rules)
            Stats.classes.update(self.sim.counts)
            Stats.split_brain_runs += bool(self.sim.split_brain)
            Stats.override_runs += bool(self.sim.override_promotions)
            Stats.destroyed_writes += sum(len(v) for v in self.sim.w.destroyed.values())


class TwoResourceMachine(FailoverMachine):
    """The main machine over a two-resource spec, with per-resource faults."""

    spec = SPEC2


class WitnessMachine(FailoverMachine):
    """The main machine over the witness spec (promotion.whenDisconnected: witness, the
    simulated 3-member etcd, a watchdog) and DRBD *without* STONITH (fencing resource-only:
    the setup where the quorum policy cannot keep one Primary): the witness alone must. Time
    moves on the witness's clock (``Simulation.advance``: never past a running agent's tick
    rhythm), node1's clock runs slow and node2's fast by the spec's clockDrift, and the
    witness faults land between everything: an etcd member down, etcd fully down (and back),
    a node cut from etcd, the full partition of one node (switch port, which also cuts it from
    etcd, plus the replication link), the agent paused past its lease. Liveness on top of the
    main machine's: ``takeover`` (a healthy node that keeps an etcd majority takes over from a
    fully partitioned primary within ttl + settle + TAKEOVER_TICKS ticks)."""

    spec = WITNESS_SPEC
    fencing = "resource-only"
    spec_edits = False

    def __init__(self) -> None:
        super().__init__()
        drift = self.spec.spec.witness.clock_drift
        self.sim.w.nodes[NODES[0]].clock_rate = 1 - drift
        self.sim.w.nodes[NODES[1]].clock_rate = 1 + drift

    @rule(seconds=st.sampled_from([0.25, 1.0, 2.0, 4.0, 7.0]))
    def time_passes(self, seconds: float) -> None:
        self._count("time passes")
        self.sim.advance(seconds)

    @rule(
        kind=st.sampled_from(
            ["etcdMemberDown", "etcdMemberUp", "etcdDown", "etcdUp", "etcdCut", "etcdRejoin"]
        ),
        node=st.sampled_from(NODES),
        member=st.integers(0, 2),
    )
    def witness_fault(self, kind: str, node: str, member: int) -> None:
        self._count("witness fault")
        if kind in ("etcdMemberDown", "etcdMemberUp"):
            self.sim.fault(kind, value=member)
        else:
            self.sim.fault(kind, node)

    @rule(node=st.sampled_from(NODES), pause=st.booleans())
    def agent_pause(self, node: str, pause: bool) -> None:
        """The agent stops (a long GC pause, SIGSTOP) or resumes: a pending plan resumes where
        it stopped, with whatever it observed before the pause."""
        self._count("agent pause/resume")
        self.sim.fault("pause" if pause else "resume", node)

    @rule(node=st.sampled_from(NODES))
    def heal_and_recut(self, node: str) -> None:
        """The replication link heals and is cut again between two ticks of ``node`` (the one
        that may promote on its disconnect time), the other node ticking in between: seeing
        DRBD connected it may serve on without a lease, so ``node`` must count the settle
        time from the re-cut, never from the first cut (``ResourceObs.disconnected_for``)."""
        self._count("heal and re-cut")
        sim = self.sim
        if sim.w.replication_link:
            sim.fault("replication", value=False)
            sim.tick(node)
        sim.fault("replication", value=True)
        sim.tick(sim.w.peer(node))
        sim.fault("replication", value=False)

    @rule(node=st.sampled_from(NODES))
    def drbd_relist(self, node: str) -> None:
        """A stream re-list on ``node`` (``World.drbd_relist``): its disconnect count restarts.
        Not a scenario step: a replay printed on a failure does not show it."""
        self._count("drbd re-list")
        self.sim.w.drbd_relist(node)

    @rule(node=st.sampled_from(NODES))
    def full_partition(self, node: str) -> None:
        """``node`` loses its switch port (clients, management, etcd) and the replication link
        at once: the two nodes are fully partitioned from each other."""
        self._count("full partition")
        self.sim.fault("isolate", node)
        if self.sim.w.replication_link:
            self.sim.fault("replication", value=False)

    @precondition(lambda self: self.since_heal >= HEAL_EVERY)
    @rule(first=st.sampled_from(NODES))
    def takeover(self, first: str) -> None:
        """Liveness of the witness: from a healed, converged cluster, the primary is fully
        partitioned and the pool master moves to the other node, which keeps an etcd majority:
        it serves within ttl + settle + TAKEOVER_TICKS ticks, and the old primary has stopped
        serving first (the invariants, checked after every action, say so)."""
        self._count("takeover")
        self.check_liveness(first)
        sim = self.sim
        old = sim.expected_primary() or first
        if sim.serving_ok(old) is not None or not sim.replication_ok():
            return  # a split brain the operator forced (check_liveness reported it): no measure
        new = sim.w.peer(old)
        sim.fault("isolate", old)
        sim.fault("replication", value=False)
        sim.set_pool_master(new)
        started = sim.w.now
        interval = self.spec.spec.timings.tick_interval
        w = self.spec.spec.witness
        bound = w.ttl + w.settle(interval) + TAKEOVER_TICKS * interval
        while sim.serving_ok(new) is not None and sim.w.now - started <= bound + interval:
            for n in (new, old):
                sim.tick(n)
            sim.advance(interval)
        took = sim.w.now - started
        assert sim.serving_ok(new) is None and took <= bound, (
            f"{new} did not take over within {bound:g} s (ttl + settle + {TAKEOVER_TICKS} "
            f"ticks): {sim.serving_ok(new)} after {took:g} s\n{sim.to_scenario_yaml()}"
        )
        if self.record:
            Stats.takeover[round(took)] += 1


# --- the terminal summary (shown by a plain `pytest` run, no -s needed) --------------------------


class _SummaryPlugin:
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not Stats.lines:
            return
        terminalreporter.section("tandem failover simulation")
        for line in Stats.lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Any:
    plugin = _SummaryPlugin()
    manager = request.config.pluginmanager
    if not manager.has_plugin("tandem-failover-summary"):
        manager.register(plugin, "tandem-failover-summary")
    yield


def _summarise() -> list[str]:
    rate = Stats.steps / Stats.seconds if Stats.seconds else 0.0
    lines = [
        f"profile {PROFILE}: {Stats.steps} state-machine steps in {Stats.runs} runs, "
        f"{Stats.seconds:.0f} s ({rate:.0f} steps/s); 0 invariant violations",
        "K (rounds until one Primary serves where the role source says): "
        + ", ".join(f"K={k}: {n}" for k, n in sorted(Stats.k.items()))
        + f"; max K = {max(Stats.k)} (goal <= {K_MAX})",
        "K_sync (until replication is healthy too): "
        + ", ".join(f"{k}: {n}" for k, n in sorted(Stats.k_sync.items())),
        "K_served (until every resource some node holds UpToDate is served, anywhere): "
        + ", ".join(f"K={k}: {n}" for k, n in sorted(Stats.k_served.items()))
        + f"; runs on the two-resource spec: {Stats.two_resource_runs}",
        f"runs with a split brain (all forced by an operator override, all reported): "
        f"{Stats.split_brain_runs}; runs with an override promotion: {Stats.override_runs}; "
        f"writes lost to a failed disk holding their only copy: {Stats.destroyed_writes}",
        "rules fired: " + ", ".join(f"{k} {v}" for k, v in sorted(Stats.rules.items())),
        "fault classes fired: " + ", ".join(f"{k} {v}" for k, v in sorted(Stats.classes.items())),
        f"witness runs (fencing resource-only, no STONITH): {Stats.witness_runs}; witness "
        "faults fired: "
        + ", ".join(f"{k} {Stats.classes[k]}" for k in WITNESS_FAULT_CLASSES)
        + "; takeovers from a fully partitioned primary (seconds: count): "
        + (", ".join(f"{k} s: {n}" for k, n in sorted(Stats.takeover.items())) or "none")
        + f"; bound ttl + settle + {TAKEOVER_TICKS} ticks = {_takeover_bound():g} s",
    ]
    return lines


def _takeover_bound() -> float:
    w, tick = WITNESS_SPEC.spec.witness, WITNESS_SPEC.spec.timings.tick_interval
    return w.ttl + w.settle(tick) + TAKEOVER_TICKS * tick


def test_failover_state_machine_keeps_every_invariant() -> None:
    """The CI-depth run: >= 100,000 steps, every fault class fires, 0 violations, K <= 3."""
    started = time.monotonic()
    profile = settings.get_profile(f"tandem-sim-{PROFILE}")
    rounds = 0
    machines = (FailoverMachine, TwoResourceMachine, WitnessMachine)
    while (Stats.steps < MIN_STEPS or rounds < len(machines)) and rounds < 12:
        # Hypothesis ends runs at random lengths; repeat until the step budget is spent. The
        # rounds take turns: the main machine, the two-resource machine (per-resource faults),
        # the witness machine (witness faults, no STONITH).
        machine = machines[rounds % len(machines)]
        rounds += 1
        run_state_machine_as_test(machine, settings=profile)
    if not Stats.two_resource_runs:
        run_state_machine_as_test(TwoResourceMachine, settings=profile)
    if not Stats.witness_runs:
        run_state_machine_as_test(WitnessMachine, settings=profile)
    Stats.seconds = time.monotonic() - started
    Stats.lines[:0] = _summarise()
    every = FAULT_CLASSES + RESOURCE_FAULT_CLASSES + WITNESS_FAULT_CLASSES
    missing = [c for c in every if not Stats.classes[c]]
    assert not missing, f"fault classes that never fired: {missing}"
    assert Stats.steps >= MIN_STEPS, f"only {Stats.steps} steps"
    assert max(Stats.k) <= K_MAX and max(Stats.k_served) <= K_MAX
    assert Stats.takeover, "no witness takeover was measured"


def test_the_witness_machine_keeps_one_primary_without_stonith() -> None:
    """A short run of the witness machine alone (the CI profile runs it at depth): never two
    primaries with fencing resource-only, the takeover liveness holds."""
    run_state_machine_as_test(
        WitnessMachine, settings=_quiet(max_examples=60, stateful_step_count=60)
    )


_WITNESS_REFUSALS = {
    BlockKind.WITNESS_UNREACHABLE,
    BlockKind.WITNESS_HELD,
    BlockKind.WITNESS_CLAIM,
    BlockKind.WITNESS_SETTLING,
}


def _promote_without_the_witness(res: ResourceObs, **kw: Any) -> safety.Verdict:
    """The witness switched off: what only the witness refused (or granted behind a claim)
    is granted outright."""
    verdict = safety.may_promote(res, **kw)
    if verdict.claim or verdict.refusal in _WITNESS_REFUSALS:
        return safety.Verdict(True, "witness switched off")
    return verdict


class _WitnessGuardOffMachine(WitnessMachine):
    guards = Guards(may_promote=_promote_without_the_witness)
    overrides = False
    record = False


def test_switching_off_the_witness_is_caught() -> None:
    """Without the witness's answer (every node believes it holds the key) the nodes cut from
    each other both promote: hypothesis finds two primaries (fencing resource-only)."""
    with pytest.raises(InvariantViolation) as caught:
        run_state_machine_as_test(
            _WitnessGuardOffMachine, settings=_quiet(max_examples=400, stateful_step_count=40)
        )
    exc = caught.value
    kinds = {p.kind for p in exc.problems}
    assert kinds & {ViolationKind.TWO_PRIMARIES, ViolationKind.SERVES_STALE_DATA}, exc.problems
    Stats.lines.append(
        f"witness switched off: found in {exc.replay.count(chr(10) + '- ')} steps: "
        f"{exc.problems[0]}"
    )


def _witness_text(timeout: str) -> StorageCluster:
    dog = "      timeout: 3.5\n"
    assert WITNESS_TEXT.count(dog) == 1, "specs/witness.yaml changed shape"
    return load_spec(WITNESS_TEXT.replace(dog, f"      timeout: {timeout}\n"))


class _ShortHoldWitnessMachine(WitnessMachine):
    """The witness machine with a 1 s watchdog (at most stepDownMargin x (1 - clockDrift)
    later than the step-down: the hold after a claim is then 0.01 s), so a promotion counted
    from the disconnect happens as soon as the continuity allows it."""

    spec = _witness_text("0.99")
    record = False


def test_the_witness_machine_with_a_short_hold_keeps_one_primary() -> None:
    """The disconnect count with (nearly) no hold after the claim: never two primaries."""
    assert safety.WitnessTiming.from_spec(_ShortHoldWitnessMachine.spec.spec).hold < 0.01
    run_state_machine_as_test(
        _ShortHoldWitnessMachine, settings=_quiet(max_examples=60, stateful_step_count=60)
    )


_FIRST_CUT: dict[tuple[str, str], float] = {}
_CLOCK: list[Simulation] = []


def _promote_forgetting_heals(res: ResourceObs, **kw: Any) -> safety.Verdict:
    """The continuity switched off: each node counts from the first disconnect it ever saw of
    a resource, as if a heal did not clear ``disconnected_for``."""
    if res.disconnected_for is not None and _CLOCK:
        now = _CLOCK[0].w.now
        first = _FIRST_CUT.setdefault((str(kw.get("node")), res.name), now - res.disconnected_for)
        res = replace(res, disconnected_for=now - first)
    return safety.may_promote(res, **kw)


def _heal_and_recut(guards: Guards) -> Simulation:
    """node1 serves; both links are cut (node2's count starts; node1 serves on its lease) and
    heal; node1, off its switch port (so off etcd), serves on without a lease while connected;
    the pool splits (each node believes it is the master); the replication link is cut again
    and node2 ticks twice before node1 ticks: the attack on the count from the disconnect (the
    short-hold spec: the claim alone holds nothing back)."""
    spec = _ShortHoldWitnessMachine.spec
    sim = new_simulation(spec, fencing="resource-only", guards=guards, raise_on_violation=True)
    _CLOCK[:] = [sim]
    _FIRST_CUT.clear()
    n1, n2 = NODES
    sim.set_pool_master(n1)
    sim.converge()
    sim.fault("management", value=False)  # both links: no fence-peer outdates node2
    sim.fault("replication", value=False)  # node1 serves on its lease
    sim.tick(n2)
    sim.wait(5.0)
    sim.tick(n2)
    sim.fault("replication", value=True)
    sim.fault("management", value=True)
    sim.fault("isolate", n1)  # off its switch port, so off etcd too
    for _ in range(12):  # node1's lease runs out while connected: it serves on
        sim.elapse(1.0)
    sim.split_pool({n1: n1, n2: n2})
    sim.tick(n2)  # connected: node1 is Primary, nothing to do
    sim.fault("replication", value=False)
    sim.tick(n2)  # the key is free: claim
    sim.wait(0.1)
    sim.tick(n2)  # counted from the re-cut: 0.1 s, not 17 s
    return sim


def test_a_heal_restarts_the_disconnect_count() -> None:
    sim = _heal_and_recut(DEFAULT_GUARDS)
    n1, n2 = NODES
    assert sim.w.witness_holder() == n2
    assert sim.w.nodes[n1].resources["iscsi1"].role is Role.PRIMARY  # not ticked yet
    assert sim.w.nodes[n2].resources["iscsi1"].role is Role.SECONDARY
    plan = sim.last_plans[n2]
    assert [b.kind for b in plan.blocked] == [BlockKind.WITNESS_SETTLING], plan.blocked
    sim.tick(n1)  # node1 sees the cut: no lease, it stops serving
    assert sim.w.nodes[n1].resources["iscsi1"].role is Role.SECONDARY


def test_switching_off_the_disconnect_continuity_is_caught() -> None:
    """The same run with the continuity switched off (each node counts from the first
    disconnect it ever saw): node2 promotes on the old disconnect while node1, which saw DRBD
    connected in between and served on without a lease, still serves: two primaries."""
    with pytest.raises(InvariantViolation) as caught:
        _heal_and_recut(Guards(may_promote=_promote_forgetting_heals))
    kinds = {p.kind for p in caught.value.problems}
    assert ViolationKind.TWO_PRIMARIES in kinds, caught.value.problems
    Stats.lines.append(f"disconnect continuity switched off: {caught.value.problems[0]}")


def _claim_then_heal_and_recut(guards: Guards) -> Simulation:
    """node1 serves without a lease while connected (off its switch port, so off etcd); the
    pool splits; the link is cut and node2 claims the free key at once (c); the link heals at
    c + 1.1 s, node1 ticks at c + 1.2 s (connected: it serves on), the link is cut again at
    c + 1.3 s; node2 ticks at c + 2.9 s and c + 4.1 s (the key held 4.1 s >= settle), node1's
    next tick is due at c + 4.2 s (its gap: 3 s). The claim's argument ("free at the claim, so
    the other node has seen the cut by now") does not survive the heal. Without a watchdog
    (settle 4.04 s): with one the settle time covers its timeout (6.6 s with the shipped 3.5 s),
    longer than node1's gap after the heal, and this run cannot show the race."""
    sim = new_simulation(
        witness_spec(watchdog=False),
        fencing="resource-only",
        guards=guards,
        raise_on_violation=True,
    )
    n1, n2 = NODES
    sim.set_pool_master(n1)
    sim.converge()
    sim.fault("isolate", n1)
    for _ in range(12):
        sim.elapse(1.0)
    sim.split_pool({n1: n1, n2: n2})
    sim.fault("replication", value=False)
    claimed = sim.w.now
    sim.tick(n2)
    assert sim.w.witness_holder() == n2

    def at(offset: float) -> None:
        sim.advance(claimed + offset - sim.w.now)
        assert abs(sim.w.now - claimed - offset) < 1e-9

    at(1.1)
    sim.fault("replication", value=True)
    at(1.2)
    sim.tick(n1)
    at(1.3)
    sim.fault("replication", value=False)
    at(2.9)
    sim.tick(n2)
    at(4.1)
    sim.tick(n2)
    return sim


def test_a_heal_after_the_claim_restarts_the_count_too() -> None:
    sim = _claim_then_heal_and_recut(DEFAULT_GUARDS)
    n1, n2 = NODES
    assert sim.w.nodes[n2].resources["iscsi1"].role is Role.SECONDARY
    assert "disconnected for 2.8 s" in sim.last_plans[n2].blocked[0].reason
    sim.tick(n1)  # it sees the re-cut: no lease, it stops serving
    assert sim.w.nodes[n1].resources["iscsi1"].role is Role.SECONDARY


def _promote_on_the_claim_alone(res: ResourceObs, **kw: Any) -> safety.Verdict:
    """The rule of an adapter that cannot know the continuity (the polling one)."""
    return safety.may_promote(replace(res, disconnected_for=None), **kw)


def test_the_claim_alone_is_caught_by_a_heal_after_the_claim() -> None:
    """Counted from the claim only (what a polling DRBD adapter leaves, and the claim branch of
    an "either" rule): node2 promotes while node1, which saw DRBD connected after the claim,
    still serves: two primaries. Where the continuity is known the count from the disconnect
    decides; the polling adapter cannot see this heal (docs/operations.md, "The witness")."""
    with pytest.raises(InvariantViolation) as caught:
        _claim_then_heal_and_recut(Guards(may_promote=_promote_on_the_claim_alone))
    assert ViolationKind.TWO_PRIMARIES in {p.kind for p in caught.value.problems}
    Stats.lines.append(f"the claim alone after a heal: {caught.value.problems[0]}")


# --- the property runs tick through the production tick ----------------------------------------


class _CountedMachine(FailoverMachine):
    """The main machine, not added to the summary; remembers its simulations."""

    record = False
    sims: ClassVar[list[Simulation]] = []

    def __init__(self) -> None:
        super().__init__()
        self.sims.append(self.sim)


def test_the_state_machine_ticks_through_the_production_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every agent tick of a property run (a whole tick, or the observe+plan of a plan applied
    later) is one call of ``reconciler.agent.tick``, the CLI's tick, and every plan the simulator
    acted on came out of one: the engine composes observe -> plan -> apply nowhere else."""
    real = agent.tick
    made: list[Plan] = []

    def counted(*args: Any, **kwargs: Any) -> agent.TickReport:
        report = real(*args, **kwargs)
        made.append(report.plan)
        return report

    monkeypatch.setattr(agent, "tick", counted)
    _CountedMachine.sims.clear()
    run_state_machine_as_test(
        _CountedMachine, settings=_quiet(max_examples=12, stateful_step_count=30)
    )
    sims = _CountedMachine.sims
    ticks = sum(sim.counts["tick"] + sim.counts["plan"] for sim in sims)
    assert ticks > 100 and sum(sim.counts["plan"] for sim in sims) > 0
    assert len(made) == ticks
    produced = {id(p) for p in made}  # ``made`` keeps every plan alive: ids are unique
    kept = [p for sim in sims for p in sim.last_plans.values()]
    assert kept and all(id(p) in produced for p in kept)


# --- the invariants bite ----------------------------------------------------------------------


def _quiet(**over: Any) -> settings:
    base: dict[str, Any] = {
        "max_examples": 400,
        "stateful_step_count": 40,
        "deadline": None,
        "derandomize": True,
        "database": None,
        "report_multiple_bugs": False,
        "print_blob": False,
        "phases": [Phase.generate, Phase.shrink],  # no "explain": it replays for minutes
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
    }
    base.update(over)
    return settings(**base)


def _promote_ignoring_disconnection(res: ResourceObs, **kw: Any) -> safety.Verdict:
    """The guard "while DRBD is disconnected the peer's role is unknown" switched off: a
    disconnected resource is judged as if its peer were a connected Secondary."""
    if not res.conn.is_connected and res.peer_role is not Role.PRIMARY:
        res = replace(res, conn=ConnState.CONNECTED, peer_role=Role.SECONDARY)
    return safety.may_promote(res, **kw)


REFUSE_SPEC = StorageCluster.model_validate(
    {
        **SPEC.model_dump(mode="json", by_alias=True),
        "spec": {
            **SPEC.model_dump(mode="json", by_alias=True)["spec"],
            "promotion": {"whenDisconnected": "refuse", "heuristics": []},
        },
    }
)


class _NoFencingMachine(FailoverMachine):
    """DRBD without fencing and the 'refuse' policy: the planner's guard is the only defence."""

    spec = REFUSE_SPEC
    fencing = "none"
    spec_edits = False
    overrides = False
    record = False


class _GuardOffMachine(_NoFencingMachine):
    guards = Guards(may_promote=_promote_ignoring_disconnection)


def test_the_disconnected_promotion_guard_is_what_keeps_one_primary() -> None:
    """Control: with the guard on, the weak world (no fencing) keeps every invariant."""
    run_state_machine_as_test(_NoFencingMachine, settings=_quiet(max_examples=150))


def _plug_always(**_: Any) -> safety.Verdict:
    """The guard "no PBD plug while the target is not served" switched off."""
    return safety.Verdict(True, "guard switched off")


class _PlugGuardOffMachine(FailoverMachine):
    guards = Guards(may_plug_pbd=_plug_always)
    spec_edits = False
    overrides = False
    record = False


def test_switching_off_the_plug_guard_is_caught() -> None:
    """Without ``may_plug_pbd`` the planner plugs while nothing serves: invariant 5 fires."""
    with pytest.raises(InvariantViolation) as caught:
        run_state_machine_as_test(_PlugGuardOffMachine, settings=_quiet(max_examples=400))
    exc = caught.value
    assert {p.kind for p in exc.problems} == {ViolationKind.PBD_PLUG_NOT_SERVED}, exc.problems
    Stats.lines.append(
        f"plug guard switched off: found in {exc.replay.count(chr(10) + '- ')} steps: "
        f"{exc.problems[0]}"
    )


def test_switching_off_a_guard_is_caught_and_shrunk() -> None:
    """Switch off one safety guard through the planner's test-only seam: hypothesis must find
    a violation and shrink it to a short sequence of steps."""
    with pytest.raises(InvariantViolation) as caught:
        # A larger budget than the other runs: derandomized, 400 examples found the violation
        # when this file ran alone but not after tests/adapters in the same process (an order
        # dependence not understood yet, see the closing notes); it stops at the first find.
        run_state_machine_as_test(_GuardOffMachine, settings=_quiet(max_examples=1500))
    exc = caught.value
    steps = exc.replay.count("\n- ")
    kinds = {p.kind for p in exc.problems}
    assert kinds & {ViolationKind.TWO_PRIMARIES, ViolationKind.SERVES_STALE_DATA}, exc.problems
    assert steps <= 8, f"not shrunk to a short sequence ({steps} steps):\n{exc.replay}"
    Stats.lines.append(
        f"guard switched off: violation found and shrunk to {steps} steps: {exc.problems[0]}"
    )


class _PartitionMachine(RuleBasedStateMachine):
    """The fault model cut down to what the two-node problem needs (agents, links, a node cut
    off from the switch, crashes, the pool master moving), over DRBD with ``fencing
    resource-only``: the common setup without STONITH, whose fence-peer handler can only
    outdate the peer over the network and otherwise assumes it dead."""

    def __init__(self) -> None:
        super().__init__()
        self.sim = new_simulation(SPEC, fencing="resource-only", raise_on_violation=True)
        self.sim.keep_timeline = False
        self.sim.converge(max_rounds=3)  # start from a serving cluster

    @rule(node=st.sampled_from(NODES))
    def tick(self, node: str) -> None:
        self.sim.tick(node)

    @rule(node=st.sampled_from(NODES))
    def full_partition(self, node: str) -> None:
        """``node`` loses the switch and the replication link at once."""
        self.sim.fault("isolate", node)
        if self.sim.w.replication_link:
            self.sim.fault("replication", value=False)

    @rule()
    def partition_heals(self) -> None:
        for n in NODES:
            if self.sim.w.nodes[n].isolated:
                self.sim.fault("rejoin", n)
        if not self.sim.w.replication_link:
            self.sim.fault("replication", value=True)

    @rule(node=st.sampled_from(NODES))
    def crash_or_boot(self, node: str) -> None:
        self.sim.fault("crash" if self.sim.w.nodes[node].alive else "boot", node)

    @rule(master=st.sampled_from(NODES))
    def pool_master(self, master: str) -> None:
        self.sim.set_pool_master(master)

    @rule()
    def client_write(self) -> None:
        self.sim.write(1)


def test_without_stonith_the_quorum_policy_cannot_keep_one_primary() -> None:
    """The two-node problem, honestly: under a full partition (the primary cut off from the
    switch and from the replication link) the survivor takes over by quorum while the isolated
    node is still Primary; only fencing (STONITH, or frozen I/O until the peer is outdated) can
    stop that. Hypothesis finds it, and the main machine (fencing resource-and-stonith) never
    does."""
    with pytest.raises(InvariantViolation) as caught:
        run_state_machine_as_test(
            _PartitionMachine, settings=_quiet(max_examples=3000, stateful_step_count=12)
        )
    exc = caught.value
    kinds = {p.kind for p in exc.problems}
    assert kinds & {
        ViolationKind.TWO_PRIMARIES,
        ViolationKind.SERVES_STALE_DATA,
        ViolationKind.WRITES_ON_NO_DISK,
    }, exc.problems
    Stats.lines.append(
        "fencing resource-only (no STONITH): hypothesis finds "
        f"{str(exc.problems[0])!r} in {exc.replay.count(chr(10) + '- ')} steps"
    )
