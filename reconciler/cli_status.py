"""`reconcile status`: this node's record (text, --json, a live screen) or both nodes side by
side (--cluster)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

# emoji=False: a spec value like ':smile:' must print verbatim, not as a smiley.
from reconciler.cli_common import (
    _NODE_OPT,
    _SPEC_OPT,
    _STATE_OPT,
    _fail,
    console,
    pick_node,
    usable_state_dir,
)
from reconciler.core.spec import StorageCluster
from reconciler.specfile import (
    read_spec,
)


@click.command()
@_SPEC_OPT
@_NODE_OPT
@_STATE_OPT
@click.option("--json", "as_json", is_flag=True, help="Print the raw status record.")
@click.option("--watch", "live", is_flag=True, help="A live screen, refreshed every 2 s; Ctrl-C.")
@click.option(
    "--cluster",
    "cluster_name",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[NAME]",
    help="Both nodes side by side. Without NAME: this node's record and the peer's, fetched "
    "from its agent's /status (--peer, or the peer's statusAddress in the spec). With NAME: "
    "cluster NAME's records as its agents publish them in etcd (the spec's witness "
    "endpoints, or --etcd).",
)
@click.option(
    "--all",
    "all_clusters",
    is_flag=True,
    help="Every cluster whose agents publish their records in this etcd, one line each.",
)
@click.option(
    "--etcd",
    "etcd_urls",
    multiple=True,
    metavar="URL",
    help="With --cluster NAME or --all: an etcd client URL (repeat for each member); default: "
    "the spec's witness.endpoints.",
)
@click.option("--peer", metavar="URL", help="With --cluster: the peer agent's address (HOST:PORT).")
def status(
    spec_path: str | None,
    node: str | None,
    state_dir: str | None,
    as_json: bool,
    live: bool,
    cluster_name: str | None,
    all_clusters: bool,
    etcd_urls: tuple[str, ...],
    peer: str | None,
) -> None:
    """Show this node's storage role, DRBD state, target and VIP from the agent's last tick.

    Exit 0 when the record is fresh, 1 when it is missing, corrupt or stale (older than
    tickInterval + statusStaleness: the agent is stopped, hangs, or a failover is in progress),
    in both modes; --json adds record (ok/missing/corrupt), age_seconds, stale, degraded and
    the operator's choices as persisted now. With
    --cluster: exit 0 only when both nodes' records were read and are fresh; with --cluster
    NAME or --all: when every record in etcd was read and is fresh (1 otherwise, also when
    etcd cannot be reached).
    """
    import time

    from adapters.factory import operator_store
    from reconciler.record import read_status
    from reconciler.status import render, status_json

    if all_clusters and cluster_name is not None:
        raise click.UsageError("--all lists every cluster: leave out --cluster")
    shared = all_clusters or bool(cluster_name)
    if etcd_urls and not shared:
        raise click.UsageError("--etcd goes with --cluster NAME or --all")
    if shared and peer is not None:
        raise click.UsageError("--peer goes with --cluster without a NAME")
    spec, _ = read_spec(spec_path)
    if shared:
        _shared_status(spec, cluster_name or None, etcd_urls, as_json=as_json, live=live)
        return
    cluster = cluster_name is not None
    sdir = usable_state_dir(state_dir, read_only=True)
    the_node = pick_node(spec, node)
    store = operator_store(sdir, the_node)
    if peer is not None and not cluster:
        raise click.UsageError("--peer goes with --cluster")

    def frame() -> tuple[Any, bool]:
        """What to show now (a renderable, or the JSON object) and whether it is fresh."""
        if cluster:
            return _cluster_frame(spec, the_node, sdir, peer, as_json=as_json)
        record, raw = read_status(sdir, the_node)
        operator = store.load() if store.path.exists() else None
        if as_json:
            return status_json(spec, the_node, record, raw, time.time(), operator=operator)

        def draw(out: Console) -> bool:
            fresh = render(out, spec, the_node, record, time.time(), operator=operator)
            _events_tail(sdir, the_node, out=out)
            return fresh

        return _captured(draw)

    if not live:
        shown, fresh = frame()
        if as_json:
            click.echo(json.dumps(shown, sort_keys=True))
        else:
            console.print(shown)
        sys.exit(0 if fresh else 1)
    from rich.live import Live

    try:
        if as_json:  # one JSON object every 2 s, no screen
            while True:
                click.echo(json.dumps(frame()[0], sort_keys=True))
                time.sleep(2)
        with Live(console=console, auto_refresh=False, transient=False) as screen:
            while True:
                screen.update(frame()[0], refresh=True)
                time.sleep(2)
    except KeyboardInterrupt:
        sys.exit(0)


def _captured(draw: Any) -> tuple[Any, bool]:
    """Run a printing renderer into a buffer; the text (as a renderable) and its result."""
    import io

    from rich.text import Text

    buffer = Console(
        file=io.StringIO(),
        width=console.width,
        force_terminal=console.is_terminal,
        highlight=False,
        soft_wrap=True,
        emoji=False,
    )
    result = draw(buffer)
    out = buffer.file.getvalue()  # type: ignore[attr-defined]
    return Text.from_ansi(out.rstrip("\n")), bool(result)


def _cluster_frame(
    spec: StorageCluster, node: str, sdir: Path, peer: str | None, *, as_json: bool
) -> tuple[Any, bool]:
    import time

    from reconciler import cluster as cl

    other = next(n for n in spec.node_names if n != node)
    url = cl.peer_url(spec, other, peer)
    if url is None:
        _fail(
            f"where does {other}'s agent serve its status? pass --peer HOST:PORT or set "
            f"statusAddress of {other} in the spec"
        )
    views = {node: cl.local_view(sdir, node), other: cl.fetch_view(other, url)}
    ordered = [views[n] for n in spec.node_names]
    shown, ok = cl.cluster_view(spec, ordered, time.time())
    return (cl.as_json(ordered, ok) if as_json else shown), ok


def _events_tail(sdir: Path, node: str, count: int = 5, *, out: Console = console) -> None:
    """The last few events under `reconcile status` (all of them: `reconcile events`)."""
    from reconciler import events
    from reconciler.servicecli import render_event

    found, problems = events.load([events.events_path(sdir, node)])
    if found:
        out.print(f"last {min(count, len(found))} event(s) (reconcile events):")
        for e in found[-count:]:
            out.print(f"  {escape(render_event(e))}")
    for problem in problems:
        out.print(f"[yellow]events[/]: {escape(problem)}")


def _shared_status(
    spec: StorageCluster,
    cluster: str | None,
    etcd_urls: tuple[str, ...],
    *,
    as_json: bool,
    live: bool,
) -> None:
    """``--cluster NAME`` (``cluster``) or ``--all`` (None): the records in etcd."""
    import time

    from adapters.factory import witness_gateway
    from adapters.witness.gateway import EtcdError
    from adapters.witness.status import read_all, read_cluster
    from reconciler import cluster as cl

    try:
        gateway, prefix = witness_gateway(spec, endpoints=etcd_urls)
    except ValueError as exc:
        _fail(str(exc))
    if gateway is None:
        _fail(
            "where is the etcd? the spec has no witness endpoints: pass --etcd URL "
            "(each member's client URL) or set witness.endpoints in the spec"
        )
    source = gateway.describe()

    def frame() -> tuple[Any, bool]:
        now = time.time()
        try:
            if cluster is not None:
                found = read_cluster(gateway, prefix=prefix, cluster=cluster)
                views = cl.shared_views(found.records, now)
                if as_json:
                    shown = cl.shared_json(cluster, found.leader, views)
                    return shown, bool(shown["ok"])
                return cl.shared_cluster_view(cluster, found.leader, views, source=source)
            every = read_all(gateway, prefix=prefix)
        except EtcdError as exc:
            problem = f"cannot read the status records from etcd ({source}): {exc}"
            if as_json:
                return {"ok": False, "error": problem}, False
            return _error_text(problem), False
        rows = [(c.cluster, c.leader, cl.shared_views(c.records, now)) for c in every]
        if as_json:
            clusters = [cl.shared_json(name, leader, views) for name, leader, views in rows]
            ok = bool(clusters) and all(c["ok"] for c in clusters)
            return {"ok": ok, "prefix": prefix, "clusters": clusters}, ok
        return cl.shared_all_view(rows, source=source)

    try:
        if not live:
            shown, ok = frame()
            if as_json:
                click.echo(json.dumps(shown, sort_keys=True))
            else:
                console.print(shown)
            sys.exit(0 if ok else 1)
        from rich.live import Live

        try:
            if as_json:
                while True:
                    click.echo(json.dumps(frame()[0], sort_keys=True))
                    time.sleep(2)
            with Live(console=console, auto_refresh=False, transient=False) as screen:
                while True:
                    screen.update(frame()[0], refresh=True)
                    time.sleep(2)
        except KeyboardInterrupt:
            sys.exit(0)
    finally:
        gateway.close()


def _error_text(problem: str) -> Any:
    from rich.text import Text

    return Text(f"error: {problem}", style="bold red")
