"""`reconcile status`: the agent's last status record, rendered for people, with staleness.

The record is written atomically by every tick (reconciler.agent.write_status). It is stale
when older than ``timings.tickInterval + timings.statusStaleness`` (reference: poll interval
+ 5 s); then the output says so plainly and lists the likely causes.

The record is read through its model (``reconciler.record.read_status``): what the target
should be doing is the expectation the tick recorded (``expected``), not a guess from the role;
a corrupt or foreign file is reported as such (exit 1), never a traceback.

The operator's choices are shown as persisted now (``operator-NODE.json``), not as the last
tick saw them: right after ``manual-mode enable`` the status says manual mode is on, and that
the record predates it. ``status_json`` is the same judgement for ``--json`` (age, ``stale``,
``degraded``, ``record``: ``ok``/``missing``/``corrupt``), so both modes exit alike.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reconciler.core.observed import OperatorState
from reconciler.core.spec import StorageCluster
from reconciler.record import BadRecord, ObservedRecord, StatusRecord, simulated_note

STALE_CAUSES = (
    "the agent is stopped or crashed (systemctl status tandem; reconcile log)",
    "a tick hangs in a command (it is ended after the command timeout)",
    "a failover is in progress on this node",
)


def staleness(spec: StorageCluster, record: StatusRecord, now: float) -> tuple[float, float]:
    age = now - record.time
    limit = spec.spec.timings.tick_interval + spec.spec.timings.status_staleness
    return age, limit


def manual_mode_text(operator: OperatorState | None, seen: ObservedRecord) -> str:
    """Manual mode as persisted now; says so when the last tick saw something else."""
    if operator is None:
        return f"manual mode {'on' if seen.manual_mode else 'off'}"
    now = f"manual mode {'on' if operator.manual_mode else 'off'}"
    if operator.chosen_role is not None:
        now += f" (chosen role {operator.chosen_role.value})"
    if operator.manual_mode != seen.manual_mode or operator.chosen_role != seen.chosen_role:
        now += " [set after the last tick: the record below predates it]"
    return now


def operator_json(operator: OperatorState | None) -> dict[str, Any] | None:
    if operator is None:
        return None
    chosen = operator.chosen_role.value if operator.chosen_role else None
    return {"manual_mode": operator.manual_mode, "chosen_role": chosen}


def status_json(
    spec: StorageCluster,
    node: str,
    record: StatusRecord | BadRecord | None,
    raw: Any,
    now: float,
    *,
    operator: OperatorState | None = None,
) -> tuple[dict[str, Any], bool]:
    """The ``status --json`` object and whether it is fresh (exit 0) - the text mode's rules.

    A readable record is printed as written, plus ``record: ok``, ``age_seconds``,
    ``stale_limit_seconds``, ``stale`` and ``operator`` (the persisted choices); a missing or
    corrupt one is ``{"record": "missing"|"corrupt", ...}`` with the path, the problem and the
    ``content`` that could be read."""
    common: dict[str, Any] = {
        "node": node,
        "simulated": bool(spec.spec.adapters.simulated),
        "operator": operator_json(operator),
    }
    if record is None:
        return {**common, "record": "missing", "problem": "the agent has not run here"}, False
    if isinstance(record, BadRecord):
        out = {**common, "record": "corrupt", "path": str(record.path), "problem": record.problem}
        if raw is not None:
            out["content"] = raw  # what could be read (a foreign record's JSON)
        return out, False
    age, limit = staleness(spec, record, now)
    stale = age > limit
    body = dict(raw) if isinstance(raw, dict) else record.to_json()
    body.update(
        common,
        record="ok",
        age_seconds=round(age, 3),
        stale_limit_seconds=limit,
        stale=stale,
        degraded=[w.model_dump(mode="json") for w in record.degraded],
    )
    return body, not stale


def render(
    console: Console,
    spec: StorageCluster,
    node: str,
    record: StatusRecord | BadRecord | None,
    now: float,
    *,
    operator: OperatorState | None = None,
) -> bool:
    """Print the status; returns True when it is fresh. ``operator``: the operator's choices
    as persisted now (None: unknown, the record's own view is shown)."""
    e = escape  # the record quotes observed text (tool output, pool.conf): never markup
    if (note := simulated_note(spec.spec.adapters.simulated)) is not None:
        console.print(f"[bold yellow]{e(note)}[/]")
    if record is None:
        console.print(
            f"[bold]{node}[/]: no status record yet: the agent has not run here "
            "(start it: reconcile --watch, or systemctl start tandem)"
        )
        return False
    if isinstance(record, BadRecord):
        console.print(
            f"[bold]{node}[/]: [bold red]unreadable status record[/] {e(str(record.path))}: "
            f"{e(record.problem)}. The agent replaces it on its next tick; if it stays, "
            "check that nothing else writes there (another tool, a different tandem version)."
        )
        return False
    age, limit = staleness(spec, record, now)
    obs = record.observed
    console.print(
        f"[bold]{node}[/]: storage role [bold]{record.desired_role.value}[/] "
        f"({e(record.role_reason)}); {e(manual_mode_text(operator, obs))}; "
        f"tandem {e(record.version)}; updated {age:.1f}s ago"
    )
    table = Table("resource", "role", "connection", "disk", "peer role", "peer disk", "sync")
    for r in obs.resources:
        sync = f"{r.sync_percent:.1f}%" if r.sync_percent is not None else ""
        table.add_row(r.name, r.role, r.connection, r.disk, r.peer_role, r.peer_disk, sync)
    console.print(table)
    target = obs.target
    running = {True: "running", False: "stopped", None: "unknown"}[target.running]
    if record.expected is not None:
        expected = "running" if record.expected.serving else "stopped"
    else:  # a record written before the expectation was recorded
        expected = "not recorded"
    daemon = {True: "running", False: "down", None: "unknown"}[target.daemon]
    console.print(
        f"target: {running} (expected {expected}); LUNs exported: {target.exported_luns or 'none'}"
        f"; tgtd: {daemon}"
    )
    for vip in obs.vips:
        where = {True: "local", False: "not local", None: "unknown"}[vip.local]
        if vip.local and vip.announced is False:
            where += ", not announced since it was added"
        if vip.probe_pending:
            where += " (its ARP probe was still running when the tick was planned)"
        console.print(f"VIP {vip.address}: {where}")
    for b in record.blocked:
        console.print(f"[yellow]blocked[/] {b.what}: {e(b.reason)}")
    for w in record.warnings:
        console.print(f"[magenta]warning[/]: {e(w.message)}")
    if record.degraded:
        console.print(
            "[bold magenta]DEGRADED[/]: converged, but not healthy: "
            + "; ".join(e(w.message) for w in record.degraded)
        )
    if age > limit:
        console.print(
            f"[bold red]STALE[/]: this status is {age:.0f}s old (limit {limit:g}s). Likely causes:"
        )
        for cause in STALE_CAUSES:
            console.print(f"  - {cause}")
        return False
    return True
