"""Scenario runs: ``run_scenario`` plays a loaded scenario's steps on a new simulation and
checks its expectations.

Invariants: the run stops at the first step that fails (an expectation, a refused-but-expected
command, an invariant broken during the step); a step's outcome is a typed ``StepStatus``, its
message is for people; the scenario's own step numbers and lines are what gets reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from reconciler.core.spec import StorageCluster
from reconciler.core.specload import SpecError, SpecProblem
from reconciler.simulation.engine import Simulation, _merge, new_simulation
from reconciler.simulation.model import (
    Expect,
    LoadedScenario,
    ResourceFault,
    ScenarioError,
    Step,
)


class StepStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"  # an expectation or an expected verdict did not hold
    VIOLATED = "violated"  # an invariant broke during the step


@dataclass(frozen=True, slots=True)
class StepResult:
    status: StepStatus
    detail: str

    def __str__(self) -> str:
        return self.detail if self.status is StepStatus.OK else f"FAILED: {self.detail}"


def _ok(detail: str) -> StepResult:
    return StepResult(StepStatus.OK, detail)


def _failed(detail: str) -> StepResult:
    return StepResult(StepStatus.FAILED, detail)


@dataclass
class StepOutcome:
    index: int  # 1-based step of the scenario
    line: int
    kind: str
    status: StepStatus
    message: str  # for people: ``str(StepResult)``
    records: tuple[int, int] = (0, 0)  # the slice of ``Simulation.timeline`` it produced
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is StepStatus.OK

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


def check_scenario(spec: StorageCluster, loaded: LoadedScenario, *, filename: str) -> None:
    """Refuse, before anything runs, what cannot play on ``spec``: unknown node names,
    unknown resources, spec edits that are invalid or rename the nodes. ``SpecError`` with the
    step's line for each (the CLI exits 2)."""
    problems: list[SpecProblem] = []
    current = spec
    for i, (step, line) in enumerate(zip(loaded.scenario.steps, loaded.lines, strict=True), 1):
        where = f"steps[{i - 1}]"
        try:
            if step.kind == "spec":
                current = _edited(current, step.spec or {})
            for ref in _node_refs(step):
                _resolve(current, ref)
            for res in _resource_refs(step):
                if res not in {r.name for r in current.spec.resources}:
                    names = ", ".join(r.name for r in current.spec.resources)
                    raise ScenarioError(f"{res!r} is not a resource of the spec ({names})")
        except ScenarioError as exc:
            problems.append(SpecProblem(line, 1, where, str(exc)))
    if problems:
        raise SpecError(problems, filename)


def _edited(spec: StorageCluster, changes: dict[str, Any]) -> StorageCluster:
    data = spec.model_dump(mode="json", by_alias=True)
    _merge(data["spec"], dict(changes))
    try:
        new = StorageCluster.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(x) for x in first["loc"])
        raise ScenarioError(f"the spec edit is invalid: {at}: {first['msg']}") from None
    if new.node_names != spec.node_names:
        raise ScenarioError(
            f"the spec edit renames the nodes {', '.join(spec.node_names)} to "
            f"{', '.join(new.node_names)}; a running agent acts for one of them"
        )
    return new


def _node_refs(step: Step) -> list[str]:
    value = getattr(step, step.kind)
    if step.kind in ("ticks", "converge", "write", "wait", "replication", "management"):
        return []
    if step.kind in ("advance", "elapse", "etcd_member_down", "etcd_member_up"):
        return []
    if step.kind in ("etcd_down", "etcd_up"):
        return []
    if step.kind in ("stranger", "clear_faults", "spec", "heal"):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    if step.kind == "pool_views":
        return [*value.keys(), *value.values()]
    if step.kind == "split_brain":
        return [value.node, value.survivor]
    if step.kind == "expect":
        e: Expect = value
        refs = [
            r for r in (e.primary, e.vip, e.serving, e.frozen, e.node, e.witness) if r is not None
        ]
        for table in (e.disk, e.peer_disk, e.luns, e.vips):
            refs.extend(table or {})
        return refs + list(e.alive or [])
    node = getattr(value, "node", None)
    return [node] if isinstance(node, str) else []


