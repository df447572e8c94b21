"""`reconcile status --cluster`: both nodes side by side (crm_mon style).

This node's record is read from the state directory (like ``reconcile status``); the peer's
is fetched from its agent's ``/status`` (``reconciler.httpserve``) at ``--peer URL`` or the
spec's ``statusAddress`` of the peer. Every request has a timeout (2 s by default).

Invariants:
- Reading never raises for what the network or the disk returns: an unreachable peer, a
  timeout, a non-JSON answer or a foreign record is a ``NodeView`` with ``problem`` set, and
  the view names the node and says what went wrong.
- The exit status is 0 only when both records were read and both are fresh.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from reconciler.core.spec import StorageCluster
from reconciler.record import STALE_LIMIT_KEY, BadRecord, StatusRecord, read_status, status_path
from reconciler.status import staleness

TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node's record as this command got it. ``source``: the file or URL it came from;
    ``problem``: why there is no usable record (None when ``record`` is set)."""

    node: str
    source: str
    record: StatusRecord | None = None
    raw: Any = None
    problem: str | None = None
    unreachable: bool = False  # the request failed (as opposed to a bad or missing record)


def peer_url(spec: StorageCluster, peer: str, given: str | None) -> str | None:
    """The peer's ``/status`` URL: ``--peer`` (a base URL or the full path), else the spec's
    ``statusAddress`` of the peer; None when neither says."""
    if given:
        base = given if "://" in given else f"http://{given}"
        return base if base.rstrip("/").endswith("/status") else base.rstrip("/") + "/status"
    node = next(n for n in spec.spec.nodes if n.name == peer)
    if node.status_address:
        return f"http://{node.status_address}/status"
    return None


def local_view(state_dir: Path, node: str) -> NodeView:
    record, raw = read_status(state_dir, node)
    source = str(status_path(state_dir, node))
    if record is None:
        return NodeView(node, source, problem="no status record yet: the agent has not run here")
    if isinstance(record, BadRecord):
        return NodeView(node, source, raw=raw, problem=f"unreadable record: {record.problem}")
    return NodeView(node, source, record=record, raw=raw)


def fetch_view(node: str, url: str, *, timeout: float = TIMEOUT) -> NodeView:
    """GET the node's ``/status`` (http or https URLs only)."""
    if not url.startswith(("http://", "https://")):
        return NodeView(node, url, problem=f"{url}: not an http(s) URL")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc)
        return NodeView(node, url, problem=f"{url} answered HTTP {exc.code}{detail}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, socket.timeout | TimeoutError):
            reason = f"no answer within {timeout:g} s"
        return NodeView(node, url, problem=f"{url}: {reason}", unreachable=True)
    try:
        raw = json.loads(body)
        record = StatusRecord.model_validate(raw)
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        return NodeView(node, url, problem=f"{url} did not return a status record: {first}")
    if record.node != node:
        return NodeView(node, url, raw=raw, problem=f"{url} serves {record.node!r}, not {node!r}")
    return NodeView(node, url, record=record, raw=raw)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read()).get("error")
    except (ValueError, AttributeError, OSError):
        return ""
    return f": {error}" if error else ""


def events_tail(view: NodeView, limit: int = 5) -> list[str]:
    """EVENTS HOOK: the last few entries of the node's event history, for the cluster view.

    Today's records carry no history (issue 13, point 3 adds it): this reads a list of
    strings or ``{"time", "action", "result", "reason"}`` objects under ``"events"`` in the raw
    record if there is one, else nothing. Replace the body once the events history lands."""
    raw = view.raw if isinstance(view.raw, dict) else {}
    events = raw.get("events")
    if not isinstance(events, list):
        return []
    lines = []
    for e in events[-limit:]:
        if isinstance(e, dict):
            lines.append(
                " ".join(str(e[k]) for k in ("time", "action", "result", "reason") if k in e)
            )
        else:
            lines.append(str(e))
    return lines


def drbd_status_lines(record: StatusRecord, peer: str) -> list[str]:
    """The record's DRBD state in ``drbdadm status`` layout (the record keeps the parsed
    states, not the tool's text)."""
    lines = []
    for r in record.observed.resources:
        if not r.up:
            lines.append(f"{r.name}: not up" + (f" ({r.error})" if r.error else ""))
            continue
        lines.append(f"{r.name} role:{r.role.value}")
        lines.append(f"  disk:{r.disk.value}")
        sync = f" done:{r.sync_percent:.2f}" if r.sync_percent is not None else ""
        lines.append(f"  {peer} connection:{r.connection.value} role:{r.peer_role.value}")
        lines.append(f"    peer-disk:{r.peer_disk.value}{sync}")
        if r.split_brain:
            lines.append("    split-brain")
    return lines


