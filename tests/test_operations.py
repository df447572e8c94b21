"""reconciler.operations over the simulated adapters (``sim_node_adapters``, the ones
``reconcile simulate`` uses): every accept/refuse branch of the operator use cases, the
split-brain recovery as a plan (dry run, retries, a failing step) and what the planner does on
the ticks after it. No files, no sleeping."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from adapters.base import NodeAdapters
from adapters.sim.adapters import sim_node_adapters
from adapters.sim.world import Fault, World, WorldStore
from reconciler import operations
from reconciler.agent import TickReport, tick
from reconciler.core.observed import OperatorState, Role
from reconciler.core.operator import Refusal
from reconciler.core.plan import ActionKind
from tests.simcluster import NO_SLEEP_RETRY, demo_spec

SPEC = demo_spec()
VIP = "198.51.100.3"
RES = "iscsi1"


@dataclass
class Sim:
    world: World
    adapters: dict[str, NodeAdapters]
    sleeps: list[float]

    @classmethod
    def create(cls) -> Sim:
        w = World.fresh(SPEC)
        store = WorldStore(w)
        return cls(w, {n: sim_node_adapters(store, n, SPEC) for n in SPEC.node_names}, [])

    def tick(self, node: str) -> TickReport:
        return tick(SPEC, self.adapters[node], retry=NO_SLEEP_RETRY, sleep=self.sleeps.append)

    def converge(self, rounds: int = 6) -> None:
        for _ in range(rounds):
            if not any([self.tick(n).plan.actions for n in SPEC.node_names]):
                return
        raise AssertionError("not converged")

    def state(self) -> str:
        """The world but its clock (an observation is one step of simulated time)."""
        return self.world.model_dump_json(exclude={"step_count"})

    def op(self, node: str) -> OperatorState:
        return self.adapters[node].operator.load()

    def serving(self) -> list[str]:
        return [n for n, nd in self.world.nodes.items() if VIP in nd.vips]

    def manual(self, node: str) -> None:
        out = operations.manual_mode(SPEC, node, self.adapters[node], enable=True)
        assert out.accepted


@pytest.fixture
def sim() -> Sim:
    s = Sim.create()
    s.converge()
    assert s.serving() == ["node1"]  # node1 is the pool master
    return s


# --- manual mode ---------------------------------------------------------------------------------


def test_manual_mode_enable_then_disable(sim: Sim) -> None:
    out = operations.manual_mode(SPEC, "node2", sim.adapters["node2"], enable=True)
    assert out.accepted and out.ok and out.refusal is None and out.observed is None
    assert out.message == "node2: manual mode enabled; roles are held until you choose one"
    assert sim.op("node2") == OperatorState(manual_mode=True)
    out = operations.manual_mode(SPEC, "node2", sim.adapters["node2"], enable=False)
    assert out.accepted and out.observed is not None
    assert sim.op("node2") == OperatorState()


def test_manual_mode_disable_refused_without_a_role_verdict(sim: Sim) -> None:
    sim.manual("node1")
    sim.world.pool_master = None
    out = operations.manual_mode(SPEC, "node1", sim.adapters["node1"], enable=False)
    assert not out.accepted and out.refusal is Refusal.NO_ROLE_VERDICT
    assert "the pool has no master" in out.message
    assert sim.op("node1").manual_mode  # nothing persisted


def test_manual_mode_disable_refused_out_of_the_native_role(sim: Sim) -> None:
    sim.manual("node1")
    sim.world.pool_master = "node2"  # node1 still holds storage
    out = operations.manual_mode(SPEC, "node1", sim.adapters["node1"], enable=False)
    assert out.refusal is Refusal.NOT_IN_NATIVE_ROLE
    assert out.message.startswith("refused: node1 is Primary but its native role is Secondary")
    assert sim.op("node1").manual_mode
    assert sim.serving() == ["node1"]


# --- become-primary / become-secondary --------------------------------------------------------


def test_become_refused_outside_manual_mode(sim: Sim) -> None:
    for out in (
        operations.become_primary(SPEC, "node2", sim.adapters["node2"], force=False),
        operations.become_secondary(SPEC, "node1", sim.adapters["node1"]),
    ):
        assert out.refusal is Refusal.NOT_IN_MANUAL_MODE and out.observed is None
        assert "(run `reconcile manual-mode enable`)" in out.message
    assert sim.op("node1") == sim.op("node2") == OperatorState()


def test_become_primary_refused_while_the_peer_is_primary(sim: Sim) -> None:
    sim.manual("node2")
    out = operations.become_primary(SPEC, "node2", sim.adapters["node2"], force=True)
    assert out.refusal is Refusal.PEER_PRIMARY
    assert "run `reconcile become-secondary` on the peer first" in out.message
    assert sim.op("node2") == OperatorState(manual_mode=True)


def test_become_primary_refused_while_the_vip_answers_elsewhere(sim: Sim) -> None:
    sim.manual("node1")
    sim.manual("node2")
    assert operations.become_secondary(SPEC, "node1", sim.adapters["node1"]).accepted
    sim.tick("node1")
    assert sim.serving() == []
    sim.world.strangers = [VIP]
    out = operations.become_primary(SPEC, "node2", sim.adapters["node2"], force=False)
    assert out.refusal is Refusal.VIP_ANSWERS_ELSEWHERE
    assert out.message == f"refused: VIP {VIP} answers from another host; release it there first"
    assert sim.op("node2").chosen_role is None


def test_planned_swap_through_the_use_cases(sim: Sim) -> None:
    """The rolling-maintenance swap: each accepted become-* is followed by the caller's tick."""
    sim.manual("node1")
    sim.manual("node2")
    out = operations.become_secondary(SPEC, "node1", sim.adapters["node1"])
    assert out.accepted and out.message == "node1: accepted: becoming Secondary"
    assert sim.op("node1") == OperatorState(manual_mode=True, chosen_role=Role.SECONDARY)
    assert sim.serving() == ["node1"]  # recorded only: the caller ticks
    sim.tick("node1")
    out = operations.become_primary(SPEC, "node2", sim.adapters["node2"], force=True)
    assert out.accepted and out.message == "node2: accepted: becoming Primary (forced)"
    assert sim.op("node2") == OperatorState(manual_mode=True, chosen_role=Role.PRIMARY, force=True)
    sim.tick("node2")
    assert sim.serving() == ["node2"]
    # Leaving manual mode while off the native role is refused (pool master is node1) ...
    out = operations.manual_mode(SPEC, "node2", sim.adapters["node2"], enable=False)
    assert out.refusal is Refusal.NOT_IN_NATIVE_ROLE
    # ... and accepted once the pool master follows the swap.
    sim.world.pool_master = "node2"
    for n in SPEC.node_names:
        assert operations.manual_mode(SPEC, n, sim.adapters[n], enable=False).accepted
    sim.converge()
    assert sim.serving() == ["node2"]