def _resource_refs(step: Step) -> list[str]:
    value = getattr(step, step.kind)
    res = getattr(value, "resource", None)
    return [res] if isinstance(res, str) else []


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
        done = _run_step(sim, spec, step, result)
        if len(sim.violations) > before:
            # Name the scenario's step (above), not the engine's internal step counter.
            found = "; ".join(f"({v.what}): {v.text}" for v in sim.violations[before:])
            done = StepResult(StepStatus.VIOLATED, f"invariant violated: {found}")
        outcome = StepOutcome(
            i, line, step.kind, done.status, str(done), (first, len(sim.timeline)), step.note
        )
        result.outcomes.append(outcome)
        if not outcome.ok:
            result.ok = False
            result.failed = outcome
            break
    return result


def _run_step(sim: Simulation, spec: StorageCluster, step: Step, result: RunResult) -> StepResult:
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
        return _ok("ticked")
    if kind == "ticks":
        for _ in range(value):
            for n in sim.names:
                sim.tick(n)
        return _ok(f"{value} round(s)")
    if kind == "converge":
        k, k_sync = sim.converge(max_rounds=value)
        result.k, result.k_sync = k, k_sync
        if k is None:
            why = sim.serving_ok(sim.expected_primary() or sim.names[0])
            return _failed(f"not converged within {value} round(s): {why}")
        return _ok(f"converged: serving after {k} round(s), replication healthy after {k_sync}")
    if kind == "plan":
        sim.plan_only(node(value))
        return _ok("planned")
    if kind == "apply_next":
        sim.apply_next(node(value))
        return _ok("applied one action")
    if kind == "agent_crash":
        sim.agent_crash(node(value))
        return _ok("agent crashed")
    if kind == "write":
        acked = sim.write(value)
        return _ok(f"{acked}/{value} acknowledged")
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
        "unplug_pbd": "unplugPbd",
        "break_sr": "breakSr",
        "xapi_down": "xapiDown",
        "xapi_up": "xapiUp",
        "etcd_cut": "etcdCut",
        "etcd_rejoin": "etcdRejoin",
        "pause": "pause",
        "resume": "resume",
    }
    if kind in simple:
        if isinstance(value, ResourceFault):
            sim.fault(simple[kind], node(value.node), resource=value.resource)
        else:
            sim.fault(simple[kind], node(value))
        return _ok("done")
    if kind == "wait":
        sim.wait(value)
        return _ok(f"{value:g} s passed")
    if kind == "advance":
        passed = sim.advance(value)
        return _ok(f"{passed:g} s passed")
    if kind == "elapse":
        sim.elapse(value)
        return _ok(f"{value:g} s passed, both agents ticking")
    if kind in ("etcd_member_down", "etcd_member_up"):
        sim.fault("etcdMemberDown" if kind == "etcd_member_down" else "etcdMemberUp", value=value)
        return _ok("done")
    if kind in ("etcd_down", "etcd_up"):
        sim.fault("etcdDown" if kind == "etcd_down" else "etcdUp")
        return _ok("done")
    if kind == "split_brain":
        ok, text = sim.split_brain_recovery(
            node(value.node), resource=value.resource, survivor=node(value.survivor)
        )
        want = value.expect or "accepted"
        if (want == "accepted") != ok:
            return _failed(f"expected the recovery to be {want}: {text}")
        return _ok(text)
    if kind in ("replication", "management"):
        up = value if isinstance(value, bool) else value == "up"
        sim.fault(kind, value=up)
        return _ok("done")
    if kind == "stranger":
        sim.fault("stranger", value=bool(value))
        return _ok("done")
    if kind == "inject":
        sim.fault(
            "inject",
            node(value.node),
            op=value.op,
            kind=value.kind,
            count=value.count,
            resource=value.resource,
        )
        return _ok("injected")
    if kind == "clear_faults":
        sim.fault("clearFaults")
        return _ok("cleared")
    if kind == "operator":
        ok, text = sim.operator(node(value.node), value.command, force=value.force)
        want = value.expect
        if want is not None and (want == "accepted") != ok:
            return _failed(f"expected the command to be {want}, it was {text}")
        return _ok(text)
    if kind == "pool_master":
        sim.set_pool_master(_resolve(spec, value))
        return _ok("done")
    if kind == "pool_views":
        sim.split_pool({node(k): _resolve(spec, v) for k, v in value.items()})
        return _ok("done")
    if kind == "spec":
        try:
            sim.edit_spec(value)
        except ValidationError as exc:
            return _failed(f"the spec edit is invalid: {exc.errors()[0]['msg']}")
        return _ok("spec edited")
    if kind == "heal":
        sim.heal()
        return _ok("healed")
    if kind == "expect":
        return _expect(sim, spec, value)
    raise ScenarioError(f"unknown step {kind}")  # pragma: no cover - Step validates keys


