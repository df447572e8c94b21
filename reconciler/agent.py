"""One tick of the agent (the imperative shell around the pure core), and its report.

A tick: observe (adapters) -> plan (pure) -> apply (executor, unless dry-run) -> status record.
Exit codes of a tick, a contract the CLI exposes: 0 converged or every action applied;
1 an action failed (the next tick retries); 3 blocked by a safety rule with nothing else to do;
4 converged but degraded (nothing to do, yet not healthy: replication degraded, split brain,
DRBD unreadable; the reasons are the plan's warnings, listed under ``degraded``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.base import NodeAdapters
from adapters.redact import redact_data
from reconciler import __version__
from reconciler.core.observed import ObservedState
from reconciler.core.plan import Plan, PlanWarning, WarningKind
from reconciler.core.planner import DEFAULT_GUARDS, Guards
from reconciler.core.planner import plan as make_plan
from reconciler.core.spec import StorageCluster
from reconciler.executor import ApplyReport, RetryPolicy, StepReport, apply
from reconciler.observe import observe
from reconciler.record import (
    STALE_LIMIT_KEY,
    ActionRecord,
    BlockedRecord,
    ExpectedRecord,
    ObservedRecord,
    StatusRecord,
    StepRecord,
    TickRecord,
    WarningRecord,
    iso_utc,
    status_path,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BLOCKED = 3
EXIT_DEGRADED = 4

# The plan warnings that make a converged node "degraded" (every kind today: each says the
# node is not healthy while there is nothing the agent can do about it).
DEGRADING = frozenset(WarningKind)


@dataclass(frozen=True, slots=True)
class TickReport:
    observed: ObservedState
    plan: Plan
    result: ApplyReport | None  # None on --dry-run
    started: float
    seconds: float
    observe_seconds: float = 0.0
    observe_parts: Mapping[str, float] = field(default_factory=dict)  # seconds per concern
    simulated: tuple[str, ...] = ()  # the concerns the simulator served (spec adapters 'sim')
    # The processes the node's runner started since the adapters were built, counted at the
    # end of this tick (``Runner.spawned``; None: adapters without a runner).
    spawns_total: int | None = None

    @property
    def degraded(self) -> tuple[PlanWarning, ...]:
        """Why the node is not healthy, when the plan has nothing to do about it."""
        if self.plan.actions or self.plan.blocked:
            return ()
        return tuple(w for w in self.plan.warnings if w.kind in DEGRADING)

    @property
    def exit_code(self) -> int:
        if self.result is not None and self.result.failed is not None:
            return EXIT_FAILED
        if not self.plan.actions and self.plan.blocked:
            return EXIT_BLOCKED
        if self.degraded:
            return EXIT_DEGRADED
        return EXIT_OK

    def to_record(self) -> TickRecord:
        result = self.result
        return TickRecord(
            node=self.plan.node,
            desired_role=self.plan.desired_role,
            role_reason=self.plan.role_reason,
            dry_run=result is None,
            actions=[ActionRecord.of(a) for a in self.plan.actions],
            blocked=[BlockedRecord.of(b) for b in self.plan.blocked],
            applied=[ActionRecord.of(a) for a in result.applied] if result else [],
            steps=[
                StepRecord(
                    kind=step.action.kind.value,
                    ok=step.ok,
                    attempts=step.attempts,
                    ms=round(step.seconds * 1000, 2),
                )
                for step in (result.steps if result else ())
            ],
            observe_ms=round(self.observe_seconds * 1000, 2),
            observe_parts_ms={k: round(v * 1000, 2) for k, v in self.observe_parts.items()},
            errors=list(result.errors) if result else [],
            warnings=[WarningRecord.of(w) for w in self.plan.warnings],
            converged=self.plan.converged,
            exit_code=self.exit_code,
            observed=ObservedRecord.of(self.observed),
            expected=ExpectedRecord.of(self.plan),
            seconds=round(self.seconds, 6),
            time=self.started,
            timestamp=iso_utc(self.started),
            simulated=bool(self.simulated),
            degraded=[WarningRecord.of(w) for w in self.degraded],
            spawns_total=self.spawns_total,
        )

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` line of a tick (``reconciler.record.TickRecord``)."""
        return self.to_record().to_json()


