"""The ``reconcile`` command line.

Contract (other tools and the docs build on it):
  reconcile --once  -f SPEC [--node NAME] [--dry-run] [--json] [--state-dir DIR]
  reconcile --watch -f SPEC [--node NAME] [--interval SECONDS] [--metrics-address HOST:PORT]
  reconcile validate -f SPEC
Exit codes: 0 converged / every action applied; 1 an action failed; 2 invalid spec or usage
(also: an unusable state directory, a command the real adapters need is missing); 3 blocked by a
safety rule with nothing else to do; 4 converged but degraded (replication degraded, split brain).
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

from adapters.redact import redacting_streams
from reconciler import __version__, loop, operations
from reconciler.agent import (
    EXIT_BLOCKED,
    EXIT_DEGRADED,
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
from reconciler.core.specload import SpecError
from reconciler.specfile import (
    DEMO,
    SpecFileError,
    SpecWatch,
    default_state_dir,
    load_spec_file,
    read_spec,
)

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
    spec: StorageCluster,
    node: str,
    state_dir: Path,
    *,
    interval: float,
    as_json: bool,
    metrics_address: Any = None,
    spec_path: str | None = None,
) -> int:
    stop = threading.Event()
    endpoint = _endpoint(spec, node, state_dir, metrics_address)

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

    # The spec file is reloaded under --watch (not the embedded demo: it never changes).
    spec_watch = SpecWatch(spec_path, spec) if spec_path is not None else None

    def on_spec(new: StorageCluster) -> None:
        alert_log.warning(f"{spec_path}: spec reloaded", extra={"node": node})

    # The per-tick observers, in order, in one list. The systemd notifier comes last:
    # WATCHDOG=1 means the whole tick, records and metrics included, ran.
    observers: list[loop.TickObserver] = [
        report_tick,
        agentlog.TickLogger(tick_log),
        events.TickEvents(events.EventLog(events.events_path(state_dir, node))),
        _alerting(spec, alert_log, node, spec_watch=spec_watch),
        endpoint,
        sd,
    ]
    pace = loop.Pace.from_spec(spec, interval)
    try:
        loop.run(
            spec,
            adapters,
            stop=stop,
            on_report=loop.each(observers),
            pace=pace,
            spec_watch=spec_watch,
            rebuild=lambda new: _adapters(new, node, state_dir),
            on_spec=on_spec,
        )
    finally:
        endpoint.close()
        sd.stopping()
    return EXIT_OK


def _endpoint(spec: StorageCluster, node: str, state_dir: Path, address: Any) -> Any:
    """``--metrics-address``: metrics and ``/status`` over HTTP (reconciler.httpserve)."""
    from reconciler.httpserve import Endpoint

    if address is None:
        return Endpoint.off()
    try:
        return Endpoint.open(spec, node, state_dir, address)
    except OSError as exc:
        _fail(f"--metrics-address {address}: cannot listen there: {exc.strerror or exc}")


def _alerting(
    spec: StorageCluster, log: Any, node: str, *, spec_watch: SpecWatch | None = None
) -> Any:
    """Log every alert (``log``: stderr, and syslog when enabled); mail the ones the gate
    admits, and post them as pool messages when XAPI is used. With ``spec_watch``
    (``--watch`` on a spec file), a refused spec edit raises ``NODE:spec-invalid`` at every
    tick until a valid edit comes (the gate screens repeats). The alert settings stay the ones
    the agent started with."""
    import time

    from adapters.alerts import MailAlerter
    from adapters.base import Alert
    from reconciler.alerts import AlertGate, alerts_for

    gate = AlertGate(spec.spec.alerts, clock=time.monotonic)
    mailer = MailAlerter(spec.spec.alerts.mail, timeout=spec.spec.timings.command_timeout)
    senders: list[Any] = [mailer]
    chosen = spec.spec.adapters
    if spec.spec.xapi.messages and "xapi" in (chosen.role_source, chosen.hypervisor):
        from adapters.factory import xapi_client
        from adapters.xapi.messages import PoolMessageAlerter

        senders.append(PoolMessageAlerter(xapi_client(spec), node=node))

    def notify(report: TickReport) -> None:
        raised = alerts_for(report)
        problem = spec_watch.problem if spec_watch is not None else None
        if problem:
            raised.append(
                Alert(
                    f"{report.plan.node}:spec-invalid",
                    "error",
                    f"{report.plan.node}: spec edit refused, still serving the last good "
                    f"spec: {problem}",
                )
            )
        for alert in raised:
            log.warning(alert.message)
        admitted = gate.admit(raised, manual_mode=report.observed.operator.manual_mode)
        for sender in senders:
            failure = sender.send(admitted)
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
    type=click.Path(),  # checked by usable_state_dir (one check, one wording)
    help="Agent state (operator choices, status, simulated world). Env: TANDEM_STATE_DIR. "
    "Default: $XDG_STATE_HOME/tandem.",
)


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 converged or all actions applied; 1 an action failed; "
    "2 invalid spec or usage (also an unusable state directory, or a command the real adapters "
    "need is missing: the message names the Debian package); 3 blocked by a safety rule with "
    "nothing else to do; 4 converged but degraded (replication degraded, split brain: the "
    "reasons are under 'degraded' in --json).",
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
@click.option(
    "--metrics-address",
    metavar="HOST:PORT",
    callback=lambda _c, _p, v: _parse_address(v),
    default=None,
    help="With --watch: serve Prometheus /metrics and the status record /status over HTTP "
    "there (a management address; off by default).",
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
    metrics_address: Any,
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
    # Every line this command prints, on stdout and stderr, has the secrets the spec's files
    # hold (CHAP) masked: adapters.redact is the one place that knows them.
    ctx.with_resource(redacting_streams())
    if ctx.invoked_subcommand is not None:
        if once or watch:
            raise click.UsageError("--once/--watch cannot be combined with a subcommand")
        return
    if dry_run and not once:
        raise click.UsageError(
            "--dry-run goes with --once: `reconcile --once --dry-run` prints the plan of one "
            "tick, each action with its reason, and changes nothing"
        )
    if once == watch:
        if not once:
            click.echo(ctx.get_help())
            ctx.exit(EXIT_USAGE)
        raise click.UsageError("choose one of --once and --watch")
    if dry_run and watch:
        raise click.UsageError("--dry-run goes with --once")
    if metrics_address is not None and not watch:
        raise click.UsageError("--metrics-address goes with --watch")
    if interval is not None and once:
        raise click.UsageError(
            "--interval is for --watch (the seconds between ticks); --once runs one tick"
        )
    sdir = usable_state_dir(state_dir)
    spec, _ = read_spec(spec_path)
    the_node = pick_node(spec, node)
    with agent_lock(sdir, the_node):
        if once:
            ctx.exit(_run_once(spec, the_node, sdir, dry_run=dry_run, as_json=as_json))
        every = interval if interval is not None else spec.spec.timings.tick_interval
        ctx.exit(
            _watch(
                spec,
                the_node,
                sdir,
                interval=every,
                as_json=as_json,
                metrics_address=metrics_address,
                spec_path=spec_path,
            )
        )


def _parse_address(value: str | None) -> Any:
    from reconciler.httpserve import parse_address

    try:
        return None if value is None else parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--metrics-address") from None


_JSON_OPT = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (same exit codes)."
)


@main.command()
@_SPEC_OPT
@_JSON_OPT
def validate(spec_path: str | None, as_json: bool) -> None:
    """Check a spec: exit 0, or exit 2 with file:line:column, field path and what was expected."""
    if as_json:
        sys.exit(_validate_json(spec_path))
    spec, name = read_spec(spec_path)
    a, b = spec.node_names
    click.echo(
        f"{name}: valid ({spec.metadata.name}: nodes {a}, {b}; "
        f"{len(spec.spec.resources)} resource(s), {len(spec.spec.vips)} VIP(s), "
        f"{len(spec.spec.target.luns)} LUN(s); role source {spec.spec.role_source.type.value})"
    )


def _validate_json(spec_path: str | None) -> int:
    from reconciler import jsonout

    name = spec_path or DEMO
    try:
        spec, name = load_spec_file(spec_path)
    except SpecFileError as exc:
        click.echo(json.dumps(jsonout.validate_unreadable(name, str(exc)), sort_keys=True))
        return EXIT_USAGE
    except SpecError as exc:
        click.echo(json.dumps(jsonout.validate_failed(name, exc), sort_keys=True))
        return EXIT_USAGE
    click.echo(json.dumps(jsonout.validate_ok(name, spec), sort_keys=True))
    return EXIT_OK


@main.command("get")
@_SPEC_OPT
@_JSON_OPT
def get_settings(spec_path: str | None, as_json: bool) -> None:
    """Print every effective setting: the spec with all defaults filled in (YAML)."""
    from ruamel.yaml import YAML

    spec, name = read_spec(spec_path)
    if as_json:
        from reconciler.jsonout import settings

        click.echo(json.dumps(settings(name, spec), sort_keys=True))
        return
    yaml = YAML()
    yaml.default_flow_style = False
    click.echo(f"# effective settings of {name}")
    yaml.dump(spec.model_dump(mode="json", by_alias=True), sys.stdout)


# --- operator commands -----------------------------------------------------------------------


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
@main.command("backup")
@_SPEC_OPT
@click.option(
    "--include",
    "includes",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Another file tandem needs on this host (repeatable).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="Also write the backup to this JSON file.",
)
def backup(spec_path: str | None, includes: tuple[str, ...], output: str | None) -> None:
    """Keep the spec (and --include files) in the pool database, base64-encoded in pool
    other-config keys: dom0 upgrades and reinstalls wipe the host's files, the pool keeps
    them. Uses the spec's 'xapi' section to reach XAPI."""
    from adapters.factory import xapi_client
    from adapters.xapi import XapiError
    from adapters.xapi import backup as store
    from adapters.xapi.pooldb import PoolDatabase

    if spec_path is None:
        _fail("backup needs the spec file (-f/--file or TANDEM_SPEC)")
    spec, _ = read_spec(spec_path)
    try:
        files = store.read_files([spec_path, *includes])
    except OSError as exc:
        _fail(f"cannot read {exc.filename}: {exc.strerror or exc}")
    try:
        db = PoolDatabase(xapi_client(spec))
        store.save_to_pool(db, files)
    except (XapiError, AdapterError) as exc:
        _fail(f"backup not stored in the pool database: {exc}", EXIT_BLOCKED)
    if output:
        Path(output).write_text(store.to_json(files))
    for f in files:
        click.echo(f"backed up {f.path} ({len(f.data)} bytes)")