def _yes_no(value: bool | None, yes: str, no: str) -> str:
    return {True: yes, False: no, None: "unknown"}[value]


def _column(spec: StorageCluster, view: NodeView, now: float) -> tuple[list[str], bool]:
    """The table cells of one node, and whether it is fresh."""
    rec = view.record
    if rec is None:
        what = "UNREACHABLE" if view.unreachable else "NO STATUS"
        return [f"[bold red]{what}[/] (see below)"] + [""] * 7, False
    age, limit = staleness(spec, rec, now)
    fresh = age <= limit
    obs = rec.observed
    updated = (
        f"{age:.1f}s ago" if fresh else f"[bold red]STALE[/] ({age:.0f}s ago, limit {limit:g}s)"
    )
    serving = _yes_no(obs.target.running, "running", "stopped")
    if obs.target.daemon is False:
        serving += ", tgtd down"
    expected = (
        ""
        if rec.expected is None
        else f" (expected {'running' if rec.expected.serving else 'stopped'})"
    )
    vips = ", ".join(f"{v.address} {_yes_no(v.local, 'here', 'not here')}" for v in obs.vips)
    blocked = "; ".join(f"{b.what}: {b.reason}" for b in rec.blocked) or "none"
    warnings = "; ".join(w.message for w in rec.warnings) or "none"
    return [
        f"reached ({escape(view.source)})",
        f"[bold]{rec.desired_role.value}[/] ({escape(rec.role_reason)})",
        "on" if obs.manual_mode else "off",
        updated,
        f"{serving}{expected}; LUNs {obs.target.exported_luns or 'none'}",
        escape(vips),
        escape(blocked),
        escape(warnings),
    ], fresh


ROWS = ("status", "storage role", "manual mode", "updated", "target", "VIPs", "blocked", "warnings")


def cluster_view(spec: StorageCluster, views: Sequence[NodeView], now: float) -> tuple[Group, bool]:
    """The side-by-side renderable and whether every node was read and is fresh."""
    table = Table(title=f"cluster {spec.metadata.name}", show_lines=False)
    table.add_column("")
    columns = []
    ok = True
    for view in views:
        table.add_column(view.node)
        cells, fresh = _column(spec, view, now)
        columns.append(cells)
        ok = ok and fresh
    for i, row in enumerate(ROWS):
        table.add_row(row, *(c[i] for c in columns))
    parts: list[Any] = [table]
    names = [v.node for v in views]
    for view in views:
        if view.record is None:
            continue
        peer = next((n for n in names if n != view.node), "peer")
        parts.append(Text(f"DRBD on {view.node}:", style="bold"))
        parts.append(Text("\n".join(drbd_status_lines(view.record, peer)) or "(no resources)"))
        tail = events_tail(view)
        if tail:
            parts.append(Text(f"last events on {view.node}:", style="bold"))
            parts.append(Text("\n".join(tail)))
    for view in views:
        if view.record is None:
            what = "could not be reached" if view.unreachable else "has no usable status"
            parts.append(Text(f"{view.node} {what}: {view.problem}", style="bold red"))
    return Group(*parts), ok


def as_json(views: Sequence[NodeView], ok: bool) -> dict[str, Any]:
    """``status --cluster --json``: each node's raw record, or what went wrong."""
    nodes: dict[str, Any] = {}
    for v in views:
        if v.record is not None:
            nodes[v.node] = {"source": v.source, "record": v.raw}
        else:
            nodes[v.node] = {"source": v.source, "error": v.problem, "unreachable": v.unreachable}
    return {"ok": ok, "nodes": nodes}


def render_cluster(
    console: Console, spec: StorageCluster, views: Sequence[NodeView], now: float
) -> bool:
    view, ok = cluster_view(spec, views, now)
    console.print(view)
    return ok


# ------------------------------------------------------------------ records shared in etcd
# `reconcile status --cluster NAME` / `--all` (issue 15: many pairs, one place): the records
# every agent publishes under <prefix><cluster>/status/<node> (adapters.witness.status). A
# published record carries ``stale_limit_seconds`` (its writer's tickInterval +
# statusStaleness), so a reader without that cluster's spec still judges its age.