def test_operator_command_by_name_as_the_simulator_calls_it(sim: Sim) -> None:
    """What ``Simulation._operator`` needs: a command name in, (accepted, message) out."""
    a1, a2 = sim.adapters["node1"], sim.adapters["node2"]
    out = operations.operator_command(SPEC, "node2", a2, "become-primary", force=True)
    assert (out.accepted, out.refusal) == (False, Refusal.NOT_IN_MANUAL_MODE)
    for node, adapters in (("node1", a1), ("node2", a2)):
        assert operations.operator_command(SPEC, node, adapters, "manual-mode enable").accepted
    assert operations.operator_command(SPEC, "node1", a1, "become-secondary").accepted
    sim.tick("node1")
    out = operations.operator_command(SPEC, "node2", a2, "become-primary", force=True)
    assert out.accepted and sim.op("node2").force
    out = operations.operator_command(SPEC, "node1", a1, "manual-mode disable")
    assert out.refusal is Refusal.NOT_IN_NATIVE_ROLE  # node1 is pool master, holds Secondary
    assert set(operations.OPERATOR_COMMANDS) == {
        "manual-mode enable",
        "manual-mode disable",
        "become-primary",
        "become-secondary",
    }
    with pytest.raises(ValueError, match="unknown operator command"):
        operations.operator_command(SPEC, "node1", a1, "become-tertiary")