@main.command("restore")
@click.option("--url", help="XAPI URL (default: the local socket of this pool host).")
@click.option(
    "--credentials-file",
    type=click.Path(dir_okay=False),
    help="Username and password on two lines (mode 0600); default: root on the local socket.",
)
@click.option("--timeout", type=float, default=13.0, show_default=True, help="Per XAPI call.")
@click.option(
    "--input",
    "input_file",
    type=click.Path(dir_okay=False, exists=True),
    help="Restore from this JSON file (written by backup --output) instead of the pool.",
)
@click.option("--yes", is_flag=True, help="Write without asking.")
def restore(
    url: str | None,
    credentials_file: str | None,
    timeout: float,
    input_file: str | None,
    yes: bool,
) -> None:
    """Put the backed-up files back on this host: shows each file's diff, then asks before it
    writes. Needs no spec (the spec is what it restores)."""
    from adapters.xapi import XapiClient, XapiError, read_credentials
    from adapters.xapi import backup as store
    from adapters.xapi.pooldb import PoolDatabase

    try:
        if input_file:
            files = store.from_json(Path(input_file).read_text())
        else:
            creds = read_credentials(credentials_file=credentials_file)
            client = XapiClient(url=url, credentials=creds, timeout=timeout)
            files = store.load_from_pool(PoolDatabase(client))
    except (XapiError, AdapterError) as exc:
        _fail(f"cannot read the backup: {exc}", EXIT_BLOCKED)
    except ValueError as exc:
        _fail(f"the backup is unreadable: {exc}", EXIT_BLOCKED)
    if not files:
        _fail("no backup found", EXIT_BLOCKED)
    changed = []
    for f in files:
        text = store.diff(f, store.current_bytes(f.path))
        if text:
            changed.append(f)
            click.echo(text, nl=False)
    if not changed:
        click.echo(f"nothing to restore: {len(files)} file(s) match the backup")
        return
    if not yes and not click.confirm(f"write {len(changed)} file(s)?", default=False):
        _fail("nothing was written", EXIT_BLOCKED)
    for f in changed:
        try:
            store.write_file(f)
        except OSError as exc:
            _fail(f"cannot write {f.path}: {exc.strerror or exc}", EXIT_BLOCKED)
        click.echo(f"restored {f.path}")


