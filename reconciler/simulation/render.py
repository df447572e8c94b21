"""Rendering for people and tools: the world line, a plan's timeline text, and a run's result as
text (rich) or as one JSON document. Reads results, decides nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic.alias_generators import to_camel

from adapters.sim.world import World
from reconciler.core.plan import Plan

if TYPE_CHECKING:
    from reconciler.simulation.engine import Record
    from reconciler.simulation.runner import RunResult


def world_line(world: World, names: Sequence[str], resources: Sequence[str]) -> str:
    """One line for the whole cluster (docs/simulation.md, "The timeline")."""
    w = world
    parts = []
    for n in names:
        nd = w.nodes[n]
        if not nd.alive:
            parts.append(f"{n}: DOWN")
            continue
        bits = []
        for r in resources:
            res = nd.resources[r]
            if not res.up:
                bits.append(f"{r}:down/{res.disk.value}")
                continue
            conn = "Connected" if res.connected else ("StandAlone" if res.standalone else "WFConn")
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
        pbds = [sr.pbds[n] for sr in w.srs if n in sr.pbds]
        if pbds:
            broken = any(p.attached and not p.usable for p in pbds)
            plugged = all(p.attached for p in pbds)
            bits.append("pbd:BROKEN" if broken else "pbd" if plugged else "pbd:unplugged")
        if not nd.xapi_reachable:
            bits.append("XAPI-DOWN")
        if nd.isolated:
            bits.append("ISOLATED")
        if nd.manual_mode:
            bits.append(f"manual:{nd.chosen_role.value if nd.chosen_role else '-'}")
        if nd.etcd_cut:
            bits.append("ETCD-CUT")
        if nd.agent_paused:
            bits.append("PAUSED")
        parts.append(f"{n}: {' '.join(bits)}")
    repl = "up" if w.replication_link else "CUT"
    links = f"repl {repl}, mgmt {'up' if w.management_link else 'CUT'}"
    master = w.pool_master or "none"
    if w.pool_views:
        master += " (split: " + ", ".join(f"{k}->{v}" for k, v in w.pool_views.items()) + ")"
    acked = sum(len(v) for v in w.acked.values())
    witness = ""
    if w.witness_on:
        up = sum(w.witness.members)
        holder = w.witness_holder()
        key = f"key {holder} ({w.witness.expires - w.now:.1f}s)" if holder else "key free"
        witness = f" | etcd {up}/{len(w.witness.members)} {key} | t={w.now:.1f}s"
    return f"{' | '.join(parts)} | {links} | master {master} | {acked} acked{witness}"


def plan_text(p: Plan) -> str:
    """A tick's plan on one timeline line."""
    head = f"should be {p.desired_role.value} ({p.role_reason})"
    if p.actions:
        head += "; plan: " + ", ".join(a.describe() for a in p.actions)
    for b in p.blocked:
        head += f"; blocked {b.what}: {b.reason}"
    if not p.actions and not p.blocked:
        head += "; nothing to do"
    return head


def render_text(console: Any, result: RunResult, *, title: str) -> None:
    """The timeline for people (``console``: a rich Console)."""
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
            console.print(f"[bold red]FAILED[/]: {escape(str(v))}")


def result_json(result: RunResult, **head: Any) -> dict[str, Any]:
    """The run as one JSON document (``reconcile simulate --json``); ``head``: leading keys."""
    sim = result.sim
    out: dict[str, Any] = dict(head)
    out.update(
        {
            "ok": result.ok,
            "fencing": sim.fencing,
            "steps_run": sim.step,
            "counts": dict(sorted(sim.counts.items())),
            "violations": [str(v) for v in sim.violations],
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
        out["failed_step"] = {"step": sim.step, "message": str(sim.violations[0])}
    return out
