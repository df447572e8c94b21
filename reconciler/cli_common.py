"""What the CLI's command modules share: the consoles, the exit helpers, the state-directory
check, the agent lock, building the adapters, printing a tick, and the common options. No
click command lives here (reconciler/cli.py and its command modules register them)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from reconciler import operations
from reconciler.agent import (
    EXIT_BLOCKED,
    EXIT_DEGRADED,
    EXIT_OK,
    EXIT_USAGE,
    TickReport,
    tick,
    write_status,
)
from reconciler.core.errors import AdapterError, TerminalError
from reconciler.core.spec import StorageCluster
from reconciler.specfile import (
    default_state_dir,
    read_spec,
)

# emoji=False: a spec value like ':smile:' must print verbatim, not as a smiley.

# emoji=False: a spec value like ':smile:' must print verbatim, not as a smiley.
console = Console(highlight=False, soft_wrap=True, emoji=False)
errors = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    # The message may hold user text (file names, values): never interpret it as markup.
    errors.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    sys.exit(code)


def usable_state_dir(state_dir: str | None, *, read_only: bool = False) -> Path:
    """The state directory (option, env or default), checked before anything uses it: exit 2
    with the path and what is wrong (``reconciler.statedir``)."""
    from reconciler.statedir import state_dir_problem

    path = Path(state_dir) if state_dir else default_state_dir()
    if (problem := state_dir_problem(path, read_only=read_only)) is not None:
        _fail(f"state directory {path}: {problem}")
    return path


def pick_node(spec: StorageCluster, node: str | None) -> str:
    names = spec.node_names
    if node is None:
        host = socket.gethostname().split(".")[0]
        matches = [n for n in names if n.lower() == host.lower()]
        if not matches:
            _fail(
                f"this host ({host}) is not a node of the spec ({', '.join(names)}); "
                "pass --node NAME or set TANDEM_NODE"
            )
        return matches[0]
    if node not in names:
        _fail(f"--node {node!r} is not a node of the spec ({', '.join(names)})")
    return node


@contextlib.contextmanager
def agent_lock(state_dir: Path, node: str) -> Iterator[None]:
    """Only one copy of the agent acts for a node at a time."""
    with try_agent_lock(state_dir, node) as holder:
        if holder is not None:
            _fail(f"another reconcile agent is acting for {node} (pid {holder}); not starting")
        yield


@contextlib.contextmanager
def try_agent_lock(state_dir: Path, node: str) -> Iterator[str | None]:
    """Take the node's agent lock if free: yields None when taken, else the holder's pid.
    Operator commands use it: with an agent running they only record the operator's choice
    (the agent applies it on its next tick) instead of racing it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / f"agent-{node}.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            yield fh.read().strip() or "?"
            return
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield None
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _adapters(spec: StorageCluster, node: str, state_dir: Path, *, dry_run: bool = False) -> Any:
    from adapters.factory import build_adapters

    try:
        return build_adapters(spec, node, state_dir, dry_run=dry_run)
    except AdapterError as exc:
        _fail(str(exc))


def print_report(
    report: TickReport, *, as_json: bool, stamp: bool = False, header: bool = True
) -> None:
    """One tick for people (or one JSON line). ``stamp``: every line starts with the tick's
    time, ISO 8601 UTC (``--watch``); ``header``: a simulated run's first line says so."""
    if as_json:
        click.echo(json.dumps(report.to_json(), sort_keys=True))
        return
    from reconciler.record import iso_utc, simulated_note

    p = report.plan
    e = escape  # reasons quote observed text (pool.conf, tool output): never markup
    at = f"{iso_utc(report.started)} " if stamp else ""

    def line(text: str) -> None:
        console.print(f"{at}{text}")

    if header and (note := simulated_note(report.simulated)) is not None:
        line(f"[bold yellow]{e(note)}[/]")
    mode = " (dry run: nothing applied)" if report.result is None else ""
    line(
        f"[bold]{e(p.node)}[/]: should be [bold]{p.desired_role.value}[/] ({e(p.role_reason)})"
        f"{mode}"
    )
    steps = {id(s.action): s for s in (report.result.steps if report.result else ())}
    for i, action in enumerate(p.actions, 1):
        step = steps.get(id(action))
        mark = ""
        if step is not None:
            if step.ok:
                mark = " [green]ok[/]"
            elif step.skipped:  # a dependency failed (its chain), see executor.apply
                mark = f" [yellow]{e(step.error or 'not run')}[/]"
            else:
                mark = f" [red]FAILED[/]: {e(step.error or '')}"
        elif report.result is not None:
            mark = " [yellow]not run[/]"
        line(f"  {i}. [cyan]{e(action.describe())}[/] - {e(action.reason)}{mark}")
    for b in p.blocked:
        line(f"  [yellow]blocked[/] {b.what}: {e(b.reason)}")
    for w in p.warnings:
        line(f"  [magenta]warning[/]: {e(w.message)}")
    if report.degraded:
        line(f"  [bold magenta]converged but DEGRADED[/] (exit {EXIT_DEGRADED}): not healthy")
    elif p.converged:
        line("  converged: nothing to do")


def _say_simulated(spec: StorageCluster) -> None:
    """The first line of an operator command's output on a simulated cluster."""
    from reconciler.record import simulated_note

    if (note := simulated_note(spec.spec.adapters.simulated)) is not None:
        console.print(f"[bold yellow]{escape(note)}[/]")