@main.command("manual-mode")
@click.argument("state", type=click.Choice(["enable", "disable", "show"]))
@_SPEC_OPT
@_NODE_OPT
@_STATE_OPT
@_JSON_OPT
def manual_mode(
    state: str, spec_path: str | None, node: str | None, state_dir: str | None, as_json: bool
) -> None:
    """Enable/disable manual mode on this node (maintenance with zero VM downtime).

    In manual mode automatic role selection stops: the agent keeps replicating and keeps the
    current roles until `become-primary`/`become-secondary`. Enable it on both nodes. Disabling
    is refused unless this node is back in its native role (the role source agrees), so leaving
    manual mode never moves storage.
    """
    spec, the_node, _sdir, adapters = _operator_context(spec_path, node, state_dir, as_json=as_json)
    command = f"manual-mode {state}"
    if state == "show":
        current = adapters.operator.load()
        if as_json:
            from reconciler.jsonout import operator_state

            shown = {"command": command, "node": the_node, **operator_state(current)}
            click.echo(json.dumps(shown, sort_keys=True))
            return
        click.echo(describe_operator_state(the_node, current))
        _show_pool_manual_mode(adapters.operator)
        return
    outcome = operations.manual_mode(spec, the_node, adapters, enable=state == "enable")
    if not outcome.accepted:
        _refused(outcome, (command, the_node) if as_json else None, spec=spec)
    if as_json:
        _echo_outcome(command, the_node, outcome, spec=spec)
        return
    click.echo(outcome.message)


