"""`reconcile status`: the agent's last status record, rendered for people, with staleness.

The record is written atomically by every tick (reconciler.agent.write_status). It is stale
when older than ``timings.tickInterval + timings.statusStaleness`` (reference: poll interval
+ 5 s); then the output says so plainly and lists the likely causes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from reconciler.core.spec import StorageCluster

STALE_CAUSES = (
    "the agent is stopped or crashed (systemctl status tandem; reconcile log)",
    "a tick hangs in a command (it is ended after the command timeout)",
    "a failover is in progress on this node",
)


def load_status(state_dir: Path, node: str) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / f"status-{node}.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def staleness(spec: StorageCluster, record: dict[str, Any], now: float) -> tuple[float, float]:
    age = now - float(record.get("time", 0))
    limit = spec.spec.timings.tick_interval + spec.spec.timings.status_staleness
    return age, limit


def render(
    console: Console, spec: StorageCluster, node: str, record: dict[str, Any] | None, now: float
) -> bool:
    """Print the status; returns True when it is fresh."""
    if record is None:
        console.print(
            f"[bold]{node}[/]: no status record yet: the agent has not run here "
            "(start it: reconcile --watch, or systemctl start tandem)"
        )
        return False
    age, limit = staleness(spec, record, now)
    obs = record.get("observed", {})
    role = record.get("desired_role", "?")
    console.print(
        f"[bold]{node}[/]: storage role [bold]{role}[/] ({record.get('role_reason')}); "
        f"manual mode {'on' if obs.get('manual_mode') else 'off'}; "
        f"tandem {record.get('version', '?')}; updated {age:.1f}s ago"
    )
    table = Table("resource", "role", "connection", "disk", "peer role", "peer disk", "sync")
    for r in obs.get("resources", []):
        sync = f"{r['sync_percent']:.1f}%" if r.get("sync_percent") is not None else ""
        table.add_row(
            r["name"], r["role"], r["connection"], r["disk"], r["peer_role"], r["peer_disk"], sync
        )
    console.print(table)
    target = obs.get("target", {})
    expected = "running" if role == "Primary" else "stopped"
    running = {True: "running", False: "stopped", None: "unknown"}[target.get("running")]
    console.print(
        f"target: {running} (expected {expected}); LUNs exported: "
        f"{target.get('exported_luns') or 'none'}"
    )
    for vip in obs.get("vips", []):
        where = {True: "local", False: "not local", None: "unknown"}[vip.get("local")]
        if vip.get("local") and vip.get("announced") is False:
            where += ", not announced since it was added"
        console.print(f"VIP {vip['address']}: {where}")
    for b in record.get("blocked", []):
        console.print(f"[yellow]blocked[/] {b['what']}: {b['reason']}")
    for w in record.get("warnings", []):
        console.print(f"[magenta]warning[/]: {w['message'] if isinstance(w, dict) else w}")
    if age > limit:
        console.print(
            f"[bold red]STALE[/]: this status is {age:.0f}s old (limit {limit:g}s). Likely causes:"
        )
        for cause in STALE_CAUSES:
            console.print(f"  - {cause}")
        return False
    return True