def _record(spec: StorageCluster, adapters: Any, state_dir: Path, report: TickReport) -> None:
    """The status record of a ``--once`` tick: after actions, observed again so the record
    shows the state they left (``--watch`` records each tick as it is: its verify tick, due
    ``timings.verifyAfter`` later, observes and records that state, without a second
    observation on the critical path of a swap)."""
    from reconciler.observe import observe

    after = observe(spec, adapters) if report.result and report.result.applied else None
    write_status(state_dir, report, after=after)
    _publish_once(spec, report, after=after)


def _publish_once(spec: StorageCluster, report: TickReport, *, after: Any) -> None:
    """A one-shot tick's record in etcd too (bounded by witness.retryTimeout; a failure is
    said on stderr, never changes the exit code: the record file is the local truth)."""
    from adapters.factory import status_publisher
    from reconciler.agent import shared_record

    try:
        publisher = status_publisher(spec, report.plan.node)
    except TerminalError as exc:
        errors.print(f"[yellow]status not published in etcd:[/] {escape(str(exc))}")
        return
    if publisher is None:
        return
    try:
        problem = publisher.publish_now(shared_record(spec, report, after=after))
    finally:
        publisher.close()
    if problem is not None:
        errors.print(f"[yellow]status not published in etcd:[/] {escape(problem)}")


def _run_once(
    spec: StorageCluster, node: str, state_dir: Path, *, dry_run: bool, as_json: bool
) -> int:
    adapters = _adapters(spec, node, state_dir, dry_run=dry_run)
    try:
        report = tick(spec, adapters, dry_run=dry_run)
        print_report(report, as_json=as_json)
        if not dry_run:
            _record(spec, adapters, state_dir, report)
            _history(state_dir, report)
    finally:
        adapters.close()  # what the adapters started in this process (streams, sockets)
    return report.exit_code


def _history(state_dir: Path, report: TickReport) -> None:
    """Add a one-off tick's actions and refusals to the node's event history."""
    from reconciler import events

    log = events.EventLog(events.events_path(state_dir, report.plan.node))
    log.append(events.from_report(report))


_SPEC_OPT = click.option(
    "-f",
    "--file",
    "spec_path",
    envvar="TANDEM_SPEC",
    type=str,
    default=None,
    help="Desired-state spec (YAML). Env: TANDEM_SPEC. Default: the embedded demo cluster.",
)
_NODE_OPT = click.option(
    "--node", envvar="TANDEM_NODE", help="Which node this agent acts for (default: hostname)."
)
_STATE_OPT = click.option(
    "--state-dir",
    envvar="TANDEM_STATE_DIR",
    type=click.Path(),  # checked by usable_state_dir (one check, one wording)
    help="Agent state (operator choices, status, simulated world). Env: TANDEM_STATE_DIR. "
    "Default: $XDG_STATE_HOME/tandem.",
)


_JSON_OPT = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (same exit codes)."
)


def _operator_context(
    spec_path: str | None,
    node: str | None,
    state_dir: str | None,
    *,
    dry_run: bool = False,
    as_json: bool = False,
) -> tuple[StorageCluster, str, Path, Any]:
    sdir = usable_state_dir(state_dir)
    spec, _ = read_spec(spec_path)
    the_node = pick_node(spec, node)
    adapters = _adapters(spec, the_node, sdir, dry_run=dry_run)
    if not as_json:  # --json says it in its object ("simulated")
        _say_simulated(spec)
    return spec, the_node, sdir, adapters


def _refused(
    outcome: operations.Outcome,
    json_of: tuple[str, str] | None = None,
    *,
    spec: StorageCluster | None = None,
) -> NoReturn:
    """Exit for a refused operator command: 2 when the command line was wrong, else 3.
    ``json_of``: (command, node) to print the refusal as ``--json`` does."""
    refusal = outcome.refusal
    code = EXIT_USAGE if refusal is not None and refusal.is_usage else EXIT_BLOCKED
    if json_of is not None:
        _echo_outcome(json_of[0], json_of[1], outcome, spec=spec)
        sys.exit(code)
    _fail(outcome.message, code)


def _echo_outcome(
    command: str,
    node: str,
    outcome: operations.Outcome,
    *,
    spec: StorageCluster | None,
    **extra: Any,
) -> None:
    from reconciler.jsonout import outcome as outcome_json

    simulated = bool(spec is not None and spec.spec.adapters.simulated)
    body = outcome_json(command, node, outcome, simulated=simulated, **extra)
    click.echo(json.dumps(body, sort_keys=True))


# --- backup and restore (XAPI pool database) --------------------------------------------------


def _operator_tick(
    spec: StorageCluster, node: str, sdir: Path, adapters: Any, *, said: Any = None
) -> int:
    """Apply the operator's choice now, unless an agent runs for this node: then that agent
    applies it on its next tick (two actors on one node would race each other).
    ``said``: (command, node, outcome) of a ``--json`` run: print one JSON object instead."""
    with try_agent_lock(sdir, node) as holder:
        if holder is not None and said is not None:
            _echo_outcome(*said, spec=spec, deferred_to=holder)
            return EXIT_OK
        if holder is not None:
            click.echo(
                f"{node}: recorded; the running agent (pid {holder}) applies it on its next "
                "tick (watch it with `reconcile status --watch`)"
            )
            return EXIT_OK
        report = tick(spec, adapters)
        if said is not None:
            _echo_outcome(*said, spec=spec, tick=report)
        else:
            print_report(report, as_json=False, header=False)
        _record(spec, adapters, sdir, report)
        _history(sdir, report)
        # The operator's choice was applied: a degraded cluster is said in the output (and
        # by `--once`/`status`), it is not this command's failure.
        return EXIT_OK if report.exit_code == EXIT_DEGRADED else report.exit_code
