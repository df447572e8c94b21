"""The ``reconcile`` command line.

Contract (other tools and the docs build on it):
  reconcile --once  -f SPEC [--node NAME] [--dry-run] [--json] [--state-dir DIR]
  reconcile --watch -f SPEC [--node NAME] [--interval SECONDS]
  reconcile validate -f SPEC
Exit codes: 0 converged / every action applied; 1 an action failed; 2 invalid spec or usage;
3 blocked by a safety rule with nothing else to do.
Without -f (and without $TANDEM_SPEC) the embedded demo spec is used: a simulated two-node
cluster that runs anywhere without root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from reconciler import __version__, loop, operations
from reconciler.agent import (
    EXIT_BLOCKED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    TickReport,
    tick,
    write_status,
)
from reconciler.cli_simulate import simulate_command
from reconciler.core.errors import AdapterError
from reconciler.core.operator import describe_state as describe_operator_state
from reconciler.core.spec import StorageCluster
from reconciler.specfile import default_state_dir, read_spec

# emoji=False: a spec value like ':smile:' must print verbatim, not as a smiley.
console = Console(highlight=False, soft_wrap=True, emoji=False)
errors = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    # The message may hold user text (file names, values): never interpret it as markup.
    errors.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    sys.exit(code)


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


def print_report(report: TickReport, *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_json(), sort_keys=True))
        return
    p = report.plan
    e = escape  # reasons quote observed text (pool.conf, tool output): never markup
    mode = " (dry run: nothing applied)" if report.result is None else ""
    console.print(
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
        console.print(f"  {i}. [cyan]{e(action.describe())}[/] - {e(action.reason)}{mark}")
    for b in p.blocked:
        console.print(f"  [yellow]blocked[/] {b.what}: {e(b.reason)}")
    for w in p.warnings:
        console.print(f"  [magenta]warning[/]: {e(w.message)}")
    if p.converged:
        console.print("  converged: nothing to do")


def _record(spec: StorageCluster, adapters: Any, state_dir: Path, report: TickReport) -> None:
    """The status record of a ``--once`` tick: after actions, observed again so the record
    shows the state they left (``--watch`` records each tick as it is: its verify tick, due
    ``timings.verifyAfter`` later, observes and records that state, without a second
    observation on the critical path of a swap)."""
    from reconciler.observe import observe

    after = observe(spec, adapters) if report.result and report.result.applied else None
    write_status(state_dir, report, after=after)


def _run_once(
    spec: StorageCluster, node: str, state_dir: Path, *, dry_run: bool, as_json: bool
) -> int:
    adapters = _adapters(spec, node, state_dir, dry_run=dry_run)
    report = tick(spec, adapters, dry_run=dry_run)
    print_report(report, as_json=as_json)
    if not dry_run:
        _record(spec, adapters, state_dir, report)
        _history(state_dir, report)
    return report.exit_code


def _history(state_dir: Path, report: TickReport) -> None:
    """Add a one-off tick's actions and refusals to the node's event history."""
    from reconciler import events

    log = events.EventLog(events.events_path(state_dir, report.plan.node))
    log.append(events.from_report(report))


def _watch(
    spec: StorageCluster, node: str, state_dir: Path, *, interval: float, as_json: bool
) -> int:
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        # Finish the current step (never abandon a half-applied action), then exit.
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    adapters = _adapters(spec, node, state_dir)
    from adapters.alerts import syslog_handler
    from reconciler import agentlog, events, systemd

    syslog = syslog_handler() if spec.spec.alerts.syslog else None
    tick_log, alert_log = agentlog.setup(
        state_dir, node, syslog=syslog, tick_lines_to_stdout=not as_json
    )
    sd = systemd.TickNotifier(systemd.Notifier.from_env())
    if (usec := sd.notifier.watchdog_usec) is not None and interval * 1e6 >= usec:
        alert_log.warning(
            f"WatchdogSec ({usec / 1e6:g}s) is not longer than the tick interval "
            f"({interval:g}s): systemd will kill healthy ticks; print the unit again "
            "(reconcile systemd-unit) for these timings",
            extra={"node": node},
        )

    def report_tick(report: TickReport) -> None:
        if as_json:
            print_report(report, as_json=True)
            sys.stdout.flush()
        write_status(state_dir, report)

    # The per-tick observers, in order: one list, so another (metrics) is one more entry.
    # The systemd notifier comes last: WATCHDOG=1 means the whole tick, records included, ran.
    observers: list[loop.TickObserver] = [
        report_tick,
        agentlog.TickLogger(tick_log),
        events.TickEvents(events.EventLog(events.events_path(state_dir, node))),
        _alerting(spec, alert_log),
        sd,
    ]
    pace = loop.Pace.from_spec(spec, interval)
    try:
        loop.run(spec, adapters, stop=stop, on_report=loop.each(observers), pace=pace)
    finally:
        sd.stopping()
    return EXIT_OK


def _alerting(spec: StorageCluster, log: Any) -> Any:
    """Log every alert (``log``: stderr, and syslog when enabled); mail the ones the gate
    admits."""
    import time

    from adapters.alerts import MailAlerter
    from reconciler.alerts import AlertGate, alerts_for

    gate = AlertGate(spec.spec.alerts, clock=time.monotonic)
    mailer = MailAlerter(spec.spec.alerts.mail, timeout=spec.spec.timings.command_timeout)

    def notify(report: TickReport) -> None:
        raised = alerts_for(report)
        for alert in raised:
            log.warning(alert.message)
        admitted = gate.admit(raised, manual_mode=report.observed.operator.manual_mode)
        failure = mailer.send(admitted)
        if failure:
            log.error(failure)

    return notify


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
    type=click.Path(file_okay=False),
    help="Agent state (operator choices, status, simulated world). Env: TANDEM_STATE_DIR. "
    "Default: $XDG_STATE_HOME/tandem.",
)


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 converged or all actions applied; 1 an action failed; "
    "2 invalid spec or usage; 3 blocked by a safety rule with nothing else to do.",
)
@click.option("--once", is_flag=True, help="Run one tick (observe, plan, apply) and exit.")
@click.option("--watch", is_flag=True, help="Tick every --interval seconds until SIGINT/SIGTERM.")
@_SPEC_OPT
@_NODE_OPT
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per tick.")
@_STATE_OPT
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01, max=3600),
    default=None,
    help="Seconds between ticks in --watch (fractions allowed; default: spec timings).",
)
@click.version_option(__version__, prog_name="reconcile")
@click.pass_context
def main(
    ctx: click.Context,
    once: bool,
    watch: bool,
    spec_path: str | None,
    node: str | None,
    dry_run: bool,
    as_json: bool,
    state_dir: str | None,
    interval: float | None,
) -> None:
    """tandem: keep a two-node DRBD + iSCSI + floating-IP cluster converged on a YAML spec.

    Each tick observes this node (DRBD, VIP, iSCSI target, role source), plans the minimal
    ordered actions (promote, demote, add/remove VIP, start/stop target, export LUNs) under
    safety rules, and applies them with retries.

    \b
    Quick tour (the embedded demo is a simulated cluster, no root needed):
      reconcile validate -f specs/demo.yaml
      reconcile --once --node node1 --dry-run
      reconcile --once --node node1
      reconcile --once --node node2
      reconcile --watch --node node1 --interval 0.5
    """
    if ctx.invoked_subcommand is not None:
        if once or watch:
            raise click.UsageError("--once/--watch cannot be combined with a subcommand")
        return
    if once == watch:
        if not once:
            click.echo(ctx.get_help())
            ctx.exit(EXIT_USAGE)
        raise click.UsageError("choose one of --once and --watch")
    if dry_run and watch:
        raise click.UsageError("--dry-run goes with --once")
    spec, _ = read_spec(spec_path)
    the_node = pick_node(spec, node)
    sdir = Path(state_dir) if state_dir else default_state_dir()
    with agent_lock(sdir, the_node):
        if once:
            ctx.exit(_run_once(spec, the_node, sdir, dry_run=dry_run, as_json=as_json))
        every = interval if interval is not None else spec.spec.timings.tick_interval
        ctx.exit(_watch(spec, the_node, sdir, interval=every, as_json=as_json))


@main.command()
@_SPEC_OPT
def validate(spec_path: str | None) -> None:
    """Check a spec: exit 0, or exit 2 with file:line:column, field path and what was expected."""
    spec, name = read_spec(spec_path)
    a, b = spec.node_names
    click.echo(
        f"{name}: valid ({spec.metadata.name}: nodes {a}, {b}; "
        f"{len(spec.spec.resources)} resource(s), {len(spec.spec.vips)} VIP(s), "
        f"{len(spec.spec.target.luns)} LUN(s); role source {spec.spec.role_source.type.value})"
    )


@main.command("get")
@_SPEC_OPT
def get_settings(spec_path: str | None) -> None:
    """Print every effective setting: the spec with all defaults filled in (YAML)."""
    from ruamel.yaml import YAML

    spec, name = read_spec(spec_path)
    yaml = YAML()
    yaml.default_flow_style = False
    click.echo(f"# effective settings of {name}")
    yaml.dump(spec.model_dump(mode="json", by_alias=True), sys.stdout)


# --- operator commands -----------------------------------------------------------------------


def _operator_context(
    spec_path: str | None, node: str | None, state_dir: str | None, *, dry_run: bool = False
) -> tuple[StorageCluster, str, Path, Any]:
    spec, _ = read_spec(spec_path)
    the_node = pick_node(spec, node)
    sdir = Path(state_dir) if state_dir else default_state_dir()
    return spec, the_node, sdir, _adapters(spec, the_node, sdir, dry_run=dry_run)


def _refused(outcome: operations.Outcome) -> NoReturn:
    """Exit for a refused operator command: 2 when the command line was wrong, else 3."""
    refusal = outcome.refusal
    _fail(outcome.message, EXIT_USAGE if refusal is not None and refusal.is_usage else EXIT_BLOCKED)


@main.command("manual-mode")
@click.argument("state", type=click.Choice(["enable", "disable", "show"]))
@_SPEC_OPT
@_NODE_OPT
@_STATE_OPT
def manual_mode(state: str, spec_path: str | None, node: str | None, state_dir: str | None) -> None:
    """Enable/disable manual mode on this node (maintenance with zero VM downtime).

    In manual mode automatic role selection stops: the agent keeps replicating and keeps the
    current roles until `become-primary`/`become-secondary`. Enable it on both nodes. Disabling
    is refused unless this node is back in its native role (the role source agrees), so leaving
    manual mode never moves storage.
    """
    spec, the_node, _sdir, adapters = _operator_context(spec_path, node, state_dir)
    if state == "show":
        click.echo(describe_operator_state(the_node, adapters.operator.load()))
        return
    outcome = operations.manual_mode(spec, the_node, adapters, enable=state == "enable")
    if not outcome.accepted:
        _refused(outcome)
    click.echo(outcome.message)


@main.command("become-primary")
@_SPEC_OPT
@_NODE_OPT
@_STATE_OPT
@click.option(
    "--force",
    is_flag=True,
    help="Also promote while DRBD is disconnected and no policy allows it (may cause split "
    "brain if the peer is Primary: the agent then detects and reports it).",
)
def become_primary(
    spec_path: str | None, node: str | None, state_dir: str | None, force: bool
) -> None:
    """Make this node storage primary (manual mode only). Refused while the peer is Primary or
    the VIP answers elsewhere: dual-primary is never allowed."""
    spec, the_node, sdir, adapters = _operator_context(spec_path, node, state_dir)
    outcome = operations.become_primary(spec, the_node, adapters, force=force)
    if not outcome.accepted:
        _refused(outcome)
    sys.exit(_operator_tick(spec, the_node, sdir, adapters))


@main.command("become-secondary")
@_SPEC_OPT
@_NODE_OPT
@_STATE_OPT
def become_secondary(spec_path: str | None, node: str | None, state_dir: str | None) -> None:
    """Make this node storage secondary (manual mode only; always allowed)."""
    spec, the_node, sdir, adapters = _operator_context(spec_path, node, state_dir)
    outcome = operations.become_secondary(spec, the_node, adapters)
    if not outcome.accepted:
        _refused(outcome)
    code = _operator_tick(spec, the_node, sdir, adapters)
    sys.exit(code if code != EXIT_BLOCKED else EXIT_OK)


def _operator_tick(spec: StorageCluster, node: str, sdir: Path, adapters: Any) -> int:
    """Apply the operator's choice now, unless an agent runs for this node: then that agent
    applies it on its next tick (two actors on one node would race each other)."""
    with try_agent_lock(sdir, node) as holder:
        if holder is not None:
            click.echo(
                f"{node}: recorded; the running agent (pid {holder}) applies it on its next "
                "tick (watch it with `reconcile status --watch`)"
            )
            return EXIT_OK
        report = tick(spec, adapters)
        print_report(report, as_json=False)
        _record(spec, adapters, sdir, report)
        _history(sdir, report)
        return report.exit_code


@main.command()
@_SPEC_OPT
@_NODE_OPT
@_STATE_OPT
@click.option("--json", "as_json", is_flag=True, help="Print the raw status record.")
@click.option("--watch", "live", is_flag=True, help="Refresh every 2 s until Ctrl-C.")
def status(
    spec_path: str | None, node: str | None, state_dir: str | None, as_json: bool, live: bool
) -> None:
    """Show this node's storage role, DRBD state, target and VIP from the agent's last tick.

    Exit 0 when the record is fresh, 1 when it is missing or stale (older than tickInterval +
    statusStaleness: the agent is stopped, hangs, or a failover is in progress).
    """
    import time

    from reconciler.record import StatusRecord, read_status
    from reconciler.status import render

    spec, _ = read_spec(spec_path)
    the_node = pick_node(spec, node)
    sdir = Path(state_dir) if state_dir else default_state_dir()
    while True:
        record, raw = read_status(sdir, the_node)
        if as_json:
            click.echo(json.dumps(raw, sort_keys=True))
            fresh = isinstance(record, StatusRecord)
        else:
            if live:
                console.clear()
            fresh = render(console, spec, the_node, record, time.time())
            _events_tail(sdir, the_node)
        if not live:
            sys.exit(0 if fresh else 1)
        try:
            time.sleep(2)
        except KeyboardInterrupt:
            sys.exit(0)


def _events_tail(sdir: Path, node: str, count: int = 5) -> None:
    """The last few events under `reconcile status` (all of them: `reconcile events`)."""
    from reconciler import events
    from reconciler.servicecli import render_event

    found, problems = events.load([events.events_path(sdir, node)])
    if found:
        console.print(f"last {min(count, len(found))} event(s) (reconcile events):")
        for e in found[-count:]:
            console.print(f"  {escape(render_event(e))}")
    for problem in problems:
        console.print(f"[yellow]events[/]: {escape(problem)}")


@main.command("split-brain")
@click.argument("resource")
@click.option("--survivor", required=True, help="The node whose data is kept.")
@click.option("--yes", is_flag=True, help="Confirm: the other node's divergent writes are lost.")
@click.option(
    "--dry-run", is_flag=True, help="Print the recovery plan; change nothing (needs no --yes)."
)
@_SPEC_OPT
@_NODE_OPT
@_STATE_OPT
def split_brain(
    resource: str,
    survivor: str,
    yes: bool,
    dry_run: bool,
    spec_path: str | None,
    node: str | None,
    state_dir: str | None,
) -> None:
    """Guided split-brain recovery for RESOURCE: run it on both nodes, victim first.

    \b
    On the victim (the node that is not --survivor): the node is put in manual mode as
    secondary, then the target stops, the VIP goes, DRBD is demoted and reconnects discarding
    its own divergent data (it then resyncs from the survivor). On the survivor: DRBD
    reconnects. The steps are a plan run with retries, like a tick's; --dry-run prints it.
    Nothing happens without --yes, and only when the agent really sees a split brain on
    RESOURCE.
    """
    spec, the_node, sdir, adapters = _operator_context(spec_path, node, state_dir, dry_run=dry_run)

    def recover(holder: str | None) -> operations.Outcome:
        return operations.split_brain_recovery(
            spec,
            the_node,
            adapters,
            resource=resource,
            survivor=survivor,
            confirmed=yes,
            dry_run=dry_run,
            agent_holder=holder,
        )

    if dry_run or not yes:
        # Changes nothing (a dry run, or a refusal for want of --yes): no lock needed.
        outcome = recover(None)
    else:
        with try_agent_lock(sdir, the_node) as holder:
            # Held while the plan runs: an agent starting now waits instead of racing it.
            outcome = recover(holder)
    if not outcome.accepted:
        _refused(outcome)
    if outcome.report is not None:
        print_report(outcome.report, as_json=False)
    if outcome.failure is not None:
        _fail(outcome.failure, EXIT_FAILED)
    click.echo(outcome.message)


main.add_command(simulate_command)

# Service commands (systemd-unit, log, events) live in reconciler/servicecli.py.
from reconciler.servicecli import COMMANDS as _SERVICE_COMMANDS  # noqa: E402

for _command in _SERVICE_COMMANDS:
    main.add_command(_command)


def run() -> None:  # pragma: no cover - console entry point wrapper
    main()