def tick(
    spec: StorageCluster,
    adapters: NodeAdapters,
    *,
    dry_run: bool = False,
    retry: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    executor: Executor | None = None,
    guards: Guards = DEFAULT_GUARDS,
    on_plan: Callable[[Plan], None] | None = None,
    after_step: Callable[[StepReport], None] | None = None,
) -> TickReport:
    """The one composition of observe -> plan -> apply: the CLI, the watch loop, the simulator
    and the property tests all tick through here.

    ``executor``: observe the concerns concurrently on it (see ``reconciler.observe``).
    ``guards``: the planner's safety guards (a test-only seam: a property test switches one
    off to prove the invariants bite). ``on_plan``: called with the plan before anything is
    applied (the simulator records it, so a violation raised mid-apply still shows the plan).
    ``after_step``: called after every executed action (the simulator checks its invariants
    there; see ``reconciler.executor.apply``)."""
    started = time.time()
    t0 = time.monotonic()
    parts: dict[str, float] = {}
    # The plan may be made before a VIP probe answers when only add-vip reads it (it then
    # checks the answer itself): see reconciler.observe.
    observed = observe(spec, adapters, executor=executor, timings=parts, defer_probes=True)
    looked = time.monotonic() - t0
    the_plan = make_plan(spec, observed, guards=guards)
    if on_plan is not None:
        on_plan(the_plan)
    result = (
        None
        if dry_run
        else apply(the_plan, spec, adapters, retry=retry, sleep=sleep, after_step=after_step)
    )
    return TickReport(
        observed,
        the_plan,
        result,
        started,
        time.monotonic() - t0,
        looked,
        parts,
        simulated=spec.spec.adapters.simulated,
        spawns_total=adapters.runner.spawned if adapters.runner is not None else None,
    )


def status_record(report: TickReport, *, after: ObservedState | None = None) -> StatusRecord:
    """The record `reconcile status` reads. ``after`` is a fresh observation taken once the
    tick's actions ran (so the record shows the state now, not the state the tick started
    from)."""
    tick_record = report.to_record()
    extra: dict[str, Any] = {"version": __version__, "time": report.started}
    if after is not None:
        extra["observed_before"] = tick_record.observed
        extra["observed"] = ObservedRecord.of(after)
    return StatusRecord(**{**dict(tick_record), **extra})


def shared_record(
    spec: StorageCluster, report: TickReport, *, after: ObservedState | None = None
) -> str:
    """The status record as published in etcd (``adapters.witness.status``): the file's
    record, redacted the same way, plus the writer's staleness limit (``STALE_LIMIT_KEY``)
    so a reader without this cluster's spec can judge its age."""
    record = redact_data(status_record(report, after=after).to_json())
    t = spec.spec.timings
    record[STALE_LIMIT_KEY] = t.tick_interval + t.status_staleness
    return json.dumps(record, separators=(",", ":"))


class StatusPublishing:
    """A tick observer (``reconciler.loop.each``): every tick's record also in etcd, handed to
    the publisher's worker (``EtcdStatusPublisher.offer``), so neither a slow nor a dead etcd
    delays or fails a tick."""

    def __init__(self, spec: StorageCluster, publisher: Any) -> None:
        self.spec = spec
        self.publisher = publisher

    def __call__(self, report: TickReport) -> None:
        self.publisher.offer(shared_record(self.spec, report))

    def close(self) -> None:
        self.publisher.close()


def write_status(
    state_dir: Path, report: TickReport, *, after: ObservedState | None = None
) -> None:
    """Write ``status_record(report, after=after)`` atomically. The temporary file is written
    in a subdirectory (``.writing``, same file system: the rename stays atomic), so the
    state directory itself, which the agents' ``FileWatch`` watches for the operator file and
    the simulated world, sees one event per record (the rename) instead of five: an idle
    agent's inotify thread wakes once per record, its own or the peer's."""
    record = redact_data(status_record(report, after=after).to_json())
    path = status_path(state_dir, report.plan.node)
    scratch = state_dir / ".writing"
    scratch.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=scratch, prefix=".status-")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=1)
    os.replace(tmp, path)
