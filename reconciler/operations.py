"""Operator use cases: ``manual-mode``, ``become-primary``/``-secondary`` and the guided
split-brain recovery, shared by the CLI and the simulator.

Each function takes ``(spec, node, adapters)`` (real adapters from ``adapters.factory`` or the
simulated ones from ``adapters.sim.adapters.sim_node_adapters``), observes through
``reconciler.observe.observe`` only when a rule needs it, asks the pure verdict in
``reconciler.core.operator``, persists an accepted verdict's operator state through
``adapters.operator.save`` and returns an ``Outcome``. It never prints, never exits and never
imports click: the CLI turns an outcome into text and an exit code, the simulator into a
timeline entry (``outcome.accepted``, ``outcome.message``).

Invariants:
- a refused command persists nothing and acts on nothing;
- the follow-up tick of an accepted ``become-primary``/``become-secondary`` is the CALLER's
  job (the CLI runs its ``_operator_tick``, which defers to a running agent; the simulator
  runs its own tick, which checks the invariants after each action): the operator's choice is
  recorded here, and applying it is an ordinary tick of the planner;
- the split-brain recovery is a ``Plan`` (``core.operator.recovery_plan``) run by the executor
  (retries for transient errors, stops at the first failed step). On the victim the operator
  state "manual mode, chosen Secondary" is persisted BEFORE the plan runs, so no agent promotes
  the node again whatever step fails. A dry run observes, plans and returns the plan: it
  persists nothing and runs no action.
- the caller that holds the node's agent lock passes the holder (``agent_holder``): the lock
  is I/O, the refusal is a verdict.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from adapters.base import NodeAdapters
from reconciler.agent import TickReport
from reconciler.core import operator as rules
from reconciler.core.errors import AdapterError
from reconciler.core.observed import ObservedState
from reconciler.core.operator import Refusal, Verdict
from reconciler.core.spec import StorageCluster
from reconciler.executor import RetryPolicy, StepReport, apply
from reconciler.observe import observe


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an operator command did. ``observed``: the observation the verdict was taken on
    (None when no rule needed one). ``report``: the recovery's plan and, unless dry-run, its
    apply report (a ``TickReport``, so it renders like ``reconcile --once``). ``failure``: an
    accepted command whose execution failed (a recovery step, or persisting its state)."""

    verdict: Verdict
    observed: ObservedState | None = None
    report: TickReport | None = None
    failure: str | None = None

    @property
    def accepted(self) -> bool:
        return self.verdict.accepted

    @property
    def refusal(self) -> Refusal | None:
        return self.verdict.refusal

    @property
    def ok(self) -> bool:
        """Accepted and nothing failed."""
        return self.verdict.accepted and self.failure is None

    @property
    def message(self) -> str:
        return self.failure or self.verdict.message


def _persist(adapters: NodeAdapters, verdict: Verdict) -> None:
    if verdict.accepted and verdict.new_state is not None:
        adapters.operator.save(verdict.new_state)


def manual_mode(
    spec: StorageCluster, node: str, adapters: NodeAdapters, *, enable: bool
) -> Outcome:
    """``manual-mode enable`` (always accepted) or ``disable`` (observes: refused unless this
    node holds its native role)."""
    current = adapters.operator.load()
    if enable:
        verdict = rules.manual_mode_enable(node, current)
        _persist(adapters, verdict)
        return Outcome(verdict)
    obs = observe(spec, adapters)
    verdict = rules.manual_mode_disable(node, current, obs)
    _persist(adapters, verdict)
    return Outcome(verdict, obs)


def become_primary(
    spec: StorageCluster, node: str, adapters: NodeAdapters, *, force: bool = False
) -> Outcome:
    """Record the operator's choice Primary when the rules allow it; the caller ticks."""
    current = adapters.operator.load()
    if (refused := rules.require_manual_mode(node, current)) is not None:
        return Outcome(refused)  # no observation needed (a slow ARP probe saved)
    obs = observe(spec, adapters)
    verdict = rules.become_primary(node, current, obs, force=force)
    _persist(adapters, verdict)
    return Outcome(verdict, obs)


