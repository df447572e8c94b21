"""`reconcile status`: the agent's last status record, rendered for people, with staleness.

The record is written atomically by every tick (reconciler.agent.write_status). It is stale
when older than ``timings.tickInterval + timings.statusStaleness`` (reference: poll interval
+ 5 s); then the output says so plainly and lists the likely causes.

The record is read through its model (``reconciler.record.read_status``): what the target
should be doing is the expectation the tick recorded (``expected``), not a guess from the role;
a corrupt or foreign file is reported as such (exit 1), never a traceback.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reconciler.core.spec import StorageCluster
from reconciler.record import BadRecord, StatusRecord

STALE_CAUSES = (
    "the agent is stopped or crashed (systemctl status tandem; reconcile log)",
    "a tick hangs in a command (it is ended after the command timeout)",
    "a failover is in progress on this node",
)


def staleness(spec: StorageCluster, record: StatusRecord, now: float) -> tuple[float, float]:
    age = now - record.time
    limit = spec.spec.timings.tick_interval + spec.spec.timings.status_staleness
    return age, limit


def render(
    console: Console,
    spec: StorageCluster,
    node: str,
    record: StatusRecord | BadRecord | None,
    now: float,
) -> bool:
    """Print the status; returns True when it is fresh."""
    e = escape  # the record quotes observed text (tool output, pool.conf): never markup
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
        f"({e(record.role_reason)}); manual mode {'on' if obs.manual_mode else 'off'}; "
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
    console.print(
        f"target: {running} (expected {expected}); LUNs exported: {target.exported_luns or 'none'}"
    )
    for vip in obs.vips:
        where = {True: "local", False: "not local", None: "unknown"}[vip.local]
        if vip.local and vip.announced is False:
            where += ", not announced since it was added"
        console.print(f"VIP {vip.address}: {where}")
    for b in record.blocked:
        console.print(f"[yellow]blocked[/] {b.what}: {e(b.reason)}")
    for w in record.warnings:
        console.print(f"[magenta]warning[/]: {e(w.message)}")
    if age > limit:
        console.print(
            f"[bold red]STALE[/]: this status is {age:.0f}s old (limit {limit:g}s). Likely causes:"
        )
        for cause in STALE_CAUSES:
            console.print(f"  - {cause}")
        return False
    return True
