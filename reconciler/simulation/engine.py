"""The simulation engine: two agents over one simulated cluster, faults, and the invariants.

Both agents tick through ``reconciler.agent.tick`` (observe -> plan -> apply, exactly the
CLI's path; the engine composes nothing itself) on one in-memory simulated cluster
(adapters/sim/world.py) while faults, operator commands, role-source changes and spec edits
happen between (and, with ``plan``/``applyNext``, in the middle of) their ticks.

Invariants (reconciler.core.safety) are checked after *every executed action* and after every
fault, not only after whole ticks:
- structural (``invariant_violations``): at most one Primary per resource, a VIP on at most one
  node and only on a Primary, LUNs exported only from a Primary. A violation that a fault
  created (an operator adding the VIP by hand on the secondary) is the fault's, not the agents':
  the agents may leave it for the next tick, but no executed action may add a new one;
- data (``data_violations``): every node that serves holds every acknowledged write, and every
  acknowledged write is on some disk (writes destroyed with their only disk are hardware loss,
  counted apart).

- the plug action (``safety.may_plug_pbd``): a PBD is plugged or re-plugged only while the
  storage is served, by the acting node's target once its plan's earlier steps ran, or by the
  peer as it was when the agent observed (a PBD that stays attached while the target moves is
  normal: XAPI keeps it; only the plug is judged).

Operator overrides are the one explicit exception: once a promotion that only the operator's
``become-primary --force`` allowed has run, two Primaries, a VIP on both nodes and a serving
node missing acknowledged writes are what the operator accepted. They are then *reported* as
split brain (events in the timeline, ``Simulation.split_brain``), not counted as violations;
"every acknowledged write is still on some disk" stays strict.

Liveness: ``heal()`` stops every fault and makes the role source agree; ``converge()`` then
ticks both agents in rounds and returns K, the rounds until one Primary serves the VIP and the
target where the role source says (``K_sync``: until replication is healthy too).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from adapters.base import Alert, NodeAdapters
from adapters.sim.adapters import sim_node_adapters
from adapters.sim.world import Fencing, World, WorldStore
from reconciler import agent, operations
from reconciler.alerts import AlertGate, alerts_for
from reconciler.core.observed import DiskState, Role
from reconciler.core.plan import Action, ActionKind, Plan
from reconciler.core.planner import DEFAULT_GUARDS, Guards
from reconciler.core.safety import (
    Violation,
    ViolationKind,
    data_violations,
    invariant_violations,
    may_plug_pbd,
)
from reconciler.core.spec import RoleSourceType, StorageCluster
from reconciler.executor import RetryPolicy, StepReport, apply, skipped_step
from reconciler.simulation.faults import apply_fault, fault_label
from reconciler.simulation.model import DEFAULT_FENCING, scenario_yaml
from reconciler.simulation.render import plan_text, world_line

# No real sleeping: the executor still retries transient errors, instantly.
SIM_RETRY = RetryPolicy(attempts=3, backoff=0.01, backoff_max=0.01)


class InvariantViolation(AssertionError):
    """An invariant broke; ``step`` names the simulation step, ``problems`` say what."""

    def __init__(self, step: int, what: str, problems: Sequence[Violation], replay: str) -> None:
        self.step = step
        self.what = what
        self.problems = tuple(problems)
        self.replay = replay
        text = "; ".join(map(str, problems))
        super().__init__(
            f"invariant violated at step {step} ({what}): {text}\n"
            f"replay it with `reconcile simulate --scenario FILE` on this scenario:\n{replay}"
        )


@dataclass(frozen=True, slots=True)
class Finding:
    """A violation the simulation recorded: at which step, during what, and what broke
    (``violation``: a safety invariant; None: liveness, the agents did not converge)."""

    step: int
    what: str
    text: str
    violation: Violation | None = None

    def __str__(self) -> str:
        return f"step {self.step} ({self.what}): {self.text}"


@dataclass(slots=True)
class Record:
    """One line of the timeline."""

    step: int
    kind: str  # tick | plan | action | fault | operator | role | spec | write | expect | event
    node: str | None
    text: str
    ok: bool = True
    world: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "kind": self.kind, "text": self.text}
        if self.node is not None:
            out["node"] = self.node
        out["ok"] = self.ok
        if self.world:
            out["world"] = self.world
        return out


@dataclass
class Simulation:
    spec: StorageCluster
    fencing: Fencing = DEFAULT_FENCING
    guards: Guards = DEFAULT_GUARDS
    world: World | None = None
    writes_per_action: int = 1  # client writes through the VIP after every executed action
    raise_on_violation: bool = True
    keep_timeline: bool = True
    step: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    timeline: list[Record] = field(default_factory=list)
    violations: list[Finding] = field(default_factory=list)
    split_brain: list[str] = field(default_factory=list)
    override_promotions: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    last_plans: dict[str, Plan] = field(default_factory=dict)
    k_served: int | None = None  # set by converge(): rounds until every servable resource served
    last_write: int | None = None
    repairing: bool = False  # after heal(): the operator re-attaches disks until it works
    # The simulated clock (seconds): only ``wait`` moves it. Each agent's alert gate reads it,
    # so alert grace and screen times play out in simulated time.
    clock: float = 0.0
    sent_alerts: list[tuple[str, Alert]] = field(default_factory=list)  # (node, alert) mailed
    last_writes: dict[str, int | None] = field(default_factory=dict)  # per resource
    acked_per_resource: dict[str, int] = field(default_factory=dict)  # of the last write step

    def __post_init__(self) -> None:
        if self.world is None:
            self.world = World.fresh(self.spec, fencing=self.fencing)
        self.w: World = self.world
        self.store = WorldStore(self.w)
        self.names = self.spec.node_names
        self.adapters: dict[str, NodeAdapters] = {}
        self._build_adapters()
        self.pending: dict[str, list[Action]] = {n: [] for n in self.names}
        self._pending_plan: dict[str, Plan] = {}  # the plan ``pending`` came from
        # Outcomes of the kept plan's actions so far (indices into it): its dependency chains.
        self._pending_failed: dict[str, set[int]] = {n: set() for n in self.names}
        self._pending_done: dict[str, set[int]] = {n: set() for n in self.names}
        # Per node: the storage was served (ground truth) when its last plan was made.
        self._served_at_plan: dict[str, bool] = {}
        self.known: set[Violation] = set(invariant_violations(self.w.facts()))
        # VIPs an operator configured by hand (a fault), while they stay configured.
        self.hand_vips: set[tuple[str, str]] = set()
        self._accepted: set[tuple[ViolationKind, str | None, str | None]] = set()
        self.resources = [r.name for r in self.spec.spec.resources]
        self.gates = {
            n: AlertGate(self.spec.spec.alerts, clock=lambda: self.clock) for n in self.names
        }

    def _build_adapters(self) -> None:
        self.adapters = {n: sim_node_adapters(self.store, n, self.spec) for n in self.names}

    # --- bookkeeping ----------------------------------------------------------------------

    def _begin(self, kind: str, entry: dict[str, Any]) -> None:
        if kind not in ("tick", "plan", "apply-next", "client-write", "expect", "heal", "time"):
            self.repairing = False  # a new fault (or command): the operator stops repairing
        self.step += 1
        self.counts[kind] += 1
        self.history.append(entry)

    def _note(self, kind: str, node: str | None, text: str, *, ok: bool = True) -> int:
        if not self.keep_timeline:
            return -1
        self.timeline.append(Record(self.step, kind, node, text, ok, self.world_line()))
        return len(self.timeline) - 1

    def _world_after(self, index: int) -> None:
        if index >= 0:
            self.timeline[index].world = self.world_line()

    def _drain_events(self) -> None:
        if self.w.events:
            for text in self.w.events:
                self._note("event", None, text)
            self.w.events.clear()
        if self.w.split_brain_events:
            self.split_brain.extend(self.w.split_brain_events)
            self.w.split_brain_events.clear()

    # --- invariants -------------------------------------------------------------------------

    def check(self, what: str, *, by_agent: bool, extra: Sequence[Violation] = ()) -> None:
        """Check every invariant now. ``by_agent``: an executed action, which may not add any
        structural violation; otherwise a fault, whose violations are remembered as its own.
        ``extra``: violations of the action itself (a PBD plug while nothing served)."""
        self._drain_events()
        current = invariant_violations(self.w.facts())
        data: list[Violation] = []
        for r in self.resources:
            data.extend(data_violations(self.w.data_facts(r)))
        # A fault's violations are the fault's; an executed action may not add any.
        new = [v for v in current if v not in self.known] if by_agent else []
        if new and self.hand_vips:
            new = [v for v in new if not self._hand_made(v)]
        self.known = self.known & set(current) if by_agent else set(current)
        problems = new + data + list(extra)
        if not problems:
            return
        if self.override_promotions:
            accepted = [p for p in problems if p.kind in _OVERRIDE_CONSEQUENCES]
            problems = [p for p in problems if p.kind not in _OVERRIDE_CONSEQUENCES]
            for p in accepted:
                key = (p.kind, p.resource, p.vip)  # reported once per kind of consequence
                if key not in self._accepted:
                    self._accepted.add(key)
                    text = f"split brain accepted by the operator's override: {p}"
                    self.split_brain.append(text)
                    self._note("event", None, text)
            if by_agent:
                self.known |= {p for p in accepted if p in current}
        if not problems:
            return
        self.violations.extend(Finding(self.step, what, str(p), p) for p in problems)
        self._note("violation", None, "; ".join(map(str, problems)), ok=False)
        if self.raise_on_violation:
            raise InvariantViolation(self.step, what, problems, self.to_scenario_yaml())

    def _hand_made(self, problem: Violation) -> bool:
        """A VIP problem caused by an address an operator configured by hand, which the agent's
        action only revealed: it acted on an observation taken before that address appeared
        (check-then-act). Either a conflict (the VIP adapter does not probe again right before
        `ip addr add`), or a demote planned while the address was not there, which leaves the
        hand-made VIP on a Secondary until the next tick removes it. The fault's, not the
        agents'; the agents must still converge afterwards."""
        self.hand_vips = {(n, ip) for n, ip in self.hand_vips if ip in self.w.nodes[n].vips}
        kind = problem.kind
        return any(
            (kind is ViolationKind.VIP_ON_TWO_NODES and problem.vip == ip and n in problem.nodes)
            or (kind is ViolationKind.VIP_NOT_ON_PRIMARY and problem.nodes == (n,))
            for n, ip in self.hand_vips
        )

    def _plug_violation(self, node: str, action: Action) -> Violation | None:
        """Invariant 5 (``safety.may_plug_pbd``) on the ground truth: a PBD plug (or re-plug)
        ran while the storage was served neither when the agent observed (what it planned
        from; a fault since is the fault's) nor now (this node's own target, brought up by the
        same plan's earlier steps)."""
        here, elsewhere = self.w.storage_served(node)
        if may_plug_pbd(served_here=here, served_elsewhere=elsewhere):
            return None
        if self._served_at_plan.get(node, False):
            return None  # the world moved between the observation and the action (a race)
        return Violation(
            ViolationKind.PBD_PLUG_NOT_SERVED,
            f"{node} ran {action.describe()} while the target served the LUNs nowhere",
            nodes=(node,),
        )

    def _after_step(self, node: str) -> Callable[[StepReport], None]:
        def after(step: StepReport) -> None:
            a = step.action
            if a.kind is ActionKind.PROMOTE and a.force and step.ok:
                self.override_promotions += 1
                self._note(
                    "event", node, f"{node} promoted {a.resource} on the operator's override"
                )
            self._note(
                "action",
                node,
                f"{a.describe()}: {'ok' if step.ok else 'FAILED: ' + (step.error or '')}",
                ok=True,
            )
            plug = (
                self._plug_violation(node, a)
                if a.kind in (ActionKind.PLUG_PBD, ActionKind.REPLUG_PBD)
                else None
            )
            self.check(f"{node}: {a.describe()}", by_agent=True, extra=[plug] if plug else [])
            for _ in range(self.writes_per_action):
                self._client_write()
            if self.writes_per_action:
                self.check(f"{node}: client write after {a.describe()}", by_agent=True)

        return after

    def _client_write(self) -> None:
        """One client write to every resource; ``last_writes`` keeps each resource's outcome
        (``last_write``: the last one, None when any resource's write was not acknowledged)."""
        self.last_writes = {r: self.w.client_write(r) for r in self.resources}
        outcomes = list(self.last_writes.values())
        self.last_write = None if None in outcomes else (outcomes[-1] if outcomes else None)

    # --- agents -----------------------------------------------------------------------------

    def _tick(self, node: str, *, dry_run: bool, kind: str) -> Plan:
        """One ``reconciler.agent.tick`` of ``node`` (the production tick; looked up on the
        module at call time, so a test can wrap it and count)."""
        index = -1

        def planned(p: Plan) -> None:
            nonlocal index
            # Nothing moved since the observation (one thread, one world): what served then.
            here, elsewhere = self.w.storage_served(node)
            self._served_at_plan[node] = may_plug_pbd(
                served_here=here, served_elsewhere=elsewhere
            ).ok
            self.last_plans[node] = p
            index = self._note(kind, node, plan_text(p))

        report = agent.tick(
            self.spec,
            self.adapters[node],
            dry_run=dry_run,
            retry=SIM_RETRY,
            sleep=_no_sleep,
            guards=self.guards,
            on_plan=planned,
            after_step=None if dry_run else self._after_step(node),
        )
        if not dry_run:
            self.check(f"{node}: end of tick", by_agent=True)
            self._world_after(index)  # the timeline shows the world after the whole tick
            manual = report.observed.operator.manual_mode
            for alert in self.gates[node].admit(alerts_for(report), manual_mode=manual):
                self.sent_alerts.append((node, alert))
                self._note("alert", node, f"alert sent: {alert.message}")
        return report.plan

    def _paused(self, node: str) -> bool:
        """The node's agent is paused: it does nothing until resumed (or reset)."""
        if self.w.nodes[node].agent_paused:
            self._note("tick", node, "agent paused: no tick")
            return True
        return False

    def tick(self, node: str) -> Plan:
        """One whole tick of ``node``'s agent: observe, plan, apply (checks after each action)."""
        self._begin("tick", {"tick": node})
        if self._paused(node):
            return self.last_plans.get(node) or Plan(
                node=node, desired_role=Role.UNKNOWN, role_reason="agent paused"
            )
        self.pending[node] = []
        return self._tick(node, dry_run=False, kind="tick")

    def plan_only(self, node: str) -> Plan:
        """Observe and plan (a dry-run tick), keep the plan: ``apply_next`` runs it one action
        at a time, so faults can land between the observation and the actions (a stale plan)."""
        self._begin("plan", {"plan": node})
        if self._paused(node):
            return self.last_plans.get(node) or Plan(
                node=node, desired_role=Role.UNKNOWN, role_reason="agent paused"
            )
        p = self._tick(node, dry_run=True, kind="plan")
        self.pending[node] = list(p.actions)
        self._pending_plan[node] = p
        self._pending_failed[node] = set()
        self._pending_done[node] = set()
        return p

    def apply_next(self, node: str) -> None:
        """The next action of the kept plan, through the executor (as the rest of its tick)."""
        self._begin("apply-next", {"applyNext": node})
        if self._paused(node):
            return
        if not self.pending[node]:
            self._note("action", node, "nothing pending")
            return
        kept = self._pending_plan[node]
        index = len(kept.actions) - len(self.pending[node])
        action = self.pending[node].pop(0)
        failed, done = self._pending_failed[node], self._pending_done[node]
        blocker = action.waits_for(index, failed=failed, done=done)
        if blocker is not None:
            # The executor's rule, one action at a time: a dependency failed, skip it.
            failed.add(index)
            if action.after is None:
                self.pending[node] = []
            self._note("action", node, skipped_step(action, kept.actions[blocker]).error or "")
            return
        report = apply(
            _one_action(self._pending_plan[node], action),
            self.spec,
            self.adapters[node],
            retry=SIM_RETRY,
            sleep=_no_sleep,
            after_step=self._after_step(node),
        )
        if report.failed is None:
            done.add(index)
        else:
            failed.add(index)  # what depends on it is skipped (within its chain only)
            if action.after is None:
                self.pending[node] = []  # a plan without chains stops at the first failure

    def agent_crash(self, node: str) -> None:
        """The agent process dies mid-apply: the rest of its plan never runs."""
        self._begin("agent-crash-mid-apply", {"agentCrash": node})
        dropped = len(self.pending[node])
        self.pending[node] = []
        self._note("fault", node, f"agent crashed mid-apply ({dropped} action(s) never ran)")

    # --- faults -------------------------------------------------------------------------------

    def fault(
        self, name: str, node: str | None = None, *, resource: str | None = None, **kw: Any
    ) -> None:
        """Apply one fault of the environment (see ``FAULTS``); ``resource``: only to that
        DRBD resource (``faults.PER_RESOURCE``: disconnect, detachDisk, failDisk, replaceDisk,
        inject), else to every one."""
        entry: dict[str, Any] = {name: node if node is not None else kw.get("value", True)}
        if resource is not None:
            kw = dict(kw, resource=resource)
            if name != "inject":  # the scenario format's per-resource step
                entry = {name: {"node": node, "resource": resource}}
        if name == "inject":
            entry = {"inject": {"node": node, **{k: v for k, v in kw.items() if v is not None}}}
        if name in ("etcdDown", "etcdUp"):
            entry = {name: True}
        if name in ("etcdMemberDown", "etcdMemberUp"):
            member = kw.get("value")
            if isinstance(member, bool) or not isinstance(member, int):
                # The first member that can change (the scenario step names it).
                up = name == "etcdMemberUp"
                members = self.w.witness.members
                member = next((i for i, m in enumerate(members) if m != up), 0)
            kw = dict(kw, value=member)
            entry = {name: member}
        label = fault_label(name, kw)
        self._begin(label, entry)
        text = apply_fault(self, name, node, kw)
        self._note("fault", node, text)
        self.check(text, by_agent=False)

    # --- operator commands (the CLI's use cases) ----------------------------------------

    def operator(self, node: str, command: str, *, force: bool = False) -> tuple[bool, str]:
        """``manual-mode enable|disable``, ``become-primary [--force]``, ``become-secondary``.
        Returns (accepted, message); an accepted become-* runs a tick, like the CLI."""
        label = command + (" --force" if force else "")
        entry: dict[str, Any] = {"node": node, "command": command}
        if force:
            entry["force"] = True
        self._begin(f"operator {label}", {"operator": entry})
        ok, text = self._operator(node, command, force)
        self._note("operator", node, f"{label}: {text}", ok=True)
        if not ok:
            self.counts[f"operator {label} (refused)"] += 1
        self.check(f"{node}: {label}", by_agent=False)
        if ok and command in ("become-primary", "become-secondary"):
            self.tick(node)
        return ok, text

    def _operator(self, node: str, command: str, force: bool) -> tuple[bool, str]:
        """The CLI's use case (``reconciler.operations``): one set of rules and messages."""
        out = operations.operator_command(
            self.spec, node, self.adapters[node], command, force=force
        )
        return out.accepted, out.message

    # --- role source, spec, client ----------------------------------------------------------------

    def set_pool_master(self, master: str | None) -> None:
        """The pool agrees on a (new) master, e.g. HA-Lizard promoting the slave."""
        self._begin("pool-master-change", {"poolMaster": master or "none"})
        self.w.pool_master = master
        self.w.pool_views = {}
        self._note("role", None, f"pool master is now {master or 'nobody'} (both nodes agree)")
        self.check("pool master change", by_agent=False)

    def split_pool(self, views: Mapping[str, str | None]) -> None:
        """Each node believes its own pool master (a pool split: the role source is wrong)."""
        self._begin("pool-split", {"poolViews": {k: v or "none" for k, v in views.items()}})
        self.w.pool_views = dict(views)
        shown = ", ".join(f"{n} believes {m or 'nobody'}" for n, m in views.items())
        self._note("role", None, f"pool split: {shown}")
        self.check("pool split", by_agent=False)

    def wait(self, seconds: float) -> None:
        """Simulated time passes (nothing else happens): alert grace and screen times, and the
        witness's clock (leases expire; no agent ticks meanwhile: see ``elapse``)."""
        self._begin("wait", {"wait": f"{seconds:g}s"})
        self.clock += seconds
        self.w.now += seconds
        self._note("time", None, f"{seconds:g} s pass (simulated clock at {self.clock:g} s)")
        self._watchdogs()

    # --- time and the witness -----------------------------------------------------------

    @property
    def witness_on(self) -> bool:
        return self.spec.spec.adapters.witness != "none"

    def gap(self) -> float:
        """G: the longest between two witness observations of a running agent (the timing
        rule's tickInterval + 2 x retryTimeout): time never moves further past a running
        agent's last observation (``advance``)."""
        return self.spec.spec.witness.gap(self.spec.spec.timings.tick_interval)

    def advance(self, seconds: float) -> float:
        """Time passes by up to ``seconds`` on the witness's clock (and the alert clock), as
        far as every running agent keeps its tick rhythm: never more than G past an agent's
        last observation (a paused agent excepted: that is what a pause is), and never past a
        paused node's watchdog expiry (the node is reset then). Returns the seconds passed."""
        self._begin("time", {"advance": f"{seconds:g}s"})
        w = self.w
        limit = w.now + seconds
        dog = self.spec.spec.witness.watchdog
        for n in self.names:
            nd = w.nodes[n]
            if not nd.alive:
                continue
            if not nd.agent_paused:
                limit = min(limit, nd.last_observed + self.gap())
            elif dog is not None:
                limit = min(limit, nd.last_observed + dog.timeout)
        passed = max(0.0, limit - w.now)
        w.now += passed
        self.clock += passed
        self._note("time", None, f"{passed:g} s pass (witness clock at {w.now:g} s)")
        self._watchdogs()
        self.check("time passes", by_agent=False)
        return passed

    def _watchdogs(self) -> None:
        """A paused agent pets nothing: its node's watchdog resets it ``timeout`` seconds
        after the last pet (the agent's last observation)."""
        dog = self.spec.spec.witness.watchdog
        if dog is None or not self.witness_on:
            return
        for n in self.names:
            nd = self.w.nodes[n]
            if nd.alive and nd.agent_paused and self.w.now >= nd.last_observed + dog.timeout:
                self.w.crash(n)
                self.pending[n] = []
                self.counts["watchdog reset"] += 1
                self._note("fault", n, f"{n}'s watchdog expired: the node is reset (power cycle)")
                self.w.boot(n)

    def elapse(self, seconds: float) -> None:
        """``seconds`` pass with both agents ticking every tickInterval (a scenario's view of
        steady time: the failover time of the witness plays out)."""
        interval = self.spec.spec.timings.tick_interval
        left = seconds
        while left > 1e-9:
            left -= self.advance(min(interval, left))
            for n in self.names:
                if self.w.nodes[n].alive:
                    self.tick(n)

    def split_brain_recovery(self, node: str, *, resource: str, survivor: str) -> tuple[bool, str]:
        """The guided split-brain recovery on ``node`` (``reconcile split-brain RES --survivor
        S --node N --yes``), through the CLI's use case, invariants checked after each step."""
        self._begin(
            "split-brain recovery",
            {"splitBrain": {"node": node, "resource": resource, "survivor": survivor}},
        )
        out = operations.split_brain_recovery(
            self.spec,
            node,
            self.adapters[node],
            resource=resource,
            survivor=survivor,
            confirmed=True,
            retry=SIM_RETRY,
            sleep=_no_sleep,
            after_step=self._after_step(node),
        )
        self._note("operator", node, f"split-brain recovery: {out.message}")
        self.check(f"{node}: split-brain recovery", by_agent=False)
        return out.accepted, out.message

    def edit_spec(self, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` (YAML keys, below ``spec``) into the spec; the agents see the new
        spec from their next tick on."""
        self._begin("spec-edit", {"spec": dict(changes)})
        data = self.spec.model_dump(mode="json", by_alias=True)
        _merge(data["spec"], dict(changes))
        self.spec = StorageCluster.model_validate(data)
        self.w.ensure_srs(self.spec)  # adapters.hypervisor switched on: the pool's SRs appear
        self._build_adapters()
        for gate in self.gates.values():
            gate.settings = self.spec.spec.alerts
        self._note("spec", None, f"spec edited: {_compact(changes)}")
        self.check("spec edit", by_agent=False)

    def write(self, count: int = 1) -> int:
        """``count`` client writes through the VIP to every resource; returns how many were
        acknowledged on every resource (``acked_per_resource`` says it per resource)."""
        self._begin("client-write", {"write": count})
        acked = 0
        self.acked_per_resource = {r: 0 for r in self.resources}
        for _ in range(count):
            self._client_write()
            acked += self.last_write is not None
            for r, outcome in self.last_writes.items():
                self.acked_per_resource[r] += outcome is not None
        per = ", ".join(f"{r} {n}/{count}" for r, n in self.acked_per_resource.items())
        self._note("write", None, f"client writes acknowledged: {per}")
        self.check("client write", by_agent=False)
        return acked

    # --- liveness -----------------------------------------------------------------------------

    def heal(self) -> None:
        """Faults stop: every node up and on the switch, links up, disks back, no injected
        faults or strangers, manual mode off, and the role source agrees on one master."""
        self._begin("heal", {"heal": True})
        w = self.w
        for n in self.names:
            self.pending[n] = []
            w.nodes[n].isolated = False
            w.nodes[n].heuristics_reachable = True
            w.nodes[n].manual_mode = False
            w.nodes[n].chosen_role = None
            w.nodes[n].force = False
            w.nodes[n].xapi_reachable = True
            w.nodes[n].etcd_cut = False
            w.nodes[n].agent_paused = False
        w.witness.members = [True] * len(w.witness.members)
        w.faults = []
        w.strangers = []
        w.pool_views = {}
        # Networks first, power last: a frozen Primary's fence-peer handler must not meet a
        # peer that just booted while the networks still looked partitioned.
        w.set_links(replication=True, management=True)
        for n in self.names:
            if not w.nodes[n].alive:
                w.boot(n)
        self.repairing = True
        self._repair_disks()
        if self.spec.spec.role_source.type is RoleSourceType.POOL_MASTER and w.pool_master is None:
            holders = self.primaries()
            w.pool_master = holders[0] if len(holders) == 1 else self.names[0]
        self._note("fault", None, "faults stop: everything healed, the role source agrees")
        self.check("heal", by_agent=False)

    def peer_has_data(self, node: str, resource: str | None = None) -> bool:
        """The peer holds an UpToDate copy of every resource (or of ``resource``) on a working
        disk, with every acknowledged write on it: failing ``node``'s disk now loses nothing
        (the fault model's one-disk-at-a-time rule). UpToDate alone is not enough: after a
        takeover on the witness, the writes acknowledged while disconnected are on the new
        primary's disk only, and the old primary's disk still says UpToDate."""
        w = self.w
        peer = w.nodes[w.peer(node)]
        names = self.resources if resource is None else [resource]
        return all(
            not peer.resources[r].disk_broken
            and peer.resources[r].disk is DiskState.UPTODATE
            and set(w.acked.get(r, [])) - set(w.destroyed.get(r, []))
            <= set(peer.resources[r].history)
            for r in names
        )

    def _repair_disks(self) -> None:
        """The operator attaches a new or the detached disk (DRBD may refuse it for now:
        under a disconnected Primary it attaches only the data that Primary exposes)."""
        w = self.w
        for n in self.names:
            for r in self.resources:
                res = w.nodes[n].resources[r]
                if res.disk_broken or res.disk in _NO_DATA:
                    w.replace_disk(n, r)

    def primaries(self) -> list[str]:
        return [
            n
            for n in self.names
            if self.w.nodes[n].alive
            and any(
                res.up and res.role is Role.PRIMARY for res in self.w.nodes[n].resources.values()
            )
        ]

    def expected_primary(self) -> str | None:
        """Where storage should end up: the operator's choice in manual mode, else what the
        role source says."""
        manual = [n for n in self.names if self.w.nodes[n].manual_mode]
        if manual:
            chosen = [n for n in manual if self.w.nodes[n].chosen_role is Role.PRIMARY]
            if len(chosen) == 1:
                return chosen[0]
            holders = self.primaries()
            return holders[0] if len(holders) == 1 else None
        rs = self.spec.spec.role_source
        if rs.type is RoleSourceType.POOL_MASTER:
            return self.w.pool_master
        if rs.type is RoleSourceType.STATIC:
            holders = self.primaries()
            if not rs.failback and len(holders) == 1:
                return holders[0]
            return rs.preferred
        return None

    def serving_ok(self, node: str) -> str | None:
        """None when ``node`` alone serves everything and clients reach it; else why not."""
        w = self.w
        other = w.peer(node)
        nd, od = w.nodes[node], w.nodes[other]
        for r in self.resources:
            if nd.resources[r].role is not Role.PRIMARY or not nd.resources[r].up:
                return f"{node} is not Primary for {r}"
            if od.resources[r].up and od.resources[r].role is Role.PRIMARY:
                return f"{other} is Primary for {r} too"
            if nd.resources[r].frozen:
                return f"{node}'s I/O on {r} is frozen"
        for v in self.spec.spec.vips:
            if v.ip not in nd.vips or v.ip in od.vips:
                return f"VIP {v.ip} is not on {node} alone"
            if w.arp_owner.get(v.ip) != node:
                return f"clients still send VIP {v.ip} traffic to {w.arp_owner.get(v.ip)}"
        if not nd.target_running or set(nd.exported) != {x.lun for x in self.spec.spec.target.luns}:
            return f"{node} does not export every LUN"
        if od.target_running:
            return f"the target also runs on {other}"
        return None

    def replication_ok(self) -> bool:
        for r in self.resources:
            for n in self.names:
                res = self.w.nodes[n].resources[r]
                if not res.connected or res.disk is not DiskState.UPTODATE or res.sync_left:
                    return False
        return True

    def converge(
        self, max_rounds: int = 10, order: Sequence[str] | None = None
    ) -> tuple[int | None, int | None]:
        """Tick both agents in rounds until one Primary serves where the role source says.
        Returns (K, K_sync): rounds until serving, and until replication is healthy too
        (None: not within ``max_rounds``).

        Also sets ``k_served``: rounds until every resource that some node could serve when
        the rounds began (alive, on the switch, its disk UpToDate) is served through the VIP,
        wherever (the liveness property "storage is served"; None: not within the rounds)."""
        nodes = list(order or self.names)
        k = k_sync = None
        servable = [
            r
            for r in self.resources
            if any(
                self.w.on_switch(n) and self.w.nodes[n].resources[r].disk is DiskState.UPTODATE
                for n in self.names
            )
        ]
        self.k_served = None if servable else 0
        for i in range(1, max_rounds + 1):
            if self.repairing:
                self._repair_disks()
            for n in nodes:
                self.tick(n)
            if self.witness_on:  # a round is one tick interval of simulated time
                self.advance(self.spec.spec.timings.tick_interval)
            self._client_write()  # a client keeps writing (and re-ARPs when it times out)
            if self.k_served is None and all(self.w.serving_node(r) for r in servable):
                self.k_served = i
            expected = self.expected_primary()
            if k is None and expected is not None and self.serving_ok(expected) is None:
                k = i
            if k is not None and self.replication_ok() and self.k_served is not None:
                k_sync = i
                break
        return k, k_sync

    def diverged(self) -> bool:
        """Some resource is split-brained (DRBD flagged it, or both sides hold writes the
        other lacks)."""
        for r in self.resources:
            a, b = (self.w.nodes[n].resources[r] for n in self.names)
            if a.split_brain or b.split_brain:
                return True
            ha, hb = set(a.history), set(b.history)
            if (ha - hb) and (hb - ha) and a.disk not in _NO_DATA and b.disk not in _NO_DATA:
                return True
        return False

    # --- rendering --------------------------------------------------------------------------

    def world_line(self) -> str:
        return world_line(self.w, self.names, self.resources)

    def to_scenario_yaml(self) -> str:
        """The steps run so far as a scenario file ``reconcile simulate --scenario`` replays."""
        return scenario_yaml(
            fencing=self.fencing, writes_per_action=self.writes_per_action, steps=self.history
        )


_NO_DATA = (DiskState.DISKLESS, DiskState.FAILED)
# Consequences of a split brain the operator's override accepted ("on no disk" stays strict).
_OVERRIDE_CONSEQUENCES = frozenset(
    {
        ViolationKind.TWO_PRIMARIES,
        ViolationKind.VIP_ON_TWO_NODES,
        ViolationKind.SERVES_STALE_DATA,
    }
)


def _no_sleep(_: float) -> None:
    return None


def _one_action(plan: Plan, action: Action) -> Plan:
    """``plan`` cut down to one of its actions (what ``apply_next`` hands the executor)."""
    # Its dependencies were checked by ``apply_next`` against the kept plan's indices.
    return replace(plan, actions=(replace(action, after=(), after_any=()),), blocked=())


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _compact(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_compact(v)}" for k, v in value.items())
    return str(value)


def new_simulation(
    spec: StorageCluster,
    *,
    fencing: Fencing = DEFAULT_FENCING,
    pool_master: str | None = None,
    drbd_up: bool = True,
    resync_steps: int = 2,
    writes_per_action: int = 1,
    guards: Guards = DEFAULT_GUARDS,
    raise_on_violation: bool = False,
) -> Simulation:
    world = World.fresh(spec, pool_master=pool_master, drbd_up=drbd_up, fencing=fencing)
    world.resync_steps = resync_steps
    return Simulation(
        spec,
        fencing=fencing,
        world=world,
        guards=guards,
        writes_per_action=writes_per_action,
        raise_on_violation=raise_on_violation,
    )