def _expect(sim: Simulation, spec: StorageCluster, e: Expect) -> StepResult:
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
        if e.resource is not None:
            outcome = sim.last_writes.get(e.resource)
            label = f"last write to {e.resource}"
        else:
            outcome = sim.last_write
            label = "last write (every resource)"
        want(label, e.last_write, "acked" if outcome is not None else "not-acked")
    res_names = [e.resource] if e.resource is not None else sim.resources
    for table, field_name, label in (
        (e.disk, "disk", "disk"),
        (e.peer_disk, "peer_disk", "peer disk seen by"),
    ):
        for ref, state in (table or {}).items():
            n = _resolve(spec, ref) or ""
            for r in res_names:
                seen = w.drbd_view(n, r)[field_name] if w.nodes[n].alive else "Unknown"
                want(f"{label} {n} ({r})", state, str(seen))
    for ref, luns in (e.luns or {}).items():
        n = _resolve(spec, ref) or ""
        exported = sorted(w.nodes[n].exported) if w.nodes[n].alive else []
        want(f"LUNs exported on {n}", sorted(luns), exported)
    for ref, addresses in (e.vips or {}).items():
        n = _resolve(spec, ref) or ""
        want(f"addresses on {n}", sorted(addresses), sorted(w.nodes[n].vips))
    if e.alerted is not None or e.not_alerted is not None:
        who = _resolve(spec, e.node) if e.node else None
        sent = [a.message for n, a in sim.sent_alerts if who is None or n == who]
        if e.alerted is not None:
            checked.append(f"alerted {e.alerted!r}")
            if not any(e.alerted in m for m in sent):
                failures.append(f"no alert sent mentions {e.alerted!r} (sent: {sent or 'none'})")
        if e.not_alerted is not None:
            checked.append(f"not alerted {e.not_alerted!r}")
            hits = [m for m in sent if e.not_alerted in m]
            if hits:
                failures.append(f"an alert sent mentions {e.not_alerted!r}: {hits[0]}")
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
        said = [
            t
            for p in plans
            for t in (*(w.message for w in p.warnings), *(b.reason for b in p.blocked))
        ]
        checked.append(f"reported {e.reported!r}")
        if not any(e.reported in t for t in said):
            failures.append(f"nothing reported mentions {e.reported!r} (said: {said or 'nothing'})")
    if e.alive is not None:
        want(
            "alive",
            sorted(node for node in (_resolve(spec, a) for a in e.alive) if node),
            sorted(n for n in sim.names if w.nodes[n].alive),
        )
    if e.witness is not None:
        want("witness key", _resolve(spec, e.witness) or "none", w.witness_holder() or "none")
    for label, wanted, read in (
        ("PBDs attached", e.pbd_attached, w.pbds_attached),
        ("SR usable", e.sr_usable, w.srs_usable),
    ):
        for ref, expected in (wanted or {}).items():
            who = _resolve(spec, ref)
            if who is None:
                raise ScenarioError(f"{label}: name a node, not {ref!r}")
            want(f"{label} on {who}", expected, read(who))
    text = "; ".join(failures) if failures else "ok: " + ", ".join(checked)
    sim._note("expect", None, text, ok=not failures)
    return _failed(text) if failures else _ok(text)