def become_secondary(spec: StorageCluster, node: str, adapters: NodeAdapters) -> Outcome:
    """Record the operator's choice Secondary (manual mode only); the caller ticks. Observes
    (when in manual mode) only so the message can say whether the peer can take over."""
    current = adapters.operator.load()
    if (refused := rules.require_manual_mode(node, current)) is not None:
        return Outcome(refused)
    obs = observe(spec, adapters)
    peer = next((n for n in spec.node_names if n != node), "the peer")
    verdict = rules.become_secondary(node, current, obs, peer=peer)
    _persist(adapters, verdict)
    return Outcome(verdict, obs)


OPERATOR_COMMANDS = (
    "manual-mode enable",
    "manual-mode disable",
    "become-primary",
    "become-secondary",
)


def operator_command(
    spec: StorageCluster, node: str, adapters: NodeAdapters, command: str, *, force: bool = False
) -> Outcome:
    """One of ``OPERATOR_COMMANDS`` by name (the spelling of scenario files and of
    ``Simulation.operator``); ``force`` goes with ``become-primary``. The caller ticks after an
    accepted become-*. Raises ``ValueError`` for an unknown command (a caller's bug)."""
    if command == "manual-mode enable":
        return manual_mode(spec, node, adapters, enable=True)
    if command == "manual-mode disable":
        return manual_mode(spec, node, adapters, enable=False)
    if command == "become-primary":
        return become_primary(spec, node, adapters, force=force)
    if command == "become-secondary":
        return become_secondary(spec, node, adapters)
    raise ValueError(f"unknown operator command {command!r}")


def split_brain_recovery(
    spec: StorageCluster,
    node: str,
    adapters: NodeAdapters,
    *,
    resource: str,
    survivor: str,
    confirmed: bool,
    dry_run: bool = False,
    agent_holder: str | None = None,
    retry: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    after_step: Callable[[StepReport], None] | None = None,
) -> Outcome:
    """The guided recovery of ``resource`` on ``node`` (victim first, then the survivor).

    ``confirmed``: the operator said ``--yes``. ``dry_run``: return the plan, change nothing
    (needs no confirmation). ``retry``/``sleep``/``after_step`` go to the executor (the
    simulator passes its own, to check invariants after each step)."""
    early = rules.check_recovery_request(spec, resource=resource, survivor=survivor)
    if early is not None:
        return Outcome(early)
    started = time.time()
    t0 = time.monotonic()
    obs = observe(spec, adapters)
    looked = time.monotonic() - t0
    verdict = rules.split_brain_recovery(
        spec,
        node,
        obs,
        resource=resource,
        survivor=survivor,
        confirmed=confirmed,
        dry_run=dry_run,
        agent_holder=agent_holder,
    )
    if not verdict.accepted:
        return Outcome(verdict, obs)
    the_plan = rules.recovery_plan(spec, node, obs, resource=resource, survivor=survivor)
    if dry_run:
        report = TickReport(obs, the_plan, None, started, time.monotonic() - t0, looked)
        return Outcome(verdict, obs, report)
    try:
        _persist(adapters, verdict)
    except AdapterError as exc:
        report = TickReport(obs, the_plan, None, started, time.monotonic() - t0, looked)
        return Outcome(verdict, obs, report, failure=f"recovery step failed on {node}: {exc}")
    result = apply(the_plan, spec, adapters, retry=retry, sleep=sleep, after_step=after_step)
    report = TickReport(obs, the_plan, result, started, time.monotonic() - t0, looked)
    failed = result.failed
    failure = None
    if failed is not None:
        failure = f"recovery step failed on {node}: {failed.action.describe()}: {failed.error}"
    return Outcome(verdict, obs, report, failure)