def _show_pool_manual_mode(store: object) -> None:
    """With XAPI: every host's entry in the pool database, and a disagreement warning."""
    from adapters.xapi.pooldb import PoolOperatorStore

    if not isinstance(store, PoolOperatorStore):
        return
    view = store.pool_view()
    if view is None:
        click.echo("pool database: unreachable")
    else:
        shown = ", ".join(f"{host}={word}" for host, word in sorted(view.items()))
        click.echo(f"pool database MANUAL_MODE: {shown or 'none'}")
    if store.warning:
        click.echo(f"warning: {store.warning}")


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
@_JSON_OPT
def become_primary(
    spec_path: str | None, node: str | None, state_dir: str | None, force: bool, as_json: bool
) -> None:
    """Make this node storage primary (manual mode only). Refused while the peer is Primary or
    the VIP answers elsewhere: dual-primary is never allowed."""
    spec, the_node, sdir, adapters = _operator_context(spec_path, node, state_dir, as_json=as_json)
    outcome = operations.become_primary(spec, the_node, adapters, force=force)
    said = ("become-primary", the_node, outcome) if as_json else None
    if not outcome.accepted:
        _refused(outcome, (said[0], said[1]) if said else None, spec=spec)
    sys.exit(_operator_tick(spec, the_node, sdir, adapters, said=said))


@main.command("become-secondary")
@_SPEC_OPT
@_NODE_OPT
@_STATE_OPT
@_JSON_OPT
def become_secondary(
    spec_path: str | None, node: str | None, state_dir: str | None, as_json: bool
) -> None:
    """Make this node storage secondary (manual mode only; always allowed)."""
    spec, the_node, sdir, adapters = _operator_context(spec_path, node, state_dir, as_json=as_json)
    outcome = operations.become_secondary(spec, the_node, adapters)
    said = ("become-secondary", the_node, outcome) if as_json else None
    if not outcome.accepted:
        _refused(outcome, (said[0], said[1]) if said else None, spec=spec)
    code = _operator_tick(spec, the_node, sdir, adapters, said=said)
    sys.exit(code if code != EXIT_BLOCKED else EXIT_OK)


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


@main.command()
@_SPEC_OPT
@_NODE_OPT
@_STATE_OPT
@click.option("--json", "as_json", is_flag=True, help="Print the raw status record.")
@click.option("--watch", "live", is_flag=True, help="A live screen, refreshed every 2 s; Ctrl-C.")
@click.option(
    "--cluster",
    is_flag=True,
    help="Both nodes side by side: this node's record and the peer's, fetched from its agent's "
    "/status (--peer, or the peer's statusAddress in the spec).",
)
@click.option("--peer", metavar="URL", help="With --cluster: the peer agent's address (HOST:PORT).")
def status(
    spec_path: str | None,
    node: str | None,
    state_dir: str | None,
    as_json: bool,
    live: bool,
    cluster: bool,
    peer: str | None,
) -> None:
    """Show this node's storage role, DRBD state, target and VIP from the agent's last tick.

    Exit 0 when the record is fresh, 1 when it is missing, corrupt or stale (older than
    tickInterval + statusStaleness: the agent is stopped, hangs, or a failover is in progress),
    in both modes; --json adds record (ok/missing/corrupt), age_seconds, stale, degraded and
    the operator's choices as persisted now. With
    --cluster: exit 0 only when both nodes' records were read and are fresh.
    """
    import time

    from adapters.factory import operator_store
    from reconciler.record import read_status
    from reconciler.status import render, status_json

    sdir = usable_state_dir(state_dir, read_only=True)
    spec, _ = read_spec(spec_path)
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
        print_report(outcome.report, as_json=False, header=False)
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


if __name__ == "__main__":  # pragma: no cover - `python -m reconciler.cli` (as another user)
    run()