# --- split-brain recovery --------------------------------------------------------------------


def split_brain(sim: Sim) -> None:
    """node2 promoted and wrote while cut off from the serving node1 (like the split-brain
    scenario), then the links healed: DRBD refuses to reconnect."""
    w = sim.world
    w.set_links(replication=False, management=False)
    w.client_write(RES)
    w.drbd_primary("node2", RES)
    w.nodes["node2"].resources[RES].history.append(999)
    w.drbd_secondary("node2", RES)
    w.set_links(replication=True, management=True)
    assert w.nodes["node1"].resources[RES].split_brain


def recover(sim: Sim, node: str, *, survivor: str, **kw: object) -> operations.Outcome:
    return operations.split_brain_recovery(
        SPEC,
        node,
        sim.adapters[node],
        resource=str(kw.pop("resource", RES)),
        survivor=survivor,
        confirmed=bool(kw.pop("confirmed", True)),
        dry_run=bool(kw.pop("dry_run", False)),
        agent_holder=str(kw["holder"]) if "holder" in kw else None,
        retry=NO_SLEEP_RETRY,
        sleep=sim.sleeps.append,
    )


def test_split_brain_refusals(sim: Sim) -> None:
    healthy = recover(sim, "node2", survivor="node1")
    assert healthy.refusal is Refusal.NOT_IN_SPLIT_BRAIN and healthy.report is None
    split_brain(sim)
    before = sim.state()
    cases = {
        Refusal.UNKNOWN_SURVIVOR: recover(sim, "node2", survivor="node7"),
        Refusal.UNKNOWN_RESOURCE: recover(sim, "node2", survivor="node1", resource="nope"),
        Refusal.NOT_CONFIRMED: recover(sim, "node2", survivor="node1", confirmed=False),
        Refusal.AGENT_RUNNING: recover(sim, "node2", survivor="node1", holder="4242"),
    }
    for refusal, out in cases.items():
        assert out.refusal is refusal and out.report is None and not out.ok
        assert out.refusal.is_usage is (refusal is not Refusal.AGENT_RUNNING)
    assert sim.state() == before


def test_split_brain_dry_run_changes_nothing(sim: Sim) -> None:
    split_brain(sim)
    before = sim.state()
    out = recover(sim, "node1", survivor="node2", confirmed=False, dry_run=True)
    assert out.accepted and out.report is not None and out.report.result is None
    assert [a.describe() for a in out.report.plan.actions] == [
        "stop-target",
        f"remove-vip {VIP}",
        f"demote {RES}",
        f"connect-discard-my-data {RES}",
    ]
    assert "Dry run: nothing was changed" in out.message
    assert sim.state() == before
    assert sim.op("node1") == OperatorState()


def test_recovery_victim_then_survivor_and_the_planner_does_not_fight_it(sim: Sim) -> None:
    split_brain(sim)
    survivor_data = list(sim.world.nodes["node1"].resources[RES].history)
    victim = recover(sim, "node2", survivor="node1")
    assert victim.ok, victim.message
    assert victim.message.endswith("Done on node2. Now run it on the survivor.")
    assert victim.report is not None and victim.report.result is not None
    assert [s.action.kind for s in victim.report.result.steps] == [ActionKind.CONNECT_DISCARD]
    assert sim.op("node2") == OperatorState(manual_mode=True, chosen_role=Role.SECONDARY)
    # The agents tick between the two halves: neither undoes the victim's step, neither
    # reconnects the survivor behind the operator's back, nobody is promoted.
    for n in ("node2", "node1", "node2"):
        kinds = [a.kind for a in sim.tick(n).plan.actions]
        assert not {ActionKind.CONNECT, ActionKind.DISCONNECT, ActionKind.PROMOTE} & set(kinds)
    assert sim.world.nodes["node1"].resources[RES].split_brain
    assert sim.serving() == ["node1"]
    survivor = recover(sim, "node1", survivor="node1")
    assert survivor.ok, survivor.message
    assert survivor.report is not None
    assert [a.describe() for a in survivor.report.plan.actions] == [f"connect {RES}"]
    assert sim.op("node1") == OperatorState()  # the survivor's operator state is untouched
    sim.converge()
    n1, n2 = (sim.world.nodes[n].resources[RES] for n in ("node1", "node2"))
    assert not n1.split_brain and not n2.split_brain and n1.connected and n2.connected
    assert n2.history == survivor_data and 999 not in n2.history
    assert sim.serving() == ["node1"]
    assert operations.manual_mode(SPEC, "node2", sim.adapters["node2"], enable=False).accepted