@dataclass(frozen=True, slots=True)
class SharedView:
    """One node's record as read from etcd: ``age``/``limit`` in seconds (``limit`` None
    when the writer did not say), ``problem`` when the text is not a status record."""

    node: str
    record: StatusRecord | None = None
    raw: Any = None
    problem: str | None = None
    age: float | None = None
    limit: float | None = None

    @property
    def fresh(self) -> bool:
        if self.record is None or self.age is None:
            return False
        return self.limit is None or self.age <= self.limit


def shared_view(node: str, text: str, now: float) -> SharedView:
    try:
        raw = json.loads(text)
        record = StatusRecord.model_validate(raw)
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        return SharedView(node, problem=f"not a status record: {first}")
    if record.node != node:
        return SharedView(node, raw=raw, problem=f"the record is {record.node!r}'s, not {node!r}'s")
    limit = raw.get(STALE_LIMIT_KEY) if isinstance(raw, dict) else None
    return SharedView(
        node,
        record=record,
        raw=raw,
        age=now - record.time,
        limit=float(limit) if isinstance(limit, int | float) else None,
    )


def shared_views(records: dict[str, str], now: float) -> list[SharedView]:
    return [shared_view(node, records[node], now) for node in sorted(records)]


def shared_ok(views: Sequence[SharedView]) -> bool:
    """Every record readable and fresh (and at least one)."""
    return bool(views) and all(v.fresh for v in views)


def _shared_updated(view: SharedView) -> str:
    if view.age is None:
        return ""
    if view.fresh:
        return f"{view.age:.1f}s ago"
    return f"[bold red]STALE[/] ({view.age:.0f}s ago, limit {view.limit:g}s)"


def shared_cluster_view(
    cluster: str, leader: str | None, views: Sequence[SharedView], *, source: str
) -> tuple[Group, bool]:
    """One cluster's records from etcd, a row per node; whether all are there and fresh."""
    table = Table(title=f"cluster {cluster} (from etcd {source})")
    for column in ("node", "storage role", "serving", "updated", "converged", "blocked"):
        table.add_column(column)
    for v in views:
        rec = v.record
        if rec is None:
            table.add_row(escape(v.node), f"[bold red]NO STATUS[/] ({escape(v.problem or '')})")
            continue
        serving = _yes_no(rec.observed.target.running, "running", "stopped")
        blocked = "; ".join(f"{b.what}: {b.reason}" for b in rec.blocked) or "none"
        table.add_row(
            escape(v.node),
            f"[bold]{rec.desired_role.value}[/] ({escape(rec.role_reason)})",
            serving,
            _shared_updated(v),
            "yes" if rec.converged else "no",
            escape(blocked),
        )
    holder = f"witness key held by {escape(leader)}" if leader else "witness key free"
    parts: list[Any] = [table, Text.from_markup(holder)]
    if not views:
        parts.append(Text(f"no status records of cluster {cluster} in etcd", style="bold red"))
    return Group(*parts), shared_ok(views)


def shared_all_view(
    clusters: Sequence[tuple[str, str | None, Sequence[SharedView]]], *, source: str
) -> tuple[Table, bool]:
    """Every cluster sharing the etcd, a row each; whether every record is there and fresh."""
    table = Table(title=f"clusters in etcd {source}")
    for column in ("cluster", "witness key", "nodes", "state"):
        table.add_column(column)
    ok = bool(clusters)
    for name, leader, views in clusters:
        nodes = ", ".join(
            f"{v.node} {v.record.desired_role.value}" if v.record else f"{v.node} unreadable"
            for v in views
        )
        good = shared_ok(views)
        ok = ok and good
        state = "ok" if good else "[bold red]STALE OR MISSING[/]"
        table.add_row(escape(name), escape(leader or "free"), escape(nodes or "none"), state)
    return table, ok


def shared_json(cluster: str, leader: str | None, views: Sequence[SharedView]) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    for v in views:
        if v.record is None:
            nodes[v.node] = {"error": v.problem}
        else:
            nodes[v.node] = {
                "record": v.raw,
                "age_seconds": round(v.age or 0.0, 3),
                "stale": not v.fresh,
            }
    return {"cluster": cluster, "witness_holder": leader, "ok": shared_ok(views), "nodes": nodes}
