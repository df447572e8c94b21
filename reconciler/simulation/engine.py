"""Failover simulations: ``reconcile simulate`` and the engine of the property-based tests.

One engine for both, so what CI proves at depth is what a user replays against their own spec:
two agents (observe -> plan -> apply, exactly the CLI's path) act on one in-memory simulated
cluster (adapters/sim/world.py) while faults, operator commands, role-source changes and spec
edits happen between (and, with ``plan``/``applyNext``, in the middle of) their ticks.

Invariants (reconciler.core.safety) are checked after *every executed action* and after every
fault, not only after whole ticks:
- structural (``invariant_violations``): at most one Primary per resource, a VIP on at most one
  node and only on a Primary, LUNs exported only from a Primary. A violation that a fault
  created (an operator adding the VIP by hand on the secondary) is the fault's, not the agents':
  the agents may leave it for the next tick, but no executed action may add a new one;
- data (``data_violations``): every node that serves holds every acknowledged write, and every
  acknowledged write is on some disk (writes destroyed with their only disk are hardware loss,
  counted apart).

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

import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from adapters.base import NodeAdapters
from adapters.sim.adapters import sim_node_adapters
from adapters.sim.world import Fault, Fencing, World, WorldStore
from reconciler.core import specload
from reconciler.core.observed import DiskState, OperatorState, Role
from reconciler.core.plan import Action, ActionKind, Plan
from reconciler.core.planner import DEFAULT_GUARDS, Guards
from reconciler.core.planner import plan as make_plan
from reconciler.core.safety import data_violations, invariant_violations
from reconciler.core.spec import RoleSourceType, StorageCluster
from reconciler.core.specload import SpecError, SpecProblem
from reconciler.executor import RetryPolicy, StepReport, apply
from reconciler.observe import observe

# No real sleeping: the executor still retries transient errors, instantly.
SIM_RETRY = RetryPolicy(attempts=3, backoff=0.01, backoff_max=0.01)
DEFAULT_FENCING: Fencing = "resource-and-stonith"

# Operations whose injected faults make adapters fail (the executor's retry paths) or observe
# garbage (the planner's "unknown" paths).
ACTION_OPS = (
    "drbd-up",
    "drbd-primary",
    "drbd-secondary",
    "drbd-connect",
    "vip-add",
    "vip-remove",
    "vip-announce",
    "target-start",
    "target-stop",
    "target-export",
)
OBSERVE_OPS = ("drbd-observe", "vip-observe", "target-observe", "role-observe")


class InvariantViolation(AssertionError):
    """An invariant broke; ``step`` names the simulation step, ``problems`` say what."""

    def __init__(self, step: int, what: str, problems: Sequence[str], replay: str) -> None:
        self.step = step
        self.what = what
        self.problems = tuple(problems)
        self.replay = replay
        text = "; ".join(problems)
        super().__init__(
            f"invariant violated at step {step} ({what}): {text}\n"
            f"replay it with `reconcile simulate --scenario FILE` on this scenario:\n{replay}"
        )


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
    violations: list[str] = field(default_factory=list)
    split_brain: list[str] = field(default_factory=list)
    override_promotions: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    last_plans: dict[str, Plan] = field(default_factory=dict)
    last_write: int | None = None
    repairing: bool = False  # after heal(): the operator re-attaches disks until it works

    def __post_init__(self) -> None:
        if self.world is None:
            self.world = World.fresh(self.spec, fencing=self.fencing)
        self.w: World = self.world
        self.store = WorldStore(self.w)
        self.names = self.spec.node_names
        self.adapters: dict[str, NodeAdapters] = {}
        self._build_adapters()
        self.pending: dict[str, list[Action]] = {n: [] for n in self.names}
        self.known: set[str] = set(invariant_violations(self.w.facts()))
        # VIPs an operator configured by hand (a fault), while they stay configured.
        self.hand_vips: set[tuple[str, str]] = set()
        self._accepted: set[str] = set()
        self.resources = [r.name for r in self.spec.spec.resources]

    def _build_adapters(self) -> None:
        self.adapters = {n: sim_node_adapters(self.store, n, self.spec) for n in self.names}

    # --- bookkeeping ----------------------------------------------------------------------

    def _begin(self, kind: str, entry: dict[str, Any]) -> None:
        if kind not in ("tick", "plan", "apply-next", "client-write", "expect", "heal"):
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
                if "split brain" in text:
                    self.split_brain.append(text)
            self.w.events.clear()

    # --- invariants -------------------------------------------------------------------------

    def check(self, what: str, *, by_agent: bool) -> None:
        """Check every invariant now. ``by_agent``: an executed action, which may not add any
        structural violation; otherwise a fault, whose violations are remembered as its own."""
        self._drain_events()
        current = invariant_violations(self.w.facts())
        data: list[str] = []
        for r in self.resources:
            data.extend(data_violations(self.w.data_facts(r)))
        # A fault's violations are the fault's; an executed action may not add any.
        new = [v for v in current if v not in self.known] if by_agent else []
        if new and self.hand_vips:
            new = [v for v in new if not self._hand_made(v)]
        self.known = self.known & set(current) if by_agent else set(current)
        problems = new + data
        if not problems:
            return
        if self.override_promotions:
            accepted = [p for p in problems if _override_consequence(p)]
            problems = [p for p in problems if not _override_consequence(p)]
            for p in accepted:
                key = re.sub(r"\d+", "#", p)
                if key not in self._accepted:
                    self._accepted.add(key)
                    text = f"split brain accepted by the operator's override: {p}"
                    self.split_brain.append(text)
                    self._note("event", None, text)
            if by_agent:
                self.known |= {p for p in accepted if p in current}
        if not problems:
            return
        self.violations.extend(f"step {self.step} ({what}): {p}" for p in problems)
        self._note("violation", None, "; ".join(problems), ok=False)
        if self.raise_on_violation:
            raise InvariantViolation(self.step, what, problems, self.to_scenario_yaml())

    def _hand_made(self, problem: str) -> bool:
        """A VIP problem caused by an address an operator configured by hand, which the agent's
        action only revealed: it acted on an observation taken before that address appeared
        (check-then-act). Either a conflict (the VIP adapter does not probe again right before
        `ip addr add`), or a demote planned while the address was not there, which leaves the
        hand-made VIP on a Secondary until the next tick removes it. The fault's, not the
        agents'; the agents must still converge afterwards."""
        self.hand_vips = {(n, ip) for n, ip in self.hand_vips if ip in self.w.nodes[n].vips}
        return any(
            (problem.startswith(f"VIP {ip} on two nodes") and n in problem)
            or problem == f"VIP on {n}, which is not Primary"
            for n, ip in self.hand_vips
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
            self.check(f"{node}: {a.describe()}", by_agent=True)
            for _ in range(self.writes_per_action):
                self._client_write()
            if self.writes_per_action:
                self.check(f"{node}: client write after {a.describe()}", by_agent=True)

        return after

    def _client_write(self) -> None:
        last = None
        for r in self.resources:
            last = self.w.client_write(r)
        self.last_write = last

    # --- agents -----------------------------------------------------------------------------

    def _plan(self, node: str) -> Plan:
        observed = observe(self.spec, self.adapters[node])
        p = make_plan(self.spec, observed, guards=self.guards)
        self.last_plans[node] = p
        return p

    def tick(self, node: str) -> Plan:
        """One whole tick of ``node``'s agent: observe, plan, apply (checks after each action)."""
        self._begin("tick", {"tick": node})
        self.pending[node] = []
        p = self._plan(node)
        index = self._note("tick", node, _plan_text(p))
        apply(
            p,
            self.spec,
            self.adapters[node],
            retry=SIM_RETRY,
            sleep=_no_sleep,
            after_step=self._after_step(node),
        )
        self.check(f"{node}: end of tick", by_agent=True)
        self._world_after(index)  # the timeline shows the world after the whole tick
        return p

    def plan_only(self, node: str) -> Plan:
        """Observe and plan, keep the plan: ``apply_next`` runs it one action at a time, so
        faults can land between the observation and the actions (a stale plan)."""
        self._begin("plan", {"plan": node})
        p = self._plan(node)
        self.pending[node] = list(p.actions)
        self._note("plan", node, _plan_text(p))
        return p

    def apply_next(self, node: str) -> None:
        self._begin("apply-next", {"applyNext": node})
        if not self.pending[node]:
            self._note("action", node, "nothing pending")
            return
        action = self.pending[node].pop(0)
        one = Plan(node=node, desired_role="", role_reason="", actions=(action,))
        report = apply(
            one,
            self.spec,
            self.adapters[node],
            retry=SIM_RETRY,
            sleep=_no_sleep,
            after_step=self._after_step(node),
        )
        if report.failed is not None:
            self.pending[node] = []  # the executor stops at the first failed step

    def agent_crash(self, node: str) -> None:
        """The agent process dies mid-apply: the rest of its plan never runs."""
        self._begin("agent-crash-mid-apply", {"agentCrash": node})
        dropped = len(self.pending[node])
        self.pending[node] = []
        self._note("fault", node, f"agent crashed mid-apply ({dropped} action(s) never ran)")

    # --- faults -------------------------------------------------------------------------------

    def fault(self, name: str, node: str | None = None, **kw: Any) -> None:
        """Apply one fault of the environment (see ``FAULTS``)."""
        entry: dict[str, Any] = {name: node if node is not None else kw.get("value", True)}
        if name == "inject":
            entry = {"inject": {"node": node, **kw}}
        label = _fault_label(name, kw)
        self._begin(label, entry)
        text = self._apply_fault(name, node, kw)
        self._note("fault", node, text)
        self.check(text, by_agent=False)

    def _apply_fault(self, name: str, node: str | None, kw: Mapping[str, Any]) -> str:
        w = self.w
        n = node or ""
        if name == "crash":
            w.crash(n)
            self.pending[n] = []
            return f"{n} crashed (power lost)"
        if name == "boot":
            w.boot(n)
            return f"{n} booted"
        if name == "replication":
            w.set_links(replication=bool(kw["value"]))
            return f"replication link {'healed' if kw['value'] else 'cut'}"
        if name == "management":
            w.set_links(management=bool(kw["value"]))
            return f"management path between the nodes {'healed' if kw['value'] else 'cut'}"
        if name == "isolate":
            w.isolate(n, True)
            return f"{n} isolated from the switch (no clients, heuristics or peer management)"
        if name == "rejoin":
            w.isolate(n, False)
            return f"{n} back on the switch"
        if name == "killTarget":
            if w.nodes[n].alive:
                w.target_stop(n)
            return f"tgtd died on {n}"
        if name == "removeVip":
            for v in self.spec.spec.vips:
                if w.nodes[n].alive:
                    w.vip_remove(n, v.ip)
            return f"VIP removed by hand on {n}"
        if name == "addVip":
            for v in self.spec.spec.vips:
                if w.nodes[n].alive:
                    w.vip_add(n, v.ip)
                    self.hand_vips.add((n, v.ip))
            return f"VIP added by hand on {n}"
        if name == "stranger":
            w.strangers = [v.ip for v in self.spec.spec.vips] if kw["value"] else []
            return "another host answers on the VIP" if kw["value"] else "the VIP stranger left"
        if name == "disconnect":
            for r in self.resources:
                if w.nodes[n].alive and w.nodes[n].resources[r].up:
                    w.drbd_disconnect(n, r)
            return f"DRBD disconnected by hand on {n} (StandAlone)"
        if name == "detachDisk":
            for r in self.resources:
                w.detach_disk(n, r)
            return f"disk detached on {n} (Diskless)"
        if name == "failDisk":
            for r in self.resources:
                w.fail_disk(n, r)
            return f"disk failed on {n} (Failed, data gone)"
        if name == "replaceDisk":
            for r in self.resources:
                w.replace_disk(n, r)
            return f"disk attached again / replaced on {n}"
        if name == "inject":
            op, kind, count = kw["op"], kw.get("kind", "transient"), int(kw.get("count", 1))
            w.faults.append(Fault(node=n, op=op, kind=kind, count=count))
            times = "every time" if count < 0 else f"{count} time(s)"
            return f"{op} on {n} will fail: {kind}, {times}"
        if name == "clearFaults":
            w.faults = []
            return "injected command faults cleared"
        raise ValueError(f"unknown fault {name!r}")

    # --- operator commands (the same checks as the CLI's) ----------------------------------------

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
        adapters = self.adapters[node]
        current = adapters.operator.load()
        if command == "manual-mode enable":
            adapters.operator.save(OperatorState(manual_mode=True, chosen_role=current.chosen_role))
            return True, "manual mode enabled"
        if command == "manual-mode disable":
            obs = observe(self.spec, adapters)
            native = obs.role_source.role
            holding = (
                Role.PRIMARY
                if any(r.role is Role.PRIMARY for r in obs.resources)
                else Role.SECONDARY
            )
            if native is Role.UNKNOWN:
                return False, f"refused: the role source has no verdict ({obs.role_source.detail})"
            if native is not holding:
                return (
                    False,
                    f"refused: {node} is {holding.value} but its native role is {native.value}",
                )
            adapters.operator.save(OperatorState())
            return True, "manual mode disabled"
        if command not in ("become-primary", "become-secondary"):
            raise ValueError(f"unknown operator command {command!r}")
        if not current.manual_mode:
            return False, f"refused: {node} is not in manual mode"
        if command == "become-secondary":
            adapters.operator.save(OperatorState(manual_mode=True, chosen_role=Role.SECONDARY))
            return True, "accepted"
        obs = observe(self.spec, adapters)
        if any(r.peer_role is Role.PRIMARY for r in obs.resources):
            return False, "refused: the peer is Primary"
        if any(v.answered_elsewhere for v in obs.vips):
            return False, "refused: the VIP answers from another host"
        adapters.operator.save(
            OperatorState(manual_mode=True, chosen_role=Role.PRIMARY, force=force)
        )
        return True, "accepted"

    # --- role source, spec, client ----------------------------------------------------------------

    def set_pool_master(self, master: str | None) -> None:
        """The pool agrees on a (new) master, e.g. HA-Lizard promoting the slave."""
        self._begin("pool-master-change", {"poolMaster": master})
        self.w.pool_master = master
        self.w.pool_views = {}
        self._note("role", None, f"pool master is now {master or 'nobody'} (both nodes agree)")
        self.check("pool master change", by_agent=False)

    def split_pool(self, views: Mapping[str, str | None]) -> None:
        """Each node believes its own pool master (a pool split: the role source is wrong)."""
        self._begin("pool-split", {"poolViews": dict(views)})
        self.w.pool_views = dict(views)
        shown = ", ".join(f"{n} believes {m or 'nobody'}" for n, m in views.items())
        self._note("role", None, f"pool split: {shown}")
        self.check("pool split", by_agent=False)

    def edit_spec(self, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` (YAML keys, below ``spec``) into the spec; the agents see the new
        spec from their next tick on."""
        self._begin("spec-edit", {"spec": dict(changes)})
        data = self.spec.model_dump(mode="json", by_alias=True)
        _merge(data["spec"], dict(changes))
        self.spec = StorageCluster.model_validate(data)
        self._build_adapters()
        self._note("spec", None, f"spec edited: {_compact(changes)}")
        self.check("spec edit", by_agent=False)

    def write(self, count: int = 1) -> int:
        """``count`` client writes through the VIP; returns how many were acknowledged."""
        self._begin("client-write", {"write": count})
        acked = 0
        for _ in range(count):
            self._client_write()
            acked += self.last_write is not None
        self._note("write", None, f"{acked}/{count} client write(s) acknowledged")
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

    def peer_has_data(self, node: str) -> bool:
        """The peer holds an UpToDate copy of every resource on a working disk: failing
        ``node``'s disk now loses nothing (the fault model's one-disk-at-a-time rule)."""
        peer = self.w.nodes[self.w.peer(node)]
        return not peer.disk_broken and all(
            peer.resources[r].disk is DiskState.UPTODATE for r in self.resources
        )

    def _repair_disks(self) -> None:
        """The operator attaches a new or the detached disk (DRBD may refuse it for now:
        under a disconnected Primary it attaches only the data that Primary exposes)."""
        w = self.w
        for n in self.names:
            for r in self.resources:
                res = w.nodes[n].resources[r]
                if w.nodes[n].disk_broken or res.disk in _NO_DATA:
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
        (None: not within ``max_rounds``)."""
        nodes = list(order or self.names)
        k = k_sync = None
        for i in range(1, max_rounds + 1):
            if self.repairing:
                self._repair_disks()
            for n in nodes:
                self.tick(n)
            self._client_write()  # a client keeps writing (and re-ARPs when it times out)
            expected = self.expected_primary()
            if k is None and expected is not None and self.serving_ok(expected) is None:
                k = i
            if k is not None and self.replication_ok():
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
        w = self.w
        parts = []
        for n in self.names:
            nd = w.nodes[n]
            if not nd.alive:
                parts.append(f"{n}: DOWN")
                continue
            bits = []
            for r in self.resources:
                res = nd.resources[r]
                if not res.up:
                    bits.append(f"{r}:down/{res.disk.value}")
                    continue
                conn = (
                    "Connected" if res.connected else ("StandAlone" if res.standalone else "WFConn")
                )
                flag = "".join(
                    (
                        " FROZEN" if res.frozen else "",
                        " SPLIT-BRAIN" if res.split_brain else "",
                        f" sync{res.sync_left}" if res.sync_left else "",
                    )
                )
                bits.append(f"{r}:{res.role.value}/{res.disk.value}/{conn}{flag}")
            if nd.vips:
                bits.append("vip")
            if nd.target_running:
                bits.append(f"tgt{sorted(nd.exported)}")
            if nd.isolated:
                bits.append("ISOLATED")
            if nd.manual_mode:
                bits.append(f"manual:{nd.chosen_role.value if nd.chosen_role else '-'}")
            parts.append(f"{n}: {' '.join(bits)}")
        repl = "up" if w.replication_link else "CUT"
        links = f"repl {repl}, mgmt {'up' if w.management_link else 'CUT'}"
        master = w.pool_master or "none"
        if w.pool_views:
            master += " (split: " + ", ".join(f"{k}->{v}" for k, v in w.pool_views.items()) + ")"
        acked = sum(len(v) for v in w.acked.values())
        return f"{' | '.join(parts)} | {links} | master {master} | {acked} acked"

    def to_scenario_yaml(self) -> str:
        """The steps run so far as a scenario file ``reconcile simulate --scenario`` replays."""
        import io

        doc = {
            "apiVersion": "tandem/v1",
            "kind": "Scenario",
            "metadata": {"name": "replay", "description": "recorded by the simulator"},
            "world": {"fencing": self.fencing, "writesPerAction": self.writes_per_action},
            "steps": self.history,
        }
        out = io.StringIO()
        y = YAML(typ="safe")
        y.default_flow_style = None
        y.dump(doc, out)
        return out.getvalue()


_NO_DATA = (DiskState.DISKLESS, DiskState.FAILED)


def _override_consequence(problem: str) -> bool:
    """Consequences of a split brain the operator's override accepted (not "on no disk")."""
    return (
        problem.startswith("two primaries")
        or " on two nodes" in problem
        or ("without" in problem and "acknowledged write" in problem)
    )


def _no_sleep(_: float) -> None:
    return None


def _plan_text(p: Plan) -> str:
    head = f"should be {p.desired_role} ({p.role_reason})"
    if p.actions:
        head += "; plan: " + ", ".join(a.describe() for a in p.actions)
    for b in p.blocked:
        head += f"; blocked {b.what}: {b.reason}"
    if not p.actions and not p.blocked:
        head += "; nothing to do"
    return head


def _fault_label(name: str, kw: Mapping[str, Any]) -> str:
    if name in ("replication", "management", "stranger"):
        return f"{name} {'up' if kw['value'] else 'down'}"
    if name == "inject":
        count = int(kw.get("count", 1))
        kind = kw.get("kind", "transient")
        return f"inject {kind}{' persistent' if count < 0 else ''}"
    return name


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


# --- scenarios -----------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


NodeRef = str  # a node name of the spec, or "first" / "second"


class OperatorStep(_Model):
    node: NodeRef
    command: Literal[
        "manual-mode enable", "manual-mode disable", "become-primary", "become-secondary"
    ]
    force: bool = False
    expect: Literal["accepted", "refused"] | None = None


class InjectStep(_Model):
    node: NodeRef
    op: str = Field(description="Adapter operation, e.g. drbd-primary, vip-add, drbd-observe.")
    kind: Literal["transient", "terminal", "timeout", "garbage"] = "transient"
    count: int = Field(default=1, ge=-1, description="How many calls fail; -1: every call.")

    @model_validator(mode="after")
    def _known_op(self) -> InjectStep:
        if self.op not in ACTION_OPS + OBSERVE_OPS:
            known = ", ".join(ACTION_OPS + OBSERVE_OPS)
            raise ValueError(f"unknown operation {self.op!r}; known: {known}")
        if self.count == 0:
            raise ValueError("count 0 injects nothing; use 1.. or -1 (forever)")
        return self


class Expect(_Model):
    """What must hold after the previous steps; every key is optional."""

    primary: NodeRef | Literal["none"] | None = Field(
        default=None, description="The node where every resource is Primary ('none': nowhere)."
    )
    vip: NodeRef | Literal["none"] | None = Field(
        default=None, description="The node holding the VIP(s) alone ('none': no node)."
    )
    serving: NodeRef | Literal["none"] | None = Field(
        default=None,
        description="Where client writes through the VIP land and are acknowledged.",
    )
    replication: Literal["healthy", "degraded", "split-brain"] | None = None
    frozen: NodeRef | Literal["none"] | None = Field(
        default=None, description="The node whose Primary I/O fencing has frozen."
    )
    split_brain: bool | None = Field(
        default=None, description="The simulator has detected (and reported) a split brain."
    )
    last_write: Literal["acked", "not-acked"] | None = None
    blocked: str | None = Field(
        default=None, description="Text that a refusal in the last tick's plan contains."
    )
    reported: str | None = Field(
        default=None, description="Text that a refusal or warning of the last tick contains."
    )
    node: NodeRef | None = Field(
        default=None, description="Whose last tick 'blocked'/'reported' reads (default: any)."
    )
    alive: list[NodeRef] | None = None


class Step(_Model):
    """One step of a scenario: exactly one of the keys below (plus an optional note)."""

    note: str | None = None
    tick: NodeRef | list[NodeRef] | None = None
    ticks: int | None = Field(default=None, ge=1, le=1000, description="Rounds of both agents.")
    converge: int | None = Field(
        default=None, ge=1, le=100, description="Rounds at most until converged (fails if not)."
    )
    plan: NodeRef | None = None
    apply_next: NodeRef | None = None
    agent_crash: NodeRef | None = None
    write: int | None = Field(default=None, ge=1, le=10000)
    crash: NodeRef | None = None
    boot: NodeRef | None = None
    replication: Literal["up", "down"] | bool | None = None
    management: Literal["up", "down"] | bool | None = None
    isolate: NodeRef | None = None
    rejoin: NodeRef | None = None
    kill_target: NodeRef | None = None
    remove_vip: NodeRef | None = None
    add_vip: NodeRef | None = None
    stranger: bool | None = None
    disconnect: NodeRef | None = None
    detach_disk: NodeRef | None = None
    fail_disk: NodeRef | None = None
    replace_disk: NodeRef | None = None
    inject: InjectStep | None = None
    clear_faults: bool | None = None
    operator: OperatorStep | None = None
    pool_master: NodeRef | Literal["none"] | None = None
    pool_views: dict[NodeRef, NodeRef | Literal["none"]] | None = None
    spec: dict[str, Any] | None = None
    heal: bool | None = None
    expect: Expect | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        chosen = [
            k for k in type(self).model_fields if k != "note" and getattr(self, k) is not None
        ]
        if len(chosen) != 1:
            keys = ", ".join(to_camel(k) for k in chosen) or "none"
            raise ValueError(f"a step needs exactly one action key (got: {keys})")
        return self

    @property
    def kind(self) -> str:
        return next(
            k for k in type(self).model_fields if k != "note" and getattr(self, k) is not None
        )


class ScenarioWorld(_Model):
    fencing: Fencing = DEFAULT_FENCING
    pool_master: NodeRef | None = None
    drbd_up: bool = True
    resync_steps: int = Field(default=2, ge=1, le=100)
    writes_per_action: int = Field(default=1, ge=0, le=10)


class ScenarioMeta(_Model):
    name: str
    description: str = ""


class Scenario(_Model):
    api_version: Literal["tandem/v1"]
    kind: Literal["Scenario"]
    metadata: ScenarioMeta
    world: ScenarioWorld = Field(default_factory=ScenarioWorld)
    steps: list[Step] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class LoadedScenario:
    scenario: Scenario
    lines: tuple[int, ...]  # the line of each step in the file


def load_scenario(text: str, *, filename: str = "<scenario>") -> LoadedScenario:
    """Parse and validate a scenario; ``SpecError`` with file:line:column on any problem."""
    yaml = YAML(typ="rt")
    try:
        data = yaml.load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            [SpecProblem(line, col, "", f"not valid YAML: {problem}")], filename
        ) from None
    if not isinstance(data, CommentedMap):
        raise SpecError(
            [SpecProblem(1, 1, "", "expected a mapping (apiVersion, kind, metadata, steps)")],
            filename,
        )
    try:
        scenario = Scenario.model_validate(specload._plain(data, {}))
    except ValidationError as exc:
        raise SpecError(specload._problems(exc, data), filename) from None
    steps = data.get("steps")
    lines: list[int] = []
    for i in range(len(scenario.steps)):
        if isinstance(steps, CommentedSeq):
            lines.append(steps.lc.item(i)[0] + 1)
        else:
            lines.append(0)
    return LoadedScenario(scenario, tuple(lines))


@dataclass
class StepOutcome:
    index: int  # 1-based step of the scenario
    line: int
    kind: str
    ok: bool
    message: str
    records: tuple[int, int] = (0, 0)  # the slice of ``Simulation.timeline`` it produced
    note: str | None = None

    def to_json(self, sim: Simulation) -> dict[str, Any]:
        out: dict[str, Any] = {
            "step": self.index,
            "line": self.line,
            "kind": to_camel(self.kind),
            "ok": self.ok,
            "message": self.message,
        }
        if self.note:
            out["note"] = self.note
        out["timeline"] = [r.to_json() for r in sim.timeline[self.records[0] : self.records[1]]]
        return out


@dataclass
class RunResult:
    ok: bool
    sim: Simulation
    outcomes: list[StepOutcome] = field(default_factory=list)
    failed: StepOutcome | None = None
    k: int | None = None
    k_sync: int | None = None
    seed: int | None = None


def _resolve(spec: StorageCluster, ref: str | None) -> str | None:
    if ref is None or ref == "none":
        return None
    if ref == "first":
        return spec.node_names[0]
    if ref == "second":
        return spec.node_names[1]
    if ref not in spec.node_names:
        raise ScenarioError(
            f"{ref!r} is not a node of the spec ({', '.join(spec.node_names)}; "
            "or write 'first' / 'second')"
        )
    return ref


class ScenarioError(Exception):
    """A scenario that does not fit the spec (unknown node...)."""


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


def run_scenario(spec: StorageCluster, loaded: LoadedScenario) -> RunResult:
    sc = loaded.scenario
    sim = new_simulation(
        spec,
        fencing=sc.world.fencing,
        pool_master=_resolve(spec, sc.world.pool_master),
        drbd_up=sc.world.drbd_up,
        resync_steps=sc.world.resync_steps,
        writes_per_action=sc.world.writes_per_action,
    )
    result = RunResult(ok=True, sim=sim)
    for i, (step, line) in enumerate(zip(sc.steps, loaded.lines, strict=True), 1):
        before = len(sim.violations)
        first = len(sim.timeline)
        message = _run_step(sim, spec, step, result)
        ok = not message.startswith("FAILED") and len(sim.violations) == before
        if len(sim.violations) > before:
            # Name the scenario's step (above), not the engine's internal step counter.
            found = [re.sub(r"^step \d+ \(", "(", v) for v in sim.violations[before:]]
            message = "FAILED: invariant violated: " + "; ".join(found)
        outcome = StepOutcome(
            i, line, step.kind, ok, message, (first, len(sim.timeline)), step.note
        )
        result.outcomes.append(outcome)
        if not ok:
            result.ok = False
            result.failed = outcome
            break
    return result


def _run_step(sim: Simulation, spec: StorageCluster, step: Step, result: RunResult) -> str:
    def node(ref: str | None) -> str:
        name = _resolve(spec, ref)
        if name is None:
            raise ScenarioError("this step needs a node, not 'none'")
        return name

    kind = step.kind
    value = getattr(step, kind)
    if kind == "tick":
        for ref in value if isinstance(value, list) else [value]:
            sim.tick(node(ref))
        return "ticked"
    if kind == "ticks":
        for _ in range(value):
            for n in sim.names:
                sim.tick(n)
        return f"{value} round(s)"
    if kind == "converge":
        k, k_sync = sim.converge(max_rounds=value)
        result.k, result.k_sync = k, k_sync
        if k is None:
            why = sim.serving_ok(sim.expected_primary() or sim.names[0])
            return f"FAILED: not converged within {value} round(s): {why}"
        return f"converged: serving after {k} round(s), replication healthy after {k_sync}"
    if kind == "plan":
        sim.plan_only(node(value))
        return "planned"
    if kind == "apply_next":
        sim.apply_next(node(value))
        return "applied one action"
    if kind == "agent_crash":
        sim.agent_crash(node(value))
        return "agent crashed"
    if kind == "write":
        acked = sim.write(value)
        return f"{acked}/{value} acknowledged"
    simple = {
        "crash": "crash",
        "boot": "boot",
        "isolate": "isolate",
        "rejoin": "rejoin",
        "kill_target": "killTarget",
        "remove_vip": "removeVip",
        "add_vip": "addVip",
        "disconnect": "disconnect",
        "detach_disk": "detachDisk",
        "fail_disk": "failDisk",
        "replace_disk": "replaceDisk",
    }
    if kind in simple:
        sim.fault(simple[kind], node(value))
        return "done"
    if kind in ("replication", "management"):
        up = value if isinstance(value, bool) else value == "up"
        sim.fault(kind, value=up)
        return "done"
    if kind == "stranger":
        sim.fault("stranger", value=bool(value))
        return "done"
    if kind == "inject":
        sim.fault("inject", node(value.node), op=value.op, kind=value.kind, count=value.count)
        return "injected"
    if kind == "clear_faults":
        sim.fault("clearFaults")
        return "cleared"
    if kind == "operator":
        ok, text = sim.operator(node(value.node), value.command, force=value.force)
        want = value.expect
        if want is not None and (want == "accepted") != ok:
            return f"FAILED: expected the command to be {want}, it was {text}"
        return text
    if kind == "pool_master":
        sim.set_pool_master(_resolve(spec, value))
        return "done"
    if kind == "pool_views":
        sim.split_pool({node(k): _resolve(spec, v) for k, v in value.items()})
        return "done"
    if kind == "spec":
        try:
            sim.edit_spec(value)
        except ValidationError as exc:
            return f"FAILED: the spec edit is invalid: {exc.errors()[0]['msg']}"
        return "spec edited"
    if kind == "heal":
        sim.heal()
        return "healed"
    if kind == "expect":
        return _expect(sim, spec, value)
    raise ScenarioError(f"unknown step {kind}")  # pragma: no cover - Step validates keys


def _expect(sim: Simulation, spec: StorageCluster, e: Expect) -> str:
    w = sim.w
    sim._begin("expect", {"expect": e.model_dump(by_alias=True, exclude_none=True)})
    failures: list[str] = []
    checked: list[str] = []

    def want(label: str, expected: object, actual: object) -> None:
        checked.append(f"{label} {expected}")
        if expected != actual:
            failures.append(f"{label} should be {expected}, is {actual}")

    if e.primary is not None:
        holders = sim.primaries()
        actual = holders[0] if len(holders) == 1 else ("none" if not holders else "+".join(holders))
        want("primary", _resolve(spec, e.primary) or "none", actual)
    if e.vip is not None:
        holders = [n for n in sim.names if w.nodes[n].alive and w.nodes[n].vips]
        actual = holders[0] if len(holders) == 1 else ("none" if not holders else "+".join(holders))
        want("vip", _resolve(spec, e.vip) or "none", actual)
    if e.serving is not None:
        serving = {w.serving_node(r) for r in sim.resources}
        frozen = any(
            w.nodes[n].resources[r].frozen for n in sim.names for r in sim.resources if n in serving
        )
        at: str | None = serving.pop() if len(serving) == 1 else "mixed"
        want(
            "serving",
            _resolve(spec, e.serving) or "none",
            "none" if at is None or frozen else at,
        )
    if e.replication is not None:
        if any(w.nodes[n].resources[r].split_brain for n in sim.names for r in sim.resources):
            actual = "split-brain"
        else:
            actual = "healthy" if sim.replication_ok() else "degraded"
        want("replication", e.replication, actual)
    if e.frozen is not None:
        frozen_nodes = [
            n for n in sim.names if any(w.nodes[n].resources[r].frozen for r in sim.resources)
        ]
        actual = (
            frozen_nodes[0] if len(frozen_nodes) == 1 else ("none" if not frozen_nodes else "both")
        )
        want("frozen", _resolve(spec, e.frozen) or "none", actual)
    if e.split_brain is not None:
        want("split brain detected", e.split_brain, bool(sim.split_brain) or sim.diverged())
    if e.last_write is not None:
        want("last write", e.last_write, "acked" if sim.last_write is not None else "not-acked")
    if e.blocked is not None:
        who = _resolve(spec, e.node) if e.node else None
        plans = [sim.last_plans[n] for n in ([who] if who else sim.names) if n in sim.last_plans]
        reasons = [b.reason for p in plans for b in p.blocked]
        checked.append(f"blocked contains {e.blocked!r}")
        if not any(e.blocked in r for r in reasons):
            failures.append(f"no refusal mentions {e.blocked!r} (refusals: {reasons or 'none'})")
    if e.reported is not None:
        who = _resolve(spec, e.node) if e.node else None
        plans = [sim.last_plans[n] for n in ([who] if who else sim.names) if n in sim.last_plans]
        said = [t for p in plans for t in (*p.warnings, *(b.reason for b in p.blocked))]
        checked.append(f"reported {e.reported!r}")
        if not any(e.reported in t for t in said):
            failures.append(f"nothing reported mentions {e.reported!r} (said: {said or 'nothing'})")
    if e.alive is not None:
        want(
            "alive",
            sorted(node for node in (_resolve(spec, a) for a in e.alive) if node),
            sorted(n for n in sim.names if w.nodes[n].alive),
        )
    text = "; ".join(failures) if failures else "ok: " + ", ".join(checked)
    sim._note("expect", None, text, ok=not failures)
    return f"FAILED: {text}" if failures else text


# --- random runs ---------------------------------------------------------------------------


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
            sim.violations.append(
                f"step {sim.step} (liveness): not converged within {max_rounds} rounds: {why}"
            )
            sim._note("violation", None, sim.violations[-1], ok=False)
    except InvariantViolation:
        pass
    result.ok = not sim.violations
    return result


def random_step(sim: Simulation, rng: random.Random, *, overrides: bool = False) -> None:
    """One random step, weighted so agents act about half of the time."""
    n = rng.choice(sim.names)
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
            "replaceDisk", "inject", "clearFaults",
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


# --- the `reconcile simulate` command -------------------------------------------------------


def _render_text(console: Any, result: RunResult, *, title: str) -> None:
    from rich.markup import escape

    sim = result.sim
    console.print(f"[bold]{escape(title)}[/]")

    def show(records: Sequence[Record], indent: Callable[[Record], str]) -> None:
        pending: str | None = None  # a tick's world is shown after its actions
        for rec in records:
            if pending is not None and rec.kind != "action":
                console.print(pending)
                pending = None
            colour = {"violation": "bold red", "event": "magenta", "expect": "cyan"}.get(
                rec.kind, ""
            )
            who = f"{rec.node}: " if rec.node else ""
            body = escape(f"{who}{rec.text}")
            where = f"{indent(rec)}"
            console.print(
                f"{where}[{colour}]{rec.kind}[/] {body}" if colour else f"{where}{rec.kind} {body}"
            )
            if rec.world and rec.kind in ("tick", "fault", "role", "operator", "spec"):
                pending = f"{indent(rec)}  [dim]world: {escape(rec.world)}[/]"
        if pending is not None:
            console.print(pending)

    if result.outcomes:
        for o in result.outcomes:
            mark = "[green]ok[/]" if o.ok else "[bold red]FAILED[/]"
            where = f" (line {o.line})" if o.line else ""
            note = f" - {escape(o.note)}" if o.note else ""
            console.print(f"step {o.index}{where} {to_camel(o.kind)}{note}: {mark}")
            show(sim.timeline[o.records[0] : o.records[1]], lambda _r: "    ")
            if not o.ok:
                console.print(f"    [bold red]{escape(o.message)}[/]")
    else:
        show(sim.timeline, lambda r: f"[{r.step}] ")
    console.print(f"final world: {escape(sim.world_line())}")
    if result.k is not None:
        console.print(
            f"liveness: one Primary serving after K={result.k} round(s); "
            f"replication healthy after {result.k_sync}"
        )
    for text in sim.split_brain:
        console.print(f"[magenta]split brain reported[/]: {escape(text)}")
    if result.ok:
        console.print("[green]every expectation and invariant held[/]")
    elif result.failed is not None:
        f = result.failed
        where = f" (line {f.line})" if f.line else ""
        console.print(
            f"[bold red]FAILED at step {f.index}{where} {to_camel(f.kind)}[/]: {escape(f.message)}"
        )
    else:
        for v in sim.violations[:5]:
            console.print(f"[bold red]FAILED[/]: {escape(v)}")


def _result_json(result: RunResult, **head: Any) -> dict[str, Any]:
    sim = result.sim
    out: dict[str, Any] = dict(head)
    out.update(
        {
            "ok": result.ok,
            "fencing": sim.fencing,
            "steps_run": sim.step,
            "counts": dict(sorted(sim.counts.items())),
            "violations": list(sim.violations),
            "split_brain": list(sim.split_brain),
            "k": result.k,
            "k_sync": result.k_sync,
            "world": sim.world_line(),
        }
    )
    if result.outcomes:
        out["steps"] = [o.to_json(sim) for o in result.outcomes]
    else:
        out["timeline"] = [r.to_json() for r in sim.timeline]
    f = result.failed
    out["failed_step"] = (
        None
        if f is None
        else {"step": f.index, "line": f.line, "kind": to_camel(f.kind), "message": f.message}
    )
    if not result.ok and result.failed is None and sim.violations:
        out["failed_step"] = {"step": sim.step, "message": sim.violations[0]}
    return out


def _simulate_command() -> Any:
    import json as _json
    from pathlib import Path

    import click
    from rich.console import Console

    @click.command(
        "simulate",
        epilog="Exit codes: 0 every expectation and invariant held; 1 one failed (the step is "
        "named); 2 invalid spec, scenario or usage.",
    )
    @click.option(
        "-f",
        "--file",
        "spec_path",
        envvar="TANDEM_SPEC",
        default=None,
        help="The spec to simulate (default: the embedded demo). Its adapters section is "
        "ignored: everything is simulated.",
    )
    @click.option("--scenario", type=click.Path(dir_okay=False), help="A scenario YAML file.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Random run seed.")
    @click.option(
        "--steps", type=click.IntRange(1, 1_000_000), default=200, show_default=True,
        help="Random steps before the faults stop and the agents must converge.",
    )  # fmt: skip
    @click.option(
        "--fencing",
        type=click.Choice(["resource-and-stonith", "resource-only", "none"]),
        default=None,
        help="DRBD fencing of the simulated cluster (default: resource-and-stonith; a "
        "scenario may set its own).",
    )
    @click.option("--overrides", is_flag=True, help="Random runs may use become-primary --force.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document.")
    def simulate(
        spec_path: str | None,
        scenario: str | None,
        seed: int,
        steps: int,
        fencing: str | None,
        overrides: bool,
        as_json: bool,
    ) -> None:
        """Run a failover simulation of SPEC's cluster: both agents (exactly the code of
        `reconcile --once`) over a simulated two-node cluster, with faults between and during
        their ticks, and every safety invariant checked after every executed action.

        \b
        --scenario FILE   a YAML story: ticks, faults, operator commands, expectations
        --seed N --steps N  reproducible random faults, then the agents must converge
        See docs/simulation.md.
        """
        from reconciler.cli import read_spec

        spec, spec_name = read_spec(spec_path)
        console = Console(highlight=False, soft_wrap=True)
        errors = Console(stderr=True, highlight=False, soft_wrap=True)
        if scenario is not None:
            try:
                text = Path(scenario).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                errors.print(f"error: cannot read scenario {scenario}: {exc}", markup=False)
                sys.exit(2)
            try:
                loaded = load_scenario(text, filename=scenario)
                if fencing is not None:
                    world = loaded.scenario.world.model_copy(update={"fencing": fencing})
                    loaded = LoadedScenario(
                        loaded.scenario.model_copy(update={"world": world}), loaded.lines
                    )
                result = run_scenario(spec, loaded)
            except SpecError as exc:
                for line in exc.render().splitlines():
                    errors.print(line, markup=False)
                sys.exit(2)
            except ScenarioError as exc:
                errors.print(f"error: {scenario}: {exc}", markup=False)
                sys.exit(2)
            sc = loaded.scenario
            if as_json:
                doc = _result_json(result, scenario=sc.metadata.name, file=scenario, spec=spec_name)
                click.echo(_json.dumps(doc, sort_keys=True))
            else:
                title = (
                    f"scenario {sc.metadata.name} ({scenario}) on {spec_name}, fencing "
                    f"{sc.world.fencing}"
                )
                if sc.metadata.description:
                    title += f"\n{sc.metadata.description.strip()}"
                _render_text(console, result, title=title)
            sys.exit(0 if result.ok else 1)
        chosen: Fencing = fencing or DEFAULT_FENCING  # type: ignore[assignment]
        result = run_random(spec, seed=seed, steps=steps, fencing=chosen, overrides=overrides)
        if as_json:
            doc = _result_json(result, seed=seed, steps=steps, spec=spec_name)
            click.echo(_json.dumps(doc, sort_keys=True))
        else:
            _render_text(
                console,
                result,
                title=f"random run: seed {seed}, {steps} steps on {spec_name}, fencing {chosen}"
                + (", operator overrides allowed" if overrides else ""),
            )
        sys.exit(0 if result.ok else 1)

    return simulate


simulate_command = _simulate_command()