def test_recovery_of_the_serving_node_as_victim(sim: Sim) -> None:
    """The victim is the serving Primary: it stops serving, demotes and discards; the survivor
    then serves once the role source names it."""
    split_brain(sim)
    victim = recover(sim, "node1", survivor="node2")
    assert victim.ok, victim.message
    assert victim.report is not None and victim.report.result is not None
    assert [s.action.describe() for s in victim.report.result.steps] == [
        "stop-target",
        f"remove-vip {VIP}",
        f"demote {RES}",
        f"connect-discard-my-data {RES}",
    ]
    assert sim.serving() == []
    assert recover(sim, "node2", survivor="node2").ok
    sim.world.pool_master = "node2"
    sim.converge()
    assert sim.serving() == ["node2"]
    assert 999 in sim.world.nodes["node1"].resources[RES].history  # resynced from node2
    assert sim.world.nodes["node1"].resources[RES].role is Role.SECONDARY


def test_recovery_step_retried_on_a_transient_error(sim: Sim) -> None:
    split_brain(sim)
    sim.world.faults.append(Fault(node="node2", op="drbd-connect", kind="transient", count=1))
    out = recover(sim, "node2", survivor="node1")
    assert out.ok, out.message
    assert out.report is not None and out.report.result is not None
    (step,) = out.report.result.steps
    assert step.ok and step.attempts == 2
    assert sim.sleeps  # the executor waited between the attempts (a recorder, not a sleep)


def test_recovery_stops_at_the_first_failed_step(sim: Sim) -> None:
    split_brain(sim)
    sim.world.faults.append(Fault(node="node1", op="target-stop", kind="terminal", count=1))
    out = recover(sim, "node1", survivor="node2")
    assert out.accepted and not out.ok
    assert out.message.startswith("recovery step failed on node1: stop-target: ")
    assert out.report is not None and out.report.result is not None
    assert [s.ok for s in out.report.result.steps] == [False]  # nothing after it ran
    assert sim.serving() == ["node1"]
    # The operator state was persisted first: no agent promotes the victim again.
    assert sim.op("node1") == OperatorState(manual_mode=True, chosen_role=Role.SECONDARY)


def test_the_simulator_speaks_with_the_cli_rules_and_words() -> None:
    """One set of operator rules: the simulator's refusal is the use case's, word for word."""
    from reconciler.simulation import Simulation

    sim = Simulation(demo_spec())
    direct = operations.become_primary(sim.spec, "node1", sim.adapters["node1"], force=False)
    accepted, text = sim.operator("node1", "become-primary")
    assert not accepted and not direct.accepted
    assert text == direct.message and "manual-mode enable" in text


def test_become_secondary_says_plainly_when_nobody_can_take_over(sim: Sim) -> None:
    """Allowed (the reference design's rule), and obeyed by the planner, but the operator is
    told that stepping down now stops all service."""
    sim.world.set_links(replication=False)
    sim.manual("node1")
    out = operations.become_secondary(SPEC, "node1", sim.adapters["node1"])
    assert out.accepted and out.observed is not None
    assert out.message.startswith("node1: accepted: becoming Secondary; WARNING: nobody can take")
    assert "node2 cannot take over: iscsi1 is WFConnection" in out.message
    sim.tick("node1")
    assert sim.serving() == []  # obeyed: an operator's explicit choice is not held
    assert sim.world.nodes["node1"].resources["iscsi1"].role is Role.SECONDARY
